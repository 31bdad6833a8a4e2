"""Traces and checkpoints derived from response texts, as Arrow tables: the import's derivation step.

Each response is cut at the checkpoint placements of textckpt.py (every N tokens, step boundaries, transition
words, the end) and scored there; numeric answers take a vectorised path (``_derive_numbers``, tested equal to
the general one). ``derive`` spreads chunks over forked workers, which get the records as index ranges and send
back everything but the texts. Without a probe the checkpoints have no signals, and an early stop is charged
the answer's tokens as its probe.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.backend.models import CACHE, PACKAGED
from analysis.core.answers import extract, normalize, normalize_gold, normalize_number, NUMBER, score
from analysis.core.errors import StoplineError
from analysis.core.lifeline import worker_exits_with_parent
from analysis.core.progress import progress
from analysis.ingest import sources
from analysis.ingest.datasets import Question
from analysis.ingest.scoring import score_rows
from analysis.ingest.textckpt import number_checkpoints_batch, placements, TOKEN_RE, token_starts_batch, trial_answers

_CK_FIELDS = ("question_id", "ck_idx", "pos", "kind", "is_step", "is_transition", "answer_raw", "answer_norm",
              "em", "f1", "answer_tokens", "char_pos")
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
        c["char_pos"] += cuts                   # the prefix each trial answer was read from
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
    char_pos = pa.array(c.pop("char_pos"), pa.int32())
    ck = pa.table({
        "run_id": pa.array([run_id] * nc), **c,
        "ck_idx": pa.array(c["ck_idx"], pa.int32()), "pos": pa.array(c["pos"], pa.int32()),
        "p_mean": none, "p_geo": none, "p_min": none, "p_first": none, "entropy": none,
        "answer_tokens": answer_tokens,
        # with no probe, stopping early still costs writing the answer out
        "probe_tokens": answer_tokens, "char_pos": char_pos,
    })
    return traces, ck


KIND_NAMES = np.array(["interval", "step", "transition", "final"], dtype=object)


def _derive_numbers(run_id: str, items, every: int, with_text: bool) -> tuple[pa.Table, pa.Table]:
    """The numeric case of ``_derive_chunk``, vectorised over the chunk (same rows, tested)."""
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
        "answer_tokens": at, "probe_tokens": at, "char_pos": pa.array(r["char_pos"], pa.int32()),
    })
    return traces, ck


def derive(run_id: str, records: list[tuple[Question, str]], answer_type: str, every: int,
           show_progress: bool = True, workers: int | None = None, meanwhile=None,
           starts: list | None = None) -> tuple[pa.Table, pa.Table]:
    """Traces and text-derived checkpoints for the records, as Arrow tables (chunks spread over the cores).

    Workers are forked with the records in memory and receive index ranges; they send back everything but
    the response texts, which the parent adds to the traces table itself. ``meanwhile()``, when given, runs
    in the parent while the workers derive the last chunks (the import opens the store's write transaction and
    writes the run and its questions then: the store is not locked for the whole derivation). ``starts``:
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
    # meanwhile() when the chunks left take about as long as it does (writing a question costs about a tenth of
    # deriving its trace): the store is then locked for the last sixth of the derivation only
    late = max(0, len(ranges) - max(2 * workers, len(ranges) // 6))
    try:
        for i, ((tr, ck), (_, lo, hi, _, _)) in enumerate(zip(results, ranges)):
            if i == late and meanwhile is not None:
                meanwhile()
                meanwhile = None
            traces.append(tr)
            cks.append(ck)
            bar.update(hi - lo)
        if meanwhile is not None:                   # (no chunk at all)
            meanwhile()
    finally:
        bar.close()
        _SHARED, _STARTS = [], None
        if ex is not None:
            ex.shutdown(cancel_futures=True)
    tr = pa.concat_tables(traces)
    tr = tr.add_column(2, "text", pa.array([r for _, _, r in items], pa.string()))
    return tr, pa.concat_tables(cks)
