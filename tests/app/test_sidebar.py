"""AppTest: The sidebar shared by every page: store and run pickers, the family picker, the runs read from the store."""
from tests.helpers import open_app


def test_runs_are_read_again_only_when_a_writer_commits(tmp_path, monkeypatch):
    """Store.runs() aggregates every checkpoint: a rerun with nothing new does not call it, a batch or an
    import committed by another writer shows up on the next rerun."""
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    db = tmp_path / "grow.duckdb"
    rid = write_synthetic_run(Store(db), 30, 5, seed=3)
    calls = []
    real = Store.runs
    monkeypatch.setattr(Store, "runs", lambda self, *a, **k: calls.append(self.path) or real(self, *a, **k))
    at = open_app(str(db), rid)
    assert not at.exception
    n = len(calls)
    at.run()
    assert len(calls) == n
    write_synthetic_run(Store(db), 20, 5, seed=4, model="another")
    at.run()
    assert not at.exception and len(calls) > n
    assert len(at.sidebar.selectbox(key="run_pick").options) == 2


def test_text_only_run_hides_families_it_cannot_replay(synthetic_db):
    db, _, rid_text = synthetic_db
    at = open_app(db, rid_text, "views/tune.py")
    assert not at.exception
    assert "confidence" not in at.sidebar.selectbox(key="family").options
    assert any("no probe signals" in c.value for c in at.sidebar.caption)


def test_empty_store_and_unknown_run_get_a_way_forward(tmp_path, synthetic_db):
    from analysis.core.store import Store
    empty = tmp_path / "empty.duckdb"
    Store(empty)
    at = open_app(str(empty))
    assert not at.exception and any("No runs" in i.value for i in at.sidebar.info)
    assert any("Pick a store" in i.value for i in at.info)
    db, rid, _ = synthetic_db
    at = open_app(db, "not-a-run")           # a stale or tampered link: falls back to the first run
    assert not at.exception and at.header[0].value == "Frontier"


def test_the_dashboard_opens_on_the_demo_run_whose_trade_off_shows(demo):
    from analysis.ingest.demo import SPEC
    default = demo.run(demo.default_run())
    assert (default["model"], default["dataset"]) == SPEC["default_run"] and 0.25 <= default["em_full"] <= 0.85
    at = open_app(None)      # a link that names nothing
    assert not at.exception
    assert at.sidebar.selectbox(key="run_pick").value == default["id"]


def test_a_fresh_visit_opens_the_users_store_once_it_has_runs(tmp_path, monkeypatch):
    """No store in the link: the demo store while the user's own has no runs, then the user's (as the command
    line reads the user's store once it exists)."""
    from streamlit.testing.v1 import AppTest
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    from tests.helpers import ROOT
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    for expect in ("Demo store (read-only)", "My store"):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception and at.selectbox(key="store_pick").value == expect
        assert at.query_params["db"] == ("demo" if expect.startswith("Demo") else "mine")
        write_synthetic_run(Store(str(mine)), 20, 6, seed=1)
