"""AppTest: The Report page."""
from tests.helpers import open_app


def test_report_page_builds_html_markdown_and_charts(synthetic_db):
    import io
    import zipfile
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/report.py")
    assert not at.exception
    at.button(key="rep_build").click().run(timeout=180)
    assert not at.exception
    page, md, bundle = at.session_state["report"]
    assert page.startswith("<!doctype html>") and "Recommendation" in page and "data:image/svg+xml" in page
    assert "| preset | EM |" in md
    repro = md[md.index("## Reproduce"):]                   # what it was made from, and the command to make it again
    assert f"Run `{rid}`" in repro and f"--db {db} --run {rid} --preset sl1." in repro and "| current: " in repro
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert {"report.html", "report.md", "figures/frontier_0.png", "figures/frontier_0.svg"} <= set(names)


def test_a_recommendation_that_misses_its_target_held_out_is_red(demo):
    """On the demo's basic-arithmetic run the fewest tokens within a 1% drop on the tune half drops 1% on the
    held-out half too: the report says so in red (a red span in the HTML and its preview) and, in the Markdown,
    in bold after a warning sign (LaTeX's colour showed as its source in most Markdown viewers)."""
    from analysis.core.store import DEMO_DB
    rid = next(r["id"] for r in demo.runs() if r["dataset"] == "rg:basic_arithmetic"
               and r["model"].startswith("qwen"))
    at = open_app(DEMO_DB, rid, "views/report.py")
    at.select_slider(key="rep_drop").set_value("0.010").run()
    at.button(key="rep_build").click().run(timeout=180)
    assert not at.exception
    page, md, _ = at.session_state["report"]
    assert "**⚠ It misses its target on the held-out questions: ΔEM -0.010" in md and "\\color" not in md
    assert "<span class='miss'>It misses its target on the held-out questions: ΔEM -0.010" in page
    assert any("<span class='miss'>It misses" in h.proto.body for h in at.get("html"))


def test_the_report_page_chooses_the_cost_basis(synthetic_db):
    """Tokens emitted or computed: the page passes the pick to the report (its recommendation and the command
    that makes it again say which)."""
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/report.py")
    assert at.radio(key="rep_cost").value == "emitted"
    at.radio(key="rep_cost").set_value("computed").run()
    at.button(key="rep_build").click().run(timeout=180)
    assert not at.exception
    _, md, _ = at.session_state["report"]
    assert "the fewest tokens computed (probes included)" in md and "--cost computed" in md


def test_the_report_picks_live_in_the_link(synthetic_db):
    """The EM drop, the cost basis and the break-down are in the URL: a fresh session on the link (a reload, the
    link sent to a colleague) reopens them, and a link naming a drop the page does not offer says so."""
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT, offer_store
    db, rid, other = synthetic_db
    at = open_app(db, rid, "views/report.py")
    at.select_slider(key="rep_drop").set_value("0.045").run()
    at.radio(key="rep_cost").set_value("computed").run()
    at.selectbox(key="rep_slice").set_value("length").run()
    assert not at.exception
    link = {k: at.query_params[k] for k in ("drop", "cost", "losses")}
    assert link == {"drop": "0.045", "cost": "computed", "losses": "length"}, link
    at.multiselect(key="rep_runs").select(other).run()              # a second run: both in the link
    assert not at.exception and at.query_params["run_ids"] == [rid, other], at.query_params
    assert at.query_params["preset"] in (["current"], "current"), at.query_params
    link["run_ids"] = [rid, other]
    offer_store(db)
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    again.query_params.update({"db": db, "run": rid, **link})
    again.switch_page("views/report.py").run()
    assert (again.select_slider(key="rep_drop").value, again.radio(key="rep_cost").value,
            again.selectbox(key="rep_slice").value) == ("0.045", "computed", "length")
    assert again.multiselect(key="rep_runs").value == [rid, other]
    assert again.multiselect(key="rep_presets").value == ["the current setting"]
    odd = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    odd.query_params.update({"db": db, "run": rid, "drop": "0.3"})
    odd.switch_page("views/report.py").run()
    assert odd.select_slider(key="rep_drop").value == "0.020"
    assert any("The EM drop in this link, '0.300', is not offered here" in w.value for w in odd.warning)
    short = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)       # written by hand: 0.05 is 0.050
    short.query_params.update({"db": db, "run": rid, "drop": "0.05"})
    short.switch_page("views/report.py").run()
    assert short.select_slider(key="rep_drop").value == "0.050" and not short.warning


def test_a_built_reports_link_opens_the_report_and_changed_picks_hide_a_stale_one(synthetic_db):
    """Before, a report's link reopened its picks and waited for a click on Build; and a report built before the
    picks changed stayed below them, saying other things."""
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT, offer_store
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/report.py")
    at.select_slider(key="rep_drop").set_value("0.030").run()
    assert "built" not in at.query_params
    at.button(key="rep_build").click().run(timeout=180)
    assert not at.exception and at.query_params["built"] == "1" and at.get("html")
    link = {k: at.query_params[k] for k in ("drop", "cost", "losses", "run_ids", "preset", "built")}
    offer_store(db)
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    again.query_params.update({"db": db, "run": rid, **link})
    again.switch_page("views/report.py").run()
    assert not again.exception and again.session_state["report"] and again.get("html")     # built on opening
    assert "--drop 0.03" in again.session_state["report"][1]                # with the picks of the link
    again.select_slider(key="rep_drop").set_value("0.010").run()
    assert not again.get("html") and "built" not in again.query_params
    assert any("changed since the report was built" in i.value for i in again.info)
    again.select_slider(key="rep_drop").set_value("0.030").run()          # back to the picks it was built on
    assert again.get("html") and again.query_params["built"] == "1"
