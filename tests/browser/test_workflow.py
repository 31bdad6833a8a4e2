"""Playwright: the workflow a user follows, page to page (issue 22): a Frontier click, the setting tuned, its
questions, compared against a saved preset, reported, and its permalink opened in a fresh browser, with the
same setting and the same numbers at every step."""
import os
import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_dashboard import FRONTIER, click_chart_point, open_page, wait_for_app_run
from tests.helpers import CHROMIUM

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")]


def go(page, title: str) -> None:
    """Change page with the sidebar's navigation, as a user does (the browser drops the query string)."""
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.locator("h2", has_text=title).first.wait_for(timeout=90_000)
    wait_for_app_run(page)


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label``."""
    page.locator("[data-testid='stSelectbox']", has_text=label).first.click()
    page.locator("[role='option']", has_text=option).first.click()
    wait_for_app_run(page)


def metric(page, label: str) -> str:
    """The value of the metric labelled exactly ``label``."""
    label_el = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label_el).get_by_test_id("stMetricValue").inner_text()


def shown_setting(page) -> str:
    """The setting the Tune page's caption names."""
    text = page.locator("[data-testid='stCaptionContainer']", has_text="Setting:").first.inner_text()
    return re.search(r"Setting: (\S+\(.*?\))\.", text).group(1)


def test_one_setting_and_the_same_numbers_through_the_whole_workflow(server, browser):
    from analysis.core.store import Store
    url, db, rid = server
    page = open_page(browser, server, "", height=1400, accept_downloads=True)
    try:
        # 1. Frontier: click a point of the consistency family's front
        page.wait_for_selector(f"{FRONTIER} path[transform^=matrix]", timeout=90_000)
        pt = page.locator(f"{FRONTIER} path[transform^=matrix][fill='#2563eb']:not([fill-opacity='0.25'])").nth(1)
        click_chart_point(page, pt)
        page.wait_for_selector("text=Current setting:", timeout=30_000)
        clicked = page.locator("p:has-text('Current setting:') code").inner_text()
        assert clicked.startswith("consistency(")
        # save it as a preset, to compare against later
        go(page, "Presets")
        assert clicked in page.locator("p:has-text('set it on the Tune page') code").inner_text()
        page.get_by_role("textbox", name="Save as").fill("clicked")
        page.get_by_role("textbox", name="Save as").press("Enter")
        wait_for_app_run(page)
        page.get_by_role("button", name="Save preset").click()
        page.wait_for_selector("[data-testid='stAlertContentSuccess']", timeout=30_000)
        # 2. Tune: the clicked setting, in its family; move its first control
        go(page, "Tune")
        family = page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']", has_text="Policy family")
        assert family.locator("input").input_value() == "Answer consistency"
        assert shown_setting(page) == clicked
        page.locator("[data-testid='stSlider'] input").first.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("(c) => !document.body.innerText.includes('Setting: ' + c + '.')", arg=clicked,
                               timeout=30_000)
        wait_for_app_run(page)
        tuned = shown_setting(page)
        assert tuned != clicked and tuned.startswith("consistency(")
        em, lost_gained = metric(page, "EM"), metric(page, "Lost / gained")
        assert "s=sl1." in page.url and "family=consistency" in page.url
        # 3. Questions: the tuned setting, the same lost and gained against full length
        go(page, "Questions")
        assert f"Current setting: {tuned}" in page.locator("[data-testid='stCaptionContainer']",
                                                           has_text="Current setting:").first.inner_text()
        assert f"{metric(page, 'Lost')} / {metric(page, 'Gained')}" == lost_gained
        assert "s=sl1." in page.url and "family=consistency" in page.url
        # 4. Compare: the saved preset (A) against the current setting (B)
        go(page, "Compare")
        pick(page, "Side A", "preset: clicked")
        pick(page, "Side B", "the current setting")
        ab = metric(page, "EM: A → B")
        assert ab.endswith(f"→ {em}"), (ab, em)
        assert f"B = {tuned}" in page.locator("[data-testid='stCaptionContainer']", has_text="A = ").inner_text()
        # 5. Report: the current setting's row has the same EM
        go(page, "Report")
        page.get_by_role("button", name="Build the report").click()
        page.get_by_role("button", name="Download HTML report", exact=True).wait_for(timeout=180_000)
        row = page.locator("tr", has_text=f"current: {tuned}").first.inner_text()
        assert row.split("\t")[1].strip() == em, row
        # 6. the permalink, opened in a fresh browser: the same setting and numbers on Tune
        go(page, "Presets")
        link = page.locator("[data-testid='stCode'] code").first.inner_text().strip()
        assert "s=sl1." in link
    finally:
        page.close()
        Store(server.mine).delete_preset("clicked")        # saved in the user's store, never the linked one
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
    p2 = fresh.new_page()
    p2.goto(link)
    p2.wait_for_selector("[data-testid='stMetric']", timeout=90_000)
    wait_for_app_run(p2)
    assert shown_setting(p2) == tuned
    assert metric(p2, "EM") == em and metric(p2, "Lost / gained") == lost_gained
    fresh.close()


