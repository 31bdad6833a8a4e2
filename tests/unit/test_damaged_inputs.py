"""Inputs that never crash (issue 21): import options and files, a trace with too many checkpoints, a model
folder without a tokenizer. Each answer is our error naming the file (a message, exit code 2, no traceback),
and a failed import leaves no store and no folder behind. (Damaged stores: test_damaged_stores.py.)"""
import json
import re
import shutil

import pytest

from analysis.core.errors import StoplineError
from analysis.core.store import Store
from tests.helpers import FIXTURES, ROOT

OK = [{"question": "Calculate 7 + -84.", "answer": "-77", "response": "7 + -84 = -77. So \\boxed{-77}"},
      {"question": "Calculate 100 - 1.", "answer": "99", "response": "That is 99.\n\n#### 99"}]


def _jsonl(path, rows, prefix=""):
    path.write_text(prefix + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _import(cli, db, path, *args):
    return cli("import", path, "--model", "m", "--dataset", "d", "--db", db, *args)


# --- import options and files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--every", "0"], "--every must be a positive number of tokens, not 0"),
    (["--every", "-5"], "--every must be a positive number of tokens, not -5"),
    (["--max-line-mb", "-1"], "--max-line-mb must be positive"),
    (["--max-line-mb", "0"], "--max-line-mb must be positive"),
])
@pytest.mark.parametrize("fmt", ["jsonl", "checkpoints"])
def test_bad_import_options_are_refused_and_make_no_store(tmp_path, cli, args, message, fmt):
    db = tmp_path / "new" / "folder" / "s.duckdb"
    extra = ["--format", "checkpoints", "--position-field", "p", "--answer-field", "a"] if fmt == "checkpoints" else []
    code, _, err = _import(cli, db, _jsonl(tmp_path / "ok.jsonl", OK), *extra, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("content,message", [
    ([OK[0], {"question": "q", "answer": "1"}], "line 2"),                       # a bad record far in
    ([OK[0], {**OK[1], "question": " \t "}], "question is blank"),
    ([], "no records"),
])
def test_a_failed_import_leaves_no_store_and_no_folder(tmp_path, cli, content, message):
    db = tmp_path / "a" / "b" / "s.duckdb"
    code, _, err = _import(cli, db, _jsonl(tmp_path / "bad.jsonl", content))
    assert code == 2 and message in err, err
    assert not (tmp_path / "a").exists()


def test_a_failed_import_into_an_existing_store_keeps_it(tmp_path, cli):
    db = tmp_path / "s.duckdb"
    assert _import(cli, db, _jsonl(tmp_path / "ok.jsonl", OK))[0] == 0
    code, _, err = _import(cli, db, _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}]))
    assert code == 2 and db.exists() and len(Store(db).runs()) == 1


def test_a_directory_as_the_input_is_called_a_directory(tmp_path, cli):
    (tmp_path / "gens.jsonl").mkdir()
    for args in (["--format", "jsonl"], ["--format", "checkpoints", "--position-field", "p", "--answer-field", "a"]):
        code, _, err = _import(cli, tmp_path / "s.duckdb", tmp_path / "gens.jsonl", *args)
        assert code == 2 and "is a directory, not a file" in err and "not found" not in err, err
    from analysis.ingest.datasets import load_dataset
    for kind in ("jsonl", "csv", "gsm8k"):
        with pytest.raises(StoplineError, match="is a directory, not a file"):
            load_dataset(f"{kind}:{tmp_path / 'gens.jsonl'}")
    assert not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("question,message", [("   ", "question is blank"), ("\n\t", "question is blank"),
                                              (None, "question is missing"), (7, "question must be text, got int")])
def test_a_blank_question_is_called_blank(tmp_path, cli, question, message):
    rows = [OK[0], {**OK[1], "question": question}]
    code, _, err = _import(cli, tmp_path / "s.duckdb", _jsonl(tmp_path / "g.jsonl", rows))
    assert code == 2 and message in err and "line 2" in err, err
    ck = [{"qid": "a", "question": question, "answer": "1", "p": 4, "a": "1"}]
    code, _, err = _import(cli, tmp_path / "s.duckdb", _jsonl(tmp_path / "ck.jsonl", ck), "--format", "checkpoints",
                           "--id-field", "qid", "--position-field", "p", "--answer-field", "a")
    assert code == 2 and message in err, err
    from analysis.ingest.datasets import load_dataset
    with pytest.raises(StoplineError, match=message):
        load_dataset(f"jsonl:{tmp_path / 'g.jsonl'}")


