"""The gateway under load, against its upstream, in one run (loopback only, bounded).

N concurrent streaming clients send the same chat requests three ways:
1. directly to the upstream                                                        (the baseline)
2. through the gateway with a preset that never stops and needs no probes          -> the pure proxy cost:
   ttft_ratio (median time to first token, gateway / direct), itl_p95_ratio (95th percentile of the gaps
   between streamed chunks, gateway / direct)
3. through the gateway with each stopping preset (default: confidence(tau=0.8), probing at every checkpoint;
   "sparse": the same rule probing every 64 tokens only; "demo": serve-demo's preset for the model)
   -> tokens_saved_share (completion tokens not written, against 1), wall_ratio_with_stops (wall time of the
   batch, gateway / direct), compute_ratio ((completion + probe tokens through the gateway) / direct completion
   tokens: on a CPU server, where a probe token costs about what a generated one does, the wall ratio follows
   it), decisions_agree (check-log on the gateway's decision log: live decisions equal to the replay's)
and errors (requests that failed, all ways). Each pass starts with the upstream's prefix cache holding the prompts
only (start vLLM with VLLM_SERVER_DEV_MODE=1 so that it can be reset; "prefix_cache_reset" says whether it was).
The gateway runs as its own process (`python -m analysis serve`, as in production; --in-process: a thread of
this one). Prints one JSON line: the first preset's figures at the top level, every preset's under "presets".
Usage: python benchmarks/gateway.py --upstream http://127.0.0.1:8000/v1 --model smollm2-135m-instruct
       --tokenizer smollm2-135m-instruct [--clients 32] [--max-tokens 256] [--preset P.json|confidence|sparse|demo ...]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from analysis.backend.models import load_tokenizer
from analysis.backend.vllm_local import wait_healthy
from analysis.ingest.datasets import load_dataset
from analysis.production.gateway import Gateway, Options
from analysis.production.gateway_app import create_app
from analysis.production.verify import check_decisions

NEVER = {"stopline_preset": 1, "name": "never", "setting": {"family": "budget", "params": {"B": 32768}}}
BUILTIN = {
    # a probe at every checkpoint: every 32 tokens, every step (blank line) and transition word
    "confidence": {"stopline_preset": 1, "name": "confidence",
                   "setting": {"family": "confidence", "params": {"tau": 0.8}}},
    # the same rule on a sparse schedule: a probe every 64 tokens from the 64th, none at steps or transitions
    "sparse": {"stopline_preset": 1, "name": "confidence, sparse",
               "setting": {"family": "confidence", "params": {"tau": 0.8},
                           "schedule": {"every": 2, "at_steps": False, "at_transitions": False}}},
}


def demo_preset(model: str, dataset: str) -> dict:
    """serve-demo's preset for ``model``: the fewest tokens within 3 EM points of full length, chosen on the demo
    store's run of the model (on ``dataset`` when it has one), without exploration."""
    from analysis.core.store import DEMO_DB, Store
    from analysis.production.serve_demo import default_preset
    from analysis.replay.engine import RunTable
    store = Store(DEMO_DB, read_only=True)
    runs = [r for r in store.runs() if r["model"] == model and r["source"] == "generated"]
    if not runs:
        raise SystemExit(f"the demo store has no generated run of {model}")
    run = next((r for r in runs if r["dataset"] == dataset), runs[-1])
    p = default_preset(RunTable.from_store(store, run["id"]), explore=0.0).to_dict()
    p["name"] = f"demo: {p['name']} (run {run['id']}, {run['dataset']})"
    return p


async def one(client, url, model, question, max_tokens):
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    stamps, tokens, info, err = [], None, {}, None
    try:
        async with client.stream("POST", url + "/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}"}
            async for ln in r.aiter_lines():
                if not ln.startswith("data: ") or ln == "data: [DONE]":
                    continue
                d = json.loads(ln[6:])
                if "error" in d:
                    err = d["error"]
                if d.get("choices") and d["choices"][0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
                if d.get("usage"):     # through the gateway, the tokens the model wrote: its usage also counts the cue
                    tokens = (d.get("stopline") or {}).get("tokens_emitted", d["usage"]["completion_tokens"])
                info = d.get("stopline") or info
    except httpx.HTTPError as e:
        err = str(e)
    if err or not stamps:
        return {"error": str(err or "no content")}
    return {"ttft": stamps[0] - t0, "itl": np.diff(stamps).tolist(), "tokens": tokens, "end": time.perf_counter() - t0,
            "probe_tokens": info.get("probe_tokens", 0)}


async def batch(url, model, questions, max_tokens):
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=len(questions) + 8)) as c:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(c, url, model, q, max_tokens) for q in questions))
        return res, time.perf_counter() - t0


