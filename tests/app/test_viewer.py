"""AppTest: sharing the dashboard (issue 21): viewer mode, the login, stores by name, visits that write nothing,
and the limits of what a page may start or take."""
import os
import tempfile
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT, open_app

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "id",
        "client_secret": "secret", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}


def app(db: str | None = None, page: str | None = None, **setup) -> AppTest:
    """The app with ``db=`` in its link as given (not put on the allow-list), run once, then on ``page``."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if db:
        at.query_params["db"] = db
    for k, v in setup.items():
        setattr(at, k, v)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


# -- viewer mode ------------------------------------------------------------------------------------------------
def test_viewer_mode_offers_no_runs_imports_uploads_or_writes(synthetic_db, monkeypatch):
    db, rid, _ = synthetic_db
    monkeypatch.setenv("STOPLINE_VIEWER", "1")
    at = open_app(db, rid, "views/runs.py")
    assert not at.exception
    assert len(at.dataframe) == 1                                   # the runs still show
    assert not at.file_uploader and not at.tabs and not at.button
    assert not [s for s in at.selectbox if s.key == "run_model"]
    assert any("Viewer mode" in i.value for i in at.info)
    assert any("Viewer mode" in c.value for c in at.sidebar.caption)

    at.switch_page("views/presets.py").run()
    assert not at.exception
    assert "s=sl1." in at.code[0].value                             # the permalink is the same in both modes
    assert not at.file_uploader and not [b for b in at.button if b.key == "preset_save"]
    assert not [t for t in at.text_input if t.key == "preset_name"]

    at.switch_page("views/monitor.py").run()
    assert not at.exception
    assert not at.file_uploader and not [r for r in at.radio if r.key == "log_src"]
    assert not [e for e in at.expander if "Re-certify" in e.label]
    assert any("requests" in m.value for m in at.markdown)         # the bundled log's report still shows


def test_viewer_mode_refuses_writes_whoever_asks(tmp_path, monkeypatch):
    """The pages offer no writes; the data seam refuses them too (the second lock)."""
    from analysis.core.errors import StoplineError
    from views import data
    monkeypatch.setenv("STOPLINE_VIEWER", "1")
    target = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(target))
    for write in (lambda: data.save_preset(str(target), "p", {}), lambda: data.delete_preset(str(target), "p"),
                  data.my_store, lambda: data.rollback("log", "labels", {}, str(tmp_path / "h.jsonl"), 0.05)):
        with pytest.raises(StoplineError, match="viewer mode"):
            write()
    assert not target.exists()


def test_the_full_workbench_offers_what_viewer_mode_hides(synthetic_db, monkeypatch):
    """The contrast of the test above: without viewer mode the same pages offer runs, uploads and saves."""
    db, rid, _ = synthetic_db
    monkeypatch.delenv("STOPLINE_VIEWER", raising=False)
    at = open_app(db, rid, "views/runs.py")
    assert not at.exception and at.file_uploader and at.tabs
    assert not any("Viewer mode" in c.value for c in at.sidebar.caption)
    at.switch_page("views/presets.py").run()
    assert [b for b in at.button if b.key == "preset_save"] and at.file_uploader


def test_exposed_without_a_login_the_app_is_a_viewer(synthetic_db, monkeypatch):
    """`streamlit run app.py --server.address 0.0.0.0` skips the command line's check: the app itself then
    serves viewer mode and says why."""
    from streamlit import config
    db, rid, _ = synthetic_db
    monkeypatch.delenv("STOPLINE_VIEWER", raising=False)
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = open_app(db, rid, "views/runs.py")
    finally:
        config.set_option("server.address", before)
    assert not at.exception and not at.file_uploader and not at.tabs
    assert any("no login is configured" in c.value for c in at.sidebar.caption)


def test_a_configured_login_is_asked_for_before_any_page():
    at = app(secrets={"auth": AUTH}, user={"is_logged_in": False})
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.sidebar.selectbox and not at.dataframe           # nothing of the stores before the login
    at = app(secrets={"auth": AUTH}, user={"is_logged_in": True, "email": "ann@example.com"})
    assert not at.exception
    assert any("ann@example.com" in c.value for c in at.sidebar.caption)
    assert at.sidebar.selectbox(key="store_pick") and at.header[0].value == "Frontier"


# -- stores by name ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["/etc/passwd", "/no/such/store.duckdb", "../../etc/shadow"])
def test_a_link_naming_a_store_off_the_list_is_refused_and_tells_nothing(ref):
    at = app(ref)
    assert not at.exception and not at.sidebar.error
    (w,) = at.sidebar.warning
    assert "not one this dashboard offers" in w.value and ref not in w.value
    assert at.query_params["db"] == "demo"                         # the demo store shown instead
    assert at.sidebar.selectbox(key="store_pick").value.startswith("Demo store")


def test_stores_in_a_configured_folder_are_named_by_key(tmp_path, synthetic_db, monkeypatch):
    import shutil
    db, rid, rid_text = synthetic_db
    shutil.copy(db, tmp_path / "team-runs.duckdb")
    monkeypatch.setenv("STOPLINE_STORES", str(tmp_path))
    at = app("team-runs")
    assert not at.exception and not at.sidebar.warning
    assert at.sidebar.selectbox(key="store_pick").value == "team-runs"
    assert at.sidebar.selectbox(key="run_pick").value in (rid, rid_text)
    at = app(str(tmp_path / "team-runs.duckdb"))                    # an allowed store's path: the same store
    assert at.sidebar.selectbox(key="store_pick").value == "team-runs" and at.query_params["db"] == "team-runs"


def test_a_visit_never_converts_or_migrates_a_store(tmp_path, monkeypatch):
    """An empty DuckDB file on the list used to be turned into a Stopline store (12 KB -> 798 KB) by a visit."""
    import duckdb
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    before = empty.read_bytes()
    monkeypatch.setenv("STOPLINE_STORES", str(empty))
    monkeypatch.delenv("STOPLINE_VIEWER", raising=False)            # the full workbench: still read-only visits
    at = app("empty")
    assert not at.exception
    assert any("migration" in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    assert empty.read_bytes() == before and not Path(str(empty) + ".wal").exists()


# -- limits -----------------------------------------------------------------------------------------------------
def test_the_runs_page_states_and_applies_its_limits(synthetic_db, monkeypatch):
    db, rid, _ = synthetic_db
    monkeypatch.setenv("STOPLINE_MAX_QUESTIONS", "50")
    monkeypatch.setenv("STOPLINE_MAX_NEW_TOKENS", "512")
    at = open_app(db, rid, "views/runs.py")
    assert not at.exception
    assert at.number_input(key="run_limit").max == 50 and at.number_input(key="run_max_new").max == 512
    assert any("50 questions and 512 new tokens" in c.value for c in at.caption)


def test_an_upload_over_the_limit_is_refused_with_the_limit_named(synthetic_db, monkeypatch):
    db, rid, _ = synthetic_db
    mine = Path(os.environ["STOPLINE_DB"])
    monkeypatch.setenv("STOPLINE_MAX_UPLOAD_MB", "1")
    at = open_app(db, rid, "views/runs.py")
    big = b'{"question": "1 + 1?", "answer": "2", "response": "' + b"x" * (1_200_000) + b'"}\n'
    at.file_uploader(key="imp_file").upload("big.jsonl", big).run()
    assert not at.exception
    assert any("at most 1 MB" in e.value and "big.jsonl" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="imp_go").disabled and not mine.exists()


def test_a_monitor_upload_is_deleted_after_use(tmp_path, monkeypatch):
    """The upload's copy goes at the end of the script run; one a rerun interrupted (left behind) goes after an
    hour, a recent one (another session's, in use) stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))        # where the page's copies would stay
    monkeypatch.delenv("STOPLINE_VIEWER", raising=False)
    stale, recent = tmp_path / "stopline-monitor" / "stale", tmp_path / "stopline-monitor" / "recent"
    for d in (stale, recent):
        d.mkdir(parents=True)
        (d / "log.jsonl").write_text("{}")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    at = app(page="views/monitor.py")
    at.radio(key="log_src").set_value("upload").run()
    log = ROOT / "data" / "demo-logs" / "serve-demo.jsonl"
    at.file_uploader(key="log_up").upload("serve-demo.jsonl", log.read_bytes()).run()
    assert not at.exception
    assert any("requests" in m.value for m in at.markdown)         # the report was made from the upload
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["stopline-monitor", "stopline-monitor/recent", "stopline-monitor/recent/log.jsonl"]


def test_viewer_mode_replays_a_links_learned_rule_on_the_recorded_schedule_only(synthetic_db, monkeypatch):
    """Each probe schedule means fitting a learned rule again (seconds to tens of seconds of CPU): a visitor's link
    with one is refused there, with the reason, and the page shows the defaults; a plain rule's schedule is fine."""
    from analysis.presets.schema import Preset
    from analysis.replay.policies.base import Setting
    db, rid, _ = synthetic_db
    monkeypatch.setenv("STOPLINE_VIEWER", "1")
    learned = Setting.from_dict({"family": "hybrid", "schedule": {"min_tokens": 7}, "params": {
        "a": {"family": "learned", "params": {"model": "boosting"}}, "b": {"family": "budget", "params": {"B": 64}}}})
    for s, refused in ((learned, True), (Setting.from_dict({"family": "budget", "params": {"B": 64},
                                                             "schedule": {"min_tokens": 7}}), False)):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        from tests.helpers import offer_store
        offer_store(db)
        at.query_params.update({"db": db, "run": rid, "s": Preset("x", s).to_url(), "family": s.family})
        at.run()
        at.switch_page("views/tune.py").run()
        assert not at.exception
        said = [w.value for w in at.warning if "learned rule on its own probe schedule is off in viewer mode" in w.value]
        assert bool(said) == refused, [w.value for w in at.warning]
    at.switch_page("views/compare.py").run()                   # the same, pasted as preset B
    at.selectbox(key="cmp_B").set_value("a link or JSON…").run()
    at.text_input(key="cmp_B_text").input(Preset("x", learned).to_url()).run()
    assert not at.exception
    assert any("learned rule on its own probe schedule is off in viewer mode" in e.value for e in at.error)
