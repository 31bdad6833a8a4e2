"""Commands over the store and its inputs: dashboard, datasets, import, runs, show (imports inside the
commands: start-up time, see common.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from analysis.cli.common import _db, _mapping, _mapping_args, _print_json, _store, command
from analysis.core.answers import ANSWER_TYPES
from analysis.core.errors import StoplineError


# --- dashboard --------------------------------------------------------------------------------------------
def _dashboard_setup(p):
    p.add_argument("--viewer", action="store_true",
                   help="viewer mode, for sharing: read-only stores, no runs, imports, uploads or writes "
                        "(also STOPLINE_VIEWER=1); needed to listen beyond this machine without a login")
    p.add_argument("streamlit_args", nargs="*", metavar="STREAMLIT_OPTION",
                   help="passed to `streamlit run` as they are, e.g. --server.port 8502")


@command("dashboard", "open the dashboard (streamlit run app.py, with the pages' modules imported before it "
                      "listens)", _dashboard_setup)
def _dashboard(args):
    from analysis.core import sharing
    root = Path(__file__).resolve().parents[2]
    launcher = root / "views" / "launch.py"
    if not launcher.exists():
        raise StoplineError("the dashboard's files are not here (views/launch.py)", hint="run from a clone of the repo")
    streamlit_args = list(args.streamlit_args)
    if getattr(args, "viewer", False) or "--viewer" in streamlit_args:
        streamlit_args = [a for a in streamlit_args if a != "--viewer"]
        os.environ[sharing.VIEWER_ENV] = "1"             # the app reads it (views/data.py); execv keeps it
    sharing.check_exposure(streamlit_args)                # exposed: viewer mode or a login, or no start
    os.execv(sys.executable, [sys.executable, str(launcher), *sharing.with_upload_cap(streamlit_args)])


# --- datasets ---------------------------------------------------------------------------------------------
def _datasets_setup(p):
    p.add_argument("dataset", nargs="?", help="a dataset id to preview, e.g. rg:gsm_symbolic or gsm8k:PATH")
    p.add_argument("--rg-tasks", action="store_true",
                   help="list the reasoning-gym tasks (rg:TASK) and the options each takes (rg:TASK?OPTION=VALUE)")
    p.add_argument("--limit", type=int, default=5, help="questions to show")
    _mapping_args(p)
    p.add_argument("--json", action="store_true")


@command("datasets", "list the dataset adapters (or the reasoning-gym tasks), or show the first questions of one "
                     "dataset id", _datasets_setup)
def _datasets(args):
    from analysis.ingest.datasets import DATASETS, load_dataset, RG_LIST, reasoning_gym_tasks, rg_answer_type
    if args.rg_tasks:
        if args.dataset:
            raise StoplineError("--rg-tasks lists the tasks; give it without a dataset id")
        tasks = reasoning_gym_tasks()
        if args.json:
            return _print_json([{"id": f"rg:{t}", "answer_type": rg_answer_type(t), "options": o}
                                for t, o in tasks.items()])
        for t, o in tasks.items():
            print(f"  rg:{t:28s} {rg_answer_type(t):7s} {', '.join(o)}")
        return print(f"{len(tasks)} tasks: name, answer type, options. Options go in the id: "
                     "rg:basic_arithmetic?max_terms=3&max_digits=2.\n"
                     "Tasks whose answers are single numbers are scored as numbers (1,250 = 1250.0); the others "
                     "(words, lists, grids, moves, expressions) as text: exact match after lower-casing and "
                     "dropping punctuation and articles. rg:TASK?answer_type=math (number, math, text, choice) "
                     "chooses another.")
    if not args.dataset:
        rows = [{"prefix": s.name, "what": s.about} for s in DATASETS.values()]
        if args.json:
            return _print_json(rows)
        for r in rows:
            print(f"  {r['prefix'] + ':':10s} {r['what']}")
        return print(f"The reasoning-gym tasks: {RG_LIST}")
    ds = load_dataset(args.dataset, args.limit, **_mapping(args))
    if args.json:
        return _print_json([q.__dict__ for q in ds.questions])
    print(f"{ds.id}: {ds.description} (answers: {ds.answer_type})")
    if ds.attribution:
        print(f"  {ds.attribution}")
    for q in ds.questions:
        print(f"- [{q.id}] {q.text[:100]!r} -> {q.gold}")


# --- import -----------------------------------------------------------------------------------------------
def _import_setup(p):
    p.add_argument("file", help="JSONL, a JSON document (.json), CSV or Parquet")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "lm-eval", "openai-chat", "checkpoints"],
                   help="jsonl: map fields yourself (any file kind); lm-eval: lm-evaluation-harness --log_samples; "
                        "openai-chat: chat/completions request+response logs (reasoning_content, <think>); "
                        "checkpoints: per-checkpoint exports of other tools (long or wide form)")
    p.add_argument("--records", help="a JSON document's list of records, at this dotted path (default: the top level)")
    p.add_argument("--question-field", help="dotted path to the question (default 'question'; openai-chat: the "
                                            "last user message)")
    p.add_argument("--gold-field", help="dotted path to the gold answer or list of aliases (default 'answer'; "
                                        "openai-chat: 'gold')")
    p.add_argument("--response-field", help="dotted path to the model's response (default 'response'; "
                                            "checkpoints: the trace's text, optional)")
    p.add_argument("--id-field", help="dotted path to a question id (default: derived from the question text)")
    p.add_argument("--answer-type", default="number", choices=ANSWER_TYPES,
                   help="how answers are matched: number (GSM8K), math (LaTeX, MATH/AIME), text (NQ), choice (letters)")
    p.add_argument("--tokenizer", help="count tokens in this model's tokenizer (a directory, packaged model or hub "
                                       "id); without it counts are approximate word pieces")
    ck = p.add_argument_group("--format checkpoints")
    ck.add_argument("--position-field", help="tokens of the trace before the checkpoint")
    ck.add_argument("--answer-field", help="the trial answer at the checkpoint")
    ck.add_argument("--length-field", help="the whole trace's tokens (a final checkpoint there, when past the last)")
    ck.add_argument("--final-answer-field", help="the model's own answer at full length (else the last checkpoint's "
                                                 "trial answer stands for it)")
    ck.add_argument("--correct-field", help="the tool's own correctness label, used instead of Stopline's grader")
    ck.add_argument("--signal", action="append", default=[], metavar="NAME=FIELD",
                    help="a signal families read (p_mean, p_geo, p_min, p_first, entropy) from a field; repeatable")
    inc = p.add_argument_group("your production stopper (drawn as 'your mechanism')")
    inc.add_argument("--stop-field", help="where it stopped each trace (tokens of the trace)")
    inc.add_argument("--stopped-answer-field", help="what it answered there (default: the trial answer at that point)")
    p.add_argument("--model", required=True, help="the model that wrote the responses")
    p.add_argument("--dataset", required=True, help="a name for the dataset the questions come from")
    p.add_argument("--every", type=int, default=32, help="a checkpoint every N tokens (plus steps and transitions)")
    p.add_argument("--max-line-mb", type=float, default=16)
    p.add_argument("--json", action="store_true")
    _db(p)


def import_spec(args):
    """An ImportSpec from the import command's options (also used by the Runs page's upload form)."""
    from analysis.ingest.importer import ImportSpec, spec_for_format
    fields = spec_for_format(args.format, question_field=args.question_field, gold_field=args.gold_field,
                             response_field=args.response_field, id_field=args.id_field)
    defaults = {"question_field": None if args.format == "openai-chat" else "question",
                "gold_field": None if args.format == "checkpoints" and args.correct_field else "answer",
                "response_field": None if args.format == "checkpoints" else "response"}
    signals = {}
    for s in args.signal:
        name, eq, f = s.partition("=")
        if not eq or not name.strip() or not f.strip():
            raise StoplineError(f"--signal takes NAME=FIELD, not {s!r}")
        signals[name.strip()] = f.strip()
    return ImportSpec(path=args.file, model=args.model, dataset=args.dataset, answer_type=args.answer_type,
                      every=args.every, max_line_mb=args.max_line_mb, fmt=args.format, records=args.records,
                      tokenizer=args.tokenizer, position_field=args.position_field, answer_field=args.answer_field,
                      length_field=args.length_field, final_answer_field=args.final_answer_field,
                      correct_field=args.correct_field, signals=signals or None,
                      stop_field=args.stop_field, stopped_answer_field=args.stopped_answer_field,
                      **{**defaults, **fields})


@command("import", "import generations made by another tool (JSONL, JSON, CSV, Parquet; lm-eval, OpenAI chat "
                   "logs, per-checkpoint exports) as a run", _import_setup)
def _import(args):
    from analysis.ingest.importer import import_generations
    spec = import_spec(args)
    res = import_generations(args.db, spec)     # the store is opened (made) once the file has been checked
    if args.json:
        return _print_json(res)
    verb = "imported" if res["created"] else "already imported as"
    print(f"{verb} run {res['run_id']}: {res['n_questions']} traces, {res['n_checkpoints']} checkpoints, "
          f"EM at full length {res['em_full']:.3f}")


# --- runs / show-run --------------------------------------------------------------------------------------
def _runs_setup(p):
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _db(p)


@command("runs", "list the runs in a store", _runs_setup)
def _runs(args):
    runs = _store(args, read_only=True).runs()
    if args.json:
        for r in runs:
            _print_json({k: v for k, v in r.items() if k != "config"})
        return
    if not runs:
        print("no runs yet: `python -m analysis import ...` or `python -m analysis run ...`")
    wm = max((len(str(r["model"])) for r in runs), default=0)
    wd = max((len(str(r["dataset"])) for r in runs), default=0)
    for r in runs:
        em = "-" if r["em_full"] is None else f"{r['em_full']:.3f}"
        mine = f"  your mechanism on {r['n_incumbent']} q" if r.get("n_incumbent") else ""
        if r.get("traces_model"):
            mine += f"  probes run {r['config']['of_run'][:12]}'s traces ({r['traces_model']})"
        print(f"{r['id']}  {str(r['model']):{wm}s}  {str(r['dataset']):{wd}s} {r['n_questions']:6d} q "
              f"{r['n_checkpoints']:8d} ck  EM {em}  {r['status']}{mine}")


def _show_setup(p):
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    _db(p)


@command("show-run", "details of one run: config, counts, EM, signals present", _show_setup)
def _show(args):
    s = _store(args, read_only=True)
    r = s.run(args.run)
    r["signals"] = s.signals_present(r["id"])
    if args.json:
        return _print_json(r)
    print(f"run {r['id']}  ({r['source']}, {r['status']})")
    print(f"  model    {r['model']}\n  dataset  {r['dataset']} ({r['answer_type']} answers)")
    if r.get("traces_model"):
        print(f"  traces   written by {r['traces_model']} (run {r['config']['of_run']}), probed by {r['model']}")
    print(f"  traces   {r['n_questions']}   checkpoints {r['n_checkpoints']}   mean tokens "
          f"{(r['mean_tokens'] or 0):.1f}")
    if r["em_full"] is not None:
        print(f"  EM at full length {r['em_full']:.3f}   F1 {r['f1_full']:.3f}")
    have = [k for k, v in r["signals"].items() if v]
    print(f"  signals  {', '.join(have) if have else 'none (text-derived checkpoints)'}")
    print("  config   " + json.dumps(r["config"], indent=2, default=str).replace("\n", "\n  "))


def _migrate_setup(p):
    p.add_argument("--json", action="store_true")
    _db(p)


@command("migrate", "bring a store made by an older Stopline to this version's schema (read-only opens need it)",
         _migrate_setup)
def _migrate(args):
    from analysis.core.store import SCHEMA_VERSION, Store, resolve_db_path, stored_version
    path = resolve_db_path(args.db)
    before = stored_version(path)
    Store(path, create=False)                  # opening it writable applies the missing steps
    res = {"path": str(path), "schema_version_before": before, "schema_version": SCHEMA_VERSION}
    if args.json:
        return _print_json(res)
    print(f"{path}: schema version {before} -> {SCHEMA_VERSION}" if before != SCHEMA_VERSION
          else f"{path}: already at schema version {SCHEMA_VERSION}")
