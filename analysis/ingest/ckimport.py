"""Import per-checkpoint data made by other tools (Dynasor-, EAT- or DEER-style exports): every checkpoint
already has its trial answer, maybe signals and the tool's own correctness label; nothing is derived from
text, so the rows go in as columns (pyarrow / numpy, no loop per row).

Two shapes, told apart by the data: **long** (one row per checkpoint, grouped by ``id_field``) and **wide** (one
record per question whose position, answer, signal and correctness fields are lists of equal length).
Fields: ``id_field`` (long form; wide records without one are numbered in order), ``position_field``
(tokens so far), ``answer_field`` (the trial answer), optional ``length_field`` (the whole trace's tokens: a
final checkpoint is added there, answering what the last checkpoint answered, when it lies past the last
position), optional ``final_answer_field`` (per question: the model's own answer at full length, which the
final checkpoint answers instead of the last probe's), optional ``correct_field`` (the tool's labels, used
instead of our grader; the run records it),
``signals`` ({p_mean|p_geo|p_min|p_first|entropy: field}), ``question_field`` and ``gold_field`` (the gold
may be left out when ``correct_field`` is given), optional ``response_field`` (the trace's text).
The last checkpoint of each question is its full-length answer, as everywhere in Stopline.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.core.answers import MATH, normalize, normalize_gold
from analysis.core.errors import StoplineError
from analysis.core.schema import SIGNAL_COLUMNS
from analysis.evaluate.incumbent import check_stops
from analysis.ingest import sources
from analysis.ingest.datasets import as_gold_list, check_gold, question_problem
from analysis.ingest.scoring import score_rows
from analysis.ingest.textckpt import TOKEN_RE

MAX_CHECKPOINTS = 32767          # ck_idx is a SMALLINT
_TRUE = {"1", "true", "yes", "t", "y", "1.0"}
_FALSE = {"0", "false", "no", "f", "n", "0.0", ""}


def _wanted(spec) -> dict[str, str]:
    """Our column name -> the file's field, for the fields this import reads."""
    want = {"id": spec.id_field, "pos": spec.position_field, "answer": spec.answer_field,
            "question": spec.question_field, "gold": spec.gold_field, "length": spec.length_field,
            "correct": spec.correct_field, "text": spec.response_field if spec.response_field != "response" else None,
            "stop": spec.stop_field, "stopped": spec.stopped_answer_field, "final": spec.final_answer_field}
    for name, f in (spec.signals or {}).items():
        if name not in SIGNAL_COLUMNS:
            raise StoplineError(f"unknown signal {name!r}; the signals families read are {', '.join(SIGNAL_COLUMNS)}",
                                field="signal")
        want[name] = f
    if not spec.position_field or not spec.answer_field:
        raise StoplineError("--format checkpoints needs --position-field and --answer-field", field="position_field")
    if spec.final_answer_field and spec.correct_field:
        raise StoplineError("--final-answer-field with --correct-field: the final answer would have no label of the "
                            "tool's", field="final_answer_field",
                            hint="give the final answer as each question's last checkpoint, with its label")
    if not spec.gold_field and not spec.correct_field:
        raise StoplineError("--format checkpoints needs --gold-field, or --correct-field for the tool's own labels",
                            field="gold_field")
    return {k: v for k, v in want.items() if v}


def read_columns(spec) -> tuple[pa.Table, str, dict]:
    """The fields as an Arrow table (one row per record), the file's sha256, and what each row is (its Loc).
    A CSV or Parquet file is hashed in a thread while Arrow reads it (both release the GIL)."""
    want = _wanted(spec)
    kind = sources.kind_of(spec.path, spec.kind)
    if kind in ("csv", "parquet") and not spec.records:
        sources.check_file(spec.path)
        with ThreadPoolExecutor(1) as pool:
            sha = pool.submit(sources.sha256, spec.path)
            tbl = sources.read_table(spec.path, kind, spec.limits)
        missing = [f for f in want.values() if f not in tbl.column_names]
        if missing:
            raise StoplineError(f"no column {missing[0]!r} (columns: {', '.join(tbl.column_names[:12])})",
                                file=spec.path, field=missing[0])
        return pa.table({k: tbl.column(f) for k, f in want.items()}), sha.result(), {"kind": kind}
    return _columns_from_records(spec, want)


