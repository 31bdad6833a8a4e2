"""Import generations made elsewhere (JSONL, lm-evaluation-harness ``--log_samples``) into the store.

The whole file is read and checked before anything is written; the run, its questions, traces and
text-derived checkpoints then go in one transaction. Bad input raises StoplineError naming file, line, field.

Over 400 lines on purpose: the spec, its validation and the vectorised checkpoint derivation are one path
(read, check all, derive, write once) whose steps share ImportSpec; records come from sources.py, per-checkpoint
exports from ckimport.py, vectorised scoring from scoring.py.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.backend.models import CACHE, PACKAGED
from analysis.core.answers import ANSWER_TYPES, extract, normalize, normalize_gold, normalize_number, NUMBER, score
from analysis.core.errors import StoplineError
from analysis.core.lifeline import worker_exits_with_parent
from analysis.core.progress import progress
from analysis.core.store import config_hash, resolve_db_path, Store
from analysis.evaluate.frontier import materialise
from analysis.evaluate.incumbent import attach
from analysis.ingest import sources
from analysis.ingest.ckimport import MAX_CHECKPOINTS, read_checkpoints
from analysis.ingest.scoring import score_rows
from analysis.ingest.datasets import as_gold_list, assign_ids, check_gold, Question, question_problem
from analysis.ingest.sources import Loc
from analysis.ingest.textckpt import number_checkpoints_batch, placements, TOKEN_RE, token_starts_batch, trial_answers

FORMATS = {
    # field mapping presets; a user's --*-field flags override them
    "jsonl": {},
    "lm-eval": {"question_field": "doc.question", "gold_field": "target", "response_field": "resps.0.0",
                "id_field": "doc_id"},
    # question and response read from the chat structure (sources.chat_fields); the gold is the user's field
    "openai-chat": {"gold_field": "gold"},
    # per-checkpoint exports of other tools (ckimport.py)
    "checkpoints": {},
}
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
    correct_field: str | None = None
    signals: dict | None = None         # {signal name: field}
    # the user's production stopper (incumbent.py): where it stopped (tokens) and what it answered
    stop_field: str | None = None
    stopped_answer_field: str | None = None


def spec_for_format(fmt: str, **overrides) -> dict:
    if fmt not in FORMATS:
        raise StoplineError(f"unknown import format {fmt!r}", hint="formats: " + ", ".join(FORMATS))
    out = dict(FORMATS[fmt])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def check_spec(spec: ImportSpec) -> None:
    """Options that are wrong whatever the file holds."""
    if spec.answer_type not in ANSWER_TYPES:
        raise StoplineError(f"--answer-type must be one of {', '.join(ANSWER_TYPES)}, not {spec.answer_type!r}")
    if spec.fmt not in FORMATS:
        raise StoplineError(f"unknown import format {spec.fmt!r}", hint="formats: " + ", ".join(FORMATS))
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
    gold = sources.field(rec, spec.gold_field or FORMATS[spec.fmt].get("gold_field", "answer"), loc, "gold")
    return question, gold, response


def preview(spec: ImportSpec, n: int = 5) -> dict:
    """What an import would read, before anything is written: the number of records, the fields of the first
    ones, and for each of the first ``n`` the mapped fields (or the error that record would stop the import
    with)."""
    recs, _ = sources.read(spec.path, spec.kind, spec.records, spec.max_line_mb)
    head = recs[:n]
    keys = sorted({k for _, r in head for k in r})
    if spec.fmt == "checkpoints":
        names = {"id": spec.id_field, "position": spec.position_field, "answer": spec.answer_field,
                 "correct": spec.correct_field, "length": spec.length_field, **(spec.signals or {})}
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
    return {"n_records": len(recs), "fields": keys, "rows": rows}


def read_records(spec: ImportSpec) -> tuple[list[tuple[Question, str]], str, dict | None]:
    """Read and validate every record; returns [(question, response)], the file's sha256, and the incumbent's
    stops ({positions, answers, lines}) when ``spec.stop_field`` names them."""
    check_spec(spec)
    recs, sha = sources.read(spec.path, spec.kind, spec.records, spec.max_line_mb)
    out: list[tuple[Question, str]] = []
    stops = {"positions": [], "answers": [], "lines": []} if spec.stop_field else None
    seen_ids: dict[str, Loc] = {}
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
            if qid in seen_ids:
                first = seen_ids[qid]
                raise loc.error(f"question id {qid!r} repeats {'line ' + str(first.line) if first.line else first.item}",
                                spec.id_field)
            seen_ids[qid] = loc
        meta = {"line": loc.line} if loc.line is not None else {"item": loc.item}
        out.append((Question(qid, question, gold, spec.answer_type, meta), response))
        if stops is not None:
            stops["positions"].append(sources.field(rec, spec.stop_field, loc, "stop"))
            stops["answers"].append(sources.field(rec, spec.stopped_answer_field, loc, "stopped-answer")
                                    if spec.stopped_answer_field else None)
            stops["lines"].append(loc.line)
    assign_ids([q for q, _ in out])
    return out, sha, stops


_CK_FIELDS = ("question_id", "ck_idx", "pos", "kind", "is_step", "is_transition", "answer_raw", "answer_norm",
              "em", "f1", "answer_tokens")
_TR_FIELDS = ("question_id", "text", "n_tokens", "final_raw", "final_norm", "em", "f1")


_SHARED: list = []      # the items, set before the workers fork, so that chunks travel as index ranges
_STARTS: list | None = None   # their token start offsets when a tokenizer counts them (else derived per chunk)


def _derive_range(args: tuple[str, int, int, str, int]) -> tuple[pa.Table, pa.Table]:
    run_id, lo, hi, answer_type, every = args
    return _derive_chunk((run_id, _SHARED[lo:hi], answer_type, every), with_text=False,
                         starts=None if _STARTS is None else _STARTS[lo:hi])


def load_tokenizer(name: str):
    """A model's own tokenizer (a directory, a packaged model's name or a hub id), fast (for its character
    offsets); StoplineError when there is none."""
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(_tokenizer_source(name))
    except (OSError, ValueError) as e:
        raise StoplineError(f"cannot load the tokenizer {name!r} ({str(e).splitlines()[0][:160]})",
                            field="tokenizer", hint="a local directory with tokenizer files, or a hub id") from None
    if not getattr(tok, "is_fast", False):
        raise StoplineError(f"the tokenizer {name!r} gives no character offsets (not a fast tokenizer)",
                            field="tokenizer")
    return tok


def tokenizer_starts(texts: list[str], name: str, tok=None) -> list[np.ndarray]:
    """Where each token of each text starts, in a model's own tokenizer (``load_tokenizer(name)``)."""
    tok = tok or load_tokenizer(name)
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [np.asarray([a for a, b in offs if b > a], dtype=np.int64) for offs in enc["offset_mapping"]]


