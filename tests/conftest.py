import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"


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


def budget_like_run(store, n_questions: int, n_checkpoints: int, seed: int, share: float = 0.62) -> str:
    """A synthetic run whose incumbent (analysis/incumbent.py) stops at ``share`` of each trace, as a
    budget-like production stopper would; returns the run's id."""
    from analysis.evaluate.incumbent import attach
    from analysis.replay.engine import RunTable
    from analysis.ingest.synthetic import write_synthetic_run
    rid = write_synthetic_run(store, n_questions, n_checkpoints, seed=seed)
    t = RunTable.from_store(store, rid)
    attach(store, rid, list(t.question_ids), list((share * t.full_tokens).astype(int)))
    return rid


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


os.environ.setdefault("STOPLINE_CACHE", __import__("tempfile").mkdtemp(prefix="stopline-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
