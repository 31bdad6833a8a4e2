"""Re-probe a run's stored traces (e.g. an import) with a model, adding the per-checkpoint signals.

Each trace is read once: its text is fed to the model chunk by chunk (one prefill in total), and at each
checkpoint the probe runs on the cache, which is then cropped back. Checkpoints are placed in the model's
own tokens: every N tokens, after blank lines, before transition words, and at the end. The result is a new
run (source 'probed') whose config names the run it came from.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict

from analysis.core.aio import run_sync
from analysis.backend.decode import TraceResult
from analysis.backend.models import load
from analysis.backend.probe import Prober
from analysis.backend.prompts import build_prompt, GenConfig
from analysis.backend.records import to_tables
from analysis.core.progress import progress
from analysis.evaluate.frontier import materialise
from analysis.ingest.datasets import Question
from analysis.ingest.textckpt import STEP_RE, TRANSITION_RE


def placements_in_tokens(text: str, offsets: list[tuple[int, int]], cfg: GenConfig) -> list[tuple[int, dict]]:
    n = len(offsets)
    starts = [a for a, _ in offsets]
    import bisect
    marks: dict[int, dict] = {}
    if cfg.every:
        for p in range(cfg.every, n, cfg.every):
            marks[p] = {"kind": "interval", "is_step": False, "is_transition": False}
    if cfg.steps:
        for m in STEP_RE.finditer(text):
            p = bisect.bisect_left(starts, m.end())
            if 0 < p < n:
                marks[p] = {"kind": "step", "is_step": True, "is_transition": False}
    if cfg.transitions:
        for m in TRANSITION_RE.finditer(text):
            p = bisect.bisect_left(starts, m.start())
            if 0 < p < n:
                marks[p] = {"kind": "transition", "is_step": marks.get(p, {}).get("is_step", False),
                            "is_transition": True}
    out = sorted(marks.items())
    out.append((n, {"kind": "final", "is_step": False, "is_transition": False}))
    return out


def reprobe(store, run_id: str, model_name: str, *, every: int = 32, device: str = "auto", loaded=None,
            show_progress: bool = True, limit: int | None = None) -> dict:
    import torch

    from analysis.backend.kvcache import new_cache   # lazy: kvcache loads transformers
    src = store.run(run_id)
    model, tok, info = loaded or load(model_name, device)
    cfg = GenConfig(every=every).resolved(src["answer_type"], info["kind"])
    config = {"source": "probe", "of_run": src["id"], "model": {"name": model_name, "sha256": info.get("sha256"),
                                                               "kind": info["kind"]}, "gen": asdict(cfg)}
    with store.transaction() as con:
        new_id, created = store.get_or_create_run(model=model_name, dataset=src["dataset"],
                                                  answer_type=src["answer_type"], source="probed", config=config,
                                                  n_planned=src["n_questions"], con=con)
    done = store.finished_questions(new_id)
    tr = store.traces(src["id"], with_text=True).to_pylist()
    todo = [r for r in tr if r["question_id"] not in done][:limit]
    prober = Prober(model, tok, cfg.cue, cfg.max_answer_tokens)
    dev = prober.device
    bar = progress(todo, desc=f"probing {src['id']} with {model_name}", unit="trace", disable=not show_progress)
    for row in bar:
        t0 = time.perf_counter()
        q = Question(row["question_id"], row["question"], json.loads(row["gold"]), src["answer_type"])
        p_ids = tok(build_prompt(tok, q.text, cfg), add_special_tokens=False)["input_ids"]
        enc = tok(row["text"], add_special_tokens=False, return_offsets_mapping=True)
        t_ids, offs = enc["input_ids"], enc["offset_mapping"]
        res = TraceResult(0, token_ids=list(t_ids), finish_reason="imported")
        cache = new_cache()
        fed = 0
        mask = torch.ones(1, 0, dtype=torch.long, device=dev)
        seq = p_ids + list(t_ids)
        with torch.no_grad():
            for pos, kinds in placements_in_tokens(row["text"], offs, cfg):
                upto = len(p_ids) + pos
                if upto > fed:
                    chunk = torch.tensor([seq[fed:upto]], device=dev)
                    mask = torch.ones(1, upto, dtype=torch.long, device=dev)
                    position_ids = torch.arange(fed, upto, device=dev)[None, :]
                    model(input_ids=chunk, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                          use_cache=True, logits_to_keep=1)
                    fed = upto
                pr = prober.run(cache, mask, [0], True)[0]
                res.checkpoints.append({"pos": pos, **kinds, "probe": pr})
        res.probe_s = time.perf_counter() - t0
        traces, cks = to_tables(new_id, [q], [res], tok, src["answer_type"])
        traces = traces.set_column(traces.schema.get_field_index("text"), "text",
                                   __import__("pyarrow").array([row["text"]]))
        store.put_results(traces, cks)
    store.set_run_status(new_id, "complete")
    materialise(store, new_id)
    r = store.run(new_id)
    return {"run_id": new_id, "of_run": src["id"], "created": created, "n_questions": r["n_questions"],
            "n_checkpoints": r["n_checkpoints"], "em_full": r["em_full"]}


def reprobe_openai(store, run_id: str, base_urls: list[str], model: str, tokenizer: str, *, every: int = 32,
                   concurrency: int = 8, api_key: str | None = None, top_k: int = 20, show_progress: bool = True,
                   limit: int | None = None) -> dict:
    """``reprobe`` through OpenAI-compatible servers (``--engine openai``): each stored trace is tokenised with the
    served model's tokenizer (an imported trace is text: these ids are the only ones there are), its checkpoints
    placed as ``reprobe`` places them, and every checkpoint's probe sent to the server, many at once. The
    server's prefix cache shares each trace's prefix between its probes."""
    import asyncio

    from analysis.backend.engine_openai import OpenAIEngine
    from analysis.backend.models import load_tokenizer
    src = store.run(run_id)
    tok, kind, eos = load_tokenizer(tokenizer)
    cfg = GenConfig(every=every).resolved(src["answer_type"], kind)

    async def go():
        async with OpenAIEngine(base_urls, model, tok, eos=eos, api_key=api_key, concurrency=concurrency,
                                top_k=top_k) as eng:
            info = await eng.check()            # before anything is written
            config = {"source": "probe", "of_run": src["id"],
                      "engine": {"name": "openai", "server_model": model, "server": info["server"],
                                 "server_version": info["server_version"], "top_logprobs": top_k},
                      "model": {"name": model, "tokenizer": tokenizer, "kind": kind}, "gen": asdict(cfg),
                      "execution": {"engine": "openai", "concurrency": concurrency, **info}}
            with store.transaction() as con:
                new_id, created = store.get_or_create_run(model=model, dataset=src["dataset"],
                                                          answer_type=src["answer_type"], source="probed",
                                                          config=config, n_planned=src["n_questions"], con=con)
            done = store.finished_questions(new_id)
            todo = [r for r in store.traces(src["id"], with_text=True).to_pylist()
                    if r["question_id"] not in done][:limit]
            bar = progress(total=len(todo), desc=f"probing {src['id']} through {model}", unit="trace",
                           disable=not show_progress)
            cue_ids = tok(cfg.cue, add_special_tokens=False)["input_ids"]
            sem = asyncio.Semaphore(concurrency)

            async def one(row):
                async with sem:
                    q = Question(row["question_id"], row["question"], json.loads(row["gold"]), src["answer_type"])
                    p_ids = tok(build_prompt(tok, q.text, cfg), add_special_tokens=False)["input_ids"]
                    enc = tok(row["text"], add_special_tokens=False, return_offsets_mapping=True)
                    t_ids = list(enc["input_ids"])
                    marks = placements_in_tokens(row["text"], enc["offset_mapping"], cfg)
                    t0 = time.perf_counter()
                    home = await eng._pick()
                    probes = await asyncio.gather(*(eng.probe_on(p_ids + t_ids[:pos], cue_ids, cfg, prefer=home)
                                                    for pos, _ in marks))
                    res = TraceResult(0, token_ids=t_ids, finish_reason="imported",
                                      checkpoints=[{"pos": pos, **kinds, "probe": pr}
                                                   for (pos, kinds), pr in zip(marks, probes)])
                    res.probe_s = time.perf_counter() - t0
                    traces, cks = to_tables(new_id, [q], [res], tok, src["answer_type"])
                    traces = traces.set_column(traces.schema.get_field_index("text"), "text",
                                               __import__("pyarrow").array([row["text"]]))
                    store.put_results(traces, cks)
                    bar.update(1)

            try:
                await asyncio.gather(*(one(r) for r in todo))
            finally:
                bar.close()
            st = eng.stats.as_dict()
            store.set_execution(new_id, {k: st[k] for k in ("probes", "probe_prompt_tokens", "probe_cached_tokens",
                                                            "probe_cache_hit_rate", "cacheable_share", "retries",
                                                            "probes_past_context")})
            return new_id, created

    new_id, created = run_sync(go())
    store.set_run_status(new_id, "complete")
    materialise(store, new_id)
    r = store.run(new_id)
    return {"run_id": new_id, "of_run": src["id"], "created": created, "n_questions": r["n_questions"],
            "n_checkpoints": r["n_checkpoints"], "em_full": r["em_full"]}