@pytest.mark.parametrize("name,content,expect", [
    # a record cut short: the parser's own position is "line 2 column 1" of the record, not the file's line 2
    ("g.jsonl", json.dumps(OK[0]) + '\n{"question": "q",\n' + json.dumps(OK[1]) + "\n",
     "g.jsonl, line 2: invalid JSON: the line ends inside a record (unexpected end of data)"),
    ("g.jsonl", json.dumps(OK[0]) + '\n\n{"question" "q"}\n',
     "g.jsonl, line 3: invalid JSON at character 13 of the line"),
    ("g.json", "[" + json.dumps(OK[0]) + ",\n  {oops}]", "g.json, line 2: invalid JSON at column 4"),
])
def test_invalid_json_names_one_line_the_files(tmp_path, cli, name, content, expect):
    (tmp_path / name).write_text(content, encoding="utf-8")
    code, _, err = _import(cli, tmp_path / "s.duckdb", tmp_path / name)
    assert code == 2 and expect in err, err
    line = re.search(r"line \d+", expect).group()
    assert re.findall(r"line \d+", err) == [line] and "column 1" not in err and "char " not in err, err


def test_a_dataset_file_and_a_decision_log_name_invalid_json_the_same_way(tmp_path):
    from analysis.ingest.datasets import load_dataset
    from analysis.production.monitor import read_log
    bad = tmp_path / "q.jsonl"
    first = json.dumps({"type": "header", "question": "q", "answer": "1"})      # a record both readers take
    bad.write_text(first + '\n{"question": "q",\n', encoding="utf-8")
    for call in (lambda: load_dataset(f"jsonl:{bad}"), lambda: read_log(bad)):
        with pytest.raises(StoplineError) as e:
            call()
        assert "q.jsonl, line 2: invalid JSON: the line ends inside a record" in str(e.value)
        assert re.findall(r"line \d+", str(e.value)) == ["line 2"], str(e.value)
    for body, message in (('{"a": ' + "1" * 5000 + "}", "invalid JSON (Exceeds the limit (4300 digits)"),
                          ("[" * 100_000, "invalid JSON (maximum recursion depth exceeded")):
        bad.write_text(body + "\n", encoding="utf-8")
        for call in (lambda: load_dataset(f"jsonl:{bad}"), lambda: read_log(bad)):
            with pytest.raises(StoplineError, match="line 1: " + re.escape(message)):
                call()


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, cli, kind):
    path = tmp_path / f"g.{kind}"
    if kind == "jsonl":
        _jsonl(path, OK, prefix="\ufeff")
    elif kind == "json":
        path.write_text("\ufeff" + json.dumps(OK), encoding="utf-8")
    else:
        import csv
        with open(path, "w", newline="", encoding="utf-8-sig") as fh:    # Excel's "CSV UTF-8"
            w = csv.DictWriter(fh, fieldnames=list(OK[0]))
            w.writeheader()
            w.writerows(OK)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    code, out, err = _import(cli, tmp_path / "s.duckdb", path, "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n_questions"] == 2
    if kind == "jsonl":
        from analysis.ingest.datasets import load_dataset
        assert load_dataset(f"jsonl:{path}").questions[0].text == OK[0]["question"]


# --- files that expand when read: caps on what an uploaded file may make ------------------------------------
RESPONSE = "Let me think. " * 140 + "#### 4"          # 2 KB


