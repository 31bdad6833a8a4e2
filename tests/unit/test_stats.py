"""Statistics agree with scipy and statsmodels on known inputs."""
import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from analysis.evaluate.stats import bootstrap_ci, mcnemar


@pytest.mark.parametrize("b,c", [(3, 9), (0, 5), (12, 30), (40, 41), (100, 60)])
def test_mcnemar_matches_statsmodels(b, c):
    a = np.array([1] * b + [0] * c + [1] * 20 + [0] * 7, bool)
    bb = np.array([0] * b + [1] * c + [1] * 20 + [0] * 7, bool)
    table = [[20, b], [c, 7]]
    for exact in (True, False):
        ours = mcnemar(a, bb, exact=exact)
        ref = sm_mcnemar(table, exact=exact, correction=True)
        assert ours["b"] == b and ours["c"] == c
        assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
        assert ours["statistic"] == pytest.approx(ref.statistic)


def test_bootstrap_matches_scipy_percentile_interval():
    rng = np.random.default_rng(0)
    n = 400
    full = (rng.uniform(size=n) < 0.6).astype(float)
    em = np.where(rng.uniform(size=n) < 0.1, 1 - full, full)
    tok = rng.integers(100, 1000, n).astype(float)
    emitted = tok * rng.uniform(0.4, 1.0, n)
    ours = bootstrap_ci(em, full, emitted, tok, n_boot=4000, seed=1)
    ref_em = sps.bootstrap((em,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    ref_d = sps.bootstrap((em, full), lambda x, y: np.mean(x) - np.mean(y), paired=True, n_resamples=4000,
                          method="percentile", vectorized=False, random_state=3).confidence_interval
    for got, want in ((ours["em"], ref_em), (ours["delta_em"], ref_d)):
        assert got[0] == pytest.approx(want.low, abs=0.012)
        assert got[1] == pytest.approx(want.high, abs=0.012)
    lo, hi = ours["savings_emitted"]
    point = 1 - emitted.mean() / tok.mean()
    assert lo < point < hi


def test_paired_interval_is_narrower_than_unpaired():
    rng = np.random.default_rng(5)
    full = (rng.uniform(size=500) < 0.5).astype(float)
    em = np.where(rng.uniform(size=500) < 0.05, 1 - full, full)
    tok = np.full(500, 100.0)
    ci = bootstrap_ci(em, full, tok, tok, n_boot=2000)
    width_paired = ci["delta_em"][1] - ci["delta_em"][0]
    width_em = ci["em"][1] - ci["em"][0]
    assert width_paired < width_em


def test_normal_ci_is_close_to_the_bootstrap_on_many_questions():
    import numpy as np
    from analysis.evaluate.stats import bootstrap_ci, normal_ci
    rng = np.random.default_rng(0)
    n = 5000
    full_em = (rng.uniform(size=n) < 0.6).astype(float)
    em = np.where(rng.uniform(size=n) < 0.9, full_em, 1 - full_em)
    full_tok = rng.integers(100, 1000, n).astype(float)
    emitted = full_tok * rng.uniform(0.3, 1.0, n)
    b = bootstrap_ci(em, full_em, emitted, full_tok, emitted * 1.1, n_boot=2000)
    a = normal_ci(em, full_em, emitted, full_tok, emitted * 1.1)
    for k in b:
        assert abs(a[k][0] - b[k][0]) < 0.004 and abs(a[k][1] - b[k][1]) < 0.004, k


def test_paired_ci_without_resamples_is_the_normal_interval_of_the_differences():
    """``n_boot=0`` asks for the normal approximation, as ``evaluate`` takes it (before, the bootstrap's
    loop stepped by zero and raised)."""
    from analysis.evaluate.compare import paired_ci
    rng = np.random.default_rng(3)
    a = (rng.uniform(size=3000) < 0.6).astype(float)
    b = np.where(rng.uniform(size=3000) < 0.9, a, 1 - a)
    lo, hi = paired_ci(a, b, n_boot=0)
    d = b - a
    want = sps.norm.interval(0.95, loc=d.mean(), scale=sps.sem(d))
    assert (lo, hi) == pytest.approx(want, rel=1e-9)
    blo, bhi = paired_ci(a, b, n_boot=4000)
    assert lo == pytest.approx(blo, abs=0.003) and hi == pytest.approx(bhi, abs=0.003)
