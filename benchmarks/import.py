"""Import speed through `import`: text (~200k generated traces / ~2M text-derived checkpoint rows, target
200k rows/s) or, with --format checkpoints, a per-checkpoint export in long form as Parquet (no text to derive,
target 1M rows/s).

Prints one JSON line: rows_per_s (checkpoint rows stored per second of the whole import: reading, checking,
deriving or mapping checkpoints, scoring, writing), and the same for the raw DuckDB insert of the finished rows
as a baseline; ratio_to_raw_insert (raw insert seconds / import seconds) is the figure to compare on a loaded
machine, and cpu_s / raw_insert_cpu_s the CPU seconds of each (all threads of the process).
Usage: python benchmarks/import.py [--traces 200000] [--every 32] [--format text|checkpoints]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analysis.ingest.importer import ImportSpec, import_generations  # noqa: E402
from analysis.core.store import Store  # noqa: E402

STEPS = ["First, {a} + {b} = {c}.", "Then {c} * 2 = {d}.", "So we have {d} in total.",
         "Wait, let me check: {a} + {b} is {c}.", "Subtracting {b} gives {a}.", "Each part is {d} / 2 = {c}."]


def make_file(path: str, n: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            a, b = rnd.randint(2, 999), rnd.randint(2, 999)
            c, d = a + b, 2 * (a + b)
            steps = [rnd.choice(STEPS).format(a=a, b=b, c=c, d=d) for _ in range(rnd.randint(14, 22))]
            body = "\n\n".join(" ".join(steps[j:j + 2]) for j in range(0, len(steps), 2))
            final = d if rnd.random() < 0.7 else d + 1
            fh.write(json.dumps({"question": f"Q{i}: what is 2 * ({a} + {b})?", "answer": str(d),
                                 "response": f"{body}\n#### {final}"}) + "\n")


def make_checkpoints(path: str, n: int, per: int = 20, seed: int = 0) -> None:
    """A Dynasor-style export: one row per probe (id, question, gold, tokens so far, trial answer, confidence)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    q = np.repeat(np.arange(n), per)
    gold = rng.integers(2, 2000, n)
    settle = rng.integers(0, per, n)
    j = np.tile(np.arange(per), n)
    right = j >= settle[q]
    ans = np.where(right, gold[q], gold[q] + rng.integers(1, 50, len(q)))
    pq.write_table(pa.table({
        "qid": pa.array(np.char.add("q", q.astype(str))), "question": pa.array(np.char.add("What is item ", q.astype(str))),
        "gold": pa.array(gold[q].astype(str)), "tokens": pa.array((j + 1) * 32), "probe": pa.array(ans.astype(str)),
        "conf": pa.array(np.clip(0.5 + 0.5 * right + rng.normal(0, 0.1, len(q)), 0, 1))}), path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=32)
    ap.add_argument("--format", default="text", choices=["text", "checkpoints"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.format == "checkpoints":
            src = os.path.join(tmp, "probes.parquet")
            make_checkpoints(src, args.traces // 4)
            spec = ImportSpec(path=src, model="bench", dataset="bench", fmt="checkpoints", id_field="qid",
                              gold_field="gold", position_field="tokens", answer_field="probe",
                              signals={"p_mean": "conf"})
            target = 1_000_000
        else:
            src = os.path.join(tmp, "gen.jsonl")
            make_file(src, args.traces)
            spec = ImportSpec(path=src, model="bench", dataset="bench", every=args.every)
            target = 200_000
        store = Store(os.path.join(tmp, "bench.duckdb"))
        t0, c0 = time.perf_counter(), time.process_time()
        res = import_generations(store, spec, show_progress=False, keep_sweep=False)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        from analysis.evaluate.frontier import materialise     # the sweep a writer keeps for the dashboard, timed apart
        t2 = time.perf_counter()
        materialise(store, res["run_id"])
        sweep_dt = time.perf_counter() - t2
        # Baseline: the raw insert alone, of the same rows, into a fresh store.
        ck = store.checkpoints(res["run_id"])
        tr = store.traces(res["run_id"], with_text=True)
        store2 = Store(os.path.join(tmp, "raw.duckdb"))
        t1, c1 = time.perf_counter(), time.process_time()
        store2.put_results(tr, ck)
        raw_dt, raw_cpu = time.perf_counter() - t1, time.process_time() - c1
    print(json.dumps({"traces": res["n_questions"], "rows": res["n_checkpoints"], "seconds": round(dt, 2),
                      "rows_per_s": round(res["n_checkpoints"] / dt), "traces_per_s": round(res["n_questions"] / dt),
                      "raw_insert_rows_per_s": round(res["n_checkpoints"] / raw_dt), "target_rows_per_s": target,
                      "format": args.format, "sweep_s": round(sweep_dt, 2),
                      "rows_per_s_with_sweep": round(res["n_checkpoints"] / (dt + sweep_dt)),
                      "ratio_to_raw_insert": round(raw_dt / dt, 3), "cpu_s": round(cpu, 2),
                      "raw_insert_cpu_s": round(raw_cpu, 2)}))


if __name__ == "__main__":
    main()
