"""The bundled demo store: real runs made by Stopline's own backend from the packaged models.

``python -m analysis demo --rebuild`` reproduces ``data/demo.duckdb`` from pinned inputs: the models'
sha256 (analysis/backend/models.py), the reasoning-gym tasks and seeds, and the generation config below.
The store is written to a temporary file and moved into place when complete.
"""
from __future__ import annotations

import os
from pathlib import Path

from .store import DEMO_DB, Store

EASY = "rg:basic_arithmetic?max_terms=3&max_digits=2"
SPEC = {
    # (model, dataset) in build order: the pair whose trade-off is most visible first, so that a partial
    # rebuild is already useful
    "runs": [
        ("qwen2.5-coder-0.5b-instruct", "rg:basic_arithmetic"),
        ("qwen2.5-coder-0.5b-instruct", EASY),
        ("smollm2-135m-instruct", EASY),
        ("qwen2.5-coder-0.5b-instruct", "rg:gsm_symbolic"),
        ("smollm2-135m-instruct", "rg:gsm_symbolic"),
    ],
    "limit": 200,
    "seed": 42,
    "gen": {"every": 32, "steps": True, "transitions": True, "max_new_tokens": 256},
    "batch_size": 16,
    # probed as the live controller probes, so that serve-demo and verify-controller match the replay exactly
    "probes": "immediate",
}


def rebuild(path: str = DEMO_DB, limit: int | None = None, runs: list[tuple[str, str]] | None = None,
            show_progress: bool = True) -> dict:
    from .backend.models import load
    from .backend.runner import GenConfig, run
    tmp = Path(str(path) + ".building")
    if tmp.exists() and os.environ.get("STOPLINE_DEMO_FRESH"):
        tmp.unlink()
    store = Store(tmp)          # resumable: an interrupted rebuild picks up where it stopped
    out, loaded = [], {}
    for m, d in runs or SPEC["runs"]:
        if m not in loaded:
            loaded = {m: load(m, "auto")}       # one model in memory at a time
        out.append(run(store, m, d, limit=limit or SPEC["limit"], seed=SPEC["seed"], cfg=GenConfig(**SPEC["gen"]),
                       batch_size=SPEC["batch_size"], loaded=loaded[m], show_progress=show_progress,
                       probes=SPEC["probes"]))
    keep = {r["run_id"] for r in out}
    with store.transaction() as con:            # runs of an older spec do not ship
        for (rid,) in con.execute("SELECT run_id FROM runs").fetchall():
            if rid not in keep:
                for tbl in ("checkpoints", "traces", "runs"):
                    con.execute(f"DELETE FROM {tbl} WHERE run_id = ?", [rid])
    with store.connect(write=True) as con:
        con.execute("CHECKPOINT")
    tmp.replace(path)
    return {"path": str(path), "runs": out}