def _parquet(path, n=2_000, response=RESPONSE, columns=None):
    """The review's decompression bomb, small: one response on every row, which Parquet's dictionary encoding
    stores once (a 200,000-row version is 45 KB on disk and 400 MB once read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = columns or {"question": pa.array(["What is 2 + 2?"] * n), "answer": pa.array(["4"] * n),
                       "response": pa.array([response] * n)}
    pq.write_table(pa.table(cols), path, compression="zstd")
    return path


def _limits(records=1_000_000, decoded_mb=1.0):
    from analysis.ingest.sources import Limits
    return Limits(records=records, decoded_mb=decoded_mb, what="a file imported from the dashboard",
                  hint="import it with `python -m analysis import`")


def _wide_csv(path):
    path.write_text(",".join(f"c{i}" for i in range(1000)) + "\n" + ("," * 999 + "\n") * 100)   # 100k empty cells
    return path


def _flba(path):
    import pyarrow as pa
    return _parquet(path, columns={"question": pa.array(["q"] * 2000), "answer": pa.array(["4"] * 2000),
                                   "response": pa.array([b"x" * 2048] * 2000, pa.binary(2048))})


def _nested(path):
    import pyarrow as pa
    return _parquet(path, columns={"question": pa.array(["q"] * 3), "answer": pa.array(["4"] * 3),
                                   "response": pa.array([[RESPONSE] * 1000] * 3)})


def _compressed_page(path):
    return _parquet(path, n=1, response="0" * 3_000_000)          # a 3 MB value, a few KB compressed


@pytest.mark.parametrize("make,limits,message", [
    (lambda p: _parquet(p / "bomb.parquet"), _limits(),
     r"bomb.parquet: holds 3.9 MB of data once decoded \(\d+ KB on disk\); a file imported from the dashboard may "
     r"hold at most 1 MB"),
    (lambda p: _parquet(p / "rows.parquet", response="r"), _limits(records=1_500),
     "rows.parquet: holds 2,000 rows; a file imported from the dashboard may hold at most 1,500"),
    (lambda p: _nested(p / "nested.parquet"), _limits(), "nested.parquet: holds 5.7 MB of data once decoded"),
    (lambda p: _flba(p / "flba.parquet"), _limits(), "flba.parquet: holds at least 4.0 MB of data once decoded"),
    (lambda p: _compressed_page(p / "page.parquet"), _limits(), "page.parquet: holds at least 2.9 MB of data once"),
    (lambda p: _wide_csv(p / "wide.csv"), _limits(), r"wide.csv: holds 1.9 MB of data once decoded \(0.1 MB on disk\)"),
    (lambda p: _jsonl(p / "many.jsonl", OK * 3), _limits(records=5),
     "many.jsonl: holds (6|more than 5) records; a file imported from the dashboard may hold at most 5"),
    (lambda p: p / "many.json" if (p / "many.json").write_text(json.dumps(OK * 3)) else None, _limits(records=5),
     "many.json: holds 6 records; a file imported from the dashboard may hold at most 5"),
], ids=["dictionary", "rows", "nested", "fixed-length", "page", "wide-csv", "jsonl", "json"])
@pytest.mark.parametrize("fmt", ["jsonl", "checkpoints"])
def test_a_file_past_the_upload_caps_is_refused_naming_the_figure(tmp_path, make, limits, message, fmt):
    """Before its data is expanded (the preview's footer check or the import's), and with nothing written."""
    from analysis.ingest.importer import ImportSpec, import_generations, preview
    path = make(tmp_path)
    extra = dict(fmt="checkpoints", id_field="question", gold_field="answer", position_field="answer",
                 answer_field="answer") if fmt == "checkpoints" else {}
    spec = ImportSpec(path=str(path), model="m", dataset="d", limits=limits, **extra)
    with pytest.raises(StoplineError) as e:
        preview(spec)
        import_generations(tmp_path / "new" / "s.duckdb", spec, show_progress=False)
    assert re.search(message, str(e.value)), str(e.value)
    assert "hint: import it with `python -m analysis import`" in str(e.value)
    assert not (tmp_path / "new").exists()


def test_the_command_line_reads_the_same_file_whole(tmp_path, cli):
    """Its user's own file on their own machine: no cap (an upload's caps are the dashboard's)."""
    code, out, err = _import(cli, tmp_path / "s.duckdb", _parquet(tmp_path / "bomb.parquet"), "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n_questions"] == 2_000


