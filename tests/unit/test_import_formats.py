"""Every common shape of generations: JSON documents, CSV, Parquet, OpenAI-style chat logs with reasoning,
thinking traces, a model's own tokenizer, and per-checkpoint exports (long and wide) — each through the CLI,
with bad input named by file, line or item, and field."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.replay.engine import RunTable
from analysis.core.store import Store
from tests.helpers import CHAT

ROWS = [
    {"question": "Calculate 7 + -84.", "answer": "-77", "response": "7 + -84 = -77. So \\boxed{-77}"},
    {"question": "Calculate 12 * 3.", "answer": "36", "response": "12 * 3 = 36.\n\nHmm, or 35? \\boxed{35}"},
    {"question": "Calculate 100 - 1.", "answer": "99", "response": "That is 99.\n\n#### 99"},
]


def _import(cli, db, path, *args):
    code, out, err = cli("import", path, "--model", "m", "--dataset", "d", "--db", db, "--json", *args)
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_json_document_with_nested_records(tmp_path, cli):
    doc = {"meta": {"tool": "x"}, "results": {"tasks": [
        {"q": {"text": r["question"]}, "gold": r["answer"], "out": {"solution": r["response"]}} for r in ROWS]}}
    path = tmp_path / "gens.json"
    path.write_text(json.dumps(doc))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, "--records", "results.tasks", "--question-field", "q.text",
                             "--gold-field", "gold", "--response-field", "out.solution")
    assert code == 0, err
    assert res["n_questions"] == 3 and res["em_full"] == pytest.approx(2 / 3)
    # a top-level list needs no --records
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(ROWS))
    code, res2, err = _import(cli, db, flat)
    assert code == 0 and res2["em_full"] == pytest.approx(2 / 3)
    # an object without --records names what to do; a bad item names its place
    code, _, err = _import(cli, db, path)
    assert code == 2 and "gens.json" in err and "--records" in err and "meta, results" in err
    doc["results"]["tasks"][1]["q"] = {"txt": "x"}
    path.write_text(json.dumps(doc))
    code, _, err = _import(cli, tmp_path / "t.duckdb", path, "--records", "results.tasks", "--question-field",
                           "q.text", "--gold-field", "gold", "--response-field", "out.solution")
    assert code == 2 and "results.tasks[1].q.text" in err and "missing" in err
    assert not (tmp_path / "t.duckdb").exists() or Store(tmp_path / "t.duckdb").runs() == []


def test_csv_and_parquet_with_the_same_mapping(tmp_path, cli):
    db = tmp_path / "s.duckdb"
    csv = tmp_path / "gens.csv"
    import csv as csvmod
    with open(csv, "w", newline="") as fh:
        w = csvmod.DictWriter(fh, ["question", "answer", "response"])
        w.writeheader()
        w.writerows(ROWS)
    code, res, err = _import(cli, db, csv)
    assert code == 0, err
    assert res["em_full"] == pytest.approx(2 / 3) and res["n_questions"] == 3
    par = tmp_path / "gens.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": r["question"], "gold": int(r["answer"]), "completion": r["response"]}
                                         for r in ROWS]), par)
    code, res, err = _import(cli, db, par, "--question-field", "prompt", "--gold-field", "gold",
                             "--response-field", "completion")
    assert code == 0, err
    assert res["em_full"] == pytest.approx(2 / 3)
    # errors: the CSV's line, the Parquet's row
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer,response\nq1,1,\\boxed{1}\n  ,2,\\boxed{2}\n")
    code, _, err = _import(cli, tmp_path / "b.duckdb", bad)
    assert code == 2 and "bad.csv, line 3" in err and "question" in err and "blank" in err
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["1", "no number"], "response": ["1", "2"]}),
                   tmp_path / "bad.parquet")
    code, _, err = _import(cli, tmp_path / "b.duckdb", tmp_path / "bad.parquet")
    assert code == 2 and "row 1.answer" in err and "holds no number" in err


def test_openai_chat_logs_with_reasoning(tmp_path, cli):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, "--format", "openai-chat", "--every", "4")
    assert code == 0, err
    assert res["n_questions"] == 4 and res["em_full"] == pytest.approx(3 / 4)
    store = Store(db)
    tr = {t["question"]: t for t in store.traces(res["run_id"], with_text=True).to_pylist()}
    assert tr["Calculate 20 - 3."]["text"].startswith("<think>20 - 3 is 17.")
    assert tr["Calculate 6 * 7."]["final_norm"] == "42"          # from the answer part, not the thinking's 41
    assert tr["Calculate 9 + 9."]["final_norm"] == "19" and tr["Calculate 9 + 9."]["em"] == 0.0
    ck = store.checkpoints(res["run_id"]).to_pandas().merge(
        store.traces(res["run_id"], with_text=True).to_pandas()[["question_id", "question", "text"]], on="question_id")
    for q, g in ck.groupby("question"):
        text = g.text.iloc[0]
        if "</think>" not in text:
            continue
        inner = g[g.kind != "final"]
        assert len(inner) >= 1
        # every checkpoint but the last lies in the thinking part; the last is the trace's end
        think_tokens = len(__import__("analysis.ingest.textckpt", fromlist=["x"]).token_starts_batch(
            [text[:text.index("</think>")]])[0])
        assert (inner.pos <= think_tokens).all() and g.pos.iloc[-1] > think_tokens
    assert json.loads(json.dumps(store.run(res["run_id"])["config"]))["thinking_traces"] == 3


def test_openai_chat_bad_records(tmp_path, cli):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CHAT[0]) + "\n" + json.dumps({"request": {}, "gold": "1"}) + "\n")
    code, _, err = _import(cli, tmp_path / "s.duckdb", path, "--format", "openai-chat")
    assert code == 2 and "chat.jsonl, line 2" in err and "choices" in err
    alone = {"choices": [{"message": {"content": "\\boxed{3}"}}], "gold": "3"}
    path.write_text(json.dumps(alone) + "\n")
    code, _, err = _import(cli, tmp_path / "s.duckdb", path, "--format", "openai-chat")
    assert code == 2 and "line 1" in err and "--question-field" in err
    path.write_text(json.dumps({**alone, "meta": {"q": "Calculate 1 + 2."}}) + "\n")
    code, res, err = _import(cli, tmp_path / "s.duckdb", path, "--format", "openai-chat", "--question-field", "meta.q")
    assert code == 0 and res["em_full"] == 1.0, err


def test_token_counts_in_the_models_own_tokenizer(tmp_path, cli):
    from analysis.backend.tiny import build_tokenizer
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = [{"question": "q1", "answer": "4", "response": "2 + 2 = 4 so 4"}]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, "--tokenizer", tmp_path / "tok", "--every", "2")
    assert code == 0, err
    store = Store(db)
    run = store.run(res["run_id"])
    assert run["config"]["checkpoints"]["tokens"] == f"tokenizer:{tmp_path / 'tok'}"
    n = store.traces(res["run_id"]).to_pylist()[0]["n_tokens"]
    assert n == len(tok(rows[0]["response"], add_special_tokens=False)["input_ids"])
    code, plain, _ = _import(cli, db, path, "--every", "2")
    assert Store(db).run(plain["run_id"])["config"]["checkpoints"]["tokens"] == "word-pieces"   # approximate
    code, _, err = _import(cli, db, path, "--tokenizer", tmp_path / "nowhere")
    assert code == 2 and "tokenizer" in err


LONG = [  # Dynasor-style: one row per probe
    {"qid": "a", "question": "Calculate 7 + 5.", "gold": "12", "tokens": 32, "probe": "11", "conf": 0.4, "ok": False},
    {"qid": "a", "question": "Calculate 7 + 5.", "gold": "12", "tokens": 64, "probe": "12", "conf": 0.9, "ok": True},
    {"qid": "b", "question": "Calculate 3 * 3.", "gold": "9", "tokens": 32, "probe": "9", "conf": 0.95, "ok": True},
    {"qid": "a", "question": "Calculate 7 + 5.", "gold": "12", "tokens": 96, "probe": "12", "conf": 0.97, "ok": True},
    {"qid": "b", "question": "Calculate 3 * 3.", "gold": "9", "tokens": 64, "probe": "6", "conf": 0.5, "ok": False},
]
CK_ARGS = ["--format", "checkpoints", "--id-field", "qid", "--gold-field", "gold", "--position-field", "tokens",
           "--answer-field", "probe", "--signal", "p_mean=conf"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_checkpoint_exports_in_long_form(tmp_path, cli, kind):
    path = tmp_path / f"probes.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in LONG))
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(LONG), path)
    else:
        import pyarrow.csv as pcsv
        pcsv.write_csv(pa.Table.from_pylist(LONG), path)
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, *CK_ARGS)
    assert code == 0, err
    assert res["n_questions"] == 2 and res["n_checkpoints"] == 5 and res["shape"] == "long"
    t = RunTable.from_store(Store(db), res["run_id"])
    assert list(t.question_ids) == ["a", "b"] and list(t.lengths) == [3, 2]
    assert t.pos[0, :3].tolist() == [32, 64, 96] and t.answers[0, :3].tolist() == ["11", "12", "12"]
    assert t.em[0, :3].tolist() == [0, 1, 1] and t.full_em.tolist() == [1.0, 0.0]
    assert t.has_signal("p_mean") and not t.has_signal("entropy")
    assert t.p_mean[0, 0] == pytest.approx(0.4) and t.p_mean[0, 2] != t.p_mean[0, 2]   # the final needs no probe
    # the tool's own labels instead of the grader; a length past the last probe adds the final there
    lab = [{**r, "ok": not r["ok"], "len": 120} for r in LONG]
    path2 = tmp_path / "labels.jsonl"
    path2.write_text("".join(json.dumps(r) + "\n" for r in lab))
    code, res2, err = _import(cli, db, path2, *CK_ARGS, "--correct-field", "ok", "--length-field", "len")
    assert code == 0, err
    t2 = RunTable.from_store(Store(db), res2["run_id"])
    assert list(t2.lengths) == [4, 3] and t2.pos[0, 3] == 120 and t2.answers[0, 3] == "12"
    assert t2.em[0, :3].tolist() == [1, 0, 0] and res2["em_source"] == "the file's field 'ok'"
    # no text: where a checkpoint cuts it is not known (the Questions page then cuts in proportion to tokens)
    assert set(Store(db).checkpoints(res2["run_id"]).column("char_pos").to_pylist()) == {None}


def test_checkpoint_exports_of_math_answers(tmp_path, cli):
    """MATH-style LaTeX golds and trial answers, compared as mathematical objects (the store is opened only
    once they are scored)."""
    rows = [{"qid": "a", "question": "Solve 3x = 14.", "gold": "\\frac{14}{3}", "tokens": 32, "probe": "4"},
            {"qid": "a", "question": "Solve 3x = 14.", "gold": "\\frac{14}{3}", "tokens": 64, "probe": "\\dfrac{14}{3}"},
            {"qid": "b", "question": "Polar form of (0, 3)?", "gold": "\\left( 3, \\frac{\\pi}{2} \\right)",
             "tokens": 32, "probe": "(3, \\frac{\\pi}{2})"},
            {"qid": "b", "question": "Polar form of (0, 3)?", "gold": "\\left( 3, \\frac{\\pi}{2} \\right)",
             "tokens": 64, "probe": "(3, \\frac{\\pi}{3})"}]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, *CK_ARGS[:-2], "--answer-type", "math")
    assert code == 0, err
    t = RunTable.from_store(Store(db), res["run_id"])
    assert t.em[0, :2].tolist() == [0, 1] and t.em[1, :2].tolist() == [1, 0] and res["em_full"] == 0.5


def test_checkpoint_exports_know_where_they_cut_the_text(tmp_path, cli):
    """With the trace's text the final checkpoint cuts at its end; with the tool's tokenizer too, every
    checkpoint cuts at the start of the token at its position."""
    from analysis.backend.tiny import build_tokenizer
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    text = {"a": "7 + 5 is 11. Wait, 7 + 5 = 12", "b": "3 * 3 = 9 or 6"}
    rows = [{**r, "text": text[r["qid"]], "tokens": r["tokens"] // 8} for r in LONG]
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, *CK_ARGS, "--response-field", "text")
    assert code == 0, err
    s = Store(db)
    assert s.trace(res["run_id"], "a")["char_pos"] == [None, None, len(text["a"])]
    code, res, err = _import(cli, db, path, *CK_ARGS, "--response-field", "text", "--tokenizer", tmp_path / "tok")
    assert code == 0, err
    for q, positions in (("a", [4, 8, 12]), ("b", [4, 8])):
        cuts = s.trace(res["run_id"], q)["char_pos"]
        ids = tok(text[q], add_special_tokens=False)["input_ids"]
        assert cuts[:-1] == [len(tok.decode(ids[:p])) for p in positions[:-1]] and cuts[-1] == len(text[q])


def test_checkpoint_exports_with_the_models_final_answer(tmp_path, cli):
    """A production log has the model's own answer at the end, which can differ from its last probe's. Before,
    the checkpoints format had no field for it: the final checkpoint answered what the last probe answered, so EM
    at full length was wrong (a new user's log: 1.000 where it was 0.906). --final-answer-field gives it."""
    doc = [{"id": "a", "question": "Calculate 7 + 5.", "gold": "12", "positions": [32, 64], "answers": ["12", "12"],
            "len": 120, "final": "13"},                     # changes its answer after the last probe: wrong
           {"id": "b", "question": "Calculate 3 * 3.", "gold": "9", "positions": [32, 64], "answers": ["6", "8"],
            "len": 64, "final": 9},                         # its last probe is at its end: the final replaces it
           {"id": "c", "question": "Calculate 2 + 2.", "gold": "4", "positions": [32], "answers": ["4"], "len": 50}]
    path = tmp_path / "prod.json"
    path.write_text(json.dumps(doc))
    db = tmp_path / "s.duckdb"
    args = ["--format", "checkpoints", "--id-field", "id", "--gold-field", "gold", "--position-field", "positions",
            "--answer-field", "answers", "--length-field", "len"]
    code, plain, err = _import(cli, db, path, *args)
    assert code == 0, err
    assert plain["em_full"] == pytest.approx(2 / 3)                    # the last probes' answers: a right, b wrong
    code, res, err = _import(cli, db, path, *args, "--final-answer-field", "final")
    assert code == 0, err
    assert res["run_id"] != plain["run_id"] and res["em_full"] == pytest.approx(2 / 3)    # a wrong, b right, c kept
    t = RunTable.from_store(Store(db), res["run_id"])
    assert t.answers[0, :3].tolist() == ["12", "12", "13"] and t.pos[0, 2] == 120 and t.em[0, :3].tolist() == [1, 1, 0]
    assert t.answers[1, :2].tolist() == ["6", "9"] and t.full_em.tolist() == [0.0, 1.0, 1.0]
    assert Store(db).run(plain["run_id"])["config"]["fields"].get("final_answer") is None     # (ids kept)
    # long form: a log may carry the final answer on the question's last row only
    rows = [{"qid": "a", "question": "Calculate 7 + 5.", "gold": "12", "tokens": 32, "probe": "12", "len": 120},
            {"qid": "a", "question": "Calculate 7 + 5.", "gold": "12", "tokens": 64, "probe": "12", "len": 120,
             "final": "13"}]
    lp = tmp_path / "long.jsonl"
    lp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    long_args = ["--format", "checkpoints", "--id-field", "qid", "--gold-field", "gold", "--position-field", "tokens",
                 "--answer-field", "probe", "--length-field", "len", "--final-answer-field", "final"]
    code, res, err = _import(cli, tmp_path / "l.duckdb", lp, *long_args)
    assert code == 0 and res["em_full"] == 0.0, (err, res)
    rows[0]["final"] = "12"                                  # another final answer on another row: refused
    lp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _import(cli, tmp_path / "l2.duckdb", lp, *long_args)
    assert code == 2 and "line 2, field 'final': question 'a' has two final answers: '12' and '13'" in err, err
    doc[0]["final"] = {"text": "13"}
    path.write_text(json.dumps(doc))
    code, _, err = _import(cli, tmp_path / "b.duckdb", path, *args, "--final-answer-field", "final")
    assert code == 2 and ".final': " in err and "where the other records have a" in err, err    # names the field
    code, _, err = _import(cli, tmp_path / "b.duckdb", path, *args, "--final-answer-field", "final",
                           "--correct-field", "ok")
    assert code == 2 and "--final-answer-field with --correct-field" in err, err
    assert not (tmp_path / "b.duckdb").exists()


def test_checkpoint_exports_in_wide_form(tmp_path, cli):
    doc = [{"id": "a", "question": "Calculate 7 + 5.", "gold": "12", "positions": [32, 64, 96],
            "answers": ["11", "12", "12"], "p": [0.4, 0.9, 0.97], "H": [1.2, 0.3, 0.1]},
           {"id": "b", "question": "Calculate 3 * 3.", "gold": "9", "positions": [32, 64], "answers": ["9", None],
            "p": [0.95, 0.5], "H": [0.2, 0.9]}]
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(doc))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, "--format", "checkpoints", "--id-field", "id", "--gold-field", "gold",
                             "--position-field", "positions", "--answer-field", "answers", "--signal", "p_mean=p",
                             "--signal", "entropy=H")
    assert code == 0, err
    assert res["shape"] == "wide" and res["n_checkpoints"] == 5 and res["em_full"] == 0.5
    t = RunTable.from_store(Store(db), res["run_id"])
    assert t.has_signal("entropy") and t.entropy[0, 1] == pytest.approx(0.3) and t.answers[1, 1] == ""
    # the checkpoints are the file's: the interval is read from their positions, not the import's --every (32)
    doc64 = [{**d, "positions": [2 * p for p in d["positions"]]} for d in doc]
    path.write_text(json.dumps(doc64))
    code, res64, err = _import(cli, db, path, "--format", "checkpoints", "--id-field", "id", "--gold-field", "gold",
                               "--position-field", "positions", "--answer-field", "answers")
    assert code == 0, err
    assert Store(db).run(res64["run_id"])["config"]["checkpoints"]["every"] == 32       # (unused for these)
    assert RunTable.from_store(Store(db), res64["run_id"]).interval == 64
    doc[1]["p"] = [0.95]
    path.write_text(json.dumps(doc))
    code, _, err = _import(cli, tmp_path / "b.duckdb", path, "--format", "checkpoints", "--id-field", "id",
                           "--gold-field", "gold", "--position-field", "positions", "--answer-field", "answers",
                           "--signal", "p_mean=p")
    assert code == 2 and "wide.json" in err and "[1].p" in err and "1 values where the positions have 2" in err


