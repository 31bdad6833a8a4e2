"""The bundled demo store: real runs made by Stopline's own backend from the packaged models.

``python -m analysis demo --rebuild`` reproduces ``data/demo.duckdb`` from pinned inputs: the models'
sha256 (analysis/backend/models.py), the reasoning-gym tasks and seeds, and the generation config below.
The store is written to a temporary file and moved into place when complete.
"""
from __future__ import annotations

import os
from pathlib import Path

from .store import DEMO_DB, Store

SPEC = {
    "models": ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"],
    "datasets": ["rg:basic_arithmetic", "rg:gsm_symbolic"],
    "limit": 200,
    "seed": 42,
    "gen": {"every": 32, "steps": True, "transitions": True, "max_new_tokens": 256},
    "batch_size": 16,
}


def rebuild(path: str = DEMO_DB, limit: int | None = None, models: list[str] | None = None,
            datasets: list[str] | None = None, show_progress: bool = True) -> dict:
    from .backend.models import load
    from .backend.runner import GenConfig, run
    tmp = Path(str(path) + ".building")
    if tmp.exists() and os.environ.get("STOPLINE_DEMO_FRESH"):
        tmp.unlink()
    store = Store(tmp)          # resumable: an interrupted rebuild picks up where it stopped
    out = []
    for m in models or SPEC["models"]:
        loaded = load(m, "auto")
        for d in datasets or SPEC["datasets"]:
            out.append(run(store, m, d, limit=limit or SPEC["limit"], seed=SPEC["seed"], cfg=GenConfig(**SPEC["gen"]),
                           batch_size=SPEC["batch_size"], loaded=loaded, show_progress=show_progress))
    with store.connect(write=True) as con:
        con.execute("CHECKPOINT")
    tmp.replace(path)
    return {"path": str(path), "runs": out}