def _tokenizer_source(name: str) -> str:
    """A packaged model's converted copy (data/models/NAME/bf16) where there is one, else the name itself."""
    if name in PACKAGED and (CACHE / name / "bf16").is_dir():
        return str(CACHE / name / "bf16")
    return name


def _derive_chunk(args: tuple[str, list[tuple[str, list[str], str]], str, int], with_text: bool = True,
                  vectorised: bool = True, starts: list | None = None) -> tuple[pa.Table, pa.Table]:
    """Traces and checkpoints tables for (question_id, gold, response) items; runs in a worker. Without
    text, the traces table leaves the responses out (the parent has them). ``starts``: the responses' token
    start offsets (a tokenizer's), else word pieces. A thinking trace (with ``</think>``) has its checkpoints
    in the thinking part only; its final answer is read from the part after ``</think>``."""
    run_id, items, answer_type, every = args
    if vectorised and starts is None and answer_type == NUMBER \
            and not any("\x00" in r or sources.THINK_CLOSE in r for _, _, r in items):
        return _derive_numbers(run_id, items, every, with_text)
    t = {k: [] for k in _TR_FIELDS}
    c = {k: [] for k in _CK_FIELDS}
    findall = TOKEN_RE.findall
    norm_memo: dict = {}
    tok_memo: dict = {None: 0, "": 0}

    def n_tok(raw):
        n = tok_memo.get(raw)
        if n is None:
            n = tok_memo[raw] = len(findall(raw))
        return n
    all_starts = starts if starts is not None else token_starts_batch([r for _, _, r in items])
    for (qid, gold_aliases, response), st in zip(items, all_starts):
        gold = normalize_gold(gold_aliases, answer_type)
        think = sources.split_thinking(response)
        if think is None:
            places, n = placements(response, every, st)
        else:                   # checkpoints in the thinking only; the trace's end after the answer part
            places, _ = placements(think[0], every, st[st < len(think[0])])
            n = len(st)
            places = [*places[:-1], (n, len(response), "final", False, False)]
        pos, cuts, kinds, steps, trans = zip(*places)
        answers = trial_answers(response, cuts, answer_type, norm_memo)
        if think is not None and (final := extract(think[1], answer_type)):
            answers[-1] = (final, normalize(final, answer_type))
        raws, norms = zip(*answers)
        memo = {nm: score(nm, gold, answer_type) for nm in set(norms)}
        k = len(places)
        c["question_id"] += [qid] * k
        c["ck_idx"] += range(k)
        c["pos"] += pos
        c["kind"] += kinds
        c["is_step"] += steps
        c["is_transition"] += trans
        c["answer_raw"] += raws
        c["answer_norm"] += norms
        c["em"] += [memo[nm][0] for nm in norms]
        c["f1"] += [memo[nm][1] for nm in norms]
        c["answer_tokens"] += [n_tok(r) for r in raws[:-1]] + [0]
        t["question_id"].append(qid)
        if with_text:
            t["text"].append(response)
        t["n_tokens"].append(n)
        t["final_raw"].append(raws[-1])
        t["final_norm"].append(norms[-1])
        t["em"].append(memo[norms[-1]][0])
        t["f1"].append(memo[norms[-1]][1])
    nt, nc = len(t["question_id"]), len(c["question_id"])
    if not with_text:
        del t["text"]
    traces = pa.table({
        "run_id": pa.array([run_id] * nt), **t,
        "finish_reason": pa.array(["imported"] * nt), "gen_s": pa.nulls(nt, pa.float64()),
        "probe_s": pa.nulls(nt, pa.float64())})
    none = pa.nulls(nc, pa.float64())
    answer_tokens = pa.array(c.pop("answer_tokens"), pa.int32())
    ck = pa.table({
        "run_id": pa.array([run_id] * nc), **c,
        "ck_idx": pa.array(c["ck_idx"], pa.int32()), "pos": pa.array(c["pos"], pa.int32()),
        "p_mean": none, "p_geo": none, "p_min": none, "p_first": none, "entropy": none,
        "answer_tokens": answer_tokens,
        # with no probe, stopping early still costs writing the answer out
        "probe_tokens": answer_tokens,
    })
    return traces, ck