@pytest.mark.parametrize("change,args,message", [
    (lambda r: r[4].update(tokens=32), [], "two checkpoints at position 32"),
    (lambda r: r[1].update(tokens="soon"), [], "line 2, field 'tokens': 'soon' is a str"),
    (lambda r: r[1].update(tokens=-3), [], "whole number of tokens"),
    (lambda r: None, ["--signal", "confidence=conf"], "unknown signal 'confidence'"),
    (lambda r: None, ["--signal", "p_mean"], "NAME=FIELD"),
    (lambda r: r[2].pop("qid"), [], "line 3"),
    (lambda r: r[0].update(ok="maybe"), ["--correct-field", "ok"], "line 1, field 'ok': 'maybe' is a str"),
])
def test_bad_checkpoint_exports(tmp_path, cli, change, args, message):
    rows = [dict(r) for r in LONG]
    change(rows)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _import(cli, tmp_path / "s.duckdb", path, *CK_ARGS, *args)
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_a_bad_export_leaves_the_store_as_it_was(tmp_path, cli):
    """A checkpoint export is checked whole (its signals and its production stops included) before the store
    is opened: a bad value leaves no run, no question and no store file behind, and the error names the row
    or line."""
    db = tmp_path / "s.duckdb"
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in LONG))
    code, res, err = _import(cli, db, good, *CK_ARGS)
    assert code == 0, err
    rows = [{**r, "qid": r["qid"] + "2", "conf": str(r["conf"]), "stop": 32} for r in LONG]
    rows[3]["conf"] = "high"
    bad_signal = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad_signal)
    rows[3]["conf"], rows[2]["stop"] = "0.5", -1
    bad_stop = tmp_path / "stop.jsonl"
    bad_stop.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path, args, message in ((bad_signal, (), "row 3.conf"), (bad_stop, ("--stop-field", "stop"), "line 3")):
        for target in (db, tmp_path / "new" / "s.duckdb"):
            code, _, err = _import(cli, target, path, *CK_ARGS, *args)
            assert code == 2 and path.name in err and message in err, err
    assert "question 'b2': the stop position must be a non-negative integer" in err
    assert not (tmp_path / "new").exists()
    s = Store(db)
    assert [r["id"] for r in s.runs()] == [res["run_id"]]
    with s.connect() as con:
        assert sorted(r[0] for r in con.execute("SELECT question_id FROM questions").fetchall()) == ["a", "b"]
    code, again, err = _import(cli, db, good, *CK_ARGS)     # the same file again: the run it made, found
    assert code == 0 and again["run_id"] == res["run_id"] and again["created"] is False, err


