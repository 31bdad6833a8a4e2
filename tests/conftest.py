"""pytest's shared fixtures; what tests share otherwise is in tests/helpers.py. The package is installed
(`pip install --no-deps -e .`), so nothing here touches sys.path."""
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("STOPLINE_CACHE", tempfile.mkdtemp(prefix="stopline-cache-"))
# the user's own store (data/stopline.duckdb or theirs): never the tests' (a command without --db opens it)
os.environ["STOPLINE_DB"] = str(Path(tempfile.mkdtemp(prefix="stopline-db-")) / "mine.duckdb")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def store(tmp_path):
    from analysis.core.store import Store
    return Store(tmp_path / "store.duckdb")


@pytest.fixture(scope="session")
def synthetic_db(tmp_path_factory):
    """A store with one synthetic run of 600 questions (signals included) and one without signals."""
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    p = tmp_path_factory.mktemp("syn") / "syn.duckdb"
    s = Store(p)
    rid = write_synthetic_run(s, 600, 30, seed=1)
    rid_text = write_synthetic_run(s, 200, 20, seed=2, model="synthetic-text", signals=False)
    return str(p), rid, rid_text


@pytest.fixture(scope="module")
def demo():
    """The bundled demo store, read-only."""
    from analysis.core.store import DEMO_DB, Store
    assert Path(DEMO_DB).exists(), "data/demo.duckdb is shipped with the repo"
    return Store(DEMO_DB, read_only=True)


@pytest.fixture
def cli(monkeypatch):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from analysis.cli.main import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()
    return run
