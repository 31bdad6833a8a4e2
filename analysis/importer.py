"""Import generations made elsewhere (JSONL, lm-evaluation-harness ``--log_samples``) into the store.

The whole file is read and checked before anything is written; the run, its questions, traces and
text-derived checkpoints then go in one transaction. Bad input raises StoplineError naming file, line, field.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from .answers import ANSWER_TYPES, NUMBER, normalize_gold, score
from .datasets import Question, as_gold_list, assign_ids, check_gold, get_path
from .errors import StoplineError
from .progress import progress
from .store import Store
from .textckpt import TOKEN_RE, placements, token_starts_batch, trial_answers

FORMATS = {
    # field mapping presets; a user's --*-field flags override them
    "jsonl": {},
    "lm-eval": {"question_field": "doc.question", "gold_field": "target", "response_field": "resps.0.0",
                "id_field": "doc_id"},
}
MAX_LINE_MB = 16


@dataclass
class ImportSpec:
    path: str
    model: str
    dataset: str
    question_field: str = "question"
    gold_field: str = "answer"
    response_field: str = "response"
    id_field: str | None = None
    answer_type: str = NUMBER
    every: int = 32
    max_line_mb: float = MAX_LINE_MB
    fmt: str = "jsonl"


def spec_for_format(fmt: str, **overrides) -> dict:
    if fmt not in FORMATS:
        raise StoplineError(f"unknown import format {fmt!r}", hint="formats: " + ", ".join(FORMATS))
    out = dict(FORMATS[fmt])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def _loads():
    try:
        import orjson
        return orjson.loads, (orjson.JSONDecodeError,)
    except ImportError:  # pragma: no cover
        return json.loads, (json.JSONDecodeError,)


def read_records(spec: ImportSpec) -> tuple[list[tuple[Question, str]], str]:
    """Parse and validate every line; returns [(question, response)] and the file's sha256."""
    if spec.answer_type not in ANSWER_TYPES:
        raise StoplineError(f"--answer-type must be one of {', '.join(ANSWER_TYPES)}, not {spec.answer_type!r}")
    p = Path(spec.path)
    if not p.is_file():
        raise StoplineError("file not found", file=spec.path)
    loads, json_errors = _loads()
    limit = int(spec.max_line_mb * 1024 * 1024)
    sha = hashlib.sha256()
    out: list[tuple[Question, str]] = []
    seen_ids: dict[str, int] = {}
    with open(p, "rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            sha.update(raw)
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise StoplineError(f"line is longer than {spec.max_line_mb:g} MB; is this really JSONL?",
                                    file=spec.path, line=lineno,
                                    hint="raise the limit with --max-line-mb if the line is meant to be that long")
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise StoplineError(f"not valid UTF-8 (byte {e.start} of the line)", file=spec.path, line=lineno) from None
            try:
                rec = loads(raw)
            except json_errors as e:
                raise StoplineError(f"invalid JSON ({str(e).splitlines()[0][:120]})", file=spec.path, line=lineno) from None
            if not isinstance(rec, dict):
                raise StoplineError(f"expected a JSON object, got {type(rec).__name__}", file=spec.path, line=lineno)
            vals = {}
            for name, fpath in (("question", spec.question_field), ("gold", spec.gold_field),
                                ("response", spec.response_field)):
                try:
                    vals[name] = get_path(rec, fpath)
                except KeyError as e:
                    raise StoplineError(f"missing (no '{e.args[0]}' in the path)", file=spec.path, line=lineno,
                                        field=fpath, hint="set the field with --%s-field" % name) from None
            if not isinstance(vals["question"], str) or not vals["question"].strip():
                raise StoplineError(f"question must be a non-empty string, got {type(vals['question']).__name__}",
                                    file=spec.path, line=lineno, field=spec.question_field)
            if not isinstance(vals["response"], str):
                raise StoplineError(f"response must be a string, got {type(vals['response']).__name__}",
                                    file=spec.path, line=lineno, field=spec.response_field)
            if not isinstance(vals["gold"], (str, int, float, list)) or isinstance(vals["gold"], bool):
                raise StoplineError(f"gold must be a string, number or list, got {type(vals['gold']).__name__}",
                                    file=spec.path, line=lineno, field=spec.gold_field)
            gold = as_gold_list(vals["gold"], spec.answer_type)
            bad = check_gold(gold, spec.answer_type)
            if bad:
                raise StoplineError(f"cannot parse the gold answer: {bad}", file=spec.path, line=lineno,
                                    field=spec.gold_field)
            qid = ""
            if spec.id_field:
                try:
                    qid = str(get_path(rec, spec.id_field))
                except KeyError:
                    raise StoplineError("missing", file=spec.path, line=lineno, field=spec.id_field) from None
                if qid in seen_ids:
                    raise StoplineError(f"question id {qid!r} repeats line {seen_ids[qid]}", file=spec.path,
                                        line=lineno, field=spec.id_field)
                seen_ids[qid] = lineno
            out.append((Question(qid, vals["question"], gold, spec.answer_type, {"line": lineno}), vals["response"]))
    if not out:
        raise StoplineError("no records (the file is empty)", file=spec.path)
    assign_ids([q for q, _ in out])
    return out, sha.hexdigest()


_CK_FIELDS = ("question_id", "ck_idx", "pos", "kind", "is_step", "is_transition", "answer_raw", "answer_norm",
              "em", "f1", "answer_tokens")
_TR_FIELDS = ("question_id", "text", "n_tokens", "final_raw", "final_norm", "em", "f1")


_SHARED: list = []      # the items, set before the workers fork, so that chunks travel as index ranges


def _derive_range(args: tuple[str, int, int, str, int]) -> tuple[pa.Table, pa.Table]:
    run_id, lo, hi, answer_type, every = args
    return _derive_chunk((run_id, _SHARED[lo:hi], answer_type, every), with_text=False)


def _derive_chunk(args: tuple[str, list[tuple[str, list[str], str]], str, int], with_text: bool = True
                  ) -> tuple[pa.Table, pa.Table]:
    """Traces and checkpoints tables for (question_id, gold, response) items; runs in a worker. Without
    text, the traces table leaves the responses out (the parent has them)."""
    run_id, items, answer_type, every = args
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
    all_starts = token_starts_batch([r for _, _, r in items])
    for (qid, gold_aliases, response), starts in zip(items, all_starts):
        gold = normalize_gold(gold_aliases, answer_type)
        places, n = placements(response, every, starts)
        pos, cuts, kinds, steps, trans = zip(*places)
        answers = trial_answers(response, cuts, answer_type, norm_memo)
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
        "ck_idx": pa.array(c["ck_idx"], pa.int16()), "pos": pa.array(c["pos"], pa.int32()),
        "p_mean": none, "p_geo": none, "p_min": none, "p_first": none, "entropy": none,
        "answer_tokens": answer_tokens,
        # with no probe, stopping early still costs writing the answer out
        "probe_tokens": answer_tokens,
    })
    return traces, ck