def _columns_from_records(spec, want: dict[str, str]) -> tuple[pa.Table, str, dict]:
    recs, sha = sources.read(spec.path, spec.kind, spec.records, spec.max_line_mb, spec.limits)
    cols: dict[str, list] = {k: [] for k in want}
    for loc, rec in recs:
        for k, f in want.items():
            if k in ("length", "text", "final"):    # optional per record
                try:
                    v = rec[f] if f in rec else sources.get_path(rec, f)
                except KeyError:
                    v = None
                if k == "final" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    v = str(v)                      # an answer: 9 and "9" alike
                cols[k].append(v)
            else:
                cols[k].append(sources.field(rec, f, loc, {"pos": "position"}.get(k, k)))
    arrays = {}
    for k, v in cols.items():
        try:
            arrays[k] = pa.array(v, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            i, kind = _odd_one(v)
            raise recs[i][0].error(f"{str(v[i])[:40]!r} is a {type(v[i]).__name__}, where the other records "
                                   f"have a {kind}", want[k]) from None
    return pa.table(arrays), sha, {"kind": sources.kind_of(spec.path, spec.kind), "locs": [loc for loc, _ in recs]}


def _odd_one(values: list) -> tuple[int, str]:
    """The first value whose kind (number, str, list, ...) is not the most common one, and that kind."""
    def kind(v):
        return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
    kinds = [kind(v) if v is not None else None for v in values]
    common = Counter(k for k in kinds if k).most_common(1)[0][0]
    return next(i for i, k in enumerate(kinds) if k and k != common), common


def _explode(tbl: pa.Table, spec, where: dict) -> tuple[pa.Table, np.ndarray]:
    """Wide records (lists per field) to one row per checkpoint; returns the table and each row's record."""
    if not pa.types.is_list(tbl.column("pos").type) and not pa.types.is_large_list(tbl.column("pos").type):
        return tbl, np.arange(tbl.num_rows)
    where["wide"] = True
    pos = tbl.column("pos").combine_chunks()
    lengths = pc.list_value_length(pos).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(pos).to_numpy()
    out = {"pos": pc.list_flatten(pos)}
    for k in tbl.column_names:
        if k == "pos":
            continue
        col = tbl.column(k).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            n = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(n != lengths)
            if len(bad):
                raise _at(spec, where, int(bad[0]),
                          f"{int(n[bad[0]])} values where the positions have {int(lengths[bad[0]])}", k)
            out[k] = pc.list_flatten(col)
        else:
            out[k] = col.take(pa.array(parents))
    if "id" not in out:
        out["id"] = pa.array(parents.astype(str))
    return pa.table(out), parents


def _lines(where: dict, records: np.ndarray) -> list | None:
    """The file's line of each record, where lines name them (JSONL, CSV)."""
    if where.get("locs"):
        return [where["locs"][int(r)].line for r in records]
    return [int(r) + 2 for r in records] if where.get("kind") == "csv" else None


def _at(spec, where: dict, rec: int, message: str, key: str, hint: str | None = None) -> StoplineError:
    """An error naming the record (its line or item) and the file's field for our column ``key``."""
    f = _wanted(spec).get(key, key)
    locs = where.get("locs")
    if locs:
        return locs[rec].error(message, f, hint)
    if where.get("kind") == "csv":
        return StoplineError(message, file=spec.path, line=rec + 2, field=f, hint=hint)
    return StoplineError(message, file=spec.path, field=f"row {rec}.{f}", hint=hint)


def _numbers(col: pa.ChunkedArray | pa.Array, spec, where, recs, key: str, integer: bool) -> np.ndarray:
    try:
        arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        vals = col.to_pylist()
        for i, v in enumerate(vals):
            try:
                float(v)
            except (TypeError, ValueError):
                raise _at(spec, where, int(recs[i]), f"not a number: {str(v)[:40]!r}", key) from None
        raise
    if integer:
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr != np.floor(arr)))
        if len(bad):
            raise _at(spec, where, int(recs[bad[0]]), f"a position must be a whole number of tokens >= 0, got "
                      f"{col[int(bad[0])].as_py()!r}", key)
    return arr


