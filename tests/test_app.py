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


def _monitor_log(tmp_path, synthetic_db, difficulty):
    """A decision log of the controller over a synthetic run, calibrated on the session's synthetic run."""
    import json
    from analysis.controller import Controller, simulate
    from analysis.presets import from_dict
    from analysis.replay import RunTable
    from analysis.store import Store
    from analysis.synthetic import write_synthetic_run
    db, rid, _ = synthetic_db
    s = Store(tmp_path / "live.duckdb")
    live = write_synthetic_run(s, 200, 30, seed=9, dataset="live", difficulty=difficulty)
    t = RunTable.from_store(s, live)
    p = from_dict({"stopline_preset": 1, "name": "conf", "setting": {"family": "confidence", "params": {"tau": 0.9}},
                   "routing": {"explore": 0.25}})
    logs = tmp_path / "logs"
    logs.mkdir()
    simulate(t, Controller(p, log=logs / "prod.jsonl", log_header={"calibration": {"db": db, "run": rid}}),
             with_em=False)
    with open(logs / "prod.labels.jsonl", "w") as f:
        for q in t.question_ids:
            f.write(json.dumps({"request": q, "gold": "42"}) + "\n")
    return logs


def test_monitor_page_flags_drift_and_proposes(tmp_path, synthetic_db, monkeypatch):
    logs = _monitor_log(tmp_path, synthetic_db, (0.8, 1.0))        # much harder than the calibration run
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/monitor.py")
    assert not at.exception
    assert at.header[0].value == "Monitor"
    assert at.error and "Recalibrate" in at.error[0].value
    assert {m.label for m in at.metric} >= {"Tokens / request", "EM (labelled)"}
    assert any("exploration requests" in md.value for md in at.markdown)


def test_monitor_page_without_logs_and_with_a_broken_log(tmp_path, synthetic_db, monkeypatch):
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(tmp_path / "none"))
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/monitor.py")
    assert not at.exception and any("serve-demo" in i.value for i in at.info)
    logs = tmp_path / "bad"
    logs.mkdir()
    (logs / "x.jsonl").write_text('{"type": "header", "stopline_log": 1}\n{"type": "final"}\n')
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    at = app(db, rid, "views/monitor.py")
    assert not at.exception and "line 2" in at.error[0].value


def test_questions_page_diffs_and_opens_a_trace(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid)
    at.query_params["s"] = "sl1.broken"              # a tampered link: a warning, then the defaults
    at.switch_page("views/questions.py").run()
    assert not at.exception
    assert any("could not be read" in w.value for w in at.warning)
    labels = {m.label: int(m.value) for m in at.metric}
    assert labels["Lost"] + labels["Gained"] + labels["Kept right"] + labels["Kept wrong"] == 600
    assert at.subheader[0].value.startswith("Trace of ")
    assert len(at.dataframe) == 2                         # the diff table and the trace's checkpoints
    at.multiselect(key="q_filter").set_value(["kept wrong"]).run()
    assert not at.exception and len(at.dataframe[0].value) == labels["Kept wrong"]


def test_tune_setting_carries_to_questions_and_into_the_link(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/tune.py")
    at.slider[0].set_value(64).run()
    link = at.query_params["s"]
    assert link.startswith("sl1.")
    from analysis.presets import loads
    assert loads(link).setting.params["B"] == 64
    at.switch_page("views/questions.py").run()
    assert not at.exception and any("B=64" in c.value for c in at.caption)
