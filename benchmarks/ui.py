"""Dashboard speed on a store with 1M checkpoints (20,000 questions x 50), driven by Playwright in headless
Chromium against a real server.

Prints one JSON line:
- first_load_s: a fresh browser opens the Frontier of a run nobody has opened, on a freshly started
  `python -m analysis dashboard` -> the frontier chart is drawn. The run's writer kept its sweep in the store.
- first_load_streamlit_run_s: the same with plain `streamlit run app.py` (the page modules load during the
  first script run): the baseline for the launcher, measured in the same run.
- first_load_unswept_s: the same as first_load_s on a copy of the store without the kept sweep (the sweep runs
  during the first load): what keeping the sweep saves.
- chart_only_echarts_s / chart_only_plotly_s: why the Frontier draws with ECharts. A one-chart page draws this
  run's frontier (from the kept sweep) with st.echarts_chart (the dashboard's option) or st.plotly_chart (the
  report's Plotly figure), fresh browser each time, on a warm server; median of 3 interleaved loads each.
- warm_reload_s, and slider_update_ms (Tune, consistency family: the k slider moved with the keyboard -> the
  savings metric shows the new number; median of 20 moves, with p90); slider_update_sparse_ms: the same with
  the probe schedule every 2x (opened from a link to that setting; each move replays on the packed table).
Usage: python benchmarks/ui.py [--questions 20000] [--checkpoints 50]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from analysis.cli.appserver import dashboard  # noqa: E402
from analysis.core.store import Store  # noqa: E402
from analysis.ingest.synthetic import write_synthetic_run  # noqa: E402
from analysis.presets.schema import from_setting  # noqa: E402
from analysis.replay.policies import Setting  # noqa: E402

CHART = "[data-testid=stEChartsChart] svg path[transform^=matrix]"     # a point of the frontier is drawn
PLOTLY_CHART = ".js-plotly-plot .scatterlayer .trace .points path"
ONE_CHART_APP = """import sys
sys.path.insert(0, {root!r})
import streamlit as st
from analysis.evaluate.frontier import default_families, stored_sweep
from analysis.core.store import Store
store = Store({db!r}, read_only=True)
run = store.run({rid!r})
pts = stored_sweep(store, run, default_families(run["n_checkpoints"]))
if st.query_params.get("lib") == "plotly":
    from analysis.evaluate.report import frontier_figure
    st.plotly_chart(frontier_figure(None, [], pts))
else:
    from views.charts import frontier_option
    st.echarts_chart(frontier_option(pts, "emitted", "mean tokens emitted")[0], height=560, renderer="svg")
