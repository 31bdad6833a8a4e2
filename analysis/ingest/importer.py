"""Import generations made elsewhere (JSONL, lm-evaluation-harness ``--log_samples``) into the store.

The whole file is read and checked before anything is written; the run, its questions, traces and
text-derived checkpoints then go in one transaction. Bad input raises StoplineError naming file, line, field.

The steps: the spec and its checks (here), records from sources.py, per-checkpoint exports from ckimport.py,
traces and checkpoints derived from the texts in derive.py (vectorised scoring in scoring.py), one write (here).
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from analysis.core.answers import ANSWER_TYPES, NUMBER
from analysis.core.errors import GoldConflict, StoplineError
from analysis.core.registry import Registry
from analysis.core.store import config_hash, resolve_db_path, Store, writing_to
from analysis.evaluate.frontier import materialise
from analysis.evaluate.incumbent import attach
from analysis.ingest import sources
from analysis.ingest.ckimport import MAX_CHECKPOINTS, read_checkpoints, read_columns
from analysis.ingest.derive import derive, load_tokenizer, tokenizer_starts
from analysis.ingest.datasets import as_gold_list, assign_ids, check_gold, Question, question_problem
from analysis.ingest.sources import Loc

@dataclass(frozen=True)
class ImportFormat:
    name: str
    about: str
    fields: dict = field(default_factory=dict)     # field mapping defaults; a user's --*-field flags override them


FORMATS: Registry[ImportFormat] = Registry("import format")
for _f in (
    ImportFormat("jsonl", "one record per line: question, gold and response fields"),
    ImportFormat("lm-eval", "lm-evaluation-harness --log_samples output",
                 {"question_field": "doc.question", "gold_field": "target", "response_field": "resps.0.0",
                  "id_field": "doc_id"}),
    # question and response read from the chat structure (sources.chat_fields); the gold is the user's field
    ImportFormat("openai-chat", "OpenAI-style chat or completion logs (request and response)", {"gold_field": "gold"}),
    ImportFormat("checkpoints", "per-checkpoint exports of other tools: one row per checkpoint (ckimport.py)"),
):
    FORMATS.add(_f.name, _f)
MAX_LINE_MB = 16


@dataclass
class ImportSpec:
    path: str
    model: str
    dataset: str
    question_field: str | None = "question"
    gold_field: str = "answer"
    response_field: str = "response"
    id_field: str | None = None
    answer_type: str = NUMBER
    every: int = 32
    max_line_mb: float = MAX_LINE_MB
    fmt: str = "jsonl"
    records: str | None = None          # a JSON document's list of records, at this dotted path
    kind: str = "auto"                  # jsonl | json | csv | parquet (auto: by the file's extension)
    tokenizer: str | None = None        # count tokens in this tokenizer (a directory or hub id)
    # --format checkpoints (ckimport.py)
    position_field: str | None = None
    answer_field: str | None = None
    length_field: str | None = None
    final_answer_field: str | None = None     # checkpoints: the answer at full length (the model's own, at the end)
    correct_field: str | None = None
    signals: dict | None = None         # {signal name: field}
    # the user's production stopper (incumbent.py): where it stopped (tokens) and what it answered
    stop_field: str | None = None
    stopped_answer_field: str | None = None
    # caps on what reading the file may make (sources.Limits): the dashboard's uploads; None (the command line,
    # on its user's own files): none
    limits: sources.Limits | None = None


def spec_for_format(fmt: str, **overrides) -> dict:
    out = dict(FORMATS[fmt].fields)
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def check_spec(spec: ImportSpec) -> None:
    """Options that are wrong whatever the file holds."""
    if spec.answer_type not in ANSWER_TYPES:
        raise StoplineError(f"--answer-type must be one of {', '.join(ANSWER_TYPES)}, not {spec.answer_type!r}")
    FORMATS[spec.fmt]                   # an unknown format: the registry's error, which lists them
    if not isinstance(spec.every, int) or spec.every < 1:
        raise StoplineError(f"--every must be a positive number of tokens, not {spec.every!r}")
    if not spec.max_line_mb > 0:
        raise StoplineError(f"--max-line-mb must be positive, not {spec.max_line_mb!r}")


def _mapped(spec: ImportSpec, loc: Loc, rec: dict) -> tuple:
    """(question, gold, response) of one record, by the spec's format and fields."""
    if spec.fmt == "openai-chat":
        question, response = sources.chat_fields(rec, loc, spec.question_field)
    else:
        question = sources.field(rec, spec.question_field or "question", loc, "question")
        response = sources.field(rec, spec.response_field or "response", loc, "response")
    gold = sources.field(rec, spec.gold_field or FORMATS[spec.fmt].fields.get("gold_field", "answer"), loc, "gold")
    return question, gold, response


