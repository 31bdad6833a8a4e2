"""The bundled demo store: real runs made by Stopline's own backend from the packaged models.

``python -m analysis demo --rebuild`` reproduces ``data/demo.duckdb`` from pinned inputs: the models'
sha256 (analysis/backend/models.py), the reasoning-gym tasks and seeds, and the generation config below.
The store is written to a temporary file and moved into place when complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from analysis.backend.models import load
from analysis.backend.prompts import GenConfig
from analysis.core.store import DEMO_DB, Store
from analysis.evaluate.frontier import materialise
from analysis.evaluate.incumbent import attach
from analysis.ingest.pipeline import run
from analysis.replay.engine import replay, RunTable

EASY = "rg:basic_arithmetic?max_terms=3&max_digits=2"
SPEC = {
    # (model, dataset) in build order
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
    # the run the dashboard opens on: the one whose trade-off is most visible (EM 0.595 at full length)
    "default_run": ("qwen2.5-coder-0.5b-instruct", EASY),
    # an example incumbent on that run, standing in for a user's production stopper ("saves 38% of tokens,
    # lowers EM"): where a DEER-style confidence rule stops (incumbent.py), drawn as "your mechanism"
    "incumbent": {"family": "confidence", "params": {"tau": 0.8}},
}


def rebuild(path: str = DEMO_DB, limit: int | None = None, runs: list[tuple[str, str]] | None = None,
            show_progress: bool = True) -> dict:
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
                for tbl in ("sweeps", "incumbent", "checkpoints", "traces", "runs"):
                    con.execute(f"DELETE FROM {tbl} WHERE run_id = ?", [rid])
    attach_example_incumbent(store)
    _seal(store, tmp, path)
    return {"path": str(path), "runs": out}


def fill_char_positions(store: Store) -> dict[str, int]:
    """Where each checkpoint cuts its trace's text, for a store's generated runs written before v5 stored it
    (checkpoints.char_pos NULL), from the trace re-tokenised by the run's packaged tokenizer, where that is
    available here (data/models/NAME/bf16). A question is filled only where the re-tokenised ids are
    provably the generated ones as far as the run recorded them: as many tokens as generated, decoding back to
    the stored text, and placing exactly the stored checkpoints (positions and kinds, by the generation's own
    rule, placement.py); else it keeps NULL (the Questions page's proportional cut). Returns questions filled
    per run."""
    import numpy as np
    import pyarrow as pa
    from transformers import AutoTokenizer

    from analysis.backend.models import CACHE, PACKAGED
    from analysis.backend.placement import placements, token_pieces
    from analysis.backend.records import char_positions
    filled = {}
    for r in store.runs():
        src = CACHE / r["model"] / "bf16"
        if r["source"] != "generated" or r["model"] not in PACKAGED or not (src / "tokenizer.json").exists():
            continue
        cks = store.checkpoints(r["id"], ["question_id", "ck_idx", "pos", "kind", "char_pos"]).to_pandas()
        todo = set(cks.loc[cks.char_pos.isna(), "question_id"])
        if not todo:
            continue
        tok = AutoTokenizer.from_pretrained(str(src))
        piece = token_pieces(tok)
        cfg = GenConfig(**{k: v for k, v in (r["config"].get("gen") or {}).items()
                           if k in GenConfig.__dataclass_fields__})
        traces = store.traces(r["id"], with_text=True).to_pandas().set_index("question_id")
        rows = {"question_id": [], "ck_idx": [], "char_pos": []}
        for qid, g in cks[cks.question_id.isin(todo)].groupby("question_id", sort=False):
            text, n = traces.at[qid, "text"], int(traces.at[qid, "n_tokens"])
            ids = tok(text, add_special_tokens=False)["input_ids"]
            g = g.sort_values("ck_idx")
            placed = [(p, k["kind"]) for p, k in placements(ids, cfg, piece)]
            if len(ids) != n or tok.decode(ids, skip_special_tokens=True) != text \
                    or placed != list(zip(g.pos.tolist(), g.kind.tolist())):
                continue
            rows["question_id"] += [qid] * len(g)
            rows["ck_idx"] += g.ck_idx.tolist()
            rows["char_pos"] += char_positions(tok, ids, g.pos.tolist(), text)
        if rows["question_id"]:
            upd = pa.table({"question_id": pa.array(rows["question_id"], pa.string()),
                            "ck_idx": pa.array(np.asarray(rows["ck_idx"], np.int16)),
                            "char_pos": pa.array(rows["char_pos"], pa.int32())})
            with store.transaction() as con:
                con.register("_u", upd)
                con.execute("UPDATE checkpoints c SET char_pos = u.char_pos FROM _u u WHERE c.run_id = ? AND "
                            "c.question_id = u.question_id AND c.ck_idx = u.ck_idx", [r["id"]])
                con.unregister("_u")
        filled[r["id"]] = len(set(rows["question_id"]))
    return filled


def attach_example_incumbent(store: Store) -> int:
    """The default run's example incumbent (SPEC['incumbent']): the stop positions of that rule replayed on
    the run, with no answers of their own (the trial answer at each stop is theirs)."""
    rid = next((r["id"] for r in store.runs() if (r["model"], r["dataset"]) == SPEC["default_run"]), None)
    if rid is None:
        return 0
    t = RunTable.from_store(store, rid)
    stops = replay(t, SPEC["incumbent"]).stop_pos
    return attach(store, rid, [str(q) for q in t.question_ids], [int(p) for p in stops])


def _seal(store: Store, tmp: Path, path) -> None:
    """Finish a store written at ``tmp`` and move it into place: the dashboard opens on the spec's default run
    (on the first run when a partial rebuild lacks it), and the file is compacted."""
    runs = store.runs()
    pick = [r["id"] for r in runs if (r["model"], r["dataset"]) == SPEC["default_run"]] or [r["id"] for r in runs[:1]]
    if pick:
        store.set_default_run(pick[0])
    with store.connect(write=True) as con:
        con.execute("CHECKPOINT")
    tmp.replace(path)


def refresh_sweeps(path: str = DEMO_DB) -> dict:
    """Key the store's kept sweeps to the current code, after a change to the replay, the fronts or a policy
    (a stale one is only a miss: the dashboard then sweeps the run itself), on the store migrated to this
    schema (with the checkpoints' text positions filled where ``fill_char_positions`` can). The runs' replay
    data are not touched."""
    tmp = Path(str(path) + ".sweeps")
    shutil.copy(path, tmp)
    try:
        store = Store(tmp)                      # an older store is migrated here
        keys = {r["id"]: materialise(store, r["id"]) for r in store.runs()}
        cuts = fill_char_positions(store)       # what v5 added, where it can be derived exactly
        _seal(store, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "sweeps": keys, "char_pos_filled": cuts}
