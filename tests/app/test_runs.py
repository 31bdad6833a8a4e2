"""AppTest: The Runs page: what the store holds, background runs, imports."""
from tests.helpers import open_app, the_job_when_it_ends


def test_runs_page_lists_runs(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/runs.py")
    assert not at.exception and len(at.dataframe[0].value) == 2


def test_runs_page_on_the_demo_store_names_where_the_questions_come_from():
    from analysis.core.store import DEMO_DB
    at = open_app(DEMO_DB, None, "views/runs.py")
    assert not at.exception
    assert any("reasoning-gym" in c.value and "Apache-2.0" in c.value for c in at.caption)


def test_runs_page_starts_a_background_run_and_shows_its_progress(tmp_path, synthetic_db, monkeypatch):
    from analysis.backend.tiny import save_tiny
    from analysis.core.store import Store
    model_dir = save_tiny(tmp_path / "tiny", seed=2)
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    monkeypatch.setenv("STOPLINE_JOBS_DIR", str(tmp_path / "jobs"))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/runs.py")
    assert not at.exception
    at.selectbox(key="run_model").set_value("other (a local directory, .gguf file or hub id)")
    at.text_input(key="run_model_other").input(str(model_dir))
    at.number_input(key="run_limit").set_value(4)
    at.number_input(key="run_max_new").set_value(24)
    at.number_input(key="run_every").set_value(8)
    at.button[0].click().run()                    # the form's submit button
    assert not at.exception and "Started job" in at.success[0].value
    job = the_job_when_it_ends(180)
    assert job["state"] == "done", job
    assert (job["done"], job["total"]) == (4, 4), job      # the run's own bar (not "Loading weights n/n")
    (run,) = Store(mine, read_only=True).runs()
    assert run["n_questions"] == 4 and run["status"] == "complete"
    at.run()
    assert not at.exception and any("done" in m.value for m in at.markdown)
    at.button(key=f"show_{job['id']}").click().run()         # the run is one click from the sidebar
    assert not at.exception and at.selectbox(key="store_pick").value == "My store"
    assert at.selectbox(key="run_pick").value == run["id"]


def test_an_imported_run_is_one_click_from_the_sidebar(tmp_path, synthetic_db, monkeypatch):
    """The import writes to 'My store'; its success message offers the run, which the click makes the sidebar's
    store and run (and the URL's), so every page shows it."""
    from tests.helpers import FIXTURES
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/runs.py")
    at.file_uploader(key="imp_file").upload("solutions.jsonl", (FIXTURES / "solutions.jsonl").read_bytes()).run()
    at.text_input(key="imp_r_jsonl").input("outputs.solution")
    at.text_input(key="imp_model").input("hand")
    at.text_input(key="imp_dataset").input("hand-gsm").run()
    at.button(key="imp_go").click().run()
    assert not at.exception and "EM at full length 0.750" in at.success[0].value, [e.value for e in at.error]
    assert at.selectbox(key="store_pick").value != "My store"
    at.button(key="imp_show").click().run()
    assert not at.exception
    new = at.success[0].value if at.success else ""
    assert at.selectbox(key="store_pick").value == "My store", new
    imported = at.selectbox(key="run_pick").value
    assert imported != rid and at.query_params["run"] == imported and at.query_params["db"] == "mine"
    assert len(at.dataframe[0].value) == 1          # the runs table is My store's: the imported run alone
