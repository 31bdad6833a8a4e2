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

from .answers import (NUMBER, _HASH_RE, _NUM_RE, closed_box_end, extract_text_answer, normalize_number,
                      normalize_text)

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
TRANSITION_WORDS = ("Wait", "Alternatively", "Hmm", "But wait", "Actually", "Let me double-check",
                    "Let me check", "On second thought")
TRANSITION_RE = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(w) for w in TRANSITION_WORDS) + r")\b")
STEP_RE = re.compile(r"\n\s*\n")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\{")

KIND_RANK = {"interval": 0, "step": 1, "transition": 2, "final": 3}


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN_RE.finditer(text))


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
    if "\n" in text:
        marks = [(m.start(), m.end()) for m in STEP_RE.finditer(text)]
        if marks:
            for (a, _), pos in zip(marks, np.searchsorted(starts, [b for _, b in marks]).tolist()):
                if 0 < pos < n:
                    add(pos, a, "step")
    marks = [m.start() for m in TRANSITION_RE.finditer(text)]
    if marks:
        for a, pos in zip(marks, np.searchsorted(starts, marks).tolist()):
            if 0 < pos < n:
                add(pos, a, "transition")
    out = [(p, v[0], v[1], v[2], v[3]) for p, v in sorted(by_pos.items())]
    out.append((n, len(text), "final", False, False))
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
        raw = extract_text_answer(text[:c])
        res.append((raw, normalize_text(raw)))
    return res