def _labels(col, spec, where, recs) -> np.ndarray:
    if pa.types.is_boolean(col.type) or pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        v = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isin(v, (0.0, 1.0)))
    else:
        s = np.asarray([str(x).strip().lower() for x in col.to_pylist()], dtype=object)
        v = np.where(np.isin(s, list(_TRUE)), 1.0, np.where(np.isin(s, list(_FALSE)), 0.0, np.nan))
        bad = np.flatnonzero(np.isnan(v))
    if len(bad):
        raise _at(spec, where, int(recs[bad[0]]), f"a correctness label is true/false or 1/0, got "
                  f"{col[int(bad[0])].as_py()!r}", "correct")
    return v


def _codes(arr) -> tuple[np.ndarray, list]:
    """Arrow's dictionary encoding (C++, in order of first appearance): codes (-1 for null) and the values."""
    enc = pc.dictionary_encode(arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr)
    return pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def read_checkpoints(spec, run_id: str, columns: tuple | None = None, meanwhile=None) -> dict:
    """Validate the file and build the run's tables: questions, traces, checkpoints (Arrow), config extras.
    ``columns``: what ``read_columns(spec)`` returned, when the caller read the file already. ``meanwhile``:
    called with the questions ({ids, texts, gold_json}) in a thread once the whole file is checked, while the
    answers are scored (math answers: once they are scored) and Arrow assembles the tables; the import opens
    the store and writes the run and its questions then (DuckDB works without the GIL). Its error, if any, is
    raised here once the tables are built."""
    tbl, sha, where = columns or read_columns(spec)
    tbl, recs = _explode(tbl, spec, where)
    n = tbl.num_rows
    if n == 0:
        raise StoplineError("no checkpoints in the file", file=spec.path)
    ids = pc.cast(tbl.column("id"), pa.string()) if "id" in tbl.column_names else None
    if ids is None:
        raise StoplineError("--format checkpoints in long form needs --id-field (the question each row belongs to)",
                            file=spec.path, field="id_field")
    if ids.null_count:
        raise _at(spec, where, int(recs[np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))[0]]),
                  "missing question id", "id")
    pos = _numbers(tbl.column("pos"), spec, where, recs, "pos", integer=True)
    codes, uniq_ids = _codes(ids)                       # in order of first appearance
    uniq_ids = np.asarray(uniq_ids, dtype=object)
    # questions in order of appearance, positions ascending (most exports already are: then no sort)
    step, rise = np.diff(codes), np.diff(pos)
    if not ((step == 0) & (rise >= 0) | (step == 1)).all() or (len(codes) and codes[0] != 0):
        order = np.lexsort((pos, codes))
        codes, pos, recs = codes[order], pos[order], recs[order]
        tbl = tbl.take(pa.array(order))
    same = np.flatnonzero((codes[1:] == codes[:-1]) & (pos[1:] == pos[:-1]))
    if len(same):
        raise _at(spec, where, int(recs[same[0] + 1]), f"question {uniq_ids[codes[same[0]]]!r} has two checkpoints at "
                  f"position {int(pos[same[0]])}", "pos")
    first = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1]
    last = np.r_[first[1:], n] - 1
    counts = last - first + 1
    nq = len(first)
    # a final checkpoint at the trace's length, when it lies past the last position
    extra = np.zeros(nq, bool)
    lengths = pos[last].copy()
    if "length" in tbl.column_names:
        L = _numbers(tbl.column("length"), spec, where, recs, "length", integer=True)[first]
        short = np.flatnonzero(L < pos[last])
        if len(short):
            q = int(short[0])
            raise _at(spec, where, int(recs[last[q]]), f"question {uniq_ids[codes[first[q]]]!r}: length {int(L[q])} is "
                      f"before its last checkpoint at {int(pos[last[q]])}", "length")
        extra = L > pos[last]
        lengths = L
    too_many = np.flatnonzero(counts + extra > MAX_CHECKPOINTS)
    if len(too_many):
        q = int(too_many[0])
        raise _at(spec, where, int(recs[first[q]]), f"question {uniq_ids[codes[first[q]]]!r} has {int(counts[q])} "
                  f"checkpoints; at most {MAX_CHECKPOINTS} are stored per question", "pos")
    # rows with the added finals: each question's rows, then its final copy of the last row
    take, qrow, posx, added = None, codes, pos, None    # (take None: the rows as they are)
    if extra.any():                                     # the added finals go after their question's rows
        take = np.concatenate([np.arange(n), last[extra]])
        qrow = np.concatenate([codes, codes[last[extra]]])
        posx = np.concatenate([pos, lengths[extra]])
        added = np.concatenate([np.zeros(n, bool), np.ones(int(extra.sum()), bool)])
        order2 = np.lexsort((posx, qrow))
        take, qrow, posx, added = take[order2], qrow[order2], posx[order2], added[order2]
    is_final = np.r_[qrow[1:] != qrow[:-1], True]
    N = len(qrow)
    firstx = np.r_[0, np.flatnonzero(qrow[1:] != qrow[:-1]) + 1]
    ck_idx = np.arange(N, dtype=np.int32) - np.repeat(firstx.astype(np.int32), np.diff(np.r_[firstx, N]))
    # questions and golds
    def per_q(key):
        return tbl.column(key).take(pa.array(first)).to_pylist() if key in tbl.column_names else [None] * nq
    ids = np.asarray(uniq_ids, dtype=object).astype(str)
    id_arr = pa.array(ids, pa.string())
    first_arr = pa.array(first)
    qcol = tbl.column("question").take(first_arr).combine_chunks() if "question" in tbl.column_names else None
    if qcol is not None and (pa.types.is_string(qcol.type) or pa.types.is_large_string(qcol.type)):
        # Arrow's kernels: every question a non-blank string (else the line is named)
        bad_q = np.flatnonzero(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(qcol), ""), True)
                               .to_numpy(zero_copy_only=False))
        if len(bad_q):
            raise _at(spec, where, int(recs[first[bad_q[0]]]), question_problem(qcol[int(bad_q[0])].as_py()),
                      "question")
        q_texts = pc.cast(qcol, pa.string())
    else:
        texts = qcol.to_pylist() if qcol is not None else [None] * nq
        if spec.question_field:                         # every question a non-blank string
            bad_q = [i for i, x in enumerate(texts) if question_problem(x)]
            if len(bad_q):
                raise _at(spec, where, int(recs[first[bad_q[0]]]), question_problem(texts[bad_q[0]]), "question")
        q_texts = [t if t else i for t, i in zip(texts, ids)]
    # golds: each distinct one checked, normalised and written once
    check = bool(spec.gold_field and not spec.correct_field)
    gcol = tbl.column("gold").take(first_arr).combine_chunks() if "gold" in tbl.column_names else None
    if gcol is not None and (pa.types.is_string(gcol.type) or pa.types.is_integer(gcol.type)
                             or pa.types.is_floating(gcol.type)):
        gcodes, g_uniq = _codes(gcol)                   # Arrow's encoding: no Python call per question
        g_uniq.append(None)                             # -1 (null): the last
        gcodes[gcodes < 0] = len(g_uniq) - 1
    else:
        seen: dict = {}
        g_uniq, g_list = [], gcol.to_pylist() if gcol is not None else [None] * nq
        gcodes = np.empty(nq, np.int64)
        for i, value in enumerate(g_list):
            key = value if isinstance(value, (str, int, float)) else repr(value)
            if key not in seen:
                seen[key] = len(g_uniq)
                g_uniq.append(value)
            gcodes[i] = seen[key]
    g_golds = [as_gold_list(v, spec.answer_type) if v is not None else [] for v in g_uniq]
    used = np.bincount(gcodes, minlength=len(g_uniq)) > 0   # (the null slot may be unused)
    g_norm = [normalize_gold(g, spec.answer_type) for g in g_golds]
    g_bad = [check_gold(g, spec.answer_type) if check and u else None for g, u in zip(g_golds, used)]
    if any(g_bad):
        q = int(np.flatnonzero(np.isin(gcodes, [i for i, e in enumerate(g_bad) if e]))[0])
        raise _at(spec, where, int(recs[first[q]]), f"cannot parse the gold answer: {g_bad[gcodes[q]]}", "gold")
    gold_json = pc.take(pa.array([json.dumps(g) for g in g_golds], pa.string()), pa.array(gcodes))
    questions = {"ids": ids, "texts": q_texts, "gold_json": gold_json,     # error_at: a question's gold, by its line
                 "error_at": lambda i, message, hint=None: _at(spec, where, int(recs[first[i]]), message, "gold",
                                                               hint)}
    # checked before anything is written (or the store locked): signals, labels, stops, where the text is cut
    signals = {}
    for s in SIGNAL_COLUMNS:
        if s in tbl.column_names:
            v = _rows(_numbers(tbl.column(s), spec, where, recs, s, integer=False), take).copy()
            v[is_final if added is None else added | is_final] = np.nan      # the final answer needs no probe
            signals[s] = v
    labels = _rows(_labels(tbl.column("correct"), spec, where, recs), take) if "correct" in tbl.column_names \
        else None
    stops = None
    if "stop" in tbl.column_names:                       # the production stopper's, per question (its first row)
        stops = {"positions": per_q("stop"), "answers": per_q("stopped") if "stopped" in tbl.column_names else None,
                 "lines": _lines(where, recs[first])}
        check_stops(ids, stops["positions"], stops["answers"], file=spec.path, lines=stops["lines"],
                    pos_field=spec.stop_field, answer_field=spec.stopped_answer_field or "answer")
    text_col = per_q("text")
    char_pos = _char_positions(text_col, qrow, posx, is_final, spec.tokenizer) if "text" in tbl.column_names \
        else None                                       # (a column left out is stored NULL)
    # The file is checked whole: ``meanwhile`` (the import opening the store, which locks it, and writing the
    # run and its questions) runs beside the scoring, or, for math answers (math-verify can take long per
    # distinct answer), only beside the tables' assembly once they are scored.
    early = spec.answer_type != MATH
    with alongside(meanwhile if early else None, questions):
        # answers: normalised once per distinct text, scored once per distinct (gold, answer)
        raw = pc.cast(tbl.column("answer"), pa.string())
        raw = raw.take(pa.array(take)) if take is not None else raw.combine_chunks()
        if "final" in tbl.column_names:                    # the model's own answer at full length, where given
            raw = _with_finals(raw, np.flatnonzero(is_final), _finals(tbl.column("final"), first, last, spec, where,
                                                                      recs, uniq_ids, codes), spec, where, recs, first)
        acodes, uniq = _codes(raw)                          # -1: no answer
        u_norm = np.array([normalize(u, spec.answer_type) if u else "" for u in uniq] + [""], dtype=object)
        acodes = np.where((u_norm == "")[acodes], -1, acodes)
        u_tok = np.array([len(TOKEN_RE.findall(u)) for u in uniq] + [0], dtype=np.int32)
        em, f1 = (labels, labels) if labels is not None else \
            score_rows(gcodes[qrow], acodes, u_norm, g_norm, spec.answer_type)
        with alongside(None if early else meanwhile, questions):
            answer_tokens = pa.array(np.where(is_final, 0, u_tok[acodes]).astype(np.int32))
            # columns repeating a few values per question or run as dictionaries (no copy of the strings per row)
            norm_arr = _dict(np.where(acodes < 0, len(u_norm) - 1, acodes), pa.array(u_norm, pa.string()))
            cols = {"run_id": _dict(np.zeros(N, np.int8), pa.array([run_id])), "question_id": _dict(qrow, id_arr),
                    "ck_idx": pa.array(ck_idx, pa.int16()), "pos": pa.array(posx.astype(np.int32)),
                    "kind": _dict(is_final.astype(np.int8), pa.array(["interval", "final"])),
                    "is_step": pa.array(np.zeros(N, bool)), "is_transition": pa.array(np.zeros(N, bool)),
                    "answer_raw": raw, "answer_norm": norm_arr, "em": pa.array(em, pa.float64()),
                    "f1": pa.array(f1, pa.float64()), **{k: pa.array(v, pa.float64()) for k, v in signals.items()},
                    "answer_tokens": answer_tokens, "probe_tokens": answer_tokens}
            if char_pos is not None:
                cols["char_pos"] = char_pos
            cks = pa.table(cols)
            fi = np.flatnonzero(is_final)
            traces = pa.table({
                "run_id": pa.array([run_id] * nq), "question_id": id_arr,
                "text": pa.array([t if isinstance(t, str) else "" for t in text_col], pa.string())
                if "text" in tbl.column_names else pa.repeat(pa.scalar("", pa.string()), nq),
                "n_tokens": pa.array(posx[fi].astype(np.int64)), "final_raw": raw.take(pa.array(fi)),
                "final_norm": norm_arr.take(pa.array(fi)), "em": pa.array(np.asarray(em)[fi], pa.float64()),
                "f1": pa.array(np.asarray(f1)[fi], pa.float64()), "finish_reason": pa.array(["imported"] * nq),
                "gen_s": pa.nulls(nq, pa.float64()), "probe_s": pa.nulls(nq, pa.float64())})
    return {"questions": questions, "traces": traces, "checkpoints": cks, "sha256": sha, "stops": stops,
            "shape": "wide" if where.get("wide") else "long",
            "em_source": f"the file's field {spec.correct_field!r}" if spec.correct_field else "Stopline's grader"}


