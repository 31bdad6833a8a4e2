"""The store: one DuckDB file holding runs, questions, traces and checkpoints.

Concurrency (docs/architecture.md): DuckDB lets one process write a file, and no other process may open it
while it does. So no connection is ever held open: every operation opens the file, does its work in one
transaction, and closes it. A writer (a generation run) commits one batch of finished questions per
transaction; readers (the dashboard, the CLI) open read-only for one query and cache the result. When the
file is momentarily locked by the other side, the open is retried with back-off for up to ``lock_timeout``
seconds. A batch is either wholly in the store or not at all, so a killed run loses nothing it had committed.

About 400 lines: ``Store`` is the whole SQL surface (connections, writes, reads), kept in one class so every
query sits beside the others on the same tables; the schema's steps are in migrations.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import orjson
import pyarrow as pa

from analysis.core.errors import GoldConflict, StoplineError
from analysis.core.migrations import MIGRATIONS
from analysis.core.schema import CHECKPOINT_COLUMNS, SIGNAL_COLUMNS, TRACE_COLUMNS

DEFAULT_DB = "data/stopline.duckdb"
DEMO_DB = str(Path(__file__).resolve().parents[2] / "data" / "demo.duckdb")

SCHEMA_VERSION = len(MIGRATIONS)



def _same_gold(a: str | None, b: str | None, answer_type: str) -> bool:
    """Whether two golds (JSON text) score alike: the same aliases once normalised for ``answer_type``. A
    missing gold (null, an empty list: an import judged by the tool's own labels) contradicts none."""
    from analysis.core.answers import normalize_gold

    def aliases(g):
        try:
            v = json.loads(g) if g is not None else None
        except ValueError:
            return {g}
        v = [x for x in (v if isinstance(v, list) else [v]) if x is not None]
        try:
            return set(normalize_gold([str(x) for x in v], answer_type))
        except StoplineError:           # an answer type unknown here: the text decides
            return {json.dumps(v, sort_keys=True)}
    x, y = aliases(a), aliases(b)
    return not x or not y or x == y


def _brief_json(g: str | None) -> str:
    return "none" if g is None else (g if len(g) <= 80 else g[:79] + "…")


def _dumps(obj) -> str:
    """JSON text (orjson where it can: ~10x json's speed for a question's gold and meta; json for the rest)."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return json.dumps(obj, default=str)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def config_hash(model: str, dataset: str, config: dict) -> str:
    """The run's identity. ``config['execution']`` (how it was computed: probe batching) is left out, like
    batch size and device: asking again with another execution finds the same run."""
    config = {k: v for k, v in config.items() if k != "execution"}
    blob = json.dumps({"model": model, "dataset": dataset, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_db_path(path: str | None = None) -> str:
    return path or os.environ.get("STOPLINE_DB") or DEFAULT_DB


def portable_path(path: str | os.PathLike) -> str:
    """A store's path as a log or a report names it: relative to here when it lies below, so it travels."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


class Store:
    """A DuckDB store file. Opens a connection per operation (see the module docstring)."""

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False,
                 lock_timeout: float = 30.0, create: bool = True):
        self.path = str(resolve_db_path(str(path) if path else None))
        # the bundled demo store is read-only whoever opens it: `python -m analysis demo` writes a copy and
        # moves it into place (ingest/demo.py), and nothing else may change it
        self.is_demo = is_demo_store(self.path)
        self.read_only = read_only or self.is_demo
        self.lock_timeout = lock_timeout
        check_store_file(self.path)
        if self.read_only or not create:
            if not Path(self.path).exists():
                raise StoplineError("store not found", file=self.path,
                                    hint="import or run something first, or pass --db PATH")
        else:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoplineError(f"cannot make the store's folder ({e.strerror or e})", file=self.path,
                                    hint="--db names a .duckdb file in a folder you can write") from None
        self._check_and_migrate()

    # -- connections --------------------------------------------------------------------------------------
    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if write and self.read_only:
            raise StoplineError("the bundled demo store is read-only" if self.is_demo else "this store is read-only",
                                file=self.path, hint="new runs and imports go to your own store: --db PATH or "
                                "STOPLINE_DB (default data/stopline.duckdb); the demo store is rebuilt only by "
                                "`python -m analysis demo --rebuild`")
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(self.path, read_only=not write)
                break
            except duckdb.IOException as e:
                if not _is_lock_error(e) or time.monotonic() > deadline:
                    if _is_lock_error(e):
                        raise StoplineError(f"store is locked by another process for over {self.lock_timeout:.0f}s",
                                            file=self.path) from None
                    raise _unreadable(self.path, e) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
            except duckdb.Error as e:
                raise _unreadable(self.path, e) from None
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- schema -------------------------------------------------------------------------------------------
    def _set_meta(self, key: str, value: str, con=None) -> None:
        if con is not None:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
        else:
            with self.transaction() as c:
                self._set_meta(key, value, c)

    def set_attribution(self, dataset: str, text: str, con=None) -> None:
        """Where a dataset's questions come from and under which licence (shown with the runs)."""
        self._set_meta(f"attribution:{dataset}", text, con)

    def attributions(self) -> dict[str, str]:
        with self.connect() as con:
            rows = con.execute("SELECT key, value FROM meta WHERE key LIKE 'attribution:%' ORDER BY key").fetchall()
        return {k.split(":", 1)[1]: v for k, v in rows}

    def set_default_run(self, run_id: str) -> None:
        """The run the dashboard opens when the link names none (the demo store's most telling run)."""
        self._set_meta("default_run", run_id)

    def default_run(self) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'default_run'").fetchone()
        return row[0] if row else None

    def schema_version(self) -> int:
        with self.connect() as con:
            return _version(con)

    def _check_and_migrate(self) -> None:
        if Path(self.path).exists():
            with self.connect() as con:
                version = _version(con, self.path)
        else:
            version = 0
        if version > SCHEMA_VERSION:
            raise StoplineError(
                f"store has schema version {version}, newer than this Stopline understands ({SCHEMA_VERSION})",
                file=self.path, hint="upgrade Stopline (pip install -U -r requirements.txt)")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise StoplineError(f"store has schema version {version}, older than {SCHEMA_VERSION}; "
                                "it needs a migration, which a read-only store cannot take", file=self.path,
                                hint="python -m analysis demo --refresh-sweeps (it migrates a copy of the demo "
                                     "store)" if self.is_demo else "migrate it once: python -m analysis migrate --db PATH")
        migrate(self.path, SCHEMA_VERSION)

    # -- writes -------------------------------------------------------------------------------------------
    def get_or_create_run(self, *, model: str, dataset: str, answer_type: str, source: str, config: dict,
                          n_planned: int | None = None, con: duckdb.DuckDBPyConnection | None = None
                          ) -> tuple[str, bool]:
        """(run_id, created). The run's id is the head of the hash of (model, dataset, config): asking for
        the same run again finds it."""
        h = config_hash(model, dataset, config)
        run_id = h[:12]

        def go(c):
            rows = c.execute("SELECT run_id FROM runs WHERE config_hash = ?", [h]).fetchall()
            if rows:
                return rows[0][0], False
            t = now()
            c.execute("INSERT INTO runs (run_id, config_hash, model, dataset, answer_type, source, config, status,"
                      " n_planned, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      [run_id, h, model, dataset, answer_type, source, json.dumps(config, default=str),
                       "running", n_planned, t, t]).fetchall()
            return run_id, True
        if con is not None:
            return go(con)
        with self.transaction() as c:
            return go(c)

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?", [status, now(), run_id])

    def set_execution(self, run_id: str, execution: dict) -> None:
        """Merge ``execution`` into the run's ``config.execution``: how the run was computed (engine figures,
        timings), which is not part of its identity."""
        with self.transaction() as con:
            row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                raise StoplineError(f"no run {run_id!r}", file=self.path)
            cfg = json.loads(row[0]) if row[0] else {}
            cfg["execution"] = {**cfg.get("execution", {}), **execution}
            con.execute("UPDATE runs SET config = ?, updated_at = ? WHERE run_id = ?",
                        [json.dumps(cfg, default=str), now(), run_id])

    def put_questions(self, dataset: str, questions: list, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Insert questions not yet stored (by (dataset, id)); existing ones are left as they are."""
        if not questions:
            return
        self.put_question_columns(dataset, [q.id for q in questions], [q.text for q in questions],
                                  [_dumps(q.gold) for q in questions], questions[0].answer_type,
                                  [_dumps(q.meta) for q in questions], con)

    def put_question_columns(self, dataset: str, ids, texts, gold_json, answer_type: str, meta_json=None,
                             con: duckdb.DuckDBPyConnection | None = None) -> None:
        """``put_questions`` from columns (Arrow arrays or lists; gold and meta as JSON text), for writers
        that never make one object per question (a checkpoint export of a million rows). A question already
        stored whose gold this one contradicts raises GoldConflict, nothing written: a dataset's question has one
        gold, which every run on it is scored (and rescored) against. Golds written differently that score
        alike (72 and "72") agree."""
        n = len(ids)
        tbl = pa.table({
            "dataset": pa.array([dataset] * n, pa.string()), "question_id": pa.array(ids, pa.string()),
            "idx": pa.array(range(n), pa.int32()), "text": pa.array(texts, pa.string()),
            "gold": pa.array(gold_json, pa.string()), "answer_type": pa.array([answer_type] * n, pa.string()),
            "meta": pa.array(meta_json if meta_json is not None else ["{}"] * n, pa.string()),
        })

        def go(c):
            c.register("_q", tbl)
            if c.execute("SELECT 1 FROM questions WHERE dataset = ? LIMIT 1", [dataset]).fetchone():
                differ = c.execute("SELECT q.idx, q.question_id, s.gold, q.gold, s.answer_type FROM _q q JOIN questions s "
                                   "ON s.dataset = q.dataset AND s.question_id = q.question_id "
                                   "WHERE s.gold IS DISTINCT FROM q.gold ORDER BY q.idx").fetchall()
                for idx, qid, old, new, stored_type in differ:
                    if not _same_gold(old, new, stored_type or answer_type):
                        c.unregister("_q")
                        raise GoldConflict(
                            f"question {qid!r} of dataset {dataset!r} is stored with gold {_brief_json(old)}; this "
                            f"one gives {_brief_json(new)}. A dataset's question has one gold, which every run on "
                            "it is scored and rescored against", index=idx, question_id=qid,
                            hint="fix the gold, or give these questions another dataset name (--dataset)")
                c.execute("INSERT INTO questions SELECT q.* FROM _q q ANTI JOIN questions s "
                          "ON s.dataset = q.dataset AND s.question_id = q.question_id")
            else:                               # a dataset new to the store: nothing to leave out
                c.execute("INSERT INTO questions SELECT * FROM _q")
            c.unregister("_q")
        if con is not None:
            return go(con)
        with self.transaction() as c:
            go(c)

    def put_results(self, traces: pa.Table, checkpoints: pa.Table,
                    con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Write finished questions' traces and checkpoints in one transaction (all or nothing). A nullable
        checkpoint column the table leaves out (a signal the writer has not got; ``char_pos`` where it cannot
        know where a checkpoint cuts the text) is stored NULL."""
        ck_cols = [c for c in CHECKPOINT_COLUMNS if c in checkpoints.column_names]

        def go(c):
            c.register("_t", traces.select(TRACE_COLUMNS))
            c.register("_c", checkpoints.select(ck_cols))
            c.execute(f"INSERT INTO traces ({', '.join(TRACE_COLUMNS)}) SELECT * FROM _t")
            c.execute(f"INSERT INTO checkpoints ({', '.join(ck_cols)}) SELECT * FROM _c")
            c.unregister("_t")
            c.unregister("_c")
        if con is not None:
            return go(con)
        with self.transaction() as c:
            go(c)

    def put_sweep(self, run_id: str, key: str, data: bytes) -> None:
        """Keep one materialised sweep of a run; older ones of the run (other code, other counts) go."""
        with self.transaction() as con:
            con.execute("DELETE FROM sweeps WHERE run_id = ? AND key <> ?", [run_id, key])
            con.execute("INSERT OR REPLACE INTO sweeps VALUES (?, ?, ?, ?)", [run_id, key, data, now()])

    def get_sweep(self, run_id: str, key: str) -> bytes | None:
        with self.connect() as con:
            row = con.execute("SELECT data FROM sweeps WHERE run_id = ? AND key = ?", [run_id, key]).fetchone()
        return row[0] if row else None

    def save_preset(self, name: str, body: dict) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO presets VALUES (?, ?, ?)", [name, json.dumps(body), now()])

    def delete_preset(self, name: str) -> None:
        with self.transaction() as con:
            con.execute("DELETE FROM presets WHERE name = ?", [name])

    # -- reads --------------------------------------------------------------------------------------------
    def runs(self, run_id: str | None = None) -> list[dict]:
        """One dict per run (``run_id``: that run only, [] when the store has none by that id): id, model,
        dataset, counts (n_incumbent: questions with a production stop), em_full (EM of the final answers, 0..1),
        traces_model (a re-probed run: the model that wrote the traces it probed; else None)."""
        where, args = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        with self.connect() as con:
            rel = con.execute(f"""
                SELECT r.run_id AS id, r.model, r.dataset, r.answer_type, r.source, r.status,
                       r.n_planned, r.created_at, r.config,
                       COALESCE(t.n, 0) AS n_questions, COALESCE(c.n, 0) AS n_checkpoints,
                       t.em_full, t.f1_full, t.mean_tokens, COALESCE(i.n, 0) AS n_incumbent
                FROM (SELECT * FROM runs {where}) r
                LEFT JOIN (SELECT run_id, COUNT(*) n, AVG(em) em_full, AVG(f1) f1_full, AVG(n_tokens) mean_tokens
                           FROM traces {where} GROUP BY run_id) t USING (run_id)
                LEFT JOIN (SELECT run_id, COUNT(*) n FROM checkpoints {where} GROUP BY run_id) c USING (run_id)
                LEFT JOIN (SELECT run_id, COUNT(*) n FROM incumbent {where} GROUP BY run_id) i USING (run_id)
                ORDER BY r.created_at, r.run_id""", args * 4)
            cols = [d[0] for d in rel.description]
            out = [dict(zip(cols, row)) for row in rel.fetchall()]
            for r in out:
                r["config"] = json.loads(r["config"]) if r["config"] else {}
                r["created_at"] = str(r["created_at"])
            sources = sorted({r["config"]["of_run"] for r in out if r["config"].get("of_run")})
            models = dict(con.execute("SELECT run_id, model FROM runs WHERE list_contains(?, run_id)",
                                      [sources]).fetchall()) if sources else {}
        for r in out:      # a re-probed run: its traces are another run's, written by that run's model
            r["traces_model"] = models.get(r["config"].get("of_run"))
        return out

    def has_runs(self) -> bool:
        with self.connect() as con:
            return con.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None

    def run(self, run_id: str) -> dict:
        """The run with this id, or the one run whose id starts with it."""
        exact = self.runs(run_id) if run_id else []
        if exact:
            return exact[0]
        runs = self.runs()
        matches = [r for r in runs if r["id"].startswith(run_id)] if run_id else []
        if len(matches) == 1:
            return matches[0]
        raise StoplineError(f"no run {run_id!r} in this store", file=self.path,
                            hint="`python -m analysis runs` lists the runs")

    def finished_questions(self, run_id: str) -> set[str]:
        with self.connect() as con:
            return {r[0] for r in con.execute("SELECT question_id FROM traces WHERE run_id = ?", [run_id]).fetchall()}

    def checkpoints(self, run_id: str, columns: list[str] | None = None) -> pa.Table:
        """The run's checkpoints, ordered by question (dataset order) then checkpoint index."""
        cols = ", ".join(f"c.{c}" for c in (columns or CHECKPOINT_COLUMNS))
        with self.connect() as con:
            return con.sql(f"""
                SELECT {cols} FROM checkpoints c
                JOIN runs r ON r.run_id = c.run_id
                LEFT JOIN questions q ON q.dataset = r.dataset AND q.question_id = c.question_id
                WHERE c.run_id = ? ORDER BY q.idx, c.question_id, c.ck_idx""", params=[run_id]).to_arrow_table()

    def traces(self, run_id: str, with_text: bool = False) -> pa.Table:
        cols = TRACE_COLUMNS if with_text else [c for c in TRACE_COLUMNS if c != "text"]
        with self.connect() as con:
            return con.sql(f"""
                SELECT {', '.join('t.' + c for c in cols)}, q.text AS question, q.gold, q.meta, q.idx
                FROM traces t JOIN runs r ON r.run_id = t.run_id
                LEFT JOIN questions q ON q.dataset = r.dataset AND q.question_id = t.question_id
                WHERE t.run_id = ? ORDER BY q.idx, t.question_id""", params=[run_id]).to_arrow_table()

    def trace(self, run_id: str, question_id: str) -> dict:
        """One trace with its question, and ``char_pos``: where each checkpoint cuts the text, in checkpoint
        order (None: not known)."""
        with self.connect() as con:
            rel = con.execute("""SELECT t.*, q.text AS question, q.gold, q.meta,
                    (SELECT list(c.char_pos ORDER BY c.ck_idx) FROM checkpoints c
                     WHERE c.run_id = t.run_id AND c.question_id = t.question_id) AS char_pos
                FROM traces t
                JOIN runs r ON r.run_id = t.run_id
                LEFT JOIN questions q ON q.dataset = r.dataset AND q.question_id = t.question_id
                WHERE t.run_id = ? AND t.question_id = ?""", [run_id, question_id])
            cols = [d[0] for d in rel.description]
            row = rel.fetchone()
        if row is None:
            raise StoplineError(f"no trace for question {question_id!r} in run {run_id!r}", file=self.path)
        out = dict(zip(cols, row))
        out["char_pos"] = out["char_pos"] or []
        return out

    def questions(self, dataset: str) -> pa.Table:
        with self.connect() as con:
            return con.sql("SELECT * FROM questions WHERE dataset = ? ORDER BY idx", params=[dataset]).to_arrow_table()

    def presets(self) -> dict[str, dict]:
        with self.connect() as con:
            return {n: json.loads(b) for n, b in con.execute("SELECT name, body FROM presets ORDER BY name").fetchall()}

    def incumbent(self, run_id: str) -> pa.Table:
        """The run's production stops (analysis/incumbent.py): question_id, pos, answer_raw, answer_norm,
        em, f1; empty when the run has none."""
        with self.connect() as con:
            return con.sql("SELECT question_id, pos, answer_raw, answer_norm, em, f1 FROM incumbent "
                           "WHERE run_id = ? ORDER BY question_id", params=[run_id]).to_arrow_table()

    def signals_present(self, run_id: str) -> dict[str, bool]:
        """Which per-checkpoint signals the run has (a text import has none)."""
        sel = ", ".join(f"COUNT({c}) > 0 AS {c}" for c in SIGNAL_COLUMNS)
        with self.connect() as con:
            row = con.execute(f"SELECT {sel} FROM checkpoints WHERE run_id = ?", [run_id]).fetchone()
        return dict(zip(SIGNAL_COLUMNS, row))


def is_demo_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the bundled demo store (by any name: a relative path, a symbolic or hard link)."""
    p, demo = Path(path), Path(DEMO_DB)
    try:
        return p.resolve() == demo.resolve() or (p.exists() and demo.exists() and os.path.samefile(p, demo))
    except OSError:
        return False


DUCKDB_MAGIC = b"DUCK"          # bytes 8-11 of every DuckDB database file (after the header's checksum)
_OTHER_FILES = ((b"PAR1", "a Parquet file"), (b"SQLite format 3\x00", "a SQLite database"),
                (b"PK\x03\x04", "a zip archive (a spreadsheet?)"), (b"\x1f\x8b", "a gzip file"))


def check_store_file(path: str | os.PathLike) -> None:
    """A path that cannot be a store, refused before DuckDB sees it (DuckDB's own errors name no file, or
    it would try to write a new store into a device): a folder, a device or pipe (``/dev/null``), an empty
    file, a file that is not a DuckDB database (DuckDB itself opens an existing ``.parquet``, ``.csv`` or
    ``.json`` file as data in an in-memory database, "Cannot launch in-memory database in read-only mode"
    when read-only, and tries to download its SQLite extension for a SQLite file)."""
    p = Path(path)
    if p.is_dir():
        raise StoplineError("is a directory, not a store file", file=str(path),
                            hint="name a .duckdb file inside it, e.g. --db DIR/stopline.duckdb")
    if p.exists() and not p.is_file():
        raise StoplineError("is not a regular file (a device, pipe or socket), so it cannot be a store",
                            file=str(path), hint="--db names a .duckdb file")
    if p.is_file() and p.stat().st_size == 0:
        raise StoplineError("is an empty file (0 bytes), not a Stopline store", file=str(path),
                            hint="delete it to have a new store made there, or pass another --db")
    if p.is_file():
        try:
            with open(p, "rb") as fh:
                head = fh.read(16)
        except OSError:
            return                      # (permission denied: DuckDB's own attempt says so, naming the file)
        if head[8:12] != DUCKDB_MAGIC:  # DuckDB would open a .parquet/.csv/.json as data, or fetch an extension
            kind = next((name for magic, name in _OTHER_FILES if head.startswith(magic)), None)
            raise StoplineError("is not a DuckDB file (or is damaged): " + (
                f"it is {kind}" if kind else "it does not begin with DuckDB's file header"), file=str(path),
                hint="pass another --db, or a new file name to make a new store")


def check_target(store: Store | str | os.PathLike | None) -> None:
    """A store a writer opens later (``writing_to``), checked now, before any slow work: a path that cannot be a
    store is refused, and an existing file is opened (a damaged store or a newer schema is said now); a store
    that does not exist yet is left to be made when the writer has something to write."""
    if isinstance(store, Store):
        return
    path = resolve_db_path(str(store) if store else None)
    check_store_file(path)
    if Path(path).exists():
        Store(path)


@contextmanager
def writing_to(store: Store | str | os.PathLike | None) -> Iterator[Store]:
    """The store a writer (an import, a run) writes to. A ``Store`` is used as it is; a path (None: the default
    store) is opened only now, after the input and the model were read and checked, so a bad input makes no
    store and no folder. When the writer fails after that (an interrupt, an error before its run was
    written), a store file it made is removed again with the folders made for it, provided it still holds
    no run."""
    if isinstance(store, Store):
        yield store
        return
    path = Path(resolve_db_path(str(store) if store else None))
    made = [] if path.exists() else [path, *[d for d in path.parents if not d.exists()]]
    opened = Store(path)
    try:
        yield opened
    except BaseException:
        if made and path.exists():
            try:
                with opened.connect(write=True) as con:    # exclusive: no other process has it open now
                    empty = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            except StoplineError:
                empty = False
            if empty:
                for p in (path, Path(f"{path}.wal"), *made[1:]):
                    try:
                        p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
                    except OSError:
                        break
        raise


def _unreadable(path: str, e: Exception) -> StoplineError:
    """DuckDB could not open the file: say which of the usual reasons it is."""
    detail = str(e)[:200]
    if "permission denied" in detail.lower():
        return StoplineError(f"cannot open the store: permission denied ({detail})", file=path)
    if not Path(path).exists():
        return StoplineError(f"cannot make a store there ({detail})", file=path)
    return StoplineError(f"cannot open it as a store: damaged, truncated, or not a DuckDB file ({detail})",
                         file=path, hint="pass another --db, or a new file name to make a new store")


def _version(con: duckdb.DuckDBPyConnection, path: str | None = None) -> int:
    has_meta = con.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
    if not has_meta:
        tables = con.execute("SELECT COUNT(*) FROM information_schema.tables").fetchone()[0]
        if tables:
            raise StoplineError("is a DuckDB file but not a Stopline store (it has no meta table)", file=path,
                                hint="pass another --db, or a new file name to make a new store")
        return 0
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def stored_version(path: str) -> int:
    """The schema version of a store file, read without migrating it."""
    check_store_file(path)
    if not Path(path).is_file():
        raise StoplineError("store not found", file=str(path))
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            return _version(con, str(path))
    except duckdb.Error as e:
        raise _unreadable(str(path), e) from None


def migrate(path: str, target: int = SCHEMA_VERSION) -> int:
    """Apply migrations up to ``target`` in one transaction; returns the version reached."""
    if is_demo_store(path):
        raise StoplineError("the bundled demo store is read-only", file=str(path),
                            hint="`python -m analysis demo --refresh-sweeps` migrates a copy and moves it into place")
    check_store_file(path)
    try:
        con = duckdb.connect(path)
    except duckdb.Error as e:
        raise _unreadable(str(path), e) from None
    try:
        version = _version(con, str(path))
        if version >= target:
            return version
        con.execute("BEGIN TRANSACTION")
        for v in range(version, target):
            con.execute(MIGRATIONS[v])
            if v == 0:
                con.execute("INSERT INTO meta VALUES ('schema_version', '0')")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(target)])
        con.execute("COMMIT")
        return target
    finally:
        con.close()