def preview(spec: ImportSpec, n: int = 5) -> dict:
    """What an import would read, before anything is written: the number of records, the fields of the first
    ones, and for each of the first ``n`` the mapped fields (or the error that record would stop the import
    with). Only the first records are read into memory (``sources.head``); ``spec.limits`` are checked where
    that is cheap (the record count, a Parquet file's footer)."""
    head, n_records = sources.head(spec.path, spec.kind, spec.records, spec.max_line_mb, n, spec.limits)
    keys = sorted({k for _, r in head for k in r})
    if spec.fmt == "checkpoints":
        names = {"id": spec.id_field, "question": spec.question_field, "gold": spec.gold_field,
                 "position": spec.position_field, "answer": spec.answer_field, "correct": spec.correct_field,
                 "length": spec.length_field, "final answer": spec.final_answer_field, **(spec.signals or {})}
        names = {k: f for k, f in names.items() if f}
    rows = []
    for loc, rec in head:
        row = {"record": loc.line if loc.line is not None else loc.item}
        try:
            if spec.fmt == "checkpoints":
                row.update({k: sources.field(rec, f, loc, k) for k, f in names.items()})
            else:
                q, g, r = _mapped(spec, loc, rec)
                row.update(question=q, gold=g, response=r)
        except StoplineError as e:
            row["error"] = str(e)
        rows.append({k: (v[:160] + "…" if isinstance(v, str) and len(v) > 160 else v) for k, v in row.items()})
    return {"n_records": n_records, "fields": keys, "rows": rows}


def read_records(spec: ImportSpec) -> tuple[list[tuple[Question, str]], str, dict | None]:
    """Read and validate every record; returns [(question, response)], the file's sha256, and the incumbent's
    stops ({positions, answers, lines}) when ``spec.stop_field`` names them."""
    check_spec(spec)
    recs, sha = sources.read(spec.path, spec.kind, spec.records, spec.max_line_mb, spec.limits)
    out: list[tuple[Question, str]] = []
    stops = {"positions": [], "answers": [], "lines": []} if spec.stop_field else None
    seen_ids: dict[str, Loc] = {}
    filtered: dict[str, tuple] = {}         # lm-eval: each document's first (filter, response)
    for loc, rec in recs:
        question, gold_value, response = _mapped(spec, loc, rec)
        if (problem := question_problem(question)) is not None:
            raise loc.error(problem, spec.question_field or "question")
        if not isinstance(response, str):
            raise loc.error(f"response must be a string, got {type(response).__name__}", spec.response_field)
        if not isinstance(gold_value, (str, int, float, list)) or isinstance(gold_value, bool):
            raise loc.error(f"gold must be a string, number or list, got {type(gold_value).__name__}", spec.gold_field)
        gold = as_gold_list(gold_value, spec.answer_type)
        bad = check_gold(gold, spec.answer_type)
        if bad:
            raise loc.error(f"cannot parse the gold answer: {bad}", spec.gold_field)
        qid = ""
        if spec.id_field:
            qid = str(sources.field(rec, spec.id_field, loc, "id"))
            if qid in seen_ids and spec.fmt == "lm-eval" and _another_filter(rec, response, filtered.get(qid)):
                continue        # lm-eval logs a sample once per filter (gsm8k: strict-match, flexible-extract)
            if qid in seen_ids:
                first = seen_ids[qid]
                raise loc.error(f"question id {qid!r} repeats {'line ' + str(first.line) if first.line else first.item}",
                                spec.id_field)
            seen_ids[qid] = loc
            if spec.fmt == "lm-eval":
                filtered[qid] = (rec.get("filter") if isinstance(rec, dict) else None, response)
        meta = {"line": loc.line} if loc.line is not None else {"item": loc.item}
        out.append((Question(qid, question, gold, spec.answer_type, meta), response))
        if stops is not None:
            stops["positions"].append(sources.field(rec, spec.stop_field, loc, "stop"))
            stops["answers"].append(sources.field(rec, spec.stopped_answer_field, loc, "stopped-answer")
                                    if spec.stopped_answer_field else None)
            stops["lines"].append(loc.line)
    assign_ids([q for q, _ in out])
    return out, sha, stops


