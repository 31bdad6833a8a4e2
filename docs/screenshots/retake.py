"""Retake the README's screenshots (docs/screenshots/*.png) on the bundled demo store, walking the workflow a
user follows: a setting from a link, Tune, Questions, Compare against a saved preset, the Report, the Frontier,
the Monitor.
Run from the repository root: ``python docs/screenshots/retake.py`` (``PYTHONPATH=.`` in a git worktree
other than the installed one; Debian's /usr/bin/chromium). The Monitor reads the bundled decision log."""
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

from analysis.cli.appserver import dashboard
from analysis.core.store import DEMO_DB
from analysis.presets.schema import from_setting
from analysis.replay.policies import Setting

OUT = Path(__file__).resolve().parent
RUN = "c7a2483a9092"                                   # Qwen2.5-Coder-0.5B on easier arithmetic
SETTING = Setting.make("consistency", k=3, min_tokens=0)


def settle(page) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=180_000)
    page.wait_for_timeout(1500)                        # charts finish their animation


def go(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.locator("h2", has_text=title).first.wait_for(timeout=90_000)
    settle(page)


def shot(page, name: str, height: int) -> None:
    page.set_viewport_size({"width": 1400, "height": height})
    settle(page)
    page.screenshot(path=str(OUT / f"{name}.png"))


def main() -> None:
    scratch = tempfile.mkdtemp(prefix="stopline-shots-")
    env = {"STOPLINE_DB": f"{scratch}/mine.duckdb", "STOPLINE_JOBS_DIR": f"{scratch}/jobs"}
    with dashboard(env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        query = urlencode({"db": DEMO_DB, "run": RUN, "family": "consistency",
                           "s": from_setting(SETTING).to_url()})
        page.goto(f"{url}/tune?{query}")
        page.wait_for_selector("[data-testid='stMetric']", timeout=180_000)
        shot(page, "tune", 950)
        go(page, "Presets")                             # a preset to compare against: full length's neighbour
        page.get_by_role("textbox", name="Save as").fill("consistency-k3")
        page.get_by_role("textbox", name="Save as").press("Enter")
        settle(page)
        page.get_by_role("button", name="Save preset").click()
        page.wait_for_selector("[data-testid='stAlertContentSuccess']")
        go(page, "Questions")
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=60_000)
        shot(page, "questions", 1500)
        go(page, "Compare")
        shot(page, "compare", 1100)
        go(page, "Report")
        page.get_by_role("button", name="Build the report").click()
        page.get_by_role("button", name="Download HTML report", exact=True).wait_for(timeout=300_000)
        shot(page, "report", 1800)
        go(page, "Frontier")
        page.wait_for_selector("[data-testid=stEChartsChart] svg path[transform^=matrix]", timeout=90_000)
        shot(page, "frontier", 950)
        go(page, "Monitor")                             # the bundled decision log (data/demo-logs)
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=90_000)
        shot(page, "monitor", 1100)
        browser.close()


if __name__ == "__main__":
    main()
