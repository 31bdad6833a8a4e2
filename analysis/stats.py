"""Statistics for replayed outcomes: bootstrap confidence intervals (questions resampled, paired) and
McNemar's test against full length or another setting."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps


def bootstrap_ci(em: np.ndarray, full_em: np.ndarray, emitted: np.ndarray, full_tokens: np.ndarray,
                 computed: np.ndarray | None = None, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 batch: int = 250) -> dict[str, tuple[float, float]]:
    """Percentile CIs for EM, ΔEM (paired), savings (emitted, computed), resampling questions together."""
    n = len(em)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    cols = {"em": em, "full": full_em, "emitted": emitted, "full_tokens": full_tokens,
            "computed": computed if computed is not None else emitted}
    acc = {k: [] for k in cols}
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        for k, v in cols.items():
            acc[k].append(np.asarray(v, dtype=np.float64)[idx].mean(axis=1))
    m = {k: np.concatenate(v) for k, v in acc.items()}
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def ci(x):
        return float(np.percentile(x, lo)), float(np.percentile(x, hi))
    return {"em": ci(m["em"]), "delta_em": ci(m["em"] - m["full"]),
            "savings_emitted": ci(1 - m["emitted"] / m["full_tokens"]),
            "savings_computed": ci(1 - m["computed"] / m["full_tokens"])}


def mcnemar(a_right: np.ndarray, b_right: np.ndarray, exact: bool | None = None) -> dict:
    """Paired test of two settings on the same questions. b = A right & B wrong, c = A wrong & B right.

    Exact binomial test when b + c < 25 (or exact=True), else chi-square with continuity correction —
    the same statistics as statsmodels' ``mcnemar``.
    """
    a, b_ = np.asarray(a_right, bool), np.asarray(b_right, bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    if exact is None:
        exact = b + c < 25
    if b + c == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "exact": exact}
    if exact:
        p = sps.binomtest(min(b, c), b + c, 0.5).pvalue
        stat = float(min(b, c))
    else:
        stat = (abs(b - c) - 1) ** 2 / (b + c)
        p = sps.chi2.sf(stat, 1)
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(min(1.0, p)), "exact": exact}
