"""Import generations made elsewhere (JSONL, lm-evaluation-harness ``--log_samples``) into the store.

The whole file is read and checked before anything is written; the run, its questions, traces and
text-derived checkpoints then go in one transaction. Bad input raises StoplineError naming file, line, field.
"""
from __future__ import annotations

import hashlib
import json
import re
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .answers import ANSWER_TYPES, NUMBER, normalize_gold, normalize_number, score
from .datasets import Question, as_gold_list, assign_ids, check_gold, get_path
from .errors import StoplineError
from .progress import progress
from .store import Store
from .textckpt import TOKEN_RE, number_checkpoints_batch, placements, token_starts_batch, trial_answers

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


def _derive_chunk(args: tuple[str, list[tuple[str, list[str], str]], str, int], with_text: bool = True,
                  vectorised: bool = True) -> tuple[pa.Table, pa.Table]:
    """Traces and checkpoints tables for (question_id, gold, response) items; runs in a worker. Without
    text, the traces table leaves the responses out (the parent has them)."""
    run_id, items, answer_type, every = args
    if vectorised and answer_type == NUMBER and not any("\x00" in r for _, _, r in items):
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


KIND_NAMES = np.array(["interval", "step", "transition", "final"], dtype=object)


_PLAIN = re.compile(r"-?\d+(?:\.\d+)?")


def _plain_floats(values: np.ndarray) -> np.ndarray:
    """float of each plain decimal string (up to 15 digits, so floats compare exactly), else NaN."""
    return np.array([float(v) if v and len(v) <= 16 and _PLAIN.fullmatch(v) else np.nan for v in values],
                    dtype=np.float64)


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
    # EM/F1 once per distinct (question, answer)
    golds = [normalize_gold(g, NUMBER) for _, g, _ in items]
    pair = tr.astype(np.int64) * (len(uniq) + 1) + (codes + 1)
    pcodes, puniq = pd.factorize(pair)
    p_tr, p_code = puniq // (len(uniq) + 1), puniq % (len(uniq) + 1) - 1
    # fast path: one plain-decimal gold and a plain-decimal answer compare as floats with numbers_equal's
    # tolerance; anything else (fractions, symbols, several aliases, a float too close to call) goes
    # through score() itself
    u_f = _plain_floats(u_norm)
    g_f = _plain_floats(np.array([g[0] if len(g) == 1 else "" for g in golds], dtype=object))
    a, b = u_f[p_code], g_f[p_tr]
    fast = np.isfinite(a) & np.isfinite(b)
    tol = 1e-6 * np.maximum(1.0, np.abs(b))
    diff = np.abs(a - b)
    fast &= np.abs(diff - tol) > 1e-9 * tol
    pem = np.where(fast, (diff <= tol).astype(np.float64), np.nan)
    pem[p_code == -1] = 0.0
    for k in np.flatnonzero(np.isnan(pem)).tolist():
        pem[k] = score(u_norm[p_code[k]], golds[p_tr[k]], NUMBER)[0]
    em = f1 = pem[pcodes]
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
        "ck_idx": pa.array(ck_idx, pa.int16()), "pos": pa.array(r["pos"], pa.int32()),
        "kind": pa.array(KIND_NAMES[r["rank"]], pa.string()), "is_step": pa.array(r["is_step"]),
        "is_transition": pa.array(r["is_transition"]), "answer_raw": pa.array(raw, pa.string()),
        "answer_norm": pa.array(norm, pa.string()), "em": pa.array(em), "f1": pa.array(f1),
        "p_mean": none, "p_geo": none, "p_min": none, "p_first": none, "entropy": none,
        "answer_tokens": at, "probe_tokens": at,
    })
    return traces, ck


def derive(run_id: str, records: list[tuple[Question, str]], answer_type: str, every: int,
           show_progress: bool = True, workers: int | None = None, meanwhile=None) -> tuple[pa.Table, pa.Table]:
    """Traces and text-derived checkpoints for the records, as Arrow tables (chunks spread over the cores).

    Workers are forked with the records in memory and receive index ranges; they send back everything but
    the response texts, which the parent adds to the traces table itself. ``meanwhile()``, when given, runs
    in the parent while the workers derive (the import writes the run and its questions then).
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
        _SHARED = []
        if ex is not None:
            ex.shutdown(cancel_futures=True)
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
    with store.transaction() as con:       # one transaction: all of the file or nothing

        def write_run_and_questions():     # while the workers derive the checkpoints
            store.get_or_create_run(model=spec.model, dataset=spec.dataset, answer_type=spec.answer_type,
                                    source="imported", config=config, n_planned=len(records), con=con)
            store.put_questions(spec.dataset, [q for q, _ in records], con=con)
        traces, cks = derive(run_id, records, spec.answer_type, spec.every, show_progress,
                             meanwhile=write_run_and_questions)
        store.put_results(traces, cks, con=con)
        con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [run_id])
    from .frontier import materialise
    materialise(store, run_id)          # the sweep the dashboard draws first
    em = traces.column("em").to_numpy()
    return {"run_id": run_id, "created": True, "n_questions": traces.num_rows, "n_checkpoints": cks.num_rows,
            "em_full": float(em.mean())}