KIND_NAMES = np.array(["interval", "step", "transition", "final"], dtype=object)


def _derive_numbers(run_id: str, items, every: int, with_text: bool) -> tuple[pa.Table, pa.Table]:
    """The numeric case of ``_derive_chunk``, vectorised over the chunk (same rows, tested)."""
    import pandas as pd
    texts = [r for _, _, r in items]
    r = number_checkpoints_batch(texts, every)
    tr, raw = r["trace"], r["raw"]
    nc, nt = len(tr), len(items)
    codes, uniq = pd.factorize(pd.Series(raw, dtype=object), use_na_sentinel=True)
    u_norm = np.array([normalize_number(u) for u in uniq] + [""], dtype=object)
    u_tok = np.array([len(TOKEN_RE.findall(u)) for u in uniq] + [0], dtype=np.int32)
    norm = u_norm[codes]                              # code -1 (no answer) picks the trailing ""
    n_ans = u_tok[codes]
    golds = [normalize_gold(g, NUMBER) for _, g, _ in items]
    em = f1 = score_rows(tr, codes, u_norm, golds, NUMBER)[0]
    final = r["rank"] == 3
    first = np.r_[0, np.flatnonzero(tr[1:] != tr[:-1]) + 1]
    ck_idx = np.arange(nc) - np.repeat(first, np.diff(np.r_[first, nc]))
    answer_tokens = np.where(final, 0, n_ans).astype(np.int32)
    qids = np.array([q for q, _, _ in items], dtype=object)
    fi = np.flatnonzero(final)                        # one per trace, in trace order
    tcols = {"run_id": pa.array([run_id] * nt), "question_id": pa.array(qids, pa.string())}
    if with_text:
        tcols["text"] = pa.array(texts, pa.string())
    traces = pa.table({**tcols, "n_tokens": pa.array(r["n_tokens"], pa.int64()),
                       "final_raw": pa.array(raw[fi], pa.string()), "final_norm": pa.array(norm[fi], pa.string()),
                       "em": pa.array(em[fi]), "f1": pa.array(f1[fi]),
                       "finish_reason": pa.array(["imported"] * nt), "gen_s": pa.nulls(nt, pa.float64()),
                       "probe_s": pa.nulls(nt, pa.float64())})
    none = pa.nulls(nc, pa.float64())
    at = pa.array(answer_tokens, pa.int32())
    ck = pa.table({
        "run_id": pa.array([run_id] * nc), "question_id": pa.array(qids[tr], pa.string()),
        "ck_idx": pa.array(ck_idx, pa.int32()), "pos": pa.array(r["pos"], pa.int32()),
        "kind": pa.array(KIND_NAMES[r["rank"]], pa.string()), "is_step": pa.array(r["is_step"]),
        "is_transition": pa.array(r["is_transition"]), "answer_raw": pa.array(raw, pa.string()),
        "answer_norm": pa.array(norm, pa.string()), "em": pa.array(em), "f1": pa.array(f1),
        "p_mean": none, "p_geo": none, "p_min": none, "p_first": none, "entropy": none,
        "answer_tokens": at, "probe_tokens": at,
    })
    return traces, ck