def _another_filter(rec, response: str, first: tuple | None) -> bool:
    """Whether an lm-eval record repeats its document's first one under another filter: the same model response,
    filtered another way (``filtered_resps``), which the import does not read. Another response is no copy."""
    return (first is not None and isinstance(rec, dict) and rec.get("filter") is not None
            and rec.get("filter") != first[0] and response == first[1])


def _config(spec: ImportSpec, sha: str, **extra) -> dict:
    """The run's config (its identity): keys beyond the original ones only when used, so that a file
    imported before they existed finds its run again."""
    fields = {"question": spec.question_field, "gold": spec.gold_field, "response": spec.response_field,
              "id": spec.id_field}
    if spec.fmt == "checkpoints":
        fields.update(position=spec.position_field, answer=spec.answer_field, length=spec.length_field,
                      correct=spec.correct_field, signals=spec.signals or {})
        if spec.final_answer_field:             # (a key only when used: runs imported before keep their id)
            fields["final_answer"] = spec.final_answer_field
    config = {"source": "import", "format": spec.fmt, "file": Path(spec.path).name, "sha256": sha, "fields": fields,
              "checkpoints": {"every": spec.every, "steps": True, "transitions": True,
                              "tokens": f"tokenizer:{spec.tokenizer}" if spec.tokenizer else "word-pieces"}}
    if spec.records:
        config["records"] = spec.records
    if spec.stop_field:
        config["incumbent"] = {"stop": spec.stop_field, "answer": spec.stopped_answer_field}
    return {**config, **extra}


def _existing(store: Store, run_id: str) -> dict | None:
    """The summary of the run ``run_id`` when the store has it."""
    for r in store.runs(run_id):
        return {"run_id": run_id, "created": False, "n_questions": r["n_questions"],
                "n_checkpoints": r["n_checkpoints"], "em_full": r["em_full"]}
    return None


def check_checkpoint_counts(cks: pa.Table, spec: ImportSpec, records: list[tuple[Question, str]]) -> None:
    """At most ``MAX_CHECKPOINTS`` per trace (``ck_idx`` is a SMALLINT; the replay pads every question to the
    longest trace, so a trace with more would make the run's table huge): else an error naming the line."""
    ck_idx = cks.column("ck_idx")
    if len(ck_idx) == 0 or pc.max(ck_idx).as_py() < MAX_CHECKPOINTS:
        return
    qid = cks.column("question_id")[pc.index(pc.greater_equal(ck_idx, MAX_CHECKPOINTS), True).as_py()].as_py()
    n = pc.sum(pc.equal(cks.column("question_id"), qid)).as_py()
    q = next(q for q, _ in records if q.id == qid)
    raise StoplineError(f"this trace has {n} checkpoints; at most {MAX_CHECKPOINTS} are stored per question",
                        file=spec.path, line=q.meta.get("line"), field=q.meta.get("item"),
                        hint=f"a larger --every (now {spec.every}) places fewer; each blank line and transition "
                             "word is a checkpoint too")