def _finals(col, first: np.ndarray, last: np.ndarray, spec, where: dict, recs, uniq_ids, codes) -> list:
    """Each question's final answer: the one its rows give (a log may put it on any of them, the last above
    all); None where none does. Two different ones for one question are refused, naming the row."""
    vals = col.to_numpy(zero_copy_only=False) if hasattr(col, "to_numpy") else np.asarray(col, dtype=object)
    out = []
    for q, (a, b) in enumerate(zip(first, last)):
        given = [(i, v) for i, v in zip(range(a, b + 1), vals[a:b + 1]) if v is not None and v == v]
        if any(str(v) != str(given[0][1]) for _, v in given):
            i = next(i for i, v in given if str(v) != str(given[0][1]))
            raise _at(spec, where, int(recs[i]), f"question {uniq_ids[codes[a]]!r} has two final answers: "
                      f"{str(given[0][1])[:40]!r} and {str(vals[i])[:40]!r}", "final")
        out.append(given[0][1] if given else None)
    return out


def _with_finals(raw: pa.Array, final_rows: np.ndarray, finals: list, spec, where: dict, recs, first) -> pa.Array:
    """The answers with each question's final row (its full length) answering the file's final answer, where a
    question gives one (a string or a number; none keeps the last checkpoint's)."""
    out = raw.to_numpy(zero_copy_only=False).astype(object)
    for q, v in enumerate(finals):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise _at(spec, where, int(recs[first[q]]), f"the final answer must be a string or a number, got "
                      f"{type(v).__name__}", "final")
        out[final_rows[q]] = str(v)
    return pa.array(out, pa.string())