def test_a_capped_read_gives_the_records_an_uncapped_read_gives(tmp_path):
    """Strings read as dictionaries (nested in lists, structs and maps too) are expanded to the same values."""
    import pyarrow as pa
    from analysis.ingest.sources import head, read
    path = _parquet(tmp_path / "n.parquet", columns={
        "question": pa.array(["q1", "q2", "q1", None]),
        "doc": pa.array([{"question": "Q", "n": 1}, {"question": "R", "n": 2}, None, {"question": "Q", "n": 4}]),
        "resps": pa.array([[["a", "b"]], [["a"]], [], None]),
        "meta": pa.array([[("k", "v")], [], [("k", "w"), ("j", "v")], None], pa.map_(pa.string(), pa.string())),
        "code": pa.array([b"ab", b"cd", b"ab", None], pa.binary(2)), "n": pa.array([1, 2, 3, 4])})
    whole, sha = read(str(path))
    capped, sha2 = read(str(path), limits=_limits())
    assert [r for _, r in capped] == [r for _, r in whole] and sha == sha2
    assert whole[2][1] == {"question": "q1", "doc": None, "resps": [], "meta": [("k", "w"), ("j", "v")],
                           "code": b"ab", "n": 3}
    first, count = head(str(path), n=2, limits=_limits())
    assert count == 4 and [r for _, r in first] == [r for _, r in whole[:2]]


# --- decision logs and late labels --------------------------------------------------------------------------
def _demo_log(tmp_path, change=None, kind="final"):
    """The bundled serve-demo log with one field of its first champion record of ``kind`` changed; returns the
    file and that record's line."""
    recs = [json.loads(x) for x in (DEMO_LOGS / "serve-demo.jsonl").read_text().splitlines()]
    i = next(i for i, r in enumerate(recs) if r["type"] == kind and r.get("arm", "champion") == "champion")
    if change:
        recs[i].update(change)
        recs[i] = {k: v for k, v in recs[i].items() if v is not _GONE}
    path = tmp_path / "prod.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, i + 1


_GONE = object()
DEMO_LOGS = ROOT / "data" / "demo-logs"


def test_a_decision_log_with_a_wrongly_typed_field_is_named_by_the_monitor_command(tmp_path, cli):
    """(A ValueError from pandas, deep in the monitor, before.)"""
    log, line = _demo_log(tmp_path, {"tokens_emitted": "lots"})
    code, _, err = cli("monitor", "--log", log)
    assert code == 2 and "Traceback" not in err, err
    assert f"prod.jsonl, line {line}, field 'tokens_emitted': must be a number, not 'lots'" in err, err


@pytest.mark.parametrize("kind,change,message", [
    ("final", {"stopped": "yes"}, "field 'stopped': must be true or false, not 'yes'"),
    ("final", {"tokens_emitted": True}, "field 'tokens_emitted': must be a number, not true"),
    ("final", {"stop_pos": None}, "field 'stop_pos': must be a number, not null"),
    ("final", {"stop_pos": _GONE}, "field 'stop_pos': missing"),
    ("final", {"em": "1"}, "field 'em': must be a number or null, not '1'"),
    ("final", {"request": [1]}, "field 'request': must be a string or a whole number, not [1]"),
    ("final", {"setting": "budget"}, "field 'setting': must be an object, not 'budget'"),
    ("checkpoint", {"ck": 1.5}, "field 'ck': must be a whole number, not 1.5"),
    ("checkpoint", {"pos": float("nan")}, "field 'pos': must be a number, not nan"),
    ("checkpoint", {"p_mean": "high"}, "field 'p_mean': must be a number or null, not 'high'"),
    ("checkpoint", {"request": _GONE}, "field 'request': missing"),
    ("header", {"calibration": "data/demo.duckdb"}, "field 'calibration': must be an object"),
    ("header", {"calibration": {"db": 7, "run": "r"}}, "field 'calibration.db': must be a string, not 7"),
])
def test_a_decision_log_record_is_checked_as_it_is_read(tmp_path, kind, change, message):
    from analysis.production.monitor import read_log
    log, line = _demo_log(tmp_path, change, kind)
    with pytest.raises(StoplineError) as e:
        read_log(log)
    assert f"prod.jsonl, line {line}, {message}" in str(e.value), str(e.value)


