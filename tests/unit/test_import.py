"""Import of generations made elsewhere: EM as judged by hand, lm-eval files, and every kind of bad input."""
import json

import duckdb
import pytest

from analysis.core.errors import StoplineError
from analysis.ingest.importer import ImportSpec, import_generations
from tests.helpers import FIXTURES

SOLUTIONS = FIXTURES / "solutions.jsonl"


def spec(path, **kw):
    base = dict(path=str(path), model="hand", dataset="hand-gsm", response_field="outputs.solution")
    base.update(kw)
    return ImportSpec(**base)


def test_em_full_equals_the_hand_judgement(store):
    rows = [json.loads(line) for line in SOLUTIONS.read_text().splitlines()]
    res = import_generations(store, spec(SOLUTIONS), show_progress=False)
    assert res["created"] and res["n_questions"] == len(rows) >= 30
    assert res["em_full"] == pytest.approx(sum(r["hand_em"] for r in rows) / len(rows))
    # per question, too
    with store.connect() as con:
        got = dict(con.execute("SELECT q.text, t.em FROM traces t JOIN questions q USING (question_id)").fetchall())
    assert {r["question"]: float(r["hand_em"]) for r in rows} == got
    # importing the same file again finds the run instead of duplicating it
    again = import_generations(store, spec(SOLUTIONS), show_progress=False)
    assert not again["created"] and again["run_id"] == res["run_id"] and len(store.runs()) == 1


def test_text_checkpoints_follow_the_trace(store):
    res = import_generations(store, spec(SOLUTIONS, every=4), show_progress=False)
    ck = store.checkpoints(res["run_id"]).to_pandas()
    for _, g in ck.groupby("question_id"):
        assert g.ck_idx.tolist() == list(range(len(g)))
        assert g.pos.is_monotonic_increasing and g.kind.iloc[-1] == "final"
    # "20 - 7 = 13. Hmm, actually 20 - 7 = 12. \boxed{12}": right before the 'Hmm', wrong at the end (a loss)
    qid = [q for q in ck.question_id.unique() if (ck[ck.question_id == q].answer_norm == "13").any()][0]
    g = ck[ck.question_id == qid]
    assert g[g.kind == "transition"].answer_norm.iloc[0] == "13" and g[g.kind == "transition"].em.iloc[0] == 1.0
    assert g.answer_norm.iloc[-1] == "12" and g.em.iloc[-1] == 0.0
    # each checkpoint cuts the text where its trial answer was read: the transition before its word (here at
    # the blank line before it, a step at the same token)
    tr = store.trace(res["run_id"], qid)
    assert tr["char_pos"] == g.char_pos.tolist() and tr["char_pos"][-1] == len(tr["text"])
    cut = g[g.kind == "transition"].char_pos.iloc[0]
    assert tr["text"][cut:].lstrip().startswith("Hmm") and "13" in tr["text"][:cut]


def test_lm_eval_log_samples(store, tmp_path):
    f = tmp_path / "samples_gsm8k.jsonl"
    recs = [{"doc_id": i, "doc": {"question": f"Q{i}?", "answer": f"work\n#### {i}"}, "target": f"work\n#### {i}",
             "arguments": [], "resps": [[f"So the answer is {i if i % 2 else i + 1}."]],
             "filtered_resps": ["x"], "exact_match": 0.0} for i in range(10)]
    f.write_text("\n".join(json.dumps(r) for r in recs))
    res = import_generations(store, ImportSpec(path=str(f), model="m", dataset="gsm8k", fmt="lm-eval",
                                               question_field="doc.question", gold_field="target",
                                               response_field="resps.0.0", id_field="doc_id"), show_progress=False)
    assert res["em_full"] == 0.5 and res["n_questions"] == 10


