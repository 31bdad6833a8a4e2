"""A finished batch of generated traces as the store's tables: traces and checkpoints, every trial answer
extracted, normalised and scored against the gold."""
from __future__ import annotations

import math

import pyarrow as pa

from analysis.backend.decode import TraceResult
from analysis.backend.probe import Probe
from analysis.core.answers import extract, normalize, normalize_gold, score


def char_positions(tok, token_ids: list[int], positions: list[int], text: str) -> list[int]:
    """Where each position (tokens of the trace) cuts ``text`` (the trace's ids decoded), in characters: the
    length of the longest prefix of ``text`` that the first ``pos`` tokens decode to. Exact for any tokenizer
    (a byte-level token that ends inside a character leaves that character after the cut), whatever its
    decoder does to spaces; one batched decode of all the prefixes."""
    prefixes = tok.batch_decode([token_ids[:p] for p in positions], skip_special_tokens=True)
    return [_common_prefix(text, s) for s in prefixes]


def _common_prefix(text: str, s: str) -> int:
    """len of the longest common prefix of two strings (a binary search on str.startswith)."""
    if text.startswith(s):
        return len(s)
    lo, hi = 0, min(len(s), len(text))           # text[:lo] == s[:lo]; a mismatch within s[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(s[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def to_tables(run_id: str, questions, results: list[TraceResult], tok, answer_type: str):
    """Arrow tables of traces and checkpoints for a finished batch."""
    tr = {k: [] for k in ("run_id", "question_id", "text", "n_tokens", "final_raw", "final_norm", "em", "f1",
                          "finish_reason", "gen_s", "probe_s")}
    ck = {k: [] for k in ("run_id", "question_id", "ck_idx", "pos", "kind", "is_step", "is_transition",
                          "answer_raw", "answer_norm", "em", "f1", "p_mean", "p_geo", "p_min", "p_first",
                          "entropy", "answer_tokens", "probe_tokens", "char_pos")}
    for q, r in zip(questions, results):
        gold = normalize_gold(q.gold, answer_type)
        text = tok.decode(r.token_ids, skip_special_tokens=True)
        fraw = extract(text, answer_type)
        fnorm = normalize(fraw, answer_type)
        fem, ff1 = score(fnorm, gold, answer_type)
        for k, v in (("run_id", run_id), ("question_id", q.id), ("text", text), ("n_tokens", len(r.token_ids)),
                     ("final_raw", fraw), ("final_norm", fnorm), ("em", fem), ("f1", ff1),
                     ("finish_reason", r.finish_reason), ("gen_s", r.gen_s), ("probe_s", r.probe_s)):
            tr[k].append(v)
        cuts = char_positions(tok, r.token_ids, [c["pos"] for c in r.checkpoints], text)
        for i, c in enumerate(r.checkpoints):
            pr: Probe | None = c["probe"]
            final = c["kind"] == "final"
            if final:   # the full-length answer is the model's own; the probe at the end gives its signals
                raw, norm, em, f1 = fraw, fnorm, fem, ff1
            else:
                raw = pr.raw if pr else None
                norm = normalize(raw, answer_type) if raw else ""
                em, f1 = score(norm, gold, answer_type)
            sig = pr.signals() if pr else {"p_mean": None, "p_geo": None, "p_min": None, "p_first": None,
                                           "entropy": None}
            for k, v in (("run_id", run_id), ("question_id", q.id), ("ck_idx", i), ("pos", c["pos"]),
                         ("kind", c["kind"]), ("is_step", bool(c["is_step"])),
                         ("is_transition", bool(c["is_transition"])), ("answer_raw", raw), ("answer_norm", norm),
                         ("em", em), ("f1", f1), ("answer_tokens", 0 if final else (len(pr.tokens) if pr else 0)),
                         ("probe_tokens", pr.probe_tokens if pr else 0), ("char_pos", cuts[i])):
                ck[k].append(v)
            for k in ("p_mean", "p_geo", "p_min", "p_first", "entropy"):
                v = sig[k]
                ck[k].append(None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    traces = pa.table(tr)
    cks = pa.table({**ck, "ck_idx": pa.array(ck["ck_idx"], pa.int16()), "pos": pa.array(ck["pos"], pa.int32()),
                    **{k: pa.array(ck[k], pa.float64()) for k in ("p_mean", "p_geo", "p_min", "p_first", "entropy")},
                    "answer_tokens": pa.array(ck["answer_tokens"], pa.int32()),
                    "probe_tokens": pa.array(ck["probe_tokens"], pa.int32()),
                    "char_pos": pa.array(ck["char_pos"], pa.int32())})
    return traces, cks

