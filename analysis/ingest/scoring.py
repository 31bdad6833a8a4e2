"""Scoring many imported answers at once: each distinct (trace, answer) pair scored once, plain decimals
compared as floats (for the text importer and the checkpoint importer alike)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analysis.core.answers import NUMBER, score

_PLAIN = r"^-?[0-9]+(?:\.[0-9]+)?$"      # ASCII digits only (others take the slow path, which scores them)


def _plain_floats(values: np.ndarray) -> np.ndarray:
    """float of each plain decimal string (up to 16 characters, so floats compare exactly), else NaN; Arrow's
    regex and string-to-double kernels (correctly rounded, as ``float`` is), no Python call per value."""
    arr = pa.array(values, pa.string())
    ok = pc.and_(pc.match_substring_regex(arr, _PLAIN), pc.less_equal(pc.utf8_length(arr), 16))
    ok = pc.fill_null(ok, False)
    return pc.cast(pc.if_else(ok, arr, "nan"), pa.float64()).to_numpy(zero_copy_only=False)


def score_rows(tr: np.ndarray, codes: np.ndarray, u_norm: np.ndarray, golds: list[list[str]], answer_type: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """(EM, F1) per row, for rows whose gold aliases are ``golds[tr]`` (one entry per trace, or one per distinct
    gold) and whose answer is ``u_norm[codes]`` (code -1: none), scored once per distinct (``tr``, answer).
    Numbers take a fast path, row by row in numpy: one plain-decimal gold and a plain-decimal answer compare as
    floats with numbers_equal's tolerance; anything else (fractions, expressions, several aliases, a float too
    close to call) goes through ``score`` itself."""
    n_u = len(u_norm)
    em = np.full(len(codes), np.nan)
    if answer_type == NUMBER:                           # per row: a few numpy passes, no factorising of all rows
        u_f = _plain_floats(u_norm)
        g_f = _plain_floats(np.array([g[0] if len(g) == 1 else "" for g in golds], dtype=object))
        g_tol = 1e-6 * np.maximum(1.0, np.abs(g_f))    # per trace; NaN where the gold takes the slow path
        diff = u_f[codes]                               # (code -1: set to 0 below)
        np.subtract(diff, g_f[tr], out=diff)
        np.abs(diff, out=diff)                          # NaN where either side is not a plain decimal
        tol = g_tol[tr]
        equal = diff <= tol
        np.subtract(diff, tol, out=diff)                # (in place: no temporaries of a million rows)
        np.abs(diff, out=diff)
        tol *= 1e-9
        fast = diff > tol                               # (False for NaN: too close to call, or not plain)
        em[fast] = equal[fast]
    em[codes == -1] = 0.0
    f1 = em.copy()
    slow = np.flatnonzero(np.isnan(em))
    if len(slow):                                       # the rest: scored once per distinct (trace, answer)
        pcodes, puniq = pd.factorize(tr[slow].astype(np.int64) * (n_u + 1) + (codes[slow] + 1))
        p_tr, p_code = puniq // (n_u + 1), puniq % (n_u + 1) - 1
        pem, pf1 = np.empty(len(puniq)), np.empty(len(puniq))
        for k in range(len(puniq)):
            pem[k], pf1[k] = score(u_norm[p_code[k]], golds[p_tr[k]], answer_type)
        em[slow], f1[slow] = pem[pcodes], pf1[pcodes]
    return em, f1