def derive(run_id: str, records: list[tuple[Question, str]], answer_type: str, every: int,
           show_progress: bool = True, workers: int | None = None) -> tuple[pa.Table, pa.Table]:
    """Traces and text-derived checkpoints for the records, as Arrow tables (chunks spread over the cores).

    Workers are forked with the records in memory and receive index ranges; they send back everything but
    the response texts, which the parent adds to the traces table itself.
    """
    global _SHARED
    items = [(q.id, q.gold, r) for q, r in records]
    size = 4000
    ranges = [(run_id, i, min(i + size, len(items)), answer_type, every) for i in range(0, len(items), size)]
    workers = workers or min(os.cpu_count() or 1, len(ranges))
    bar = progress(total=len(items), desc="deriving checkpoints", unit="trace", disable=not show_progress)
    _SHARED = items
    if workers > 1:
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        results = ex.map(_derive_range, ranges)
    else:
        ex, results = None, map(_derive_range, ranges)
    traces, cks = [], []
    try:
        for (tr, ck), (_, lo, hi, _, _) in zip(results, ranges):
            traces.append(tr)
            cks.append(ck)
            bar.update(hi - lo)
    finally:
        bar.close()
        _SHARED = []
        if ex is not None:
            ex.shutdown()
    tr = pa.concat_tables(traces)
    tr = tr.add_column(2, "text", pa.array([r for _, _, r in items], pa.string()))
    return tr, pa.concat_tables(cks)


def import_generations(store: Store, spec: ImportSpec, show_progress: bool = True) -> dict:
    """Import one file as one run. Returns a summary; re-importing the same file finds the existing run."""
    records, sha = read_records(spec)
    config = {"source": "import", "format": spec.fmt, "file": Path(spec.path).name, "sha256": sha,
              "fields": {"question": spec.question_field, "gold": spec.gold_field,
                         "response": spec.response_field, "id": spec.id_field},
              "checkpoints": {"every": spec.every, "steps": True, "transitions": True, "tokens": "word-pieces"}}
    from .store import config_hash
    run_id = config_hash(spec.model, spec.dataset, config)[:12]
    existing = [r for r in store.runs() if r["id"] == run_id]
    if existing:
        return {"run_id": run_id, "created": False, "n_questions": existing[0]["n_questions"],
                "n_checkpoints": existing[0]["n_checkpoints"], "em_full": existing[0]["em_full"]}
    traces, cks = derive(run_id, records, spec.answer_type, spec.every, show_progress)
    with store.transaction() as con:
        store.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                source="imported", config=config, n_planned=len(records), con=con)
        store.put_questions(spec.dataset, [q for q, _ in records], con=con)
        store.put_results(traces, cks, con=con)
        con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [run_id])
    em = traces.column("em").to_numpy()
    return {"run_id": run_id, "created": True, "n_questions": traces.num_rows, "n_checkpoints": cks.num_rows,
            "em_full": float(em.mean())}
