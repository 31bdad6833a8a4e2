"""A run: dataset x model x generation config, generated and probed batch by batch into the store (each
batch of finished questions in one transaction, so an interrupted run resumes where it stopped), and the
run's default sweep kept when it completes."""
from __future__ import annotations

import time
from dataclasses import asdict

from analysis.backend.decode import generate_batch
from analysis.backend.models import load
from analysis.backend.prompts import build_prompt, GenConfig
from analysis.backend.records import to_tables
from analysis.core.errors import StoplineError
from analysis.core.progress import progress
from analysis.evaluate.frontier import materialise
from analysis.ingest.datasets import load_dataset


# --- a run: dataset x model x config, into the store ------------------------------------------------------
def run_config(model_name: str, info: dict, dataset_id: str, seed: int, cfg: GenConfig) -> dict:
    """What identifies a run (its hash is the cache key). Batch size and device are left out."""
    return {"source": "generate", "model": {"name": model_name, "sha256": info.get("sha256"), "kind": info["kind"],
                                            "dtype": info["dtype"]},
            "dataset": {"id": dataset_id, "seed": seed}, "gen": asdict(cfg), "stopline_runner": 1}



def run(store, model_name: str, dataset_id: str, *, limit: int | None = None, seed: int = 42,
        cfg: GenConfig | None = None, batch_size: int = 8, device: str = "auto", loaded=None,
        show_progress: bool = True, dataset_options: dict | None = None, probes: str = "batched") -> dict:
    """Generate and probe a dataset with a model into the store; resumes an interrupted run.

    ``probes``: 'batched' (default) defers the probes that fire for a few rows at a time to the next interval
    checkpoint and runs them in one batch; 'immediate' probes each checkpoint when it comes, exactly as the
    live controller does, so that ``verify-controller`` can expect bit-for-bit the same probe outputs (with
    bf16 weights, batching changes rounding: a trial answer differs at a few percent of checkpoints).
    Recorded in the run's config under ``execution`` with the batch size and device (how the run was
    computed, not part of its identity: verify-controller re-runs it with the same batch size)."""
    cfg = cfg or GenConfig()
    ds_opts = dict(dataset_options or {})
    if dataset_id.startswith("rg:"):
        ds_opts.setdefault("seed", seed)
    ds = load_dataset(dataset_id, limit, **ds_opts)
    model, tok, info = loaded or load(model_name, device)
    cfg = cfg.resolved(ds.answer_type, info["kind"])
    if probes not in ("batched", "immediate"):
        raise StoplineError(f"probes must be 'batched' or 'immediate', not {probes!r}")
    config = {**run_config(model_name, info, ds.id, seed, cfg),
              "execution": {"probes": probes, "batch_size": batch_size, "device": info.get("device")}}
    with store.transaction() as con:
        run_id, created = store.get_or_create_run(model=model_name, dataset=ds.id, answer_type=ds.answer_type,
                                                  source="generated", config=config, n_planned=len(ds), con=con)
        store.put_questions(ds.id, ds.questions, con=con)
        if ds.attribution:
            store.set_attribution(ds.id, ds.attribution, con=con)
        con.execute("UPDATE runs SET n_planned = GREATEST(COALESCE(n_planned, 0), ?), status = 'running' "
                    "WHERE run_id = ?", [len(ds), run_id])
    finished = store.finished_questions(run_id)
    todo = [q for q in ds.questions if q.id not in finished]
    prompts = {q.id: build_prompt(tok, q.text, cfg) for q in todo}
    todo.sort(key=lambda q: len(prompts[q.id]))       # similar lengths together: less padding
    bar = progress(total=len(ds), desc=f"{model_name} on {ds.id}", unit="q", disable=not show_progress,
                   initial=len(ds) - len(todo))
    t_start, n_tok = time.perf_counter(), 0
    try:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            try:
                results = generate_batch(model, tok, [prompts[q.id] for q in batch], cfg,
                                         defer=probes == "batched")
            except RuntimeError as e:
                if "out of memory" in str(e).lower():
                    raise StoplineError(f"out of memory at batch size {len(batch)}; {i} questions of this session "
                                        "are saved", hint="resume with a smaller --batch-size") from None
                raise
            traces, cks = to_tables(run_id, batch, results, tok, ds.answer_type)
            store.put_results(traces, cks)
            n_tok += sum(len(r.token_ids) for r in results)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - t_start):.0f}")
    finally:
        bar.close()
    store.set_run_status(run_id, "complete")
    materialise(store, run_id)          # the sweep the dashboard draws first
    r = store.run(run_id)
    return {"run_id": run_id, "created": created, "n_questions": r["n_questions"], "n_checkpoints": r["n_checkpoints"],
            "em_full": r["em_full"], "mean_tokens": r["mean_tokens"], "generated_now": len(todo),
            "seconds": round(time.perf_counter() - t_start, 2), "tokens": n_tok}
