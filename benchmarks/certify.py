"""Learn-then-Test validated by simulation (issue 23): a synthetic population of 20,000 questions stands for
"new questions drawn like the calibration ones"; every candidate setting's true risk is its mean over the
population. Each configuration certifies on ``--draws`` random calibration sets and reports (one JSON line
each, analysis.evaluate.certify.simulate):
- violation_share: the share of draws whose certified setting truly breaks ε (must be <= δ), with its exact
  binomial 95% CI; naive_violation_share: the same for a naive pick (fewest tokens with the *observed* risk
  <= ε, no bound), to show the scenario has teeth;
- savings_mean (certified; 0 when nothing certifies), naive_savings_mean and oracle_savings (the fewest tokens
  among the settings truly within ε).
Usage: python benchmarks/certify.py [--draws 1000] [--figure docs/figures/certify_simulation.svg]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analysis.evaluate.certify import losses, simulate  # noqa: E402
from analysis.ingest.synthetic import synthetic_tables  # noqa: E402
from analysis.replay.engine import RunTable  # noqa: E402

FAMILIES = ["budget", "consistency", "confidence", "entropy"]
CONFIGS = [("drop", 0.0, 300), ("drop", 0.0, 1000), ("lost", 0.02, 300), ("lost", 0.02, 1000),
           ("lost", 0.05, 300)]


def figure(rows: list[dict], path: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    names = [f"{r['risk']} ≤ {r['epsilon']:g}<br>n={r['n_calibration']}" for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of draws that truly break ε", "tokens saved"))
    for key, label, color in (("violation", "certified (LTT)", "#1f77b4"), ("naive_violation", "naive pick", "#d62728")):
        y = [r[f"{key}_share"] for r in rows]
        ci = [r[f"{key}_ci"] for r in rows]
        fig.add_bar(x=names, y=y, name=label, marker_color=color, row=1, col=1,
                    error_y={"type": "data", "symmetric": False, "array": [c[1] - v for c, v in zip(ci, y)],
                             "arrayminus": [v - c[0] for c, v in zip(ci, y)]})
    fig.add_hline(y=rows[0]["delta"], line_dash="dash", annotation_text=f"δ = {rows[0]['delta']:g}", row=1, col=1)
    for key, label, color in (("savings_mean", "certified (LTT)", "#1f77b4"), ("naive_savings_mean", "naive pick", "#d62728"),
                              ("oracle_savings", "oracle", "#7f7f7f")):
        fig.add_bar(x=names, y=[r[key] for r in rows], name=label, marker_color=color, row=1, col=2,
                    showlegend=key == "oracle_savings")
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(width=1000, height=420, barmode="group", template="plotly_white",
                      title=f"Learn-then-Test on {rows[0]['draws']} calibration draws per setting "
                            f"(synthetic population of {rows[0]['population']:,} questions, δ = {rows[0]['delta']:g})")
    fig.write_image(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--population", type=int, default=20000)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--figure", help="write the figure (SVG/PNG, needs kaleido and Chromium) here")
    args = ap.parse_args()
    _, _, ck = synthetic_tables(args.population, 30, seed=5)
    L = losses(RunTable.from_arrow(ck), FAMILIES)
    rows = []
    for risk, eps, n in CONFIGS:
        t0 = time.time()
        r = simulate(L, n, eps, args.delta, args.draws, risk=risk, seed=1)
        r["seconds"] = round(time.time() - t0, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
