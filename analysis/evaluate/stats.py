"""Statistics for replayed outcomes: bootstrap confidence intervals (questions resampled, paired) and
McNemar's test against full length or another setting."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from analysis.evaluate import N_BOOT, SEED      # the one number of resamples and seed, for every page and the CLI


def bootstrap_means(columns: dict[str, np.ndarray], n_boot: int = N_BOOT, seed: int = SEED, batch: int | None = 250,
                    rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The one bootstrap: each column's mean over ``n_boot`` resamples of its rows, the same rows for every
    column (paired: questions resampled together). ``batch``: resamples drawn per step (memory is batch x n
    indices; None: all at once); ``rng``: go on drawing from another resampling (independent samples, as the
    monitor's A/B arms are)."""
    n = len(next(iter(columns.values())))
    rng = rng if rng is not None else np.random.default_rng(seed)
    step = batch or n_boot
    acc: dict[str, list] = {k: [] for k in columns}
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        for k, v in columns.items():
            acc[k].append(np.asarray(v, dtype=np.float64)[idx].mean(axis=1))
    return {k: np.concatenate(v) for k, v in acc.items()}


def percentile_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates ``x``."""
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return float(np.percentile(x, lo)), float(np.percentile(x, hi))


def bootstrap_ci(em: np.ndarray, full_em: np.ndarray, emitted: np.ndarray, full_tokens: np.ndarray,
                 computed: np.ndarray | None = None, n_boot: int = N_BOOT, level: float = 0.95, seed: int = SEED,
                 batch: int = 250) -> dict[str, tuple[float, float]]:
    """Percentile CIs for EM, ΔEM (paired), savings (emitted, computed), resampling questions together."""
    if len(em) == 0:
        return {}
    m = bootstrap_means({"em": em, "full": full_em, "emitted": emitted, "full_tokens": full_tokens,
                         "computed": computed if computed is not None else emitted}, n_boot, seed, batch)

    def ci(x):
        return percentile_ci(x, level)
    return {"em": ci(m["em"]), "delta_em": ci(m["em"] - m["full"]),
            "savings_emitted": ci(1 - m["emitted"] / m["full_tokens"]),
            "savings_computed": ci(1 - m["computed"] / m["full_tokens"])}


def normal_ci(em: np.ndarray, full_em: np.ndarray, emitted: np.ndarray, full_tokens: np.ndarray,
              computed: np.ndarray | None = None, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """The same CIs as ``bootstrap_ci`` from the normal approximation (paired differences; the delta method
    for the savings ratios): instant, and close to the bootstrap for the thousands of questions where it is
    used (the dashboard's live numbers on large runs)."""
    n = len(em)
    if n == 0:
        return {}
    z = float(sps.norm.ppf((1 + level) / 2))
    em, full_em = np.asarray(em, float), np.asarray(full_em, float)
    f = np.asarray(full_tokens, float)

    def mean_ci(x):
        m, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        return m - z * se, m + z * se

    def saving_ci(e):
        e = np.asarray(e, float)
        r = e.mean() / f.mean()
        se = float(np.sqrt(np.var(e - r * f, ddof=1) / n) / f.mean()) if n > 1 else 0.0
        return float(1 - r - z * se), float(1 - r + z * se)
    return {"em": mean_ci(em), "delta_em": mean_ci(em - full_em), "savings_emitted": saving_ci(emitted),
            "savings_computed": saving_ci(computed if computed is not None else emitted)}


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