def _rows(values: np.ndarray, take: np.ndarray | None) -> np.ndarray:
    """Per-row values for the stored rows (``take`` None: the file's rows, as they are)."""
    return values if take is None else values[take]


def _dict(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    """``values[indices]`` as an Arrow dictionary array: DuckDB stores it as the plain column it names."""
    return pa.DictionaryArray.from_arrays(pa.array(indices), values)


@contextmanager
def alongside(work, *args):
    """Run ``work(*args)`` (when given) in a thread while the block runs; on leaving, wait for it and raise its
    error, unless the block raised one first."""
    if work is None:
        yield
        return
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(work, *args)
        try:
            yield
        finally:
            wait([done])
    done.result()


def _char_positions(texts: list, qrow: np.ndarray, pos: np.ndarray, is_final: np.ndarray,
                    tokenizer: str | None) -> pa.Array:
    """Where each checkpoint cuts its trace's text, in characters, where that is known: a question's final
    checkpoint at the end of its text when the export has the text; every checkpoint when ``tokenizer`` (the
    tool's model's) is given too: the start of the token at its position. NULL elsewhere (positions count
    the tool's tokens, which the text alone does not tell)."""
    tlen = np.array([len(t) if isinstance(t, str) else -1 for t in texts], np.int64)
    out = np.full(len(qrow), -1, np.int64)
    pos = pos.astype(np.int64)
    known = tlen[qrow] >= 0
    if tokenizer and known.any():
        from analysis.ingest.derive import tokenizer_starts
        starts = tokenizer_starts([t if isinstance(t, str) else "" for t in texts], tokenizer)
        n_tok = np.array([len(s) for s in starts], np.int64)
        tok0 = np.r_[0, np.cumsum(n_tok)]
        flat = np.concatenate(starts) if len(starts) else np.zeros(0, np.int64)
        q = qrow[known]
        inside = pos[known] < n_tok[q]
        cut = tlen[q].copy()
        cut[inside] = flat[tok0[q[inside]] + pos[known][inside]]
        out[known] = cut
    fin = is_final & known
    out[fin] = tlen[qrow[fin]]
    return pa.array(out, pa.int32(), mask=out < 0)
