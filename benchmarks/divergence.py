"""Why the in-process engine and vLLM write different greedy traces for the same prompts (issue 24): for each
question, the first token where the two greedy traces differ, and the in-process top-two logit margin there
(a margin of one or two bf16 steps means a near-tie that either stack's arithmetic may break either way).

Usage: python benchmarks/divergence.py --upstream http://127.0.0.1:8011/v1 [--n 8] [--max-tokens 256]
(a vLLM server of the packaged SmolLM2: python -m analysis vllm-server). Prints one JSON object last."""
import argparse
import json

import httpx
import torch
from analysis.backend.models import load
from analysis.backend.prompts import GenConfig, build_prompt
from analysis.ingest.datasets import load_dataset
ap = argparse.ArgumentParser()
ap.add_argument("--upstream", required=True)
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--max-tokens", type=int, default=256)
a = ap.parse_args()
model, tok, info = load("smollm2-135m-instruct", "cpu")
cfg = GenConfig(every=32).resolved("number", "instruct")
qs = load_dataset("rg:basic_arithmetic", limit=a.n, seed=42).questions
out = []
for q in qs:
    ids = tok(build_prompt(tok, q.text, cfg), add_special_tokens=False)["input_ids"]
    r = httpx.post(a.upstream.rstrip("/") + "/completions", timeout=600, json={
        "model": "smollm2-135m-instruct", "prompt": ids, "max_tokens": a.max_tokens, "temperature": 0,
        "return_token_ids": True}).json()
    v = r["choices"][0].get("token_ids") or []
    with torch.no_grad():
        g = model.generate(torch.tensor([ids]), max_new_tokens=a.max_tokens, do_sample=False)[0, len(ids):].tolist()
    k = next((i for i, (a, b) in enumerate(zip(g, v)) if a != b), None)
    margin = None
    if k is not None:
        with torch.no_grad():
            logits = model(torch.tensor([ids + g[:k]])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        margin = float(top.values[0] - top.values[1])
    out.append({"q": q.id, "len_inproc": len(g), "len_vllm": len(v), "first_diff": k, "top2_margin": margin})
    print(out[-1], flush=True)
diff = [o for o in out if o["first_diff"] is not None]
print(json.dumps({"questions": len(out), "diverged": len(diff),
                  "first_diff_median": sorted(o["first_diff"] for o in diff)[len(diff) // 2] if diff else None,
                  "top2_margin_max": max((o["top2_margin"] for o in diff), default=None),
                  "tokens_inproc": sum(o["len_inproc"] for o in out), "tokens_vllm": sum(o["len_vllm"] for o in out),
                  "per_question": out}))