def test_an_import_interrupted_while_it_writes_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C after the run and its questions were written (as the rows go in) rolls the transaction back;
    a store the import made is removed again."""
    from analysis.ingest.importer import ImportSpec, import_generations
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LONG))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Store, "put_results", interrupted)
    spec = ImportSpec(path=str(path), model="m", dataset="d", fmt="checkpoints", id_field="qid", gold_field="gold",
                      position_field="tokens", answer_field="probe")
    existing = Store(tmp_path / "s.duckdb")
    for target in (existing, tmp_path / "new" / "s.duckdb"):
        with pytest.raises(KeyboardInterrupt):
            import_generations(target, spec, show_progress=False)
    assert not (tmp_path / "new").exists()
    with existing.connect() as con:
        assert [con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "questions")] == [0, 0]


def test_preview_reads_before_anything_is_written(tmp_path):
    from analysis.ingest.importer import ImportSpec, preview
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT[:2]) + json.dumps({"gold": "1"}) + "\n")
    pv = preview(ImportSpec(path=str(path), model="m", dataset="d", fmt="openai-chat", question_field=None,
                            gold_field="gold"))
    assert pv["n_records"] == 3 and {"request", "response", "gold"} <= set(pv["fields"])
    first, _, bad = pv["rows"]
    assert first["question"] == "Calculate 20 - 3." and first["gold"] == "17" and first["response"].startswith("<think>")
    assert "line 3" in bad["error"] and "choices" in bad["error"]
    long = tmp_path / "probes.jsonl"
    long.write_text("".join(json.dumps(r) + "\n" for r in LONG))
    spec = dict(path=str(long), model="m", dataset="d", fmt="checkpoints", id_field="qid", position_field="tokens",
                answer_field="probe", signals={"p_mean": "conf"})
    pv = preview(ImportSpec(**spec, gold_field="gold"))
    assert pv["rows"][0] == {"record": 1, "id": "a", "question": "Calculate 7 + 5.", "gold": "12", "position": 32,
                             "answer": "11", "p_mean": 0.4}
    pv = preview(ImportSpec(**spec))        # the gold field left at its default, which these records lack
    assert "field 'answer'" in pv["rows"][0]["error"]
    assert not list(tmp_path.glob("*.duckdb"))


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_the_preview_reads_only_the_first_records(tmp_path, kind):
    """The Runs page previews an upload at once: a 50,000-row Parquet file whose one 2 KB response Parquet stores
    once (100 MB of Python strings had the preview read it whole) is counted from its footer and only its
    first rows decoded; a JSONL file's later lines are counted, not parsed."""
    import tracemalloc
    import pyarrow as pa
    import pyarrow.parquet as pq
    from analysis.ingest.importer import ImportSpec, preview
    n, response = 50_000, "Let me think. " * 140 + "#### 4"
    path = tmp_path / f"many.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"question": [f"What is {i} + 2?" for i in range(n)], "answer": ["4"] * n,
                                 "response": [response] * n}), path)
    else:
        line = json.dumps({"question": "What is 2 + 2?", "answer": "4", "response": response[:200]}) + "\n"
        path.write_text(line * n)
    tracemalloc.start()
    try:
        pv = preview(ImportSpec(path=str(path), model="m", dataset="d"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pv["n_records"] == n and len(pv["rows"]) == 5 and pv["rows"][4]["gold"] == "4"
    assert peak < 5 * 1024 * 1024, peak          # Python objects for five records, not 50,000


@pytest.mark.parametrize("content,args,message", [
    (None, ["--every", "0"], "--every must be a positive number of tokens"),
    (None, ["--every", "-5"], "--every must be a positive number of tokens"),
    (None, ["--max-line-mb", "-1"], "--max-line-mb must be positive"),
    (json.dumps({**ROWS[0], "question": "   "}) + "\n", [], "question is blank"),
])
def test_bad_options_and_files_are_refused_before_anything_is_written(tmp_path, cli, content, args, message):
    path = tmp_path / "g.jsonl"
    path.write_text(content if content is not None else "".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    code, _, err = _import(cli, tmp_path / "s.duckdb", path, *args)
    assert code == 2 and message in err, err


def test_a_directory_is_not_a_file(tmp_path, cli):
    code, _, err = _import(cli, tmp_path / "s.duckdb", tmp_path)
    assert code == 2 and "is a directory" in err


def test_your_mechanism_comes_in_with_the_import(tmp_path, cli):
    """--stop-field / --stopped-answer-field: where the production stopper stopped, and what it answered."""
    from analysis.evaluate.incumbent import incumbent_outcome
    rows = [{**r, "stopped_at": 6, "said": a} for r, a in zip(ROWS, ["-77", "36", None])]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    code, res, err = _import(cli, db, path, "--every", "4", "--stop-field", "stopped_at",
                             "--stopped-answer-field", "said")
    assert code == 0, err
    t = RunTable.from_store(Store(db), res["run_id"])
    o = incumbent_outcome(t)
    assert o.stop_pos.tolist() == [6, 6, 6] and o.em.tolist()[:2] == [1.0, 1.0]   # answered right, stopping early
    # emitted: the stop plus the answer written after it (the trial answer's tokens at the stop's checkpoint)
    assert o.emitted.tolist() == (6 + (t.emitted - t.pos)[t.rows, o.stop]).tolist() and (o.emitted > 6).all()
    long = tmp_path / "probes.jsonl"
    long.write_text("".join(json.dumps({**r, "stop": 64}) + "\n" for r in LONG))
    code, res, err = _import(cli, db, long, *CK_ARGS, "--stop-field", "stop")
    assert code == 0, err
    o = incumbent_outcome(RunTable.from_store(Store(db), res["run_id"]))
    # a stops at 64 before its end and answers "12" (1 token) after; b's 64 is its end: nothing after it
    assert o.emitted.tolist() == [64 + 1, 64] and o.em.tolist() == [1.0, 0.0]
    rows[1]["stopped_at"] = -1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _import(cli, tmp_path / "b.duckdb", path, "--stop-field", "stopped_at")
    assert code == 2 and "line 2" in err and "stopped_at" in err, err
