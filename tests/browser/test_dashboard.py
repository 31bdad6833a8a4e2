"""Playwright in Debian's Chromium: what only a browser shows. The helpers below wait on the app's state (a
script run finished, a value changed, an element shown), never on a clock."""
import json
import os
import re

import pytest

from tests.helpers import CHAT, CHROMIUM, FIXTURES

FRONTIER = "[data-testid=stEChartsChart] svg"      # the Frontier chart (ECharts, SVG renderer)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")]


# -- helpers ------------------------------------------------------------------------------------------------
def open_page(browser, server, path: str, height: int = 1000, **kw):
    """A new page of the dashboard at ``path`` (a page and its query, without the store and run: they are
    added), in a window ``height`` pixels tall."""
    url, db, rid = server
    page = browser.new_page(viewport={"width": 1400, "height": height}, **kw)
    sep = "&" if "?" in path else "?"
    page.goto(f"{url}/{path}{sep}db={db}&run={rid}")
    return page


def wait_for_app_run(page, timeout: int = 90_000) -> None:
    """Until the script run in flight (if any) has finished: Streamlit marks its root with the run's state."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def metric(page, label):
    return page.locator(f"[data-testid='stMetric']:has-text('{label}') [data-testid='stMetricValue']").inner_text()


def wait_for_metric_change(page, label: str, before: str, timeout: int = 30_000) -> None:
    """Until the metric ``label`` shows something other than ``before``."""
    page.wait_for_function(
        "([l, b]) => [...document.querySelectorAll('[data-testid=stMetric]')]"
        ".some(m => m.innerText.includes(l) && !m.innerText.includes(b))", arg=[label, before], timeout=timeout)


def wait_for_heading_change(page, prefix: str, before: str, timeout: int = 30_000) -> None:
    """Until an h3 starting with ``prefix`` reads other than ``before``."""
    page.wait_for_function("([p, b]) => [...document.querySelectorAll('h3')]"
                           ".some(h => h.innerText.startsWith(p) && h.innerText !== b)", arg=[prefix, before],
                           timeout=timeout)


GRID_ROW_PX = 35        # st.dataframe's row height, its header's too (the grid is a canvas: rows are no elements)
ROW_MARKER_PX = 28      # the width of its row-marker column (the selection checkboxes)


def select_grid_row(page, grid, row: int) -> None:
    """Select data row ``row`` (0-based) of an ``st.dataframe`` with row selection, by its row marker."""
    box = grid.bounding_box()
    page.mouse.click(box["x"] + ROW_MARKER_PX / 2, box["y"] + GRID_ROW_PX * (row + 1) + GRID_ROW_PX / 2)


def click_chart_point(page, point) -> None:
    """Hover a Frontier point until its tooltip offers the click, then click it where it is drawn."""
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.get_by_text("click to make it current").wait_for(timeout=30_000)
    page.mouse.click(x, y)


def tune_and_move(browser, server, key: str, presses: int):
    """Open Tune on the budget family, note the savings, press a key on the first slider and wait until the
    savings shown change."""
    page = open_page(browser, server, "tune?family=budget")
    page.wait_for_selector("[data-testid='stMetric']", timeout=90_000)
    before = metric(page, "Tokens saved (emitted)")
    page.locator("[data-testid='stSlider'] input").first.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    wait_for_metric_change(page, "Tokens saved (emitted)", before)
    return page, before


def test_tune_slider_changes_the_numbers(server, browser):
    page, before = tune_and_move(browser, server, "End", 3)
    assert metric(page, "Tokens saved (emitted)") != before
    page.close()


def test_frontier_chart_is_drawn(server, browser):
    page = open_page(browser, server, "")
    page.wait_for_selector(f"{FRONTIER} path[transform^=matrix]", timeout=90_000)      # its points are drawn
    assert page.locator(f"{FRONTIER} text", has_text="full length").count() == 1          # in the legend
    assert page.locator(f"{FRONTIER} text", has_text="convex hull").count() == 1
    page.close()


def test_the_frontier_by_its_name_leads_to_the_frontier_with_the_link_state(server, browser):
    page = open_page(browser, server, "frontier?family=budget")      # the default page lives at the root
    page.wait_for_selector(f"{FRONTIER} path[transform^=matrix]", timeout=90_000)
    wait_for_app_run(page)
    assert "/frontier" not in page.url and "family=budget" in page.url and "run=" in page.url
    assert page.get_by_text("Page not found").count() == 0
    page.close()


def test_permalink_restores_the_setting_in_a_fresh_browser(server, browser):
    page, before = tune_and_move(browser, server, "End", 1)         # the budget to its top: full length
    page.wait_for_function("() => location.search.includes('s=sl1.')", timeout=30_000)
    wait_for_app_run(page)
    link, em = page.url, metric(page, "Lost / gained")
    tokens = metric(page, "Tokens saved (emitted)")
    page.close()
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})   # no cookies, no session
    p2 = fresh.new_page()
    p2.goto(link)
    p2.wait_for_selector("[data-testid='stMetric']", timeout=90_000)
    wait_for_app_run(p2)
    assert metric(p2, "Lost / gained") == em and metric(p2, "Tokens saved (emitted)") == tokens
    assert tokens != before                      # the link carries the moved slider, not the default
    fresh.close()


def test_a_question_opens_its_trace(server, browser):
    page = open_page(browser, server, "questions?family=consistency", height=1400)
    head = page.locator("h3:has-text('Trace of')")
    head.wait_for(timeout=90_000)
    first = head.inner_text()
    page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=60_000)
    # pick the table's third row: the trace below switches to that question
    select_grid_row(page, page.locator("[data-testid='stDataFrame']").first, 2)
    wait_for_heading_change(page, "Trace of", first)
    assert "q=" in page.url and page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1
    # another view of the table (the held-out half): the picked question stays, or the page says it is in the
    # other half; the row selection used to carry over by position and open whichever question sat there now
    picked = head.inner_text()
    page.get_by_text("the held-out half", exact=True).click()
    page.get_by_text(re.compile(r"^\d+ of \d+ questions, most tokens")).filter(has_not_text="of 600").wait_for()
    wait_for_app_run(page)
    assert head.inner_text() == picked or page.get_by_text("in the tune half, not this one").count(), picked
    page.close()


def test_report_downloads_as_a_self_contained_page(server, browser):
    page = open_page(browser, server, "report?family=consistency", height=1200, accept_downloads=True)
    page.click("button:has-text('Build the report')", timeout=90_000)
    button = page.get_by_role("button", name="Download HTML report", exact=True)
    button.wait_for(timeout=120_000)
    with page.expect_download() as dl:
        button.click()
    html = open(dl.value.path(), encoding="utf-8").read()
    assert html.startswith("<!doctype html>") and "Recommendation" in html
    assert "data:image/svg+xml;base64," in html and "<script src=" not in html   # nothing fetched from elsewhere
    page.close()


def test_clicking_a_frontier_point_makes_it_the_current_setting(server, browser):
    page = open_page(browser, server, "", height=1100)
    page.wait_for_selector(f"{FRONTIER} path[transform^=matrix]", timeout=90_000)
    assert page.locator("text=Current setting:").count() == 0
    # a point on the consistency family's front (its dominated points are drawn at opacity 0.25)
    pt = page.locator(f"{FRONTIER} path[transform^=matrix][fill='#2563eb']:not([fill-opacity='0.25'])").nth(1)
    click_chart_point(page, pt)
    page.wait_for_selector("text=Current setting:", timeout=30_000)
    assert "s=sl1." in page.url and "family=consistency" in page.url
    assert page.locator("p:has-text('Current setting:') code").inner_text().startswith("consistency(")
    page.wait_for_selector(f"{FRONTIER} path[stroke='#dc2626']", timeout=30_000)     # the ring on the chart
    page.close()


def open_import_tab(browser, server):
    """The Runs page's import tab, in a new page."""
    page = open_page(browser, server, "runs", height=1400)
    page.get_by_role("tab", name="Import generations").click()
    return page


