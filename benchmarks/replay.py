"""Replay speed on a synthetic store of 20,000 questions x 50 checkpoints (1M rows).

Prints one JSON line:
- ms_per_setting: median over families of the median time to replay one setting (all questions);
- sweep_s: all families' grids (>= 500 settings), with the learned family's cross-fitted models already
  trained (their one-off training per run is learned_fit_s);
- naive_ms_per_setting / speedup: a plain pandas group-by-question implementation of the same rules,
  timed here on the same store;
- ratio_to_single_pass: our time per setting / one numpy pass over the columns the rule reads;
- schedule: the probe schedules the sweep tries (sweep_schedules), how many of its settings are on a sparser
  one (sparse_settings), packing one schedule's table (pack_s, once per schedule and run) and the median time
  per setting on a packed table (ms_per_sparse_setting).
Usage: python benchmarks/replay.py [--questions 20000] [--checkpoints 50]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analysis.evaluate.frontier import settings_for, sweep  # noqa: E402
from analysis.replay.policies import Setting, families  # noqa: E402
from analysis.replay.policies.learned import cross_fit  # noqa: E402
from analysis.replay.engine import RunTable, scheduled, stop_index  # noqa: E402
from analysis.replay.policies.base import schedule_grid  # noqa: E402
from analysis.core.store import Store  # noqa: E402
from analysis.ingest.synthetic import write_synthetic_run  # noqa: E402

REPRESENTATIVE = {
    "budget": Setting.make("budget", B=600),
    "consistency": Setting.make("consistency", k=3, min_tokens=64),
    "confidence": Setting.make("confidence", tau=0.9),
    "entropy": Setting.make("entropy", alpha=0.2, delta=1e-3, min_steps=3),
    "learned": Setting.make("learned", tau=0.8),
    "hybrid": Setting.make("hybrid"),
}


def timed(fn, reps: int = 7) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


# --- the naive baseline: per-question pandas group-by ------------------------------------------------------
def naive_stops(df: pd.DataFrame, setting: Setting) -> pd.Series:
    p = setting.params

    def first_stop(g: pd.DataFrame) -> int:
        fam = setting.family
        run, mean, var = 0, None, 0.0
        prev = None
        for i, row in enumerate(g.itertuples()):
            if fam == "budget":
                fire = row.pos >= p["B"]
            elif fam == "confidence":
                fire = (row.answer_norm != "") and (row.p_mean >= p["tau"])
            elif fam == "consistency":
                run = run + 1 if (row.answer_norm != "" and row.answer_norm == prev) else int(row.answer_norm != "")
                prev = row.answer_norm
                fire = run >= p["k"] and row.pos >= p["min_tokens"]
            elif fam == "entropy":
                if mean is None:
                    mean, var = row.entropy, 0.0
                else:
                    d = row.entropy - mean
                    mean += p["alpha"] * d
                    var = (1 - p["alpha"]) * (var + p["alpha"] * d * d)
                fire = var < p["delta"] and i + 1 >= p["min_steps"]
            else:
                raise ValueError(fam)
            if fire:
                return i
        return len(g) - 1
    return df.groupby("question_id", sort=False).apply(first_stop, include_groups=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=20_000)
    ap.add_argument("--checkpoints", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "bench.duckdb"))
        run_id = write_synthetic_run(store, args.questions, args.checkpoints, vary_length=False)
        t0 = time.perf_counter()
        t = RunTable.from_store(store, run_id)
        load_s = time.perf_counter() - t0
        df = store.checkpoints(run_id).to_pandas()
    rows = int(t.valid.sum())
    t0 = time.perf_counter()
    cross_fit(t, "auto")
    learned_fit_s = time.perf_counter() - t0
    t.run_length(), t.votes(), t.ema_var(0.2)  # warm the derived features, as a loaded run would have
    per_family = {f: timed(lambda s=s: stop_index(t, s)) for f, s in REPRESENTATIVE.items()}
    ms_per_setting = statistics.median(per_family.values())
    all_settings = [s for f in families() for s in settings_for(t, f)]
    n_settings, n_sparse = len(all_settings), sum(bool(s.schedule) for s in all_settings)
    t0 = time.perf_counter()
    sweep(t)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scheduled(t, {"every": 8})                  # a schedule the sweep did not pack
    pack_s = time.perf_counter() - t0
    sparse = {f: timed(lambda s=Setting.from_dict({**s.to_dict(), "schedule": {"every": 2}}): stop_index(t, s))
              for f, s in REPRESENTATIVE.items() if f not in ("budget", "learned")}
    # Single numpy pass over the columns each rule reads.
    single = {
        "budget": timed(lambda: t.pos >= 600),
        "confidence": timed(lambda: (t.p_mean >= 0.9) & t.has_answer),
        "consistency": timed(lambda: (t.run_length() >= 3) & (t.pos >= 64)),
        "entropy": timed(lambda: t.ema_var(0.2)[1] < 1e-3),
        "learned": timed(lambda: cross_fit(t, "auto") >= 0.8),
        "hybrid": timed(lambda: (t.p_mean >= 0.9) | (t.run_length() >= 3)),
    }
    ratio = statistics.median(per_family[f] / single[f] for f in per_family)
    naive_fams = ["budget", "confidence", "consistency", "entropy"]
    naive = {}
    ours_check = {}
    for f in naive_fams:
        t0 = time.perf_counter()
        ns = naive_stops(df, REPRESENTATIVE[f]).to_numpy()
        naive[f] = (time.perf_counter() - t0) * 1000
        ours_check[f] = bool((ns == stop_index(t, REPRESENTATIVE[f])).all())
    naive_ms = statistics.median(naive.values())
    ours_same = statistics.median(per_family[f] for f in naive_fams)
    print(json.dumps({
        "questions": t.n, "checkpoints": t.m, "rows": rows, "load_s": round(load_s, 3),
        "ms_per_setting": round(ms_per_setting, 3), "per_family_ms": {k: round(v, 3) for k, v in per_family.items()},
        "sweep_s": round(sweep_s, 3), "sweep_settings": n_settings, "learned_fit_s": round(learned_fit_s, 2),
        "naive_ms_per_setting": round(naive_ms, 1), "speedup": round(naive_ms / ours_same, 1),
        "naive_agrees": all(ours_check.values()),
        "ratio_to_single_pass": round(ratio, 2),
        "schedule": {"sweep_schedules": schedule_grid(), "sparse_settings": n_sparse, "pack_s": round(pack_s, 3),
                     "ms_per_sparse_setting": round(statistics.median(sparse.values()), 3)},
        "targets": {"ms_per_setting": 10, "sweep_s": 3, "speedup": 100, "ratio_to_single_pass": 5},
    }))


if __name__ == "__main__":
    main()
