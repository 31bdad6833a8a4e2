"""Damaged stores and the bundled demo store (issue 21): a zero-byte file, a truncated DuckDB file,
``/dev/null``, a folder, another program's DuckDB file or a file that is no DuckDB file at all (Parquet, CSV,
SQLite) as ``--db`` give our error naming the file (a
message, exit code 2, no traceback, nothing written); the demo store refuses every write, whoever asks,
and only the demo command rewrites it."""
import hashlib
import json
import os

import duckdb
import pytest

from analysis.core import store as store_mod
from analysis.core.errors import StoplineError
from analysis.core.store import DEMO_DB, Store, migrate, stored_version

OK = [{"question": "Calculate 7 + -84.", "answer": "-77", "response": "7 + -84 = -77. So \\boxed{-77}"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- damaged stores ---------------------------------------------------------------------------------------------
def _zero(tmp_path):
    p = tmp_path / "zero.duckdb"
    p.write_bytes(b"")
    return str(p), "is an empty file (0 bytes)"


def _truncated(tmp_path):
    p = tmp_path / "trunc.duckdb"
    Store(p).save_preset("x", {"a": 1})
    p.write_bytes(p.read_bytes()[:5000])
    return str(p), "cannot open it as a store: damaged, truncated"


def _devnull(tmp_path):
    return "/dev/null", "is not a regular file"


def _directory(tmp_path):
    return str(tmp_path), "is a directory, not a store file"


def _other_duckdb(tmp_path):
    p = tmp_path / "other.duckdb"
    with duckdb.connect(str(p)) as con:
        con.execute("CREATE TABLE t (x INT)")
    return str(p), "is a DuckDB file but not a Stopline store"


def _parquet(tmp_path):
    """DuckDB opens an existing .parquet (.csv, .json) file as data in an in-memory database, which it refuses
    read-only ("Catalog Error: Cannot launch in-memory database in read-only mode!")."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "generations.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["1"]}), p)
    return str(p), "is not a DuckDB file (or is damaged): it is a Parquet file"


def _csv(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("question,answer\nq,1\n")
    return str(p), "is not a DuckDB file (or is damaged): it does not begin with DuckDB's file header"


def _sqlite(tmp_path):
    """(DuckDB would try to download its SQLite extension for it.)"""
    import sqlite3
    p = tmp_path / "s.db"
    with sqlite3.connect(p) as con:
        con.execute("CREATE TABLE t (x)")
    con.close()
    return str(p), "is not a DuckDB file (or is damaged): it is a SQLite database"


def _under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return str(tmp_path / "f" / "s.duckdb"), "cannot make the store's folder"


DAMAGED = [_zero, _truncated, _devnull, _directory, _other_duckdb, _parquet, _csv, _sqlite]


@pytest.mark.parametrize("make", DAMAGED, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("command", ["runs", "import", "migrate"])
def test_a_damaged_store_is_named_in_our_error(tmp_path, cli, make, command):
    db, message = make(tmp_path)
    before = os.stat(db).st_size if os.path.isfile(db) else None
    args = {"runs": ["runs"], "migrate": ["migrate"],
            "import": ["import", _jsonl(tmp_path / "ok.jsonl", OK), "--model", "m", "--dataset", "d"]}[command]
    code, out, err = cli(*args, "--db", db)
    assert code == 2 and message in err and db in err and "Traceback" not in err, err
    assert "Catalog Error" not in err and "IO Error" not in err or make is _truncated, err   # DuckDB's own words
    if before is not None:
        assert os.stat(db).st_size == before            # nothing was written into it


@pytest.mark.parametrize("make", DAMAGED, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_store_raises_our_error_from_every_entry(tmp_path, make):
    db, message = make(tmp_path)
    for call in (lambda: Store(db), lambda: Store(db, read_only=True), lambda: stored_version(db),
                 lambda: migrate(db)):
        with pytest.raises(StoplineError) as e:
            call()
        assert db in str(e.value)


# --- the bundled demo store ---------------------------------------------------------------------------------
def test_the_command_line_cannot_write_the_demo_store(tmp_path, cli):
    before = _sha(DEMO_DB), os.stat(DEMO_DB).st_mtime_ns
    ok = _jsonl(tmp_path / "ok.jsonl", OK)
    code, _, err = cli("import", ok, "--model", "m", "--dataset", "d", "--db", DEMO_DB)
    assert code == 2 and "bundled demo store is read-only" in err and "Traceback" not in err, err
    rel = os.path.relpath(DEMO_DB)                      # by another name: relative, a symbolic link
    link = tmp_path / "link.duckdb"
    link.symlink_to(DEMO_DB)
    for name in (rel, str(link)):
        code, _, err = cli("import", ok, "--model", "m", "--dataset", "d", "--db", name)
        assert code == 2 and "bundled demo store is read-only" in err, err
    assert (_sha(DEMO_DB), os.stat(DEMO_DB).st_mtime_ns) == before


def test_the_store_class_refuses_demo_writes_whatever_the_caller():
    s = Store(DEMO_DB)                                  # asked for writable: it is not
    assert s.read_only and s.is_demo
    for write in (lambda: s.save_preset("x", {}), lambda: s.set_default_run("x"),
                  lambda: s.put_sweep("r", "k", b""), lambda: s.connect(write=True).__enter__()):
        with pytest.raises(StoplineError, match="bundled demo store is read-only"):
            write()
    with pytest.raises(StoplineError, match="bundled demo store is read-only"):
        migrate(DEMO_DB)
    assert s.runs()                                     # reading it is fine


def test_the_demo_command_still_rewrites_the_demo_store(tmp_path, monkeypatch):
    """Its escape hatch: `demo --rebuild` / `--refresh-sweeps` write a copy beside the store and move it into
    place (ingest/demo.py), so the store itself is never opened writable; shown here on a small stand-in."""
    from analysis.ingest.demo import refresh_sweeps
    from analysis.ingest.synthetic import write_synthetic_run
    demo = tmp_path / "demo.duckdb"
    rid = write_synthetic_run(Store(demo), 30, 5, seed=3)
    with Store(demo).transaction() as con:
        con.execute("DELETE FROM sweeps")
    monkeypatch.setattr(store_mod, "DEMO_DB", str(demo))
    with pytest.raises(StoplineError, match="bundled demo store is read-only"):
        Store(demo).save_preset("x", {})
    res = refresh_sweeps(str(demo))
    assert set(res["sweeps"]) == {rid} and Store(demo, read_only=True).get_sweep(rid, res["sweeps"][rid])


def test_a_store_under_a_file_is_named(tmp_path, cli):
    db, message = _under_a_file(tmp_path)
    ok = _jsonl(tmp_path / "ok.jsonl", OK)
    code, _, err = cli("import", ok, "--model", "m", "--dataset", "d", "--db", db)
    assert code == 2 and message in err and db in err and "Traceback" not in err, err
    with pytest.raises(StoplineError, match="cannot make the store's folder"):
        Store(db)