def test_lm_eval_samples_logged_once_per_filter_are_read_once(store, tmp_path):
    """lm-evaluation-harness logs each gsm8k sample once per filter (strict-match, flexible-extract), with the
    same model response. Before, the import refused such a file: "question id '0' repeats line 1". A repeat
    under another filter with the same response is read once; one with another response is still refused."""
    f = tmp_path / "samples_gsm8k.jsonl"
    recs = [{"doc_id": i, "doc": {"question": f"Q{i}?"}, "target": f"work\n#### {i}", "filter": flt,
             "resps": [[f"So the answer is {i if i % 2 else i + 1}."]], "filtered_resps": [str(i)],
             "exact_match": 1.0} for i in range(6) for flt in ("strict-match", "flexible-extract")]
    f.write_text("\n".join(json.dumps(r) for r in recs))
    lm = dict(model="m", dataset="gsm8k", fmt="lm-eval", question_field="doc.question", gold_field="target",
              response_field="resps.0.0", id_field="doc_id")
    res = import_generations(store, ImportSpec(path=str(f), **lm), show_progress=False)
    assert res["n_questions"] == 6 and res["em_full"] == 0.5
    recs[3]["resps"] = [["Something else entirely: 7."]]              # doc 1's second copy, another response
    f.write_text("\n".join(json.dumps(r) for r in recs))
    with pytest.raises(StoplineError, match=r"line 4, field 'doc_id': question id '1' repeats line 3"):
        import_generations(store, ImportSpec(path=str(f), **lm), show_progress=False)


def test_text_answers(store, tmp_path):
    f = tmp_path / "nq.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"],
         "response": "Hmm, Marlowe?\n\nNo. The answer is William Shakespeare."},
        {"question": "capital of france", "answer": ["Paris"], "response": "Answer: Lyon"}]))
    res = import_generations(store, ImportSpec(path=str(f), model="m", dataset="nq", answer_type="text"),
                             show_progress=False)
    assert res["em_full"] == 0.5


def _bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


GOOD = json.dumps({"question": "q?", "answer": "3", "response": "#### 3"}).encode()


@pytest.mark.parametrize("name,content,where,match", [
    ("invalid.jsonl", GOOD + b"\n{not json}\n", "line 2", "invalid JSON at character 2 of the line"),
    ("missing.jsonl", GOOD + b'\n{"question": "q", "response": "r"}\n', "line 2", "field 'answer'"),
    ("wrongtype.jsonl", GOOD + b'\n{"question": "q", "answer": "3", "response": 7}\n', "line 2", "must be a string"),
    ("gold.jsonl", GOOD + b'\n' + GOOD + b'\n{"question": "q", "answer": "n/a", "response": "r"}\n', "line 3",
     "cannot parse the gold"),
    ("goldtype.jsonl", b'{"question": "q", "answer": {"a": 1}, "response": "r"}\n', "line 1", "gold must be"),
    ("empty.jsonl", b"", "empty.jsonl", "no records"),
    ("blank.jsonl", b"\n\n  \n", "blank.jsonl", "no records"),
    ("latin1.jsonl", GOOD + b'\n{"question": "caf\xe9", "answer": "1", "response": "1"}\n', "line 2", "UTF-8"),
    ("array.jsonl", b"[1, 2]\n", "line 1", "expected a JSON object"),
    ("dupid.jsonl", b'{"id": 1, "question": "a", "answer": "1", "response": "1"}\n'
                    b'{"id": 1, "question": "b", "answer": "1", "response": "1"}\n', "line 2", "repeats line 1"),
])
def test_bad_input_names_file_line_field_and_writes_nothing(store, tmp_path, name, content, where, match):
    p = _bad(tmp_path, name, content)
    kw = {"id_field": "id"} if name == "dupid.jsonl" else {}
    with pytest.raises(StoplineError) as e:
        import_generations(store, ImportSpec(path=str(p), model="m", dataset="d", **kw), show_progress=False)
    msg = str(e.value)
    assert name in msg and where in msg and match in msg, msg
    assert store.runs() == []
    with store.connect() as con:
        assert con.execute("SELECT COUNT(*) FROM questions").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_a_50mb_line_is_refused_without_reading_it_all(store, tmp_path):
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as fh:
        fh.write(GOOD + b"\n")
        fh.write(b'{"question": "q", "answer": "1", "response": "' + b"x" * (50 * 1024 * 1024) + b'"}\n')
    with pytest.raises(StoplineError) as e:
        import_generations(store, ImportSpec(path=str(p), model="m", dataset="d"), show_progress=False)
    assert "huge.jsonl" in str(e.value) and "line 2" in str(e.value) and "longer than 16 MB" in str(e.value)
    assert store.runs() == []


