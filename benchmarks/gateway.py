"""The gateway under load, against its upstream, in one run (loopback only, bounded).

N concurrent streaming clients send the same chat requests three ways:
1. directly to the upstream                                                        (the baseline)
2. through the gateway with a preset that never stops and needs no probes          -> the pure proxy cost:
   ttft_ratio (median time to first token, gateway / direct), itl_p95_ratio (95th percentile of the gaps
   between streamed chunks, gateway / direct)
3. through the gateway with a stopping preset (default: the demo's confidence preset) -> tokens_saved_share
   (completion tokens not written, against 1), wall_ratio_with_stops (wall time of the batch, gateway / direct),
   decisions_agree (check-log on the gateway's decision log: live decisions equal to the replay's)
and errors (requests that failed, all ways). Prints one JSON line.
Usage: python benchmarks/gateway.py --upstream http://127.0.0.1:8000/v1 --model smollm2-135m-instruct
       --tokenizer smollm2-135m-instruct [--clients 32] [--max-tokens 256] [--preset P.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from analysis.backend.models import load_tokenizer
from analysis.ingest.datasets import load_dataset
from analysis.production.gateway import Gateway, Options
from analysis.production.gateway_app import create_app
from analysis.production.verify import check_decisions

NEVER = {"stopline_preset": 1, "name": "never", "setting": {"family": "budget", "params": {"B": 32768}}}
STOPPING = {"stopline_preset": 1, "name": "confidence", "setting": {"family": "confidence", "params": {"tau": 0.8}}}


async def one(client, url, model, question, max_tokens):
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    stamps, tokens, err = [], None, None
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
                if d.get("usage"):
                    tokens = d["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        err = str(e)
    if err or not stamps:
        return {"error": str(err or "no content")}
    return {"ttft": stamps[0] - t0, "itl": np.diff(stamps).tolist(), "tokens": tokens, "end": time.perf_counter() - t0}


async def batch(url, model, questions, max_tokens):
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=len(questions) + 8)) as c:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(c, url, model, q, max_tokens) for q in questions))
        return res, time.perf_counter() - t0


def serve(gw) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(gw), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return srv, f"http://127.0.0.1:{port}/v1"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--dataset", default="rg:basic_arithmetic")
    ap.add_argument("--preset", help="the stopping preset (default: confidence tau=0.8)")
    a = ap.parse_args()
    tok, kind, eos = load_tokenizer(a.tokenizer)
    ds = load_dataset(a.dataset, a.clients, seed=42)
    qs = [f"{q.text}\nSolve it step by step, then write the final answer inside \\boxed{{}}." for q in ds.questions]
    tmp = Path(tempfile.mkdtemp())
    stopping = json.loads(Path(a.preset).read_text()) if a.preset else STOPPING
    out = {"clients": len(qs), "max_tokens": a.max_tokens}
    asyncio.run(batch(a.upstream, a.model, qs[:2], 8))                 # warm-up
    direct, t_direct = asyncio.run(batch(a.upstream, a.model, qs, a.max_tokens))
    runs = {}
    for name, preset in (("never", NEVER), ("stopping", stopping)):
        (tmp / f"{name}.json").write_text(json.dumps(preset))
        gw = Gateway([a.upstream], str(tmp / f"{name}.json"), tok, eos, kind, log_path=str(tmp / f"{name}.jsonl"),
                     model=a.model, options=Options())
        srv, url = serve(gw)
        runs[name] = asyncio.run(batch(url, a.model, qs, a.max_tokens))
        srv.should_exit = True
    errors = sum("error" in r for r in direct + runs["never"][0] + runs["stopping"][0])

    def med_ttft(rs):
        return float(np.median([r["ttft"] for r in rs if "ttft" in r]))

    def p95_itl(rs):
        return float(np.quantile([x for r in rs if "itl" in r for x in r["itl"]], 0.95))

    def tokens(rs):
        return sum(r.get("tokens") or 0 for r in rs)
    never, t_never = runs["never"]
    stop, t_stop = runs["stopping"]
    agree = check_decisions(str(tmp / "stopping.jsonl"))
    out.update({"errors": errors,
                "ttft_ratio": round(med_ttft(never) / med_ttft(direct), 3),
                "itl_p95_ratio": round(p95_itl(never) / p95_itl(direct), 3),
                "tokens_saved_share": round(1 - tokens(stop) / tokens(direct), 3),
                "wall_ratio_with_stops": round(t_stop / t_direct, 3), "wall_ratio_never": round(t_never / t_direct, 3),
                "decisions_agree": agree["agreement"], "n_decided": agree["n"],
                "ttft_direct_s": round(med_ttft(direct), 3), "itl_p95_direct_s": round(p95_itl(direct), 4),
                "wall_direct_s": round(t_direct, 2), "tokens_direct": tokens(direct), "tokens_stopping": tokens(stop)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
