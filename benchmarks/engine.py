"""The openai engine against a server, and the in-process engine on the same model and questions, in one run.

1. plain generation on the server: the questions' completions at once, no probes            -> gen_tok_s
2. ours: the engine's streamed generation with probes every 32 tokens plus steps, transitions and the end,
   each probe sent as its checkpoint streams in                                              -> ours_tok_s,
   probe_overhead = time of 2 / time of 1, prefix_cache_hit_rate (probe prompt tokens the server served from
   its cache, from each answer's usage.prompt_tokens_details.cached_tokens), cacheable_share (the share the
   probes' full KV blocks of shared prefix allow: the bound the hit rate can reach at the server's block size)
3. the in-process transformers engine, plain generation, the same questions in one batch   -> hf_gen_tok_s
4. the entropy approximation: for every probe of 2, the exact entropy after the cue from the in-process model
   on the same prefix ids                                                                    -> entropy_err_*
   (and how often the two engines' trial answers agree there: answer_agreement)
Greedy decoding. 1 and 2 run ``--repeat`` times, interleaved; the fastest of each counts (a shared machine:
the minimum is the least disturbed). Prints one JSON line.
Usage: python benchmarks/engine.py --base-url http://127.0.0.1:8000/v1 --model smollm2-135m-instruct
       --tokenizer smollm2-135m-instruct [--questions 16] [--max-new-tokens 256] [--repeat 2] [--no-hf]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np

from analysis.backend.engine_openai import OpenAIEngine
from analysis.backend.models import load_tokenizer
from analysis.backend.prompts import GenConfig, build_prompt
from analysis.ingest.datasets import load_dataset


async def plain(eng: OpenAIEngine, prompts, cfg) -> tuple[float, int]:
    r = eng.replicas[0]

    async def one(p):
        out = await eng._post(r, "/completions", {"model": eng.model, "prompt": p, "max_tokens": cfg.max_new_tokens,
                                                  "temperature": 0, "return_token_ids": True})
        return len([t for t in out["choices"][0]["token_ids"] if t not in eng.eos])
    t0 = time.perf_counter()
    n = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - t0, sum(n)


async def ours(eng: OpenAIEngine, prompts, cfg):
    t0 = time.perf_counter()
    res = await asyncio.gather(*(eng.question(p, cfg) for p in prompts))
    return time.perf_counter() - t0, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--dataset", default="rg:basic_arithmetic")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--every", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true", help="skip the in-process engine (a model too big for here)")
    ap.add_argument("--compare", type=int, default=48, help="probes whose entropy is compared with the exact one "
                                                             "(spread over the questions)")
    a = ap.parse_args()
    tok, kind, eos = load_tokenizer(a.tokenizer)
    ds = load_dataset(a.dataset, a.questions, seed=42) if a.dataset.startswith("rg:") else load_dataset(a.dataset,
                                                                                                          a.questions)
    cfg = GenConfig(every=a.every, max_new_tokens=a.max_new_tokens).resolved(ds.answer_type, kind)
    prompts = [tok(build_prompt(tok, q.text, cfg), add_special_tokens=False)["input_ids"] for q in ds.questions]

    async def server_side():
        async with OpenAIEngine([a.base_url], a.model, tok, eos=eos, concurrency=len(prompts)) as eng:
            info = await eng.check()
            await plain(eng, prompts[:2], cfg)                 # warm-up
            t_plain, t_ours, n_plain, res, stats = [], [], 0, None, None
            for _ in range(a.repeat):
                dt, n_plain = await plain(eng, prompts, cfg)
                t_plain.append(dt)
                eng.stats = type(eng.stats)()
                dt, res = await ours(eng, prompts, cfg)
                t_ours.append(dt)
                stats = eng.stats.as_dict()
            return info, t_plain, t_ours, n_plain, res, stats
    info, t_plain, t_ours, n_plain, res, stats = asyncio.run(server_side())
    print(f"server: plain {t_plain}, ours {t_ours}", file=sys.stderr, flush=True)
    n_ours = sum(len(r.token_ids) for r in res)
    out = {"model": a.model, "server": info.get("server"), "server_version": info.get("server_version"),
           "block_size": info.get("block_size"), "questions": len(prompts), "max_new_tokens": a.max_new_tokens,
           "gen_tok_s": round(n_plain / min(t_plain), 1), "ours_tok_s": round(n_ours / min(t_ours), 1),
           "probe_overhead": round(min(t_ours) / min(t_plain), 3),
           "probe_overhead_median": round(float(np.median(t_ours) / np.median(t_plain)), 3),
           "prefix_cache_hit_rate": round(stats["probe_cache_hit_rate"], 3) if stats["probe_cache_hit_rate"] is not None
           else None, "cacheable_share": round(stats["cacheable_share"], 3) if stats["cacheable_share"] else None,
           "n_probes": stats["probes"], "tokens_plain": n_plain, "tokens_ours": n_ours,
           "seconds_plain": [round(t, 2) for t in t_plain], "seconds_ours": [round(t, 2) for t in t_ours]}
    if not a.no_hf:
        out.update(in_process(a.tokenizer, prompts, res, cfg, tok, a.compare))
        out["gen_vs_hf"] = round(out["gen_tok_s"] / out["hf_gen_tok_s"], 2)
    print(json.dumps(out))


def in_process(model_name, prompts, res, cfg, tok, n_compare: int) -> dict:
    """Plain generation in-process (one batch), and the exact entropy and answer at ``n_compare`` probes of
    ``res`` (every k-th, so that every question and depth is represented)."""
    import torch

    from analysis.backend.decode import generate_batch
    from analysis.backend.models import load
    from analysis.backend.probe import probe_from_scratch
    model, _, _ = load(model_name, "cpu")
    texts = [tok.decode(p) for p in prompts]
    generate_batch(model, tok, texts[:2], GenConfig(max_new_tokens=8, every=0), probe=False)     # warm-up
    t0 = time.perf_counter()
    gen = generate_batch(model, tok, texts, cfg, probe=False)
    dt = time.perf_counter() - t0
    print(f"in-process generation: {dt:.1f} s", file=sys.stderr, flush=True)
    n = sum(len(r.token_ids) for r in gen)
    errs, agree, tot = [], 0, 0
    every_probe = [(p, r, ck) for p, r in zip(prompts, res) for ck in r.checkpoints]
    step = max(1, len(every_probe) // max(1, n_compare))
    with torch.no_grad():
        for p, r, ck in every_probe[::step]:
            exact = probe_from_scratch(model, tok, p + r.token_ids[:ck["pos"]], cfg.cue, cfg.max_answer_tokens)
            errs.append(ck["probe"].entropy - exact.entropy)
            agree += exact.raw == ck["probe"].raw
            tot += 1
    e = np.abs(np.array(errs))
    return {"hf_gen_tok_s": round(n / dt, 1), "hf_tokens": n,
            "entropy_err_median": round(float(np.median(e)), 4), "entropy_err_p90": round(float(np.quantile(e, 0.9)), 4),
            "entropy_err_max": round(float(e.max()), 4), "entropy_err_mean_signed": round(float(np.mean(errs)), 4),
            "answer_agreement": round(agree / tot, 3), "n_compared": tot}


if __name__ == "__main__":
    main()