def test_unknown_field_path(store):
    with pytest.raises(StoplineError) as e:
        import_generations(store, spec(SOLUTIONS, response_field="outputs.answer.text"), show_progress=False)
    assert "line 1" in str(e.value) and "outputs.answer.text" in str(e.value) and "no 'answer'" in str(e.value)


def test_store_stays_valid_after_a_failed_import(store, tmp_path):
    import_generations(store, spec(SOLUTIONS), show_progress=False)
    p = _bad(tmp_path, "bad.jsonl", GOOD + b"\n{oops\n")
    with pytest.raises(StoplineError):
        import_generations(store, ImportSpec(path=str(p), model="m2", dataset="d2"), show_progress=False)
    assert len(store.runs()) == 1
    duckdb.connect(store.path, read_only=True).close()


def test_vectorised_derive_equals_the_per_trace_path():
    """The chunk-at-once numeric path writes exactly the rows of the per-trace functions (EM included)."""
    import json
    from analysis.ingest.derive import _derive_chunk
    items = [(f"q{i}", [str(r["answer"])], r["outputs"]["solution"])
             for i, r in enumerate(map(json.loads, open(FIXTURES / "solutions.jsonl")))]
    items += [("x1", ["7"], "\\boxed{7} and 1,250. #### 7"), ("x2", ["3"], ""), ("x3", ["2"], "no num"),
              ("x4", ["3/4"], "0.75 then 3/4"), ("x5", ["1,250"], "1250.0 and $1,250"), ("x6", ["2", "two"], "2"),
              ("x7", ["0.3333333"], "1/3"), ("x8", ["12"], "12-12\n\nWait, 12. Hmm \\boxed{\\boxed{1}} 12")]
    for every in (1, 4, 32):
        a = _derive_chunk(("r", items, "number", every))
        b = _derive_chunk(("r", items, "number", every), vectorised=False)
        for x, y in zip(a, b):
            assert x.schema == y.schema and x.to_pylist() == y.to_pylist()


def test_many_answers_scored_at_once_agree_with_score_row_by_row():
    """score_rows' numpy path for plain decimals (tolerance, near ties sent to the slow path) gives what
    ``score`` gives each row."""
    import random

    import numpy as np

    from analysis.core.answers import NUMBER, normalize, normalize_gold, score
    from analysis.ingest.scoring import score_rows
    golds = [normalize_gold([g], NUMBER) for g in ["12", "-77", "0.5", "1000000", "3/4", "1,000", "7", "1e3"]]
    answers = ["12", "12.0", "-77", "0.5000001", "0.50000049", "1000001", "1000000.5", "3/4", "0.75", "", "1000",
               "7.000007", "7.0000071", "-77.00007", "x", "99999999999999999"]
    u_norm = np.array([normalize(a, NUMBER) if a else "" for a in answers] + [""], dtype=object)
    rnd = random.Random(1)
    tr = np.array([rnd.randrange(len(golds)) for _ in range(3000)])
    codes = np.array([rnd.randrange(-1, len(answers)) for _ in range(3000)])
    codes = np.where((u_norm == "")[codes], -1, codes)
    em, _ = score_rows(tr, codes, u_norm, golds, NUMBER)
    expected = [score(u_norm[c], golds[t], NUMBER)[0] if c >= 0 else 0.0 for t, c in zip(tr, codes)]
    assert em.tolist() == expected and 0 < em.mean() < 1