"""
METRIC = "[data-testid='stMetric']:has-text('Tokens saved (emitted)') [data-testid='stMetricValue']"
JS_CHANGED = """(b) => { const m = [...document.querySelectorAll('[data-testid=stMetric]')]
    .find(m => m.innerText.includes('Tokens saved (emitted)'));
  const v = m && m.querySelector('[data-testid=stMetricValue]'); return v && v.innerText !== b; }"""


def slider_moves(page, link: str, moves: int) -> list[float]:
    """Open Tune at ``link``, then move its first slider (consistency's k: 3 -> 4 -> 3 ...) with the keyboard
    ``moves`` times; the ms until the savings metric shows the new number, each move."""
    page.goto(link)
    page.wait_for_selector(METRIC, timeout=300_000)
    page.locator("[data-testid='stSlider'] input").first.focus()
    times = []
    for i in range(moves):
        before = page.locator(METRIC).inner_text()
        t0 = time.perf_counter()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(JS_CHANGED, arg=before, timeout=60_000)
        times.append((time.perf_counter() - t0) * 1000)
        page.wait_for_timeout(150)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=20_000)
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--moves", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "ui.duckdb")
        t0 = time.perf_counter()
        rid = write_synthetic_run(Store(db), args.questions, args.checkpoints, seed=0, vary_length=False)
        write_s = time.perf_counter() - t0                 # includes keeping the default sweep
        n_rows = Store(db, read_only=True).run(rid)["n_checkpoints"]
        bare = os.path.join(tmp, "bare.duckdb")
        shutil.copy(db, bare)
        with Store(bare).transaction() as con:
            con.execute("DELETE FROM sweeps")

        def env(name):          # every server starts with its own empty disk cache
            return {"STOPLINE_DB": os.path.join(tmp, "mine.duckdb"), "STOPLINE_CACHE": os.path.join(tmp, name),
                    "STOPLINE_STORES": tmp}           # the links name its stores (ui, bare)

        def first_load(b, url, store) -> float:
            ctx = b.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(f"{url}/?db={store}&run={rid}")
            page.wait_for_selector(CHART, timeout=300_000)
            dt = time.perf_counter() - t0
            ctx.close()
            return dt

        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"])
            with dashboard(env("c1"), preload=False) as url:
                plain = first_load(b, url, db)
            with dashboard(env("c2")) as url:
                unswept = first_load(b, url, bare)
            with dashboard(env("c3")) as url:
                cold = first_load(b, url, db)
                page = b.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}/?db={db}&run={rid}")
                page.wait_for_selector(CHART, timeout=300_000)
                t0 = time.perf_counter()
                page.reload()
                page.wait_for_selector(CHART, timeout=300_000)
                warm_load = time.perf_counter() - t0
                times = slider_moves(page, f"{url}/tune?db={db}&run={rid}&family=consistency", args.moves)
                # the same k slider with a sparser probe schedule: each move replays on the packed table
                link = from_setting(Setting.make("consistency", k=3, schedule={"every": 2}), "sparse").to_url()
                sparse = slider_moves(page, f"{url}/tune?db={db}&run={rid}&family=consistency&s={link}",
                                      args.moves)
            one = os.path.join(tmp, "one_chart.py")
            with open(one, "w") as f:
                f.write(ONE_CHART_APP.format(root=os.path.abspath(ROOT), db=db, rid=rid))
            libs = {"echarts": [], "plotly": []}
            with dashboard(env("c4"), app=one) as url:
                for lib, sel in (("echarts", CHART), ("plotly", PLOTLY_CHART)):     # warm the server
                    page = b.new_page()
                    page.goto(f"{url}/?lib={lib}")
                    page.wait_for_selector(sel, timeout=300_000)
                    page.close()
                for _ in range(3):
                    for lib, sel in (("echarts", CHART), ("plotly", PLOTLY_CHART)):
                        ctx = b.new_context(viewport={"width": 1400, "height": 1000})
                        page = ctx.new_page()
                        t0 = time.perf_counter()
                        page.goto(f"{url}/?lib={lib}")
                        page.wait_for_selector(sel, timeout=300_000)
                        libs[lib].append(time.perf_counter() - t0)
                        ctx.close()
            b.close()
    print(json.dumps({"checkpoints": n_rows, "questions": args.questions, "write_s": round(write_s, 1),
                      "first_load_s": round(cold, 2), "first_load_streamlit_run_s": round(plain, 2),
                      "first_load_unswept_s": round(unswept, 2), "warm_reload_s": round(warm_load, 2),
                      "chart_only_echarts_s": round(statistics.median(libs["echarts"]), 2),
                      "chart_only_plotly_s": round(statistics.median(libs["plotly"]), 2),
                      "slider_update_ms": round(statistics.median(times)),
                      "slider_update_ms_p90": round(sorted(times)[int(0.9 * len(times)) - 1]),
                      "slider_update_sparse_ms": round(statistics.median(sparse)),
                      "slider_update_sparse_ms_p90": round(sorted(sparse)[int(0.9 * len(sparse)) - 1]),
                      "targets": {"first_load_s": 3, "slider_update_ms": 300}}))


if __name__ == "__main__":
    main()
