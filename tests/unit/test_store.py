import json
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from analysis.ingest.datasets import Question
from analysis.core.errors import StoplineError
from analysis.core.store import MIGRATIONS, SCHEMA_VERSION, Store, migrate


def test_new_store_has_current_schema(tmp_path):
    s = Store(tmp_path / "a.duckdb")
    assert s.schema_version() == SCHEMA_VERSION
    assert s.runs() == []


def test_migration_from_v1_keeps_data(tmp_path):
    p = str(tmp_path / "old.duckdb")
    migrate(p, 1)  # a store as version 1 wrote it
    con = duckdb.connect(p)
    con.execute("INSERT INTO runs VALUES ('r1', 'h1', 'm', 'd', 'number', 'imported', '{}', 'complete', 1, now(), now())")
    con.execute("INSERT INTO questions VALUES ('d', 'q1', 0, 'Q?', '[\"1\"]', 'number', '{}')")
    con.execute("INSERT INTO traces VALUES ('r1', 'q1', 'text 1', 2, '1', '1', 1.0, 1.0, 'imported', NULL, NULL)")
    con.close()
    with pytest.raises(StoplineError, match="needs a migration") as e:
        Store(p, read_only=True)
    assert "python -m analysis migrate --db PATH" in str(e.value)       # the hint names a command that does it
    s = Store(p)  # opening writable migrates
    assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    (run,) = s.runs()
    assert run["id"] == "r1" and run["em_full"] == 1.0
    s.save_preset("p", {"x": 1})
    assert s.presets() == {"p": {"x": 1}}


def test_newer_store_is_refused_clearly(tmp_path):
    p = str(tmp_path / "new.duckdb")
    Store(p)
    con = duckdb.connect(p)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoplineError, match="newer than this Stopline"):
        Store(p)


def test_not_a_store(tmp_path):
    p = tmp_path / "other.duckdb"
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE x (a INT)")
    con.close()
    with pytest.raises(StoplineError, match="not a Stopline store"):
        Store(p)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoplineError):
        Store(junk)


def test_read_only_store_refuses_writes(tmp_path):
    p = tmp_path / "ro.duckdb"
    Store(p)
    s = Store(p, read_only=True)
    with pytest.raises(StoplineError, match="read-only"):
        s.put_questions("d", [Question("q", "t", ["1"], "number")])
    with pytest.raises(StoplineError, match="store not found"):
        Store(tmp_path / "missing.duckdb", read_only=True)


def test_failed_transaction_leaves_nothing(tmp_path):
    s = Store(tmp_path / "t.duckdb")
    with pytest.raises(RuntimeError):
        with s.transaction() as con:
            s.get_or_create_run(model="m", dataset="d", answer_type="number", source="x", config={}, con=con)
            raise RuntimeError("boom")
    assert s.runs() == []


def test_reader_waits_for_a_writer_in_another_process(tmp_path):
    """A process holding the write lock for a moment delays a reader; it does not fail it."""
    p = tmp_path / "lock.duckdb"
    Store(p)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(p)!r})
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO meta VALUES ('holder', 'x')")
        print("locked", flush=True)
        time.sleep(1.5)
        con.execute("COMMIT")
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    s = Store(p, read_only=True, lock_timeout=20)
    assert s.runs() == []
    waited = time.monotonic() - t0
    holder.wait(timeout=20)
    assert waited > 0.3  # it had to wait for the lock
    with Store(p).connect() as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'holder'").fetchone() == ("x",)


def test_execution_details_are_not_part_of_a_runs_identity(store):
    """How a run was computed (probe batching) is recorded but does not make another run."""
    from analysis.core.store import config_hash
    base = {"source": "generate", "gen": {"every": 32}}
    assert config_hash("m", "d", {**base, "execution": {"probes": "batched"}}) == \
        config_hash("m", "d", {**base, "execution": {"probes": "immediate"}}) == config_hash("m", "d", base)
    assert config_hash("m", "d", base) != config_hash("m", "d", {**base, "gen": {"every": 16}})
    a, created = store.get_or_create_run(model="m", dataset="d", answer_type="number", source="generated",
                                         config={**base, "execution": {"probes": "batched"}})
    b, again = store.get_or_create_run(model="m", dataset="d", answer_type="number", source="generated",
                                       config={**base, "execution": {"probes": "immediate"}})
    assert created and not again and a == b
    assert store.run(a)["config"]["execution"] == {"probes": "batched"}


def test_runs_of_one_id_and_runs_by_prefix(store):
    ids = [store.get_or_create_run(model="m", dataset="d", answer_type="number", source="generated",
                                   config={"gen": {"every": e}})[0] for e in (16, 32)]
    assert [r["id"] for r in store.runs()] == ids
    assert [r["id"] for r in store.runs(ids[1])] == [ids[1]] and store.runs("nope") == []
    assert store.runs(ids[0])[0]["n_questions"] == 0 and store.run(ids[0][:6])["id"] == ids[0]
    with pytest.raises(StoplineError, match="no run 'nope'"):
        store.run("nope")


def test_migrate_command(tmp_path, cli):
    p = str(tmp_path / "old.duckdb")
    migrate(p, 3)
    code, out, err = cli("migrate", "--db", p, "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": p, "schema_version_before": 3, "schema_version": SCHEMA_VERSION}
    assert Store(p, read_only=True).schema_version() == SCHEMA_VERSION
    code, out, _ = cli("migrate", "--db", p)
    assert code == 0 and "already at schema version" in out
    code, _, err = cli("migrate", "--db", str(tmp_path / "none.duckdb"))
    assert code == 2 and "store not found" in err


def test_a_v4_store_migrates_to_checkpoints_that_may_not_know_where_they_cut_the_text(tmp_path):
    """v5 adds checkpoints.char_pos: rows written before it have none (NULL, the Questions page then cuts the
    text in proportion to tokens), and a writer that leaves it out stores NULL too."""
    import duckdb

    from analysis.ingest.synthetic import write_synthetic_run
    p = str(tmp_path / "v4.duckdb")
    rid = write_synthetic_run(Store(p), 10, 5, seed=3)
    con = duckdb.connect(p)                             # the store as v4 left it
    con.execute("ALTER TABLE checkpoints DROP COLUMN char_pos")
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.close()
    s = Store(p)
    assert s.schema_version() == SCHEMA_VERSION == 5
    q = s.traces(rid).column("question_id")[0].as_py()
    tr = s.trace(rid, q)
    assert tr["char_pos"] and set(tr["char_pos"]) == {None}
    assert set(s.checkpoints(rid).column("char_pos").to_pylist()) == {None}
