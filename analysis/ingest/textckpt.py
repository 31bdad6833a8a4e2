"""Checkpoints derived from a trace's text alone (for generations imported from other tools).

Placement follows domain.md: every N tokens, at each step boundary (a blank line), at each transition word
("Wait", "Alternatively", "Hmm", ...), and at the trace's end. With no model to probe, the trial answer at a
checkpoint is the last answer stated so far (last ``\\boxed{}``, else ``####``, else the last number; for text,
the last 'answer is ...' or line). Token positions count word pieces (``\\w+`` runs and single punctuation
marks), a stand-in for the model's tokenizer that such imports lack.
"""
from __future__ import annotations

import re
import string
from bisect import bisect_right

import numpy as np
import pandas as pd

from analysis.core.answers import NUMBER, _HASH_RE, _NUM_RE, closed_box_end, extract, normalize, normalize_number
from analysis.core.schema import KIND_RANK, TRANSITION_WORDS

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# (the lookahead on the words' first letters changes no match: it lets the regex engine skip to candidates,
# about twice as fast over a long text as the bare lookbehind)
TRANSITION_RE = re.compile("(?=[" + "".join(sorted({re.escape(w[0]) for w in TRANSITION_WORDS})) + r"])(?<![\w])(?:"
                           + "|".join(re.escape(w) for w in TRANSITION_WORDS) + r")\b")
