"""Scoring many imported answers at once: each distinct (trace, answer) pair scored once, plain decimals
compared as floats (for the text importer and the checkpoint importer alike)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis.core.answers import NUMBER, score

_PLAIN = re.compile(r"-?\d+(?:\.\d+)?")


def _plain_floats(values: np.ndarray) -> np.ndarray:
    """float of each plain decimal string (up to 15 digits, so floats compare exactly), else NaN."""
    return np.array([float(v) if v and len(v) <= 16 and _PLAIN.fullmatch(v) else np.nan for v in values],
                    dtype=np.float64)


def score_rows(tr: np.ndarray, codes: np.ndarray, u_norm: np.ndarray, golds: list[list[str]], answer_type: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """(EM, F1) per row, for rows of trace ``tr`` whose answer is ``u_norm[codes]`` (code -1: none), scored
    once per distinct (trace, answer). Numbers take a fast path: one plain-decimal gold and a plain-decimal
    answer compare as floats with numbers_equal's tolerance; anything else (fractions, expressions, several
    aliases, a float too close to call) goes through ``score`` itself."""
    n_u = len(u_norm)
    pcodes, puniq = pd.factorize(tr.astype(np.int64) * (n_u + 1) + (codes + 1))
    p_tr, p_code = puniq // (n_u + 1), puniq % (n_u + 1) - 1
    pem = np.full(len(puniq), np.nan)
    pf1 = np.full(len(puniq), np.nan)
    if answer_type == NUMBER:
        u_f = _plain_floats(u_norm)
        g_f = _plain_floats(np.array([g[0] if len(g) == 1 else "" for g in golds], dtype=object))
        a, b = u_f[p_code], g_f[p_tr]
        fast = np.isfinite(a) & np.isfinite(b)
        tol = 1e-6 * np.maximum(1.0, np.abs(b))
        diff = np.abs(a - b)
        fast &= np.abs(diff - tol) > 1e-9 * tol
        pem = pf1 = np.where(fast, (diff <= tol).astype(np.float64), np.nan)
    pem[p_code == -1] = 0.0
    pf1[p_code == -1] = 0.0
    for k in np.flatnonzero(np.isnan(pem)).tolist():
        pem[k], pf1[k] = score(u_norm[p_code[k]], golds[p_tr[k]], answer_type)
    return pem[pcodes], pf1[pcodes]
