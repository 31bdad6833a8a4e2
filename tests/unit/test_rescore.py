"""rescore: stored runs scored again from their raw answers with the current rules, sweeps refreshed."""
import json

import pytest

from analysis.evaluate.frontier import materialise
from analysis.ingest.importer import ImportSpec, import_generations
from analysis.ingest.rescore import rescore


def _import(store, tmp_path, rows, answer_type, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = ImportSpec(path=str(path), model="m", dataset=name, response_field="response", answer_type=answer_type,
                      every=4)
    return import_generations(store, spec, show_progress=False)["run_id"]


ARITH = [{"question": f"Calculate {a} + {b}.", "answer": str(a + b),
          "response": f"First {a} + {b}, so \\boxed{{{a} + {b}}}. Hmm, that is \\boxed{{{a + b}}}"}
         for a, b in [(7, -84), (1, 5), (12, 30), (-3, 8)]]


def test_expression_answers_scored_right_by_an_older_rule_are_scored_again(store, tmp_path, cli):
    rid = _import(store, tmp_path, ARITH, "number", "arith")
    materialise(store, rid)
    with store.transaction() as con:           # what the older rule stored: an expression equal to the gold was EM 1
        n_expr = con.execute("UPDATE checkpoints SET em = 1, f1 = 1 WHERE run_id = ? AND answer_raw LIKE '% + %'",
                             [rid]).fetchone()[0]
        before = con.execute("SELECT AVG(em) FROM checkpoints WHERE run_id = ?", [rid]).fetchone()[0]
    assert n_expr >= 4
    code, out, err = cli("rescore", "--run", rid, "--db", store.path, "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["checkpoint_em_before"] == pytest.approx(before) and row["checkpoints_changed"] == n_expr
    assert row["checkpoint_em_after"] < row["checkpoint_em_before"]
    assert row["em_full_before"] == row["em_full_after"] == 1.0      # every final answer states its number
    ck = store.checkpoints(rid).to_pandas()
    assert (ck[ck.answer_raw.str.contains(" + ", na=False)].em == 0).all()
    with store.connect() as con:                 # the kept sweep was made again from the new scores
        assert con.execute("SELECT COUNT(*) FROM sweeps WHERE run_id = ?", [rid]).fetchone()[0] == 1


def test_a_run_can_be_given_another_answer_type(store, tmp_path, cli):
    rows = [{"question": "x?", "answer": "\\frac{14}{3}", "response": "So \\boxed{\\dfrac{14}{3}}"},
            {"question": "y?", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "response": "\\boxed{(3, \\frac{\\pi}{2})}"},
            {"question": "z?", "answer": "6 - 5i", "response": "\\boxed{6+5i}"}]
    rid = _import(store, tmp_path, rows, "text", "mathish")
    assert store.run(rid)["em_full"] == 0.0                 # as text, no spelling matches
    code, out, err = cli("rescore", "--run", rid, "--answer-type", "math", "--db", store.path)
    assert code == 0, err
    assert "[math (was text)]" in out
    run = store.run(rid)
    assert run["answer_type"] == "math" and run["em_full"] == pytest.approx(2 / 3)
    assert rescore(store, [rid])[0]["em_full_after"] == pytest.approx(2 / 3)      # idempotent


def test_bad_rescore_requests_name_the_problem(store, tmp_path, cli):
    rid = _import(store, tmp_path, ARITH, "number", "arith")
    code, _, err = cli("rescore", "--run", "nope", "--db", store.path)
    assert code == 2 and "no run 'nope'" in err
    code, _, err = cli("rescore", "--run", rid, "--answer-type", "numeric", "--db", store.path)
    assert code == 2 and "numeric" in err
    with pytest.raises(Exception, match="number, math, text, choice"):
        rescore(store, [rid], "numeric")