def fresh_cache(upstream: str, model: str, questions: list[str]) -> bool:
    """Start a pass on equal terms: the upstream's prefix cache emptied (vLLM's /reset_prefix_cache, served when
    it runs with VLLM_SERVER_DEV_MODE=1), then every prompt prefilled once (one token each), so that each pass
    finds the prompts cached and nothing else: no trace or probe prefix an earlier pass left. False when the
    upstream offers no reset (later passes then find earlier passes' prefixes)."""
    r = httpx.post(upstream.rstrip("/").removesuffix("/v1") + "/reset_prefix_cache", timeout=60)
    asyncio.run(batch(upstream, model, questions, 1))
    return r.status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(a, preset: Path, log: Path, tok, eos, kind):
    """The gateway's /v1 URL while it serves ``preset``: as it runs in production, `python -m analysis serve`
    in a process of its own, or (``a.in_process``) uvicorn in a thread of this one, sharing the clients'
    interpreter."""
    port = free_port()
    if a.in_process:
        gw = Gateway([a.upstream], str(preset), tok, eos, kind, log_path=str(log), model=a.model, options=Options())
        srv = uvicorn.Server(uvicorn.Config(create_app(gw), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=srv.run, daemon=True).start()
        while not srv.started:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            srv.should_exit = True
        return
    err = log.with_suffix(".stderr")
    with open(err, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "analysis", "serve", "--upstream", a.upstream, "--preset",
                                 str(preset), "--tokenizer", a.tokenizer, "--model", a.model, "--port", str(port),
                                 "--log", str(log)], stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, 300, err, what="the gateway")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--dataset", default="rg:basic_arithmetic")
    ap.add_argument("--in-process", action="store_true",
                    help="run the gateway in this process (a thread), sharing the clients' interpreter; default: "
                         "its own process, `python -m analysis serve`, as in production")
    ap.add_argument("--preset", action="append",
                    help=f"a stopping preset: a preset file, one of {', '.join(BUILTIN)}, or demo (serve-demo's "
                         "preset for the model, chosen on the demo store; repeat for several; default: confidence)")
    a = ap.parse_args()
    tok, kind, eos = load_tokenizer(a.tokenizer)
    ds = load_dataset(a.dataset, a.clients, seed=42)
    qs = [f"{q.text}\nSolve it step by step, then write the final answer inside \\boxed{{}}." for q in ds.questions]
    tmp = Path(tempfile.mkdtemp())
    stopping = [BUILTIN[p] if p in BUILTIN else demo_preset(a.model, a.dataset) if p == "demo"
                else json.loads(Path(p).read_text()) for p in a.preset or ["confidence"]]
    out = {"clients": len(qs), "max_tokens": a.max_tokens, "gateway": "in-process" if a.in_process else "process"}
    asyncio.run(batch(a.upstream, a.model, qs[:2], 8))                 # warm-up
    out["prefix_cache_reset"] = fresh_cache(a.upstream, a.model, qs)
    direct, t_direct = asyncio.run(batch(a.upstream, a.model, qs, a.max_tokens))
    runs = {}
    for name, preset in [("never", NEVER)] + [(f"stopping{i}", p) for i, p in enumerate(stopping)]:
        fresh_cache(a.upstream, a.model, qs)
        (tmp / f"{name}.json").write_text(json.dumps(preset))
        with gateway(a, tmp / f"{name}.json", tmp / f"{name}.jsonl", tok, eos, kind) as url:
            runs[name] = asyncio.run(batch(url, a.model, qs, a.max_tokens))
    errors = sum("error" in r for r in direct + [x for rs, _ in runs.values() for x in rs])

    def med_ttft(rs):
        return float(np.median([r["ttft"] for r in rs if "ttft" in r]))

    def p95_itl(rs):
        return float(np.quantile([x for r in rs if "itl" in r for x in r["itl"]], 0.95))

    def tokens(rs):
        return sum(r.get("tokens") or 0 for r in rs)
    never, t_never = runs["never"]
    per = {}
    for i, preset in enumerate(stopping):
        stop, t_stop = runs[f"stopping{i}"]
        agree = check_decisions(str(tmp / f"stopping{i}.jsonl"))
        probes = sum(r.get("probe_tokens") or 0 for r in stop)
        per[preset["name"]] = {
            "tokens_saved_share": round(1 - tokens(stop) / tokens(direct), 3),
            "wall_ratio_with_stops": round(t_stop / t_direct, 3),
            "compute_ratio": round((tokens(stop) + probes) / tokens(direct), 3),
            "decisions_agree": agree["agreement"], "n_decided": agree["n"],
            "tokens_stopping": tokens(stop), "probe_tokens": probes}
    out.update({"errors": errors,
                "ttft_ratio": round(med_ttft(never) / med_ttft(direct), 3),
                "itl_p95_ratio": round(p95_itl(never) / p95_itl(direct), 3),
                **next(iter(per.values())), "wall_ratio_never": round(t_never / t_direct, 3),
                "ttft_direct_s": round(med_ttft(direct), 3), "itl_p95_direct_s": round(p95_itl(direct), 4),
                "wall_direct_s": round(t_direct, 2), "tokens_direct": tokens(direct), "presets": per})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
