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


def test_frontier_reads_the_sweep_its_writer_kept(tmp_path, monkeypatch):
    """A run's writer keeps the default sweep in the store, so the first load sweeps nothing; a store without
    it is swept once and the sweep kept on disk."""
    import shutil
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    monkeypatch.setenv("STOPLINE_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "kept.duckdb"
    rid = write_synthetic_run(Store(db), 40, 6, seed=11)
    bare = tmp_path / "bare.duckdb"
    shutil.copy(db, bare)
    with Store(bare).transaction() as con:
        con.execute("DELETE FROM sweeps")
    at = app(str(db), rid)
    assert not at.exception and len(at.dataframe[0].value) > 3
    assert not (tmp_path / "cache").exists()
    at = app(str(bare), rid)
    assert not at.exception and len(at.dataframe[0].value) > 3
    assert len(list((tmp_path / "cache").glob("sweep-*.parquet"))) == 1


def test_runs_are_read_again_only_when_a_writer_commits(tmp_path, monkeypatch):
    """Store.runs() aggregates every checkpoint: a rerun with nothing new does not call it, a batch or an
    import committed by another writer shows up on the next rerun."""
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    db = tmp_path / "grow.duckdb"
    rid = write_synthetic_run(Store(db), 30, 5, seed=3)
    calls = []
    real = Store.runs
    monkeypatch.setattr(Store, "runs", lambda self: calls.append(self.path) or real(self))
    at = app(str(db), rid)
    assert not at.exception
    n = len(calls)
    at.run()
    assert len(calls) == n
    write_synthetic_run(Store(db), 20, 5, seed=4, model="another")
    at.run()
    assert not at.exception and len(calls) > n
    assert len(at.sidebar.selectbox(key="run_pick").options) == 2


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
    from analysis.core.store import Store
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


def test_runs_page_on_the_demo_store_names_where_the_questions_come_from():
    from analysis.core.store import DEMO_DB
    at = app(DEMO_DB, None, "views/runs.py")
    assert not at.exception
    assert any("reasoning-gym" in c.value and "Apache-2.0" in c.value for c in at.caption)


def _monitor_log(tmp_path, synthetic_db, difficulty):
    """A decision log of the controller over a synthetic run, calibrated on the session's synthetic run."""
    import json
    from analysis.production.controller import Controller, simulate
    from analysis.presets.schema import from_dict
    from analysis.replay.engine import RunTable
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
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
    from analysis.presets.schema import loads
    assert loads(link).setting.params["B"] == 64
    at.switch_page("views/questions.py").run()
    assert not at.exception and any("B=64" in c.value for c in at.caption)


def test_compare_page_pairs_two_presets_with_slices(synthetic_db):
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/compare.py")
    assert not at.exception
    vals = {m.label: m.value for m in at.metric}
    assert "McNemar p" in vals and "→" in vals["EM: A → B"]
    assert at.selectbox(key="cmp_slice").value == "meta.difficulty"
    assert len(at.dataframe) == 2 and len(at.dataframe[1].value) == 3      # the 3 difficulty slices
    at.selectbox(key="cmp_B").set_value("a link or JSON…").run()
    at.text_input(key="cmp_B_text").input("sl1.garbage").run()
    assert not at.exception and "cannot be read" in at.error[0].value


def test_presets_page_saves_loads_and_rejects_bad_files(tmp_path, synthetic_db):
    import shutil
    db, rid, _ = synthetic_db
    mine = tmp_path / "mine.duckdb"
    shutil.copy(db, mine)
    at = app(str(mine), rid, "views/presets.py")
    assert not at.exception
    assert "s=sl1." in at.code[0].value and f"run={rid}" in at.code[0].value
    at.text_input(key="preset_name").input("careful").run()
    at.button(key="preset_save").click().run()
    assert not at.exception and "Saved 'careful'" in at.success[0].value
    from analysis.core.store import Store
    assert "careful" in Store(mine, read_only=True).presets()
    at.button(key="load_careful").click().run()
    assert not at.exception
    at.button(key="del_careful").click().run()
    assert "careful" not in Store(mine, read_only=True).presets()


def test_report_page_builds_html_markdown_and_charts(synthetic_db):
    import io
    import zipfile
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/report.py")
    assert not at.exception
    at.button(key="rep_build").click().run(timeout=180)
    assert not at.exception
    page, md, bundle = at.session_state["report"]
    assert page.startswith("<!doctype html>") and "Recommendation" in page and "data:image/svg+xml" in page
    assert "| preset | EM |" in md
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert {"report.html", "report.md", "figures/frontier_0.png", "figures/frontier_0.svg"} <= set(names)


def test_tune_jumps_to_an_operating_point_and_drives_a_hybrids_parts(synthetic_db):
    from analysis.evaluate.frontier import sweep
    from analysis.evaluate.optimize import pick
    from analysis.replay.engine import RunTable
    from analysis.core.store import Store
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/tune.py")
    at.radio(key="op_goal").set_value("drop").run()
    at.number_input(key="op_value_drop").set_value(0.01).run()
    at.radio(key="op_scope").set_value("all families").run()
    at.button(key="op_jump").click().run()
    assert not at.exception
    t = RunTable.from_store(Store(db, read_only=True), rid)
    want = pick(sweep(t), "drop", 0.01)
    assert any(want["label"] in c.value for c in at.caption)       # the page now shows that setting
    assert any("Jumped to" in i.value for i in at.info) and not at.warning
    # a hybrid: its two parts get their own family pickers and controls
    at.sidebar.selectbox(key="family").set_value("hybrid").run()
    assert not at.exception
    assert at.selectbox(key="hybrid.a.family").value == "confidence"
    at.selectbox(key="hybrid.b.family").set_value("budget").run()
    at.slider(key="hybrid.b.budget.B").set_value(100).run()
    assert not at.exception and any("b=(budget(B=100))" in c.value for c in at.caption)


def test_runs_page_starts_a_background_run_and_shows_its_progress(tmp_path, synthetic_db, monkeypatch):
    import time
    from analysis.production import jobs
    from analysis.backend.tiny import save_tiny
    from analysis.core.store import Store
    model_dir = save_tiny(tmp_path / "tiny", seed=2)
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    monkeypatch.setenv("STOPLINE_JOBS_DIR", str(tmp_path / "jobs"))
    db, rid, _ = synthetic_db
    at = app(db, rid, "views/runs.py")
    assert not at.exception
    at.selectbox(key="run_model").set_value("other (a local directory, .gguf file or hub id)")
    at.text_input(key="run_model_other").input(str(model_dir))
    at.number_input(key="run_limit").set_value(4)
    at.number_input(key="run_max_new").set_value(24)
    at.number_input(key="run_every").set_value(8)
    at.button[0].click().run()                    # the form's submit button
    assert not at.exception and "Started job" in at.success[0].value
    deadline = time.time() + 180
    while time.time() < deadline:
        (job,) = jobs.list_jobs()
        if job["state"] != "running":
            break
        time.sleep(1)
    assert job["state"] == "done", job
    (run,) = Store(mine, read_only=True).runs()
    assert run["n_questions"] == 4 and run["status"] == "complete"
    at.run()
    assert not at.exception and any("done" in m.value for m in at.markdown)


@pytest.fixture(scope="module")
def incumbent_db(tmp_path_factory):
    """A synthetic run with an incumbent stopping at 62% of each trace (a budget-like production stopper)."""
    from conftest import budget_like_run
    from analysis.core.store import Store
    p = str(tmp_path_factory.mktemp("inc") / "inc.duckdb")
    return p, budget_like_run(Store(p), 200, 12, seed=7)


def test_frontier_and_compare_offer_your_mechanism(incumbent_db, synthetic_db):
    db, rid = incumbent_db
    at = app(db, rid)
    assert not at.exception and any(c.value.startswith("Your mechanism") for c in at.caption)
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert "your mechanism" in at.selectbox(key="cmp_A").options
    at.selectbox(key="cmp_A").set_value("your mechanism").run()
    assert not at.exception
    assert any("A = your mechanism" in c.value for c in at.caption)
    vals = {m.label: m.value for m in at.metric}
    from analysis.evaluate.incumbent import incumbent_outcome
    from analysis.replay.engine import RunTable
    from analysis.core.store import Store
    em = incumbent_outcome(RunTable.from_store(Store(db, read_only=True), rid)).em.mean()
    assert vals["EM: A → B"].startswith(f"{em:.3f} →")
    sdb, srid, _ = synthetic_db                       # a run without one is not offered it
    at = app(sdb, srid, "views/compare.py")
    assert not at.exception and "your mechanism" not in at.selectbox(key="cmp_A").options
