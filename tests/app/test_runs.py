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
    at.text_input(key="imp_stop").input("id").run()         # the file's ids stand for a stopper's positions
    at.button(key="imp_go").click().run()
    assert not at.exception and "EM at full length 0.750" in at.success[0].value, [e.value for e in at.error]
    from analysis.core.store import Store
    assert Store(mine, read_only=True).runs()[0]["n_incumbent"] > 0       # "your mechanism" came in with it
    assert at.selectbox(key="store_pick").value != "My store"
    at.button(key="imp_show").click().run()
    assert not at.exception
    new = at.success[0].value if at.success else ""
    assert at.selectbox(key="store_pick").value == "My store", new
    imported = at.selectbox(key="run_pick").value
    assert imported != rid and at.query_params["run"] == imported and at.query_params["db"] == "mine"
    assert len(at.dataframe[0].value) == 1          # the runs table is My store's: the imported run alone


def test_an_upload_that_expands_past_the_caps_is_refused_naming_the_figure(tmp_path, synthetic_db, monkeypatch):
    """The review's decompression bomb, small: a 2 KB response on each of 5,000 rows, which Parquet stores
    once. The preview reads its first rows only; the import measures it before expanding it and refuses it
    (the caps follow STOPLINE_MAX_UPLOAD_MB: at 1 MB, 20,000 records and 8 MB once decoded); no store is made.
    A file with more rows than the cap is refused by the preview itself, from the file's footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    monkeypatch.setenv("STOPLINE_MAX_UPLOAD_MB", "1")
    n = 5_000
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"question": ["What is 2 + 2?"] * n, "answer": ["4"] * n,
                             "response": ["Let me think. " * 140 + "#### 4"] * n}), bomb, compression="zstd")
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/runs.py")
    at.file_uploader(key="imp_file").upload("bomb.parquet", bomb.read_bytes()).run()
    at.text_input(key="imp_model").input("m")
    at.text_input(key="imp_dataset").input("d").run()
    assert not at.exception and not at.error and any("5000 records" in c.value for c in at.caption)
    at.button(key="imp_go").click().run()
    assert not at.exception
    (err,) = [e.value for e in at.error]
    assert err.startswith("bomb.parquet: holds 9.7 MB of data once decoded (") and "may hold at most 8 MB" in err, err
    assert "python -m analysis import" in err and "STOPLINE_MAX_UPLOAD_MB" in err
    assert not mine.exists()
    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["q"] * 25_000, "answer": ["4"] * 25_000, "response": ["4"] * 25_000}), rows)
    at.file_uploader(key="imp_file").upload("rows.parquet", rows.read_bytes()).run()
    assert not at.exception
    assert [e.value.split("\n")[0] for e in at.error] == [
        "rows.parquet: holds 25,000 rows; a file imported from the dashboard may hold at most 20,000"]
