"""Streamlit AppTest: each page's main path and its error states."""
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT


def app(db: str | None, run: str | None = None, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if db:
        at.query_params["db"] = db
    if run:
        at.query_params["run"] = run
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def test_frontier_draws_every_family(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid)
    assert not at.exception
    assert at.header[0].value == "Frontier"
    assert any("full-length EM" in c.value for c in at.caption)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) > 3


def test_tune_recomputes_when_a_slider_moves(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/tune.py")
    assert not at.exception
    before = {m.label: m.value for m in at.metric}
    at.slider[0].set_value(int(at.slider[0].max)).run()       # budget: to the longest trace = full length
    after = {m.label: m.value for m in at.metric}
    assert before["EM"] != after["EM"]
    assert after["Tokens saved (emitted)"] == "0.0%"


def test_text_only_run_hides_families_it_cannot_replay(synthetic_db):
    db, _, rid_text = synthetic_db
    at = app(db, rid_text, "views/tune.py")
    assert not at.exception
    assert "confidence" not in at.sidebar.selectbox(key="family").options
    assert any("no probe signals" in c.value for c in at.sidebar.caption)


def test_empty_store_and_unknown_run_get_a_way_forward(tmp_path, synthetic_db):
    from analysis.store import Store
    empty = tmp_path / "empty.duckdb"
    Store(empty)
    at = app(str(empty))
    assert not at.exception and any("No runs" in i.value for i in at.sidebar.info)
    assert any("Pick a store" in i.value for i in at.info)
    db, rid, _ = synthetic_db
    at = app(db, "not-a-run")           # a stale or tampered link: falls back to the first run
    assert not at.exception and at.header[0].value == "Frontier"


def test_runs_page_lists_runs(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/runs.py")
    assert not at.exception and len(at.dataframe[0].value) == 2