def test_the_questions_table_toolbar_leaves_the_show_filter_uncovered(server, browser):
    page = open_page(browser, server, "questions", height=1400)
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.wait_for(timeout=90_000)
    wait_for_app_run(page)
    grid.hover()
    bar = page.locator("[data-testid='stElementToolbar']").first
    bar.wait_for(state="visible", timeout=10_000)
    tb = bar.bounding_box()
    show = page.locator("[data-testid='stMultiSelect']", has_text="Show").first.bounding_box()
    assert tb["y"] >= show["y"] + show["height"], (tb, show)          # below the filter, not over its chips
    page.close()


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory):
    """The dashboard with a jobs folder and a user's store the test writes: (url, scratch folder)."""
    from analysis.cli.appserver import dashboard
    scratch = tmp_path_factory.mktemp("jobs-server")
    env = {"STOPLINE_DB": str(scratch / "mine.duckdb"), "STOPLINE_JOBS_DIR": str(scratch / "jobs"),
           "STOPLINE_LOG_DIR": str(scratch / "logs")}
    with dashboard(env) as url:
        yield url, scratch


def test_a_finished_jobs_run_shows_in_the_runs_table_without_a_reload(jobs_server, browser):
    """The job panel refreshes on its own; when a job ends, the page around it (the runs table) does too."""
    import json
    import subprocess
    import sys
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    url, scratch = jobs_server
    mine = scratch / "mine.duckdb"
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])     # stands in for a run
    d = scratch / "jobs" / "20261205-000000-abcdef"
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"id": d.name, "cmd": [], "pid": job.pid, "started": 0, "model": "m",
                                            "dataset": "rg:x", "db": str(mine)}))
    (d / "log").write_text("")
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    try:
        page.goto(f"{url}/runs?db={mine}")
        page.get_by_text("This store has no runs yet").first.wait_for(timeout=90_000)
        page.get_by_text(f"job {d.name} · running").first.wait_for(timeout=30_000)
        write_synthetic_run(Store(mine), 20, 5, seed=4)          # the job's run, committed
        (d / "log").write_text("run 1234: 20 questions\n")
        job.kill()
        job.wait()                                               # reaped: the job has ended
        page.get_by_text(f"job {d.name} · done").first.wait_for(timeout=30_000)
        page.get_by_text("This store has no runs yet").first.wait_for(state="detached", timeout=30_000)
        assert page.locator("[data-testid='stDataFrame']").count() >= 1
    finally:
        page.close()
        if job.poll() is None:
            job.kill()


def test_a_jump_moves_the_controls_on_screen_to_the_setting_it_chose(server, browser):
    """After Jump the browser's sliders show the chosen setting, not the values they had (here k=16, from a
    link)."""
    from analysis.presets.schema import Preset
    from analysis.replay.policies.base import Setting
    link = Preset("k16", Setting.from_dict({"family": "consistency", "params": {"k": 16}})).to_url()
    page = open_page(browser, server, f"tune?family=consistency&s={link}", height=1400)
    try:
        page.locator("h2", has_text="Tune").first.wait_for(timeout=90_000)
        wait_for_app_run(page)
        # k's slider, by its label; expect() waits out a rerun still drawing the page
        thumb = page.locator("[data-testid='stSlider']:has(input[aria-label='k'])").get_by_test_id(
            "stSliderThumbValue")
        expect(thumb).to_have_text("16", timeout=60_000)
        page.get_by_text("Jump to an operating point").click()
        page.get_by_role("button", name="Jump").click()
        page.wait_for_selector("text=Jumped to", timeout=60_000)
        wait_for_app_run(page)
        jumped = shown_setting(page)
        want = re.search(r"k=(\d+)", jumped).group(1)
        assert jumped.startswith("consistency(") and want != "16", jumped      # the jump chose another k
        expect(thumb).to_have_text(want, timeout=30_000)     # and the slider on screen moved with it
    finally:
        page.close()