def test_the_bundled_log_and_labels_still_read(tmp_path):
    from analysis.production.monitor import read_labels, read_log
    header, ck, fin = read_log(_demo_log(tmp_path)[0])
    assert len(fin) == 40 and len(ck) and header["stopline_log"] == 1
    assert len(read_labels(DEMO_LOGS / "serve-demo.labels.jsonl")) == 40
    bad = tmp_path / "l.jsonl"
    for rec, message in (({"request": "a", "em": "yes"}, "field 'em': must be a number or true or false or null"),
                         ({"request": {"id": 1}, "em": 1}, "field 'request': must be a string or a whole number"),
                         ({"request": "a", "gold": {"x": 1}}, "field 'gold': must be a string or a number")):
        bad.write_text(json.dumps({"request": "b", "em": 1}) + "\n" + json.dumps(rec) + "\n")
        with pytest.raises(StoplineError, match=re.escape(f"l.jsonl, line 2, {message}")):
            read_labels(bad)


# --- a trace with more checkpoints than a SMALLINT holds --------------------------------------------------------
@pytest.mark.parametrize("response,args", [("a " * 40_000 + "so 1", ["--every", "1"]),   # every token
                                           ("x\n\n" * 40_000 + "1", [])],               # 40k blank lines
                         ids=["every-token", "blank-lines"])
def test_too_many_checkpoints_in_a_trace_is_refused_naming_the_line(tmp_path, cli, response, args):
    rows = [OK[0], {"question": "long", "answer": "1", "response": response}]
    db = tmp_path / "new" / "s.duckdb"
    code, _, err = _import(cli, db, _jsonl(tmp_path / "long.jsonl", rows), *args)
    assert code == 2 and "long.jsonl, line 2" in err and "checkpoints; at most 32767 are stored" in err, err
    assert int(err.split(" checkpoints;")[0].rsplit(" ", 1)[1]) > 40_000
    assert "ArrowInvalid" not in err and not (tmp_path / "new").exists()


def test_32767_checkpoints_still_fit(tmp_path, cli):
    rows = [{"question": "long", "answer": "1", "response": "a " * 32_766 + "1"}]
    code, out, err = _import(cli, tmp_path / "s.duckdb", _jsonl(tmp_path / "g.jsonl", rows), "--every", "1", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n_checkpoints"] == 32_767


# --- a model folder without a tokenizer ----------------------------------------------------------------------
def test_a_model_folder_without_a_tokenizer_is_named_before_a_job_starts(tmp_path):
    from analysis.production import jobs
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(StoplineError, match="no tokenizer") as e:
        jobs.start_run(str(folder), "rg:basic_arithmetic", str(tmp_path / "s.duckdb"), where=tmp_path / "jobs")
    assert str(folder) in str(e.value)
    (folder / "config.json").unlink()
    with pytest.raises(StoplineError, match="no config.json"):
        jobs.start_run(str(folder), "rg:basic_arithmetic", str(tmp_path / "s.duckdb"), where=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()


def test_a_job_that_died_of_a_traceback_says_what_was_raised(tmp_path):
    from analysis.production import jobs
    d = tmp_path / "jobs" / "j1"
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"id": "j1", "pid": 2 ** 22 + 1, "model": "m", "dataset": "d"}))
    (d / "log").write_text("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                           "ValueError: Unrecognized model in /m. Should have a `model_type` key\n")
    st = jobs.status("j1", tmp_path / "jobs")
    assert st["state"] == "failed" and "ValueError: Unrecognized model in /m" in st["error"]


def test_a_tokenizer_folder_without_a_tokenizer_makes_no_store(tmp_path, cli):
    (tmp_path / "tok").mkdir()
    db = tmp_path / "new" / "s.duckdb"
    code, _, err = _import(cli, db, _jsonl(tmp_path / "ok.jsonl", OK), "--tokenizer", tmp_path / "tok")
    assert code == 2 and "cannot load the tokenizer" in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_the_fixture_import_still_works(tmp_path, cli):
    db = tmp_path / "deep" / "er" / "s.duckdb"
    code, _, err = cli("import", FIXTURES / "solutions.jsonl", "--response-field", "outputs.solution",
                       "--model", "hand", "--dataset", "hand-gsm", "--db", db)
    assert code == 0 and db.exists(), err
    shutil.rmtree(tmp_path / "deep")
