"""Probe schedules on a real model: a dense run replayed on a sparser schedule against a run recorded sparse.

SmolLM2-135M-Instruct (packaged), the same questions recorded twice with the in-process engine, greedy:
checkpoints every 32 tokens and every 64 tokens (steps, transitions and each trace's end in both). Each run
goes to its own scratch store under ``--dir`` (a store that already holds the run is reused). Then, per
family and at a few settings, the every-32 run replayed with the schedule ``{"every": 2}`` (every 2x the
interval: the checkpoints at multiples of 64, plus steps, transitions and the end) is compared with the
every-64 run replayed on all its checkpoints:

- ``stop_agreement``: share of questions stopped at the same position (and ``answer_agreement``: the same
  answer at the stop), with both sides' EM, tokens emitted and computed;
- ``traces_same``: share of questions whose full trace (its length and final answer) is the same in both runs;
- ``checkpoints``: on the positions both sides probe, the share whose trial answer is the same and the largest
  difference of p_mean (the two runs batch their probes differently: with bf16 weights on a CPU a few trial
  answers round differently, see the CPU notes in docs/benchmarks.md).

Usage: python benchmarks/schedule.py [--dir /tmp/stopline-schedule] [--limit 36] [--max-new-tokens 384]
Prints one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analysis.core.store import Store  # noqa: E402
from analysis.replay.engine import RunTable, replay, scheduled  # noqa: E402
from analysis.replay.policies import Setting  # noqa: E402

MODEL = "smollm2-135m-instruct"
SETTINGS = [
    Setting.make("budget", B=128), Setting.make("budget", B=256),
    Setting.make("consistency", k=2), Setting.make("consistency", k=3),
    Setting.make("confidence", tau=0.8), Setting.make("confidence", tau=0.9),
    Setting.make("confidence", tau=0.9, aggregate="min"),
    Setting.make("entropy", alpha=0.2, delta=0.01, min_steps=2), Setting.make("entropy", alpha=0.3, delta=0.05),
    Setting.make("hybrid"),
    Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.8}},
                 b={"family": "consistency", "params": {"k": 2}}, op="and", floor=64),
]


def recorded(db: str, args, every: int) -> tuple[str, float]:
    """The run with this placement in its store (recorded now when the store has none); its id and the
    seconds recording took (0 when reused)."""
    if os.path.exists(db):
        for r in Store(db, read_only=True).runs():
            g = r["config"].get("gen", {})
            if r["status"] == "complete" and r["model"] == MODEL and r["dataset"] == args.dataset \
                    and g.get("every") == every and g.get("max_new_tokens") == args.max_new_tokens \
                    and r["n_questions"] == args.limit:
                return r["id"], 0.0
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "analysis", "run", "--model", MODEL, "--dataset", args.dataset,
                          "--limit", str(args.limit), "--seed", str(args.seed), "--every", str(every),
                          "--max-new-tokens", str(args.max_new_tokens), "--temperature", "0",
                          "--batch-size", str(args.batch_size), "--device", "cpu", "--db", db, "--json"],
                         check=True, capture_output=True, text=True,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    return json.loads(out.stdout.strip().splitlines()[-1])["run_id"], time.perf_counter() - t0


def compare(dense: RunTable, sparse: RunTable, s: Setting) -> dict:
    got = replay(dense, Setting.from_dict({**s.to_dict(), "schedule": {"every": 2}}))
    want = replay(sparse, s)
    return {"setting": s.label(), "stop_agreement": round(float((got.stop_pos == want.stop_pos).mean()), 3),
            "answer_agreement": round(float((got.answers == want.answers).mean()), 3),
            "em": [round(float(got.em.mean()), 3), round(float(want.em.mean()), 3)],
            "emitted": [round(float(got.emitted.mean()), 1), round(float(want.emitted.mean()), 1)],
            "computed": [round(float(got.computed.mean()), 1), round(float(want.computed.mean()), 1)]}


def checkpoints_alike(dense: RunTable, sparse: RunTable) -> dict:
    """On the positions both the every-2x view of the dense run and the sparse run probe: same trial answers?"""
    seen, _ = scheduled(dense, {"every": 2})
    same = total = 0
    dp = []
    for q in range(dense.n):
        a = {int(p): (x, pm) for p, x, pm, v in zip(seen.pos[q], seen.answers[q], seen.p_mean[q], seen.valid[q]) if v}
        for p, x, pm, v in zip(sparse.pos[q], sparse.answers[q], sparse.p_mean[q], sparse.valid[q]):
            if v and int(p) in a:
                total += 1
                same += a[int(p)][0] == x
                if np.isfinite(pm) and np.isfinite(a[int(p)][1]):
                    dp.append(abs(pm - a[int(p)][1]))
    return {"shared_positions": total, "answer_same": round(same / max(total, 1), 4),
            "p_mean_max_diff": round(float(max(dp, default=0.0)), 4),
            "sparse_positions": int(sparse.valid.sum()), "dense_every2_positions": int(seen.valid.sum())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stopline-schedule")
    ap.add_argument("--dataset", default="rg:gsm_symbolic")
    ap.add_argument("--limit", type=int, default=36)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    tables, secs = {}, {}
    for every in (32, 64):
        db = os.path.join(args.dir, f"every{every}.duckdb")
        rid, secs[every] = recorded(db, args, every)
        tables[every] = RunTable.from_store(Store(db, read_only=True), rid)
    dense, sparse = tables[32], tables[64]
    if list(dense.question_ids) != list(sparse.question_ids):
        raise SystemExit("the two runs hold different questions")
    same_traces = (dense.full_tokens == sparse.full_tokens) & (dense.answers[dense.rows, dense.final_idx]
                                                              == sparse.answers[sparse.rows, sparse.final_idx])
    rows = [compare(dense, sparse, s) for s in SETTINGS]
    fams: dict[str, list[float]] = {}
    for s, r in zip(SETTINGS, rows):
        fams.setdefault(s.family, []).append(r["stop_agreement"])
    out = {"model": MODEL, "dataset": args.dataset, "questions": int(dense.n), "max_new_tokens": args.max_new_tokens,
           "record_s": {str(k): round(v, 1) for k, v in secs.items()},
           "traces_same": round(float(same_traces.mean()), 3),
           "full_em": [round(float(dense.full_em.mean()), 3), round(float(sparse.full_em.mean()), 3)],
           "checkpoints": checkpoints_alike(dense, sparse),
           "stop_agreement_by_family": {f: round(float(np.mean(v)), 3) for f, v in fams.items()},
           "stop_agreement": round(float(np.mean([r["stop_agreement"] for r in rows])), 3),
           "settings": rows}
    for r in rows:
        print(f"{r['setting'][:70]:70s} stops {r['stop_agreement']:.3f} answers {r['answer_agreement']:.3f} "
              f"em {r['em']} computed {r['computed']}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