STEP_RE = re.compile(r"\n\s*\n")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\{")



_ASCII_WORD = np.zeros(128, dtype=bool)
for _c in string.ascii_letters + string.digits + "_":
    _ASCII_WORD[ord(_c)] = True
_ASCII_SPACE = np.zeros(128, dtype=bool)
for _c in " \t\n\r\x0b\x0c":
    _ASCII_SPACE[ord(_c)] = True


def token_starts_batch(texts: list[str]) -> list[np.ndarray]:
    """Character offsets where each TOKEN_RE token starts, for many texts in a few numpy passes.

    A token is a run of word characters or one other non-space character; characters beyond ASCII count
    as word characters (close to ``\\w`` for letters, and this is an approximate count in any case).
    """
    if not texts:
        return []
    big = "\n".join(texts)
    if not big:
        return [np.zeros(0, np.int64) for _ in texts]
    cps = np.frombuffer(big.encode("utf-32-le"), dtype=np.uint32)
    ascii_ = cps < 128
    low = np.where(ascii_, cps, 0)
    word = np.where(ascii_, _ASCII_WORD[low], True)
    space = np.where(ascii_, _ASCII_SPACE[low], False)
    prev_word = np.empty_like(word)
    prev_word[0] = False
    prev_word[1:] = word[:-1]
    starts = np.flatnonzero((word & ~prev_word) | (~word & ~space))
    bounds = np.cumsum([0] + [len(t) + 1 for t in texts])
    cuts = np.searchsorted(starts, bounds)
    return [starts[cuts[i]:cuts[i + 1]] - bounds[i] for i in range(len(texts))]


def placements(text: str, every: int = 32, starts: np.ndarray | None = None
               ) -> tuple[list[tuple[int, int, str, bool, bool]], int]:
    """Checkpoint placements as (token_pos, char_cut, kind, is_step, is_transition), plus the token count.

    ``char_cut`` ends the prefix the trial answer is read from; the last placement is the trace's end.
    ``starts`` (token start offsets, from token_starts_batch) may be given to save the tokenising.
    """
    if starts is None:
        starts = token_starts_batch([text])[0]
    n = len(starts)
    by_pos: dict[int, list] = {}

    def add(pos: int, cut: int, kind: str):
        cur = by_pos.get(pos)
        if cur is None:
            by_pos[pos] = [cut, kind, kind == "step", kind == "transition"]
        else:
            if KIND_RANK[kind] > KIND_RANK[cur[1]]:
                cur[1] = kind
            cur[0] = min(cur[0], cut)
            cur[2] |= kind == "step"
            cur[3] |= kind == "transition"
    if every and every > 0 and n > every:
        for pos, cut in zip(range(every, n, every), starts[every::every].tolist()):
            add(pos, cut, "interval")
    ends_in_step = False
    if "\n" in text:
        marks = [(m.start(), m.end()) for m in STEP_RE.finditer(text)]
        if marks:
            for (a, _), pos in zip(marks, np.searchsorted(starts, [b for _, b in marks]).tolist()):
                if 0 < pos < n:
                    add(pos, a, "step")
                elif pos >= n > 0:
                    ends_in_step = True         # a blank line ends the trace: its final checkpoint is a step too
    marks = [m.start() for m in TRANSITION_RE.finditer(text)]
    if marks:
        # just before the token that holds the word's first character (a tokenizer's token may start with the
        # space before it, " Wait")
        for a, pos in zip(marks, (np.searchsorted(starts, marks, side="right") - 1).tolist()):
            if 0 < pos < n:
                add(pos, a, "transition")
    out = [(p, v[0], v[1], v[2], v[3]) for p, v in sorted(by_pos.items())]
    out.append((n, len(text), "final", ends_in_step, False))
    return out, n


_SIMPLE_NUM = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


class _NumberIndex:
    """Answer spans of a numeric trace, found once: boxes, '####' lines and every number; the answer of a
    prefix is then a binary search (a number cut by the prefix's end is read as the prefix shows it)."""

    __slots__ = ("text", "box_ends", "box_vals", "hash_ends", "hash_vals", "num_starts", "num_ends", "num_vals")

    def __init__(self, text: str):
        self.text = text
        self.box_ends, self.box_vals = [], []
        for m in (_BOX_RE.finditer(text) if "box" in text else ()):
            end = closed_box_end(text, m.end())
            inner = text[m.end():end - 1].strip() if end else ""
            if inner:
                self.box_ends.append(end)
                self.box_vals.append(inner)
        if len(self.box_ends) > 1:      # nested boxes: the one that closes last was stated last
            order = sorted(range(len(self.box_ends)), key=self.box_ends.__getitem__)
            self.box_ends = [self.box_ends[k] for k in order]
            self.box_vals = [self.box_vals[k] for k in order]
        self.hash_ends, self.hash_vals = [], []
        for m in (_HASH_RE.finditer(text) if "####" in text else ()):
            if m.group(1).strip():
                self.hash_ends.append(m.end())
                self.hash_vals.append(m.group(1).strip())
        spans = [(m.start(), m.end(), m.group()) for m in _SIMPLE_NUM.finditer(text)]
        self.num_starts, self.num_ends, self.num_vals = (list(x) for x in zip(*spans)) if spans else ([], [], [])

    def at(self, cut: int) -> str | None:
        for ends, vals in ((self.box_ends, self.box_vals), (self.hash_ends, self.hash_vals)):
            i = bisect_right(ends, cut)
            if i:
                return vals[i - 1]
        i = bisect_right(self.num_ends, cut)           # numbers wholly inside the prefix: 0..i-1
        if i < len(self.num_starts) and self.num_starts[i] < cut:   # the next one is cut by the prefix's end
            part = _SIMPLE_NUM.findall(self.text, self.num_starts[i], cut)
            if part:
                return _clean_number(part[-1])
        return _clean_number(self.num_vals[i - 1]) if i else None


def _clean_number(last: str) -> str:
    last = last.rstrip(",")
    if "," in last:  # thousands separators or a list such as "3,4": the strict pattern decides
        strict = _NUM_RE.findall(last)
        return strict[-1] if strict else last
    return last


def trial_answers(text: str, cuts: list[int], answer_type: str, memo: dict | None = None
                  ) -> list[tuple[str | None, str]]:
    """(raw, normalised) last-stated answer for each prefix ``text[:cut]``; ``memo`` caches normalisation
    across calls."""
    if answer_type == NUMBER:
        idx = _NumberIndex(text)
        memo = {} if memo is None else memo
        out = []
        for c in cuts:
            raw = idx.at(c)
            if raw is None:
                out.append((None, ""))
                continue
            norm = memo.get(raw)
            if norm is None:
                norm = memo[raw] = normalize_number(raw)
            out.append((raw, norm))
        return out
    res = []
    for c in cuts:
        raw = extract(text[:c], answer_type)
        res.append((raw, normalize(raw, answer_type)))
    return res


# --- a whole chunk of numeric traces at once --------------------------------------------------------------
_SEP = "\x00"     # joins texts: neither space, newline nor word, so no pattern above can match across it
_STEP_SPLIT_RE = re.compile("(" + STEP_RE.pattern + ")")
_TRANSITION_SPLIT_RE = re.compile("(" + TRANSITION_RE.pattern + ")")
_NUM_SPLIT_RE = re.compile("(" + _SIMPLE_NUM.pattern + ")")
_HASH_BATCH_RE = re.compile(r"####\s*([^\n\x00]*)")    # _HASH_RE, stopping at the separator


def number_checkpoints_batch(texts: list[str], every: int = 32) -> dict[str, np.ndarray]:
    """``placements`` + ``trial_answers`` for many numeric traces in a few passes over their joined text.

    Returns flat per-checkpoint arrays (trace, pos, kind rank, is_step, is_transition, raw answer or None, and
    char_pos: where the prefix the answer is read from ends in its text) in trace order then position, the final checkpoint of each trace last, plus per-trace token counts.
    Equal to calling the per-trace functions on each text (a test checks it). Texts may not contain the
    NUL character that joins them (the caller falls back to the per-trace functions).
    """
    T = len(texts)
    lens = np.fromiter((len(t) for t in texts), np.int64, T)
    bounds = np.zeros(T + 1, np.int64)
    bounds[1:] = np.cumsum(lens + 1)
    bounds -= np.arange(T + 1) * 0
    starts_of = np.asarray(bounds[:-1])                    # where text i starts in the joined string
    ends_of = starts_of + lens
    big = _SEP.join(texts)
    # token starts, global (the separators are not tokens)
    per = token_starts_batch(texts)
    n_tok = np.fromiter((len(s) for s in per), np.int64, T)
    tok0 = np.zeros(T + 1, np.int64)
    tok0[1:] = np.cumsum(n_tok)
    gstarts = (np.concatenate(per) if T else np.zeros(0, np.int64)) + np.repeat(starts_of, n_tok)

    tr_l, pos_l, cut_l, rank_l, st_l, tn_l = [], [], [], [], [], []
    # every N tokens
    if every and every > 0:
        k = np.maximum((n_tok - 1) // every, 0) * (n_tok > every)
        tr = np.repeat(np.arange(T), k)
        j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k) + 1
        pos = j * every
        tr_l.append(tr), pos_l.append(pos), cut_l.append(gstarts[tok0[tr] + pos])
        rank_l.append(np.full(len(tr), KIND_RANK["interval"])), st_l.append(np.zeros(len(tr), bool))
        tn_l.append(np.zeros(len(tr), bool))

    def spans_of(rx: re.Pattern) -> tuple[np.ndarray, np.ndarray]:
        """Start and end of every match, from re.split with a capturing group (no match objects)."""
        parts = rx.split(big)
        if len(parts) == 1:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cum = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)))
        return cum[0:-1:2], cum[1::2]

    end_step = np.zeros(T, bool)

    def marks(spans: tuple[np.ndarray, np.ndarray], kind: str):
        a, b = spans
        if not len(a):
            return
        tr = np.searchsorted(starts_of, a, side="right") - 1
        pos = (np.searchsorted(gstarts, b) if kind == "step" else np.searchsorted(gstarts, a, side="right") - 1) \
            - tok0[tr]
        ok = (pos > 0) & (pos < n_tok[tr])
        if kind == "step":              # a blank line that ends the trace: its final checkpoint is a step too
            end_step[tr[(pos >= n_tok[tr]) & (n_tok[tr] > 0)]] = True
        tr_l.append(tr[ok]), pos_l.append(pos[ok]), cut_l.append(a[ok])
        rank_l.append(np.full(int(ok.sum()), KIND_RANK[kind]))
        st_l.append(np.full(int(ok.sum()), kind == "step")), tn_l.append(np.full(int(ok.sum()), kind == "transition"))
    marks(spans_of(_STEP_SPLIT_RE), "step")
    marks(spans_of(_TRANSITION_SPLIT_RE), "transition")
    tr = np.concatenate(tr_l) if tr_l else np.zeros(0, np.int64)
    pos = np.concatenate(pos_l) if pos_l else np.zeros(0, np.int64)
    cut = np.concatenate(cut_l) if cut_l else np.zeros(0, np.int64)
    rank = np.concatenate(rank_l) if rank_l else np.zeros(0, np.int64)
    st = np.concatenate(st_l) if st_l else np.zeros(0, bool)
    tn = np.concatenate(tn_l) if tn_l else np.zeros(0, bool)
    # one checkpoint per (trace, position): the strongest kind, the earliest cut, either flag
    if len(tr):
        order = np.lexsort((pos, tr))
        tr, pos, cut, rank, st, tn = tr[order], pos[order], cut[order], rank[order], st[order], tn[order]
        first = np.r_[True, (tr[1:] != tr[:-1]) | (pos[1:] != pos[:-1])]
        idx = np.flatnonzero(first)
        tr, pos = tr[idx], pos[idx]
        rank = np.maximum.reduceat(rank, idx)
        cut = np.minimum.reduceat(cut, idx)
        st = np.logical_or.reduceat(st, idx)
        tn = np.logical_or.reduceat(tn, idx)
    # and the end of each trace
    tr = np.concatenate([tr, np.arange(T)])
    pos = np.concatenate([pos, n_tok])
    cut = np.concatenate([cut, ends_of])
    rank = np.concatenate([rank, np.full(T, KIND_RANK["final"])])
    st = np.concatenate([st, end_step])
    tn = np.concatenate([tn, np.zeros(T, bool)])
    order = np.lexsort((pos, tr))
    tr, pos, cut, rank, st, tn = tr[order], pos[order], cut[order], rank[order], st[order], tn[order]
    # a final checkpoint at the same position as another one: the per-trace path keeps both (final last)

    # trial answers: last box, else last '####' line, else last number ending at the cut
    raw = np.full(len(tr), None, dtype=object)
    todo = np.ones(len(tr), bool)
    box_end, box_val = [], []
    for m in (_BOX_RE.finditer(big) if "box" in big else ()):
        e = closed_box_end(big, m.end())
        i = int(np.searchsorted(starts_of, m.start(), side="right") - 1)
        if e is not None and e <= ends_of[i]:
            v = big[m.end():e - 1].strip()
            if v:
                box_end.append(e), box_val.append(v)
    hash_end, hash_val = [], []
    for m in (_HASH_BATCH_RE.finditer(big) if "####" in big else ()):
        if m.group(1).strip():
            hash_end.append(m.end())
            hash_val.append(m.group(1).strip())
    for ends, vals in ((box_end, box_val), (hash_end, hash_val)):
        if not ends:
            continue
        o = np.argsort(ends, kind="stable")
        e = np.asarray(ends, np.int64)[o]
        v = np.asarray(vals, dtype=object)[o]
        j = np.searchsorted(e, cut, side="right") - 1
        ok = todo & (j >= 0)
        ok[ok] &= e[j[ok]] > starts_of[tr[ok]]         # the span lies in this trace
        raw[ok] = v[j[ok]]
        todo &= ~ok
    # every number once: re.split with a capturing group gives the numbers and, through the lengths of the
    # pieces, where each starts and ends (no match objects)
    parts = _NUM_SPLIT_RE.split(big) if todo.any() else [big]
    if len(parts) > 1:
        cum = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)))
        ns, ne = cum[0:-1:2], cum[1::2]
        nv = parts[1::2]
        inv, uv = pd.factorize(np.asarray(nv, dtype=object))
        cleaned = np.array([_clean_number(v) for v in uv], dtype=object)[inv]
        w = np.flatnonzero(todo)
        c = cut[w]
        lo = starts_of[tr[w]]
        j = np.searchsorted(ne, c, side="right")          # numbers wholly before the cut: ..j-1
        prev_ok = (j > 0) & (ns[np.maximum(j - 1, 0)] >= lo)
        raw[w[prev_ok]] = cleaned[(j - 1)[prev_ok]]
        nxt = np.minimum(j, len(ns) - 1)
        straddle = (j < len(ns)) & (ns[nxt] >= lo) & (ns[nxt] < c)      # a number cut by the prefix's end
        for k_ in np.flatnonzero(straddle).tolist():
            part = _SIMPLE_NUM.findall(big, int(ns[j[k_]]), int(c[k_]))
            if part:
                raw[w[k_]] = _clean_number(part[-1])
    return {"trace": tr, "pos": pos, "rank": rank, "is_step": st, "is_transition": tn, "raw": raw, "n_tokens": n_tok,
            "char_pos": cut - starts_of[tr]}
