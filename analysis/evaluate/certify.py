"""Certified operating points (Learn-then-Test): "the EM drop on new questions is at most ε, with
probability at least 1 − δ".

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021, arXiv:2110.01052) turns each candidate
setting into a hypothesis test of H_s: R(s) > ε, where R(s) is the setting's expected per-question risk on
questions drawn like the calibration ones. Settings whose null is rejected are certified; the family-wise
error rate (the chance that *any* certified setting truly has R > ε) is at most δ, so choosing the certified
setting that saves the most tokens keeps the guarantee.

The risk, per question, against the full-length answer (domain.md: kept, lost, gained):
- ``drop``: lost − gained, in [−1, 1]; its mean is the EM drop (full EM − EM). Its bound combines an upper
  bound on the lost share and a lower bound on the gained share, each at δ/2 (a union bound): both are
  Bernoulli means, for which the Hoeffding–Bentkus bound is tight, where the same bound on the rescaled
  [−1, 1] variable assumes the worst-case variance and certifies nothing below tens of thousands of
  questions;
- ``lost``: the lost share alone (right at full length, wrong at the stop), a stricter one-sided choice that
  gives gains no credit.

The p-value of "mean loss > α" for a loss in [0, 1] with sample mean R̂ over n questions (Hoeffding–Bentkus,
Bates et al. 2021, "Distribution-free, risk-controlling prediction sets", Prop. 3; LTT eq. 8):

    p_HB(R̂; α) = min( exp(−n · h1(min(R̂, α), α)),  e · P[Binomial(n, α) ≤ ⌈n R̂⌉] ),
    h1(a, b) = a log(a/b) + (1 − a) log((1 − a)/(1 − b)).

For ``drop`` the p-value is the smallest level a at which  UCB_lost(a/2) − LCB_gained(a/2) ≤ ε, where
UCB(a) = the largest α with p_HB(R̂; α) > a (valid: under the null, that inequality needs one of the two
bounds to fail, which happens with probability at most a/2 + a/2).

Testing: within a family the settings are ordered from least to most aggressive and tested in that order at
level δ_f, stopping at the first one that is not rejected (fixed-sequence testing: family-wise error ≤ δ_f
with no correction, because a later setting is tested only when every earlier one was rejected). Across the
F families tested, δ is split equally (Bonferroni, δ_f = δ / F), so every certified setting of every family
holds together with probability ≥ 1 − δ.

The order must not depend on the questions the tests use (Pareto testing, Laufer-Goldshtein et al. 2022):
a stable share of the calibration questions (``order_share``, by a hash of their ids) orders each family's
settings by their mean tokens, keeping that part's Pareto set (a dominated setting there only spends a step
of the sequence); the tests use the other questions (``n`` in the certificate).

What it covers: new questions drawn from the same distribution as the calibration questions, the model and
its configuration unchanged. It says nothing about questions drawn differently (a shifted mix of traffic):
that is what the monitor's drift tests and re-certification (``recalibrate``) are for. The promised savings
are an estimate on the calibration questions, not part of the guarantee.

The learned family is not certified: its cross-fitted probabilities for one calibration question come from
models trained on the other calibration questions' labels, so the per-question losses are not independent.

About 450 lines: the p-values, the fixed-sequence test, the split and the per-slice certificates are one
procedure whose guarantee depends on each step using the others' exact conventions; kept in one module.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from analysis.core.errors import StoplineError
from analysis.evaluate.frontier import pareto_mask, settings_for
from analysis.replay.engine import RunTable, computed_tokens, stop_index
from analysis.replay.policies.base import Setting, available_families, families as all_families

RISKS = ("drop", "lost")
BOUND = "Hoeffding-Bentkus"
TESTING = "fixed-sequence within each family (least to most aggressive), Bonferroni across families"
ORDER_SHARE = 0.3
UNCERTIFIABLE = {"learned": "its cross-fitted probabilities use the other calibration questions' labels, so the "
                            "per-question losses are not independent"}


# --- the bound --------------------------------------------------------------------------------------------
def _h1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.clip(a, 0.0, 1.0)
    b = np.clip(b, 1e-300, 1 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * np.log(a / b), 0.0)
        t2 = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - b)), 0.0)
    return t1 + t2


def hb_pvalue(k, n, alpha) -> np.ndarray:
    """Hoeffding–Bentkus p-value of "mean loss > alpha" from k losses among n questions (losses in {0, 1};
    vectorised over k and alpha)."""
    from scipy.stats import binom      # scipy loads only when a certificate is asked for
    k, alpha = np.asarray(k, float), np.asarray(alpha, float)
    if n <= 0:
        return np.ones(np.broadcast(k, alpha).shape)
    rhat = k / n
    hoeff = np.exp(-n * _h1(np.minimum(rhat, alpha), alpha))
    bent = math.e * binom.cdf(np.ceil(k - 1e-9), n, np.clip(alpha, 0, 1))
    return np.clip(np.minimum(hoeff, bent), 0.0, 1.0)


def hb_ucb(k, n, level, iters: int = 50) -> np.ndarray:
    """Upper confidence bound on the mean at level ``level``: the largest alpha whose p-value exceeds it
    (bisection, vectorised; the answer errs upward, so it stays valid)."""
    k, level = np.broadcast_arrays(np.asarray(k, float), np.asarray(level, float))
    if n <= 0:
        return np.ones(k.shape)
    lo, hi = k / n, np.ones(k.shape)
    for _ in range(iters):
        mid = (lo + hi) / 2
        rej = hb_pvalue(k, n, mid) <= level
        hi = np.where(rej, mid, hi)
        lo = np.where(rej, lo, mid)
    return hi


def risk_ucb(k_lost, k_gained, n, level, risk: str = "drop") -> np.ndarray:
    """Upper bound on the risk (``drop``: lost − gained share; ``lost``: lost share) at level ``level``."""
    if risk == "lost":
        return hb_ucb(k_lost, n, level)
    lost_ucb = hb_ucb(k_lost, n, np.asarray(level, float) / 2)
    gained_lcb = 1 - hb_ucb(n - np.asarray(k_gained, float), n, np.asarray(level, float) / 2)
    return lost_ucb - gained_lcb


def risk_pvalue(k_lost, k_gained, n, epsilon: float, risk: str = "drop", iters: int = 40) -> np.ndarray:
    """p-value of "risk > epsilon" (vectorised over the settings' counts)."""
    k_lost, k_gained = np.broadcast_arrays(np.asarray(k_lost, float), np.asarray(k_gained, float))
    if risk == "lost":
        return hb_pvalue(k_lost, n, epsilon)
    lo, hi = np.zeros(k_lost.shape), np.ones(k_lost.shape)     # smallest level whose bound is <= epsilon
    ok_at_1 = risk_ucb(k_lost, k_gained, n, hi, risk) <= epsilon
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = risk_ucb(k_lost, k_gained, n, mid, risk) <= epsilon
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return np.where(ok_at_1, hi, 1.0)


def n_needed(lost_rate: float, gained_rate: float, epsilon: float, level: float, risk: str = "drop",
             n_max: int = 10_000_000) -> int | None:
    """The fewest test questions with which these observed rates would certify at ``level`` (None: no
    number will, the observed risk is at or above epsilon)."""
    observed = lost_rate - (gained_rate if risk == "drop" else 0.0)
    if observed >= epsilon:
        return None

    def ok(n: int) -> bool:
        return bool(risk_ucb(round(lost_rate * n), round(gained_rate * n), n, level, risk) <= epsilon)
    hi = 16
    while not ok(hi):
        hi *= 2
        if hi > n_max:
            return None
    lo = hi // 2
    while hi - lo > max(1, hi // 200):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# --- per-question losses of every candidate ---------------------------------------------------------------
@dataclass
class Losses:
    """Every candidate setting's per-question outcome on one table: lost / gained (settings x questions)
    and cost (tokens), with the full-length cost per question."""
    settings: list[Setting]
    family: np.ndarray
    lost: np.ndarray
    gained: np.ndarray
    cost: np.ndarray
    full_cost: np.ndarray
    question_ids: np.ndarray

    def take(self, idx: np.ndarray) -> "Losses":
        return Losses(self.settings, self.family, self.lost[:, idx], self.gained[:, idx], self.cost[:, idx],
                      self.full_cost[idx], self.question_ids[idx])


def certifiable_families(t: RunTable, families: list[str] | None = None) -> list[str]:
    fams = families or [f for f in available_families(t) if f not in UNCERTIFIABLE]
    for f in fams:
        if f not in all_families():
            raise StoplineError(f"unknown family {f!r}", hint="families: " + ", ".join(all_families()))
        if f in UNCERTIFIABLE:
            raise StoplineError(f"the {f} family cannot be certified: {UNCERTIFIABLE[f]}")
    return fams


def losses(t: RunTable, families: list[str] | None = None, cost: str = "emitted") -> Losses:
    """Replay every setting of the families' grids (those the run has the signals for)."""
    sets = []
    for f in certifiable_families(t, families):
        sets += [s for s in settings_for(t, f)
                 if all(t.has_signal(x) for x in s.policy.required_signals(s.params))]
    if not sets:
        raise StoplineError("no setting of these families can be replayed on this run")
    r = t.rows
    full_right = t.full_em > 0.5
    stops = np.stack([stop_index(t, s) for s in sets])
    right = t.em[r[None, :], stops] > 0.5
    # computed: each setting's own probes (its schedule's; none for a budget), as the replay charges them
    c = (t.emitted[r[None, :], stops] if cost == "emitted"
         else np.stack([computed_tokens(t, st, s) for st, s in zip(stops, sets)]))
    return Losses(sets, np.array([s.family for s in sets], dtype=object), full_right[None, :] & ~right,
                  ~full_right[None, :] & right, c.astype(np.float64), t.full_tokens.astype(np.float64),
                  t.question_ids)


def order_mask(question_ids: np.ndarray, share: float = ORDER_SHARE, salt: str = "stopline-order") -> np.ndarray:
    """The questions that order the settings (stable by id); the others are tested."""
    h = np.array([int(hashlib.sha1((salt + str(q)).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                  for q in question_ids])
    return h < share


def family_order(L: Losses, fam: str, on: np.ndarray, risk: str = "drop") -> list[int]:
    """A family's settings, least to most aggressive, as the ordering questions ``on`` rank them: their
    Pareto set (cost against the risk), most tokens first."""
    idx = np.flatnonzero(L.family == fam)
    if not on.any():         # no ordering questions (a run too small to split): by tokens alone, label-free
        return list(idx[np.argsort(-L.cost[idx].mean(axis=1), kind="stable")])
    cost = L.cost[idx][:, on].mean(axis=1)
    drop = L.lost[idx][:, on].mean(axis=1) - (L.gained[idx][:, on].mean(axis=1) if risk == "drop" else 0.0)
    keep = pareto_mask(cost, -drop)
    idx, cost, drop = idx[keep], cost[keep], drop[keep]
    return list(idx[np.lexsort((drop, -cost))])


# --- certification ----------------------------------------------------------------------------------------
def _check(epsilon: float, delta: float, risk: str) -> None:
    if not (0 <= epsilon < 1):
        raise StoplineError(f"epsilon must be in [0, 1), not {epsilon:g}")
    if not (0 < delta < 1):
        raise StoplineError(f"delta must be in (0, 1), not {delta:g}")
    if risk not in RISKS:
        raise StoplineError(f"risk must be one of {', '.join(RISKS)}, not {risk!r}")


def certify_losses(L: Losses, ordering: np.ndarray, epsilon: float, delta: float, risk: str = "drop",
                   pvalues: bool = True, needs: bool = True, choose=None) -> dict:
    """Learn-then-Test on precomputed losses: ``ordering`` marks the questions that order the settings; the
    rest are tested. Returns the certificate (see ``certify``). ``pvalues``/``needs``: also compute the chosen
    setting's p-value / the questions each family would need (the simulation skips both). ``choose``: given the
    certified settings' indices per family (each in its order), the ones that may be chosen (all by default;
    the closed loop limits its step with it): the certificate covers every certified setting at once."""
    _check(epsilon, delta, risk)
    test = ~ordering
    n = int(test.sum())
    fams = list(dict.fromkeys(L.family))
    d_f = delta / len(fams)
    lost_k = L.lost[:, test].sum(axis=1)
    gained_k = L.gained[:, test].sum(axis=1)
    full_cost = float(L.full_cost.mean()) or 1.0
    mean_cost = L.cost.mean(axis=1)
    per_family, certified, by_family = {}, [], {}
    for fam in fams:
        order = family_order(L, fam, ordering, risk)
        ucb = risk_ucb(lost_k[order], gained_k[order], n, d_f, risk) if n else np.ones(len(order))
        passed = ucb <= epsilon
        j = int(np.argmin(passed)) if not passed.all() else len(order)   # the first that fails ends the sequence
        ok = order[:j]
        by_family[fam] = ok
        certified += ok
        first = order[0] if order else None
        need = (n_needed(lost_k[first] / max(n, 1), gained_k[first] / max(n, 1), epsilon, d_f, risk)
                if needs and first is not None and n else None)
        per_family[fam] = {"delta": d_f, "tested": min(j + 1, len(order)), "in_order": len(order),
                           "certified": j,
                           "stopped_at": (L.settings[order[j]].label() if j < len(order) else None),
                           "best": (L.settings[min(ok, key=lambda i: mean_cost[i])].label() if ok else None),
                           "first": L.settings[first].label() if first is not None else None,
                           "n_needed_first": need}
    rhat = (lost_k - (gained_k if risk == "drop" else 0)) / max(n, 1)
    out = {"certified": bool(certified), "epsilon": epsilon, "delta": delta, "risk": risk, "bound": BOUND,
           "testing": TESTING, "n": n, "n_order": int(ordering.sum()), "n_calibration": int(len(ordering)),
           "families": per_family, "tokens_full": full_cost}
    if certified and choose is not None:
        certified = list(choose(by_family))
        if not certified:
            out["held_back"], out["certified"] = True, False
    if certified:
        best = min(certified, key=lambda i: (mean_cost[i], rhat[i]))
        fam = L.family[best]
        out.update({"setting": L.settings[best].to_dict(), "label": L.settings[best].label(), "family": fam,
                    "family_delta": d_f, "risk_hat": float(rhat[best]),
                    "risk_ucb": float(risk_ucb(lost_k[best], gained_k[best], n, d_f, risk)),
                    "tokens": float(mean_cost[best]), "savings": 1 - float(mean_cost[best]) / full_cost,
                    "lost": int(L.lost[best].sum()), "gained": int(L.gained[best].sum())})
        if pvalues:
            out["p_value"] = float(risk_pvalue(lost_k[best], gained_k[best], n, epsilon, risk))
        out["n_certified"] = len(certified)
    else:
        needs = [(v["n_needed_first"], f) for f, v in per_family.items() if v["n_needed_first"]]
        if needs:
            k, f = min(needs)
            share = 1 - out["n_order"] / max(len(ordering), 1)
            out["n_needed"] = int(math.ceil(k / max(share, 1e-9)))
            out["n_needed_family"] = f
            out["n_needed_setting"] = per_family[f]["first"]
        else:
            out["n_needed"] = None
    out["message"] = certificate_words(out)
    return out


def certify(t: RunTable, epsilon: float, delta: float, families: list[str] | None = None, risk: str = "drop",
            cost: str = "emitted", order_share: float = ORDER_SHARE) -> dict:
    """The setting that saves the most tokens among those certified for "risk ≤ epsilon with probability ≥
    1 − delta" on run ``t``'s questions, or none (with the number of questions that would be needed)."""
    _check(epsilon, delta, risk)
    L = losses(t, families, cost)
    out = certify_losses(L, order_mask(t.question_ids, order_share), epsilon, delta, risk)
    out.update({"run": t.run_id, "cost": cost, "order_share": order_share})
    out["message"] = certificate_words(out)
    return out


def certify_slices(t: RunTable, by: str, epsilon: float, delta: float, families: list[str] | None = None,
                   risk: str = "drop", cost: str = "emitted", order_share: float = ORDER_SHARE) -> dict:
    """One certified setting per slice, δ split equally across the slices (Bonferroni): every slice's drop is
    ≤ ε together with probability ≥ 1 − δ, so the drop over any mix of the slices is ≤ ε too. A slice where
    nothing certifies runs to full length (its drop is 0)."""
    from analysis.replay.slices import slice_labels, slice_order
    _check(epsilon, delta, risk)
    labels = slice_labels(t, by)
    labs = slice_order(labels)
    L = losses(t, families, cost)
    ordering = order_mask(t.question_ids, order_share)
    per, tokens = {}, np.zeros(t.n)
    for lab in labs:
        m = labels == lab
        c = certify_losses(L.take(np.flatnonzero(m)), ordering[m], epsilon, delta / len(labs), risk, pvalues=False)
        per[str(lab)] = c
        if c["certified"]:
            i = [s.key() for s in L.settings].index(Setting.from_dict(c["setting"]).key())
            tokens[m] = L.cost[i, m]
        else:
            tokens[m] = L.full_cost[m]
    full = float(L.full_cost.mean()) or 1.0
    return {"by": by, "epsilon": epsilon, "delta": delta, "risk": risk, "bound": BOUND, "cost": cost,
            "testing": TESTING + "; Bonferroni across slices", "run": t.run_id, "slices": per,
            "certified": any(c["certified"] for c in per.values()), "tokens": float(tokens.mean()),
            "tokens_full": full, "savings": 1 - float(tokens.mean()) / full, "n_calibration": t.n}


# --- words --------------------------------------------------------------------------------------------------
def risk_words(risk: str) -> str:
    return ("EM drop against full length (questions lost minus questions gained)" if risk == "drop"
            else "share of questions lost (right at full length, wrong when stopped early)")


def certificate_words(c: dict) -> str:
    """The certificate in words a stakeholder reads."""
    what = "EM drop" if c.get("risk", "drop") == "drop" else "share of questions lost"
    if c.get("certified") and c.get("label"):
        return (f"Certified: {c['label']} keeps the {what} against full length at most {c['epsilon']:g} on new "
                f"questions drawn like the {c['n_calibration']} calibration questions, with probability at least "
                f"{1 - c['delta']:.0%} ({c['bound']} bound on {c['n']} test questions, {TESTING}). It saves an "
                f"estimated {c['savings']:.0%} of the tokens ({c['tokens']:.0f} against {c['tokens_full']:.0f}); "
                "the savings are an estimate, not part of the guarantee. It holds only while questions are drawn "
                "like the calibration ones: re-certify when the traffic shifts.")
    if c.get("n_needed"):
        return (f"Nothing certified: no setting's {what} is provably at most {c['epsilon']:g} with probability "
                f"{1 - c['delta']:.0%} from {c['n_calibration']} calibration questions; run full length. About "
                f"{c['n_needed']} calibration questions would certify {c['n_needed_setting']} if its observed "
                "rates held.")
    return (f"Nothing certified: no setting's {what} is provably at most {c.get('epsilon', 0):g} with probability "
            f"{1 - c.get('delta', 0):.0%}, and the least aggressive settings already lose more than that on the "
            "calibration questions, so more questions would not help; run full length.")


def slice_preset(res: dict):
    """A per-slice certificate (``certify_slices``) as a preset: each certified slice's setting, full length
    elsewhere, carrying the certificate (without the families' details)."""
    from analysis.presets.schema import Preset
    full = Setting.make("budget", B=32768)        # no slice label matched: run to the end (the cap bites never)
    slices = {lab: Setting.from_dict(c["setting"]) for lab, c in res["slices"].items() if c["certified"]}
    cert = {k: v for k, v in res.items() if k != "slices"}
    cert["n"] = int(sum(c["n"] for c in res["slices"].values()))
    cert["slices"] = {lab: {k: c.get(k) for k in ("certified", "label", "n", "risk_hat", "risk_ucb", "savings")}
                      for lab, c in res["slices"].items()}
    return Preset(f"certified per {res['by']}, ε={res['epsilon']:g} δ={res['delta']:g}", full, res["by"], slices,
                  certificate=cert)


# --- validation by simulation -------------------------------------------------------------------------------
def simulate(population: Losses, n_calibration: int, epsilon: float, delta: float, draws: int, risk: str = "drop",
             order_share: float = ORDER_SHARE, seed: int = 0) -> dict:
    """Certify on ``draws`` random calibration sets of ``n_calibration`` questions drawn from a large
    population whose every setting's true risk is known (its mean over the population): the share of draws
    whose certified setting truly violates epsilon (with its exact binomial 95% CI), against a naive pick (the
    fewest tokens with the *observed* risk <= epsilon, no bound), and the tokens saved against the oracle (the
    fewest tokens among the settings whose true risk is <= epsilon)."""
    from scipy.stats import binomtest
    rng = np.random.default_rng(seed)
    true_risk = population.lost.mean(axis=1) - (population.gained.mean(axis=1) if risk == "drop" else 0.0)
    true_cost = population.cost.mean(axis=1)
    full = float(population.full_cost.mean())
    ok = true_risk <= epsilon
    oracle = int(np.flatnonzero(ok)[np.argmin(true_cost[ok])]) if ok.any() else None
    keys = {s.key(): i for i, s in enumerate(population.settings)}
    N = population.lost.shape[1]
    viol = naive_viol = certified = 0
    saved, naive_saved = [], []
    for _ in range(draws):
        idx = rng.choice(N, n_calibration, replace=False)
        sub = population.take(idx)
        ordering = rng.uniform(size=n_calibration) < order_share
        c = certify_losses(sub, ordering, epsilon, delta, risk, pvalues=False, needs=False)
        if c["certified"]:
            certified += 1
            i = keys[Setting.from_dict(c["setting"]).key()]
            viol += bool(true_risk[i] > epsilon)
            saved.append(1 - true_cost[i] / full)
        else:
            saved.append(0.0)
        obs = sub.lost.mean(axis=1) - (sub.gained.mean(axis=1) if risk == "drop" else 0.0)
        cand = np.flatnonzero(obs <= epsilon)
        if len(cand):
            j = int(cand[np.argmin(sub.cost[cand].mean(axis=1))])
            naive_viol += bool(true_risk[j] > epsilon)
            naive_saved.append(1 - true_cost[j] / full)
        else:
            naive_saved.append(0.0)
    ci = binomtest(viol, draws).proportion_ci(0.95, method="exact")
    nci = binomtest(naive_viol, draws).proportion_ci(0.95, method="exact")
    return {"draws": draws, "n_calibration": n_calibration, "population": N, "epsilon": epsilon, "delta": delta,
            "risk": risk, "settings": len(population.settings), "certified_share": certified / draws,
            "violation_share": viol / draws, "violation_ci": [float(ci.low), float(ci.high)],
            "naive_violation_share": naive_viol / draws, "naive_violation_ci": [float(nci.low), float(nci.high)],
            "savings_mean": float(np.mean(saved)), "naive_savings_mean": float(np.mean(naive_saved)),
            "oracle": population.settings[oracle].label() if oracle is not None else None,
            "oracle_savings": float(1 - true_cost[oracle] / full) if oracle is not None else 0.0}


def preset_certificate_words(cert: dict, run_id: str | None = None) -> str:
    """A preset's certificate in words (for the report): which run it was certified on, and what it promises."""
    where = ("on this run" if run_id and cert.get("run") == run_id else
             f"on run {cert['run']}" if cert.get("run") not in (None, "", "explore") else
             "on labelled exploration traffic" if cert.get("run") == "explore" else "on its calibration questions")
    if "slices" in cert and "label" not in cert:
        n_ok = sum(1 for c in cert["slices"].values() if c.get("certified"))
        return (f"Certified {where}, one setting per {cert.get('by', 'slice')} slice ({n_ok} of {len(cert['slices'])} "
                f"slices stop early, the others run to full length): in every slice the "
                f"{'EM drop' if cert.get('risk') == 'drop' else 'share of questions lost'} is at most "
                f"{cert['epsilon']:g} with probability at least {1 - cert['delta']:.0%} together, so over any mix of "
                f"the slices too ({cert.get('bound', BOUND)} bound). It holds for new questions drawn like the "
                "calibration ones.")
    return certificate_words(cert).replace("Certified:", f"Certified {where}:", 1)