def upload(page, path) -> None:
    """Put a file in the uploader and wait until the app has read it (its name shown, the run finished)."""
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(path))
    page.locator("[data-testid='stFileChipName']", has_text=path.name).wait_for(timeout=30_000)
    page.locator("[data-testid='stFileChipIconSpinner']").wait_for(state="detached", timeout=30_000)
    wait_for_app_run(page)


def import_as(page, model: str, dataset: str) -> str:
    """Name the model and dataset, press Import, and return the success message."""
    page.get_by_role("textbox", name="Model name").fill(model)
    page.get_by_role("textbox", name="Dataset name").fill(dataset)
    page.get_by_role("textbox", name="Dataset name").press("Enter")
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_selector("[data-testid='stAlertContentSuccess']", timeout=60_000)
    return page.locator("[data-testid='stAlertContentSuccess']").inner_text()


def test_upload_a_file_of_generations_with_a_field_mapping(server, browser, tmp_path):
    page = open_import_tab(browser, server)
    upload(page, FIXTURES / "solutions.jsonl")
    page.wait_for_selector("text=What the import would read", timeout=30_000)
    page.get_by_role("textbox", name="Response field").fill("outputs.solution")
    assert "EM at full length 0.750" in import_as(page, "hand", "hand-gsm")
    page.get_by_role("button", name="Show this run").click()       # the sidebar picks My store and the run
    page.wait_for_url("**db=mine**", timeout=30_000)
    wait_for_app_run(page)
    sidebar = page.locator("[data-testid='stSidebar']")
    picked = [sidebar.locator("[data-testid='stSelectbox']", has_text=w).locator("input").input_value()
              for w in ("Store", "Run")]
    assert picked[0] == "My store" and "hand" in picked[1], picked
    # the Import tab stays open, and is in the link (tab=)
    assert page.get_by_role("tab", name="Import generations").get_attribute("aria-selected") == "true"
    assert "tab=Import" in page.url, page.url
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1", "outputs": {"solution": "1"}}\n{"question": "q2"}\n')
    upload(page, bad)
    # the preview is of the new file ("text=2 records" would also match the last file's "32 records")
    page.get_by_text(re.compile(r"^2 records;")).wait_for(timeout=30_000)
    wait_for_app_run(page)
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_selector("[data-testid='stAlertContentError']", timeout=60_000)
    err = page.locator("[data-testid='stAlertContentError']").inner_text()
    assert "bad.jsonl" in err and "line 2" in err
    page.close()


