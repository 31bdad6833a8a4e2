"""serve-demo: a small model answers a stream of new questions with the controller deciding when to stop.

The calibration run comes from the bundled demo store (or any store); the default preset is the operating
point "fewest tokens within 3 EM points of full length", chosen on that run, with a 35% exploration share
so the Monitor page can propose a recalibration. Gold answers are written to a separate labels file, as
late labels would arrive in production.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from analysis.backend.models import load
from analysis.backend.prompts import GenConfig
from analysis.core.answers import normalize, normalize_gold, score
from analysis.core.errors import StoplineError
from analysis.core.store import DEMO_DB, portable_path, Store
from analysis.evaluate.optimize import operating_point
from analysis.ingest.datasets import load_dataset
from analysis.presets.schema import from_dict, load as load_preset
from analysis.production.controller import controlled_generate, Controller
from analysis.replay.engine import RunTable
from analysis.replay.policies import deployable_families


def default_preset(t, explore: float = 0.35):
    op = operating_point(t, "drop", 0.03, families=deployable_families(), n_boot=200)
    return from_dict({"stopline_preset": 1, "name": f"within 3 EM points: {op['label']}"[:200],
                      "setting": op["setting"], "routing": {"explore": explore},
                      "notes": f"chosen on the tune half of run {t.run_id}; test EM {op['test']['em']:.3f}"})


def serve_demo(model: str = "qwen2.5-coder-0.5b-instruct", run: str | None = None, dataset: str = "rg:basic_arithmetic",
               preset: str | None = None, n: int = 40, seed: int = 7, batch_size: int = 8,
               max_new_tokens: int | None = None, device: str = "auto", log: str = "data/logs/serve-demo.jsonl",
               db: str | None = None, loaded=None, show_progress: bool = True) -> dict:
    db = db or DEMO_DB
    store = Store(db, read_only=True)
    runs = store.runs()
    if run is None:
        cands = [r for r in runs if r["model"] == model and r["dataset"] == dataset]
        if not cands:
            raise StoplineError(f"no run of {model} on {dataset} in {db} to calibrate on",
                                hint="pass --run RUN (and --db PATH), or make one with python -m analysis run")
        run = cands[-1]["id"]
    r = store.run(run)
    t = RunTable.from_store(store, r["id"])
    p = load_preset(preset) if preset else default_preset(t)
    cfgd = r["config"].get("gen", {})
    cfg = GenConfig(**cfgd) if cfgd else GenConfig()
    if max_new_tokens:
        cfg.max_new_tokens = max_new_tokens
    ds = load_dataset(r["dataset"], n, **({"seed": seed} if r["dataset"].startswith("rg:") else {}))
    log_path = Path(log)
    if log_path.exists():
        log_path.unlink()
    ctl = Controller(p, r["answer_type"], log_path, every=cfg.every, steps=cfg.steps, transitions=cfg.transitions,
                     log_header={"calibration": {"db": portable_path(db), "run": r["id"]}, "model": r["model"],
                                 "dataset": r["dataset"], "seed": seed})
    if loaded is None:
        dt = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(
            r["config"].get("model", {}).get("dtype"), "auto")
        loaded = load(r["config"].get("model", {}).get("name", model), device, dtype=dt)
    m, tok, _ = loaded
    t0 = time.perf_counter()
    # strip the gold from what the controller sees; labels arrive later, in their own file
    recs = controlled_generate(m, tok, [q.__class__(q.id, q.text, [], q.answer_type, q.meta) for q in ds.questions],
                               ctl, cfg, batch_size, show_progress=show_progress, order="arrival")
    ctl.log.close()
    labels = log_path.with_suffix(".labels.jsonl")
    ems = []
    with open(labels, "w", encoding="utf-8") as f:
        for q, rec in zip(ds.questions, recs):
            f.write(json.dumps({"request": q.id, "gold": q.gold}) + "\n")
            ems.append(score(normalize(rec["answer"], r["answer_type"]) if rec["answer"] else "",
                             normalize_gold(q.gold, r["answer_type"]), r["answer_type"])[0])
    return {"n": len(recs), "preset": p.name, "log": str(log_path), "labels": str(labels),
            "stopped": sum(1 for x in recs if x["stopped"]),
            "tokens_emitted": sum(x["tokens_emitted"] for x in recs) / max(1, len(recs)),
            "em": sum(ems) / max(1, len(ems)), "seconds": round(time.perf_counter() - t0, 1),
            "calibration_run": r["id"]}
