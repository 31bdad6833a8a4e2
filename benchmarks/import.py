"""Import speed: ~200k generated traces / ~2M text-derived checkpoint rows through `import`.

Prints one JSON line: rows_per_s (checkpoint rows stored per second of the whole import: reading, checking,
deriving checkpoints, writing), and the same for the raw DuckDB insert of the finished rows as a baseline.
Usage: python benchmarks/import.py [--traces 200000] [--every 32]
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

from analysis.importer import ImportSpec, import_generations  # noqa: E402
from analysis.store import Store  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "gen.jsonl")
        make_file(src, args.traces)
        store = Store(os.path.join(tmp, "bench.duckdb"))
        t0 = time.perf_counter()
        res = import_generations(store, ImportSpec(path=src, model="bench", dataset="bench", every=args.every),
                                 show_progress=False)
        dt = time.perf_counter() - t0
        # Baseline: the raw insert alone, of the same rows, into a fresh store.
        ck = store.checkpoints(res["run_id"])
        tr = store.traces(res["run_id"], with_text=True)
        store2 = Store(os.path.join(tmp, "raw.duckdb"))
        t1 = time.perf_counter()
        store2.put_results(tr, ck)
        raw_dt = time.perf_counter() - t1
    print(json.dumps({"traces": res["n_questions"], "rows": res["n_checkpoints"], "seconds": round(dt, 2),
                      "rows_per_s": round(res["n_checkpoints"] / dt), "traces_per_s": round(res["n_questions"] / dt),
                      "raw_insert_rows_per_s": round(res["n_checkpoints"] / raw_dt), "target_rows_per_s": 200_000}))


if __name__ == "__main__":
    main()