def derive(run_id: str, records: list[tuple[Question, str]], answer_type: str, every: int,
           show_progress: bool = True, workers: int | None = None, meanwhile=None,
           starts: list | None = None) -> tuple[pa.Table, pa.Table]:
    """Traces and text-derived checkpoints for the records, as Arrow tables (chunks spread over the cores).

    Workers are forked with the records in memory and receive index ranges; they send back everything but
    the response texts, which the parent adds to the traces table itself. ``meanwhile()``, when given, runs
    in the parent while the workers derive (the import writes the run and its questions then). ``starts``:
    each response's token start offsets in a model's tokenizer (``tokenizer_starts``), else word pieces.
    """
    global _SHARED, _STARTS
    items = [(q.id, q.gold, r) for q, r in records]
    _STARTS = starts
    size = 4000
    ranges = [(run_id, i, min(i + size, len(items)), answer_type, every) for i in range(0, len(items), size)]
    workers = workers or min(os.cpu_count() or 1, len(ranges))
    bar = progress(total=len(items), desc="deriving checkpoints", unit="trace", disable=not show_progress)
    _SHARED = items
    if workers > 1:
        # the workers exit when this process is killed (core/lifeline.py), else they sleep on the queue forever
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=worker_exits_with_parent, initargs=(os.getpid(),))
        futures = [ex.submit(_derive_range, r) for r in ranges]
        results = (f.result() for f in futures)
    else:
        ex, results = None, map(_derive_range, ranges)
    traces, cks = [], []
    try:
        if meanwhile is not None:
            meanwhile()
        for (tr, ck), (_, lo, hi, _, _) in zip(results, ranges):
            traces.append(tr)
            cks.append(ck)
            bar.update(hi - lo)
    finally:
        bar.close()
        _SHARED, _STARTS = [], None
        if ex is not None:
            ex.shutdown(cancel_futures=True)
    tr = pa.concat_tables(traces)
    tr = tr.add_column(2, "text", pa.array([r for _, _, r in items], pa.string()))
    return tr, pa.concat_tables(cks)