def test_the_run_and_its_questions_are_written_only_as_the_derivation_ends(monkeypatch):
    """derive() calls its meanwhile (the import opening the store's write transaction) once all but the last
    chunks are derived, so a long import does not lock the store for its whole derivation."""
    from analysis.ingest import derive as D
    from analysis.ingest.datasets import Question
    done, seen = [], []
    real = D._derive_range
    monkeypatch.setattr(D, "_derive_range", lambda r: done.append(r[1]) or real(r))
    records = [(Question(f"q{i}", f"What is {i} + 1?", [str(i + 1)], "number", {}), f"{i} + 1 = {i + 1}")
               for i in range(6 * 4000 - 10)]                                      # 6 chunks of 4,000
    traces, cks = D.derive("r", records, "number", 32, show_progress=False, workers=1,
                           meanwhile=lambda: seen.append(len(done)))
    assert seen == [5] and len(done) == 6 and traces.num_rows == len(records)
    assert D.derive("r", records[:5], "number", 32, show_progress=False, workers=1,
                    meanwhile=lambda: seen.append("small"))[0].num_rows == 5 and seen[-1] == "small"


def test_a_gold_that_contradicts_the_stored_one_is_refused_naming_its_line(store, tmp_path):
    """A dataset's question has one gold. Before, a second import under the same dataset whose file gave question 1
    another gold was scored against the file's gold at import, while the store kept the first one, so a later
    rescore changed the run's EM (0.333 -> 0.667). Now the import is refused, naming the line and field, and
    nothing is written; a gold written another way that scores alike (72 and "72") is the same gold."""
    rows = [{"id": "q1", "question": "6 * 12?", "answer": "72", "response": "It is \\boxed{72}."},
            {"id": "q2", "question": "5 + 5?", "answer": "10", "response": "It is \\boxed{11}."},
            {"id": "q3", "question": "9 - 4?", "answer": "5", "response": "It is \\boxed{6}."}]

    def write(name, rs):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rs))
        return spec(tmp_path / name, dataset="mine", response_field="response", id_field="id")
    first = import_generations(store, write("a.jsonl", rows), show_progress=False)
    assert first["em_full"] == pytest.approx(1 / 3)
    other = [dict(r) for r in rows]
    other[2]["answer"] = "6"
    with pytest.raises(StoplineError) as e:
        import_generations(store, write("b.jsonl", other), show_progress=False)
    said = str(e.value)
    assert said.startswith(f"{tmp_path / 'b.jsonl'}, line 3, field 'answer': question 'q3' of dataset 'mine' is "
                           "stored with gold [\"5\"]; this one gives [\"6\"]"), said
    assert "another dataset name" in said
    assert len(store.runs()) == 1                                     # nothing written
    with store.connect() as con:
        assert con.execute("SELECT gold FROM questions WHERE question_id = 'q3'").fetchone()[0] == '["5"]'
    alike = [dict(r, answer=int(r["answer"])) for r in rows]           # numbers, not strings: the same golds
    alike[0]["response"] = "It is \\boxed{73}."
    second = import_generations(store, write("c.jsonl", alike), show_progress=False)
    assert second["created"] and second["em_full"] == 0.0 and len(store.runs()) == 2
    # the checkpoints format names the line too
    ck = tmp_path / "ck.csv"
    ck.write_text("qid,question,answer,tokens,trial\nq1,6 * 12?,72,10,72\nq2,5 + 5?,12,10,10\n")
    with pytest.raises(StoplineError, match=r"ck.csv, line 3, field 'answer': question 'q2' of dataset 'mine'"):
        import_generations(store, spec(ck, dataset="mine", fmt="checkpoints", id_field="qid", position_field="tokens",
                                       answer_field="trial", response_field=None), show_progress=False)
    assert len(store.runs()) == 2
    # a file judged by the tool's own labels gives no gold: no contradiction
    ck.write_text("qid,question,tokens,trial,ok\nq1,6 * 12?,10,72,1\nq2,5 + 5?,10,10,1\n")
    res = import_generations(store, spec(ck, dataset="mine", fmt="checkpoints", id_field="qid", position_field="tokens",
                                         answer_field="trial", correct_field="ok", gold_field=None,
                                         response_field=None), show_progress=False)
    assert res["created"] and len(store.runs()) == 3