def test_upload_a_chat_log_with_reasoning_shows_what_it_reads_first(server, browser, tmp_path):
    """The upload form's other formats: an OpenAI-style chat log previewed (its record count and a table of
    what the import would read), then imported."""
    log = tmp_path / "proxy-log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    page = open_import_tab(browser, server)
    page.get_by_text("openai-chat", exact=True).click()
    upload(page, log)
    page.get_by_text(re.compile(r"^4 records;")).wait_for(timeout=30_000)
    page.locator("[data-testid='stDataFrame']").last.wait_for(timeout=30_000)
    done = import_as(page, "r1", "chat-arith")
    assert "4 traces" in done and "EM at full length 0.750" in done
    page.close()


def test_upload_a_checkpoint_export_with_its_fields_mapped(server, browser, tmp_path):
    """The upload form's per-checkpoint format: another tool's Parquet export in long form (one row per probe),
    its fields mapped, previewed, then imported with its confidence as a signal."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"qid": q, "question": f"Calculate {q}.", "gold": gold, "tokens": 32 * (j + 1), "probe": probe,
             "conf": conf} for q, gold, probes in (("7 + 5", "12", [("11", 0.4), ("12", 0.9), ("12", 0.97)]),
                                                   ("3 * 3", "9", [("9", 0.95), ("6", 0.5)]))
            for j, (probe, conf) in enumerate(probes)]
    path = tmp_path / "probes.parquet"              # (a short name: the uploader's chip shows it whole)
    pq.write_table(pa.Table.from_pylist(rows), path)
    page = open_import_tab(browser, server)
    page.locator("[data-testid='stRadio']").get_by_text("checkpoints", exact=True).click()
    wait_for_app_run(page)
    upload(page, path)
    page.get_by_text(re.compile(r"^5 records;")).wait_for(timeout=30_000)
    for label, value in (("Gold field", "gold"), ("Trial answer field", "probe"), ("Signals (NAME=FIELD, …)", "p_mean=conf")):
        box = page.get_by_role("textbox", name=label)
        box.fill(value)
        box.press("Enter")
        wait_for_app_run(page)
        assert box.input_value() == value
    done = import_as(page, "dynasor-model", "arith-probes")
    assert "2 traces" in done and "5 checkpoints" in done and "EM at full length 0.500" in done, done
    page.close()


def test_a_site_whose_name_resolves_to_this_machine_sees_nothing(server, browser_type, browser_type_launch_args):
    """DNS rebinding, for real: Chromium resolves evil.example to 127.0.0.1, as a rebinding site makes a victim's
    browser do, and its page reaches the local dashboard; the dashboard shows it no store and no page, while
    localhost still gets the dashboard."""
    url, db, rid = server
    port = url.rsplit(":", 1)[1]
    args = {**browser_type_launch_args, "args": [*browser_type_launch_args["args"],
                                                 "--host-resolver-rules=MAP evil.example 127.0.0.1"]}
    b = browser_type.launch(**args)
    try:
        page = b.new_page()
        page.goto(f"http://evil.example:{port}/runs")
        page.wait_for_selector("text=This dashboard answers only to this machine's names", timeout=90_000)
        wait_for_app_run(page)
        body = page.inner_text("body")
        assert "evil.example" in body and "Runs" not in page.locator("h2").all_inner_texts()
        assert rid not in body and page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").count() == 0
        page.goto(f"http://localhost:{port}/runs")
        page.locator("h2", has_text="Runs").first.wait_for(timeout=90_000)
    finally:
        b.close()