def _config(spec: ImportSpec, sha: str, **extra) -> dict:
    """The run's config (its identity): keys beyond the original ones only when used, so that a file
    imported before they existed finds its run again."""
    fields = {"question": spec.question_field, "gold": spec.gold_field, "response": spec.response_field,
              "id": spec.id_field}
    if spec.fmt == "checkpoints":
        fields.update(position=spec.position_field, answer=spec.answer_field, length=spec.length_field,
                      correct=spec.correct_field, signals=spec.signals or {})
    config = {"source": "import", "format": spec.fmt, "file": Path(spec.path).name, "sha256": sha, "fields": fields,
              "checkpoints": {"every": spec.every, "steps": True, "transitions": True,
                              "tokens": f"tokenizer:{spec.tokenizer}" if spec.tokenizer else "word-pieces"}}
    if spec.records:
        config["records"] = spec.records
    if spec.stop_field:
        config["incumbent"] = {"stop": spec.stop_field, "answer": spec.stopped_answer_field}
    return {**config, **extra}


def _existing(store: Store, run_id: str) -> dict | None:
    for r in store.runs():
        if r["id"] == run_id:
            return {"run_id": run_id, "created": False, "n_questions": r["n_questions"],
                    "n_checkpoints": r["n_checkpoints"], "em_full": r["em_full"]}
    return None


@contextmanager
def _target(store: Store | str | os.PathLike | None) -> Iterator[Store]:
    """The store an import writes to. A ``Store`` is used as it is; a path (None: the default store) is
    opened only now, after the input was read and checked, so a bad input makes no store and no folder. When
    the import fails after that (a trace with too many checkpoints, an interrupt), a store file it made is
    removed again with the folders made for it, provided it still holds no run."""
    if isinstance(store, Store):
        yield store
        return
    path = Path(resolve_db_path(str(store) if store else None))
    made = [] if path.exists() else [path, *[d for d in path.parents if not d.exists()]]
    opened = Store(path)
    try:
        yield opened
    except BaseException:
        if made and path.exists():
            try:
                with opened.connect(write=True) as con:    # exclusive: no other process has it open now
                    empty = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            except StoplineError:
                empty = False
            if empty:
                for p in (path, Path(f"{path}.wal"), *made[1:]):
                    try:
                        p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
                    except OSError:
                        break
        raise


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
    with _target(store) as store:
        found = _existing(store, run_id)
        if found:
            return found
        starts = tokenizer_starts([r for _, r in records], spec.tokenizer, tok) if tok else None
        with store.transaction() as con:       # one transaction: all of the file or nothing

            def write_run_and_questions():     # while the workers derive the checkpoints
                store.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                        source="imported", config=config, n_planned=len(records), con=con)
                store.put_questions(spec.dataset, [q for q, _ in records], con=con)
            traces, cks = derive(run_id, records, spec.answer_type, spec.every, show_progress,
                                 meanwhile=write_run_and_questions, starts=starts)
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
    sha = sources.sha256(spec.path)
    config = _config(spec, sha)
    run_id = config_hash(spec.model, spec.dataset, config)[:12]
    if isinstance(store, Store) or Path(resolve_db_path(str(store) if store else None)).exists():
        with _target(store) as s:               # an existing store: the same file imported before is found
            found = _existing(s, run_id)
        if found:
            return found
    data = read_checkpoints(spec, run_id)   # (the EM source is in the config: fields.correct)
    with _target(store) as store:
        with store.transaction() as con:
            store.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                    source="imported", config=config, n_planned=len(data["questions"]["ids"]),
                                    con=con)
            q = data["questions"]
            store.put_question_columns(spec.dataset, q["ids"], q["texts"], q["gold_json"], spec.answer_type, con=con)
            store.put_results(data["traces"], data["checkpoints"], con=con)
            if data["stops"] is not None:
                attach(store, run_id, list(data["questions"]["ids"]), data["stops"]["positions"],
                       data["stops"]["answers"], con=con, file=spec.path, pos_field=spec.stop_field,
                       answer_field=spec.stopped_answer_field or "answer")
            con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [run_id])
    if keep_sweep:
        materialise(store, run_id)
    em = data["traces"].column("em").to_numpy()
    return {"run_id": run_id, "created": True, "n_questions": data["traces"].num_rows,
            "n_checkpoints": data["checkpoints"].num_rows, "em_full": float(em.mean()), "shape": data["shape"],
            "em_source": data["em_source"]}
