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
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert {"report.html", "report.md", "figures/frontier_0.png", "figures/frontier_0.svg"} <= set(names)