def import_generations(store: Store | str | os.PathLike | None, spec: ImportSpec, show_progress: bool = True,
                       keep_sweep: bool = True) -> dict:
    """Import one file as one run into ``store`` (a ``Store``, or its path: then opened, and made when new,
    only after the input was read and checked). Returns a summary; re-importing the same file finds the
    existing run. Token counts are word pieces (approximate: the config says ``tokens: word-pieces``) unless
    ``spec.tokenizer`` names the model's tokenizer."""
    if spec.fmt == "checkpoints":
        return _import_checkpoints(store, spec, keep_sweep)
    records, sha, stops = read_records(spec)
    tok = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
    n_think = sum(sources.THINK_CLOSE in r for _, r in records)
    config = _config(spec, sha, **({"thinking_traces": n_think} if n_think else {}))
    run_id = config_hash(spec.model, spec.dataset, config)[:12]
    with writing_to(store) as store:
        found = _existing(store, run_id)
        if found:
            return found
        starts = tokenizer_starts([r for _, r in records], spec.tokenizer, tok) if tok else None
        with ExitStack() as stack:             # one transaction: all of the file or nothing
            opened: dict = {}

            def write_run_and_questions():     # while the workers derive the last chunks (the lock taken then)
                con = opened["con"] = stack.enter_context(store.transaction())
                store.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                        source="imported", config=config, n_planned=len(records), con=con)
                try:
                    store.put_questions(spec.dataset, [q for q, _ in records], con=con)
                except GoldConflict as e:       # the line that gives the other gold
                    meta = records[e.index][0].meta
                    raise sources.Loc(spec.path, meta.get("line"), meta.get("item")).error(
                        e.message, spec.gold_field, e.hint) from None
            traces, cks = derive(run_id, records, spec.answer_type, spec.every, show_progress,
                                 meanwhile=write_run_and_questions, starts=starts)
            con = opened["con"]
            check_checkpoint_counts(cks, spec, records)
            store.put_results(traces, cks, con=con)
            if stops is not None:
                attach(store, run_id, [q.id for q, _ in records], stops["positions"], stops["answers"], con=con,
                       file=spec.path, lines=stops["lines"], pos_field=spec.stop_field,
                       answer_field=spec.stopped_answer_field or "answer")
            con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [run_id])
    if keep_sweep:
        materialise(store, run_id)      # the sweep the dashboard draws first
    em = traces.column("em").to_numpy()
    return {"run_id": run_id, "created": True, "n_questions": traces.num_rows, "n_checkpoints": cks.num_rows,
            "em_full": float(em.mean())}


def _import_checkpoints(store: Store | str | os.PathLike | None, spec: ImportSpec, keep_sweep: bool = True) -> dict:
    """--format checkpoints: per-checkpoint rows made by another tool, validated whole, written in one
    transaction (ckimport.py)."""
    check_spec(spec)
    sources.check_file(spec.path)
    columns = read_columns(spec)            # the file read once (a table file hashed while Arrow reads it)
    config = _config(spec, columns[1])
    run_id = config_hash(spec.model, spec.dataset, config)[:12]
    if isinstance(store, Store) or Path(resolve_db_path(str(store) if store else None)).exists():
        with writing_to(store) as s:            # an existing store: the same file imported before is found
            found = _existing(s, run_id)
        if found:
            return found
    with ExitStack() as stack:
        opened: dict = {}

        def open_and_write_questions(q: dict) -> None:
            """Called once the whole file is checked (no lock held while it was, no store made for a bad
            file), in a thread beside the scoring and the tables' assembly: one transaction, all or nothing."""
            s = stack.enter_context(writing_to(store))
            con = stack.enter_context(s.transaction())
            opened.update(store=s, con=con)
            s.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                source="imported", config=config, n_planned=len(q["ids"]), con=con)
            try:
                s.put_question_columns(spec.dataset, q["ids"], q["texts"], q["gold_json"], spec.answer_type, con=con)
            except GoldConflict as e:           # the line that gives the other gold
                raise q["error_at"](e.index, e.message, e.hint) from None
        # (the EM source is in the config: fields.correct)
        data = read_checkpoints(spec, run_id, columns, meanwhile=open_and_write_questions)
        store, con = opened["store"], opened["con"]
        store.put_results(data["traces"], data["checkpoints"], con=con)
        if data["stops"] is not None:
            attach(store, run_id, list(data["questions"]["ids"]), data["stops"]["positions"],
                   data["stops"]["answers"], con=con, file=spec.path, lines=data["stops"]["lines"],
                   pos_field=spec.stop_field, answer_field=spec.stopped_answer_field or "answer")
        con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [run_id])
    if keep_sweep:
        materialise(store, run_id)
    em = data["traces"].column("em").to_numpy()
    return {"run_id": run_id, "created": True, "n_questions": data["traces"].num_rows,
            "n_checkpoints": data["checkpoints"].num_rows, "em_full": float(em.mean()), "shape": data["shape"],
            "em_source": data["em_source"]}
