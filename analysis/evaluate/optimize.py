"""Operating points and per-slice settings.

- Splits: questions go to 'tune' or 'test' by a stable hash of their id, so the split never changes.
- Operating points: "max EM with mean tokens <= B" and "min tokens with EM >= full - delta", chosen on the
  tune split, reported on the held-out test split with bootstrap CIs and McNemar against full length.
- Per-slice settings: one setting per slice (question metadata, or question length), chosen to maximise
  total EM under one global token budget, by Lagrangian relaxation of the multiple-choice knapsack.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from analysis.core.errors import StoplineError
from analysis.evaluate.frontier import setting_of, sweep
from analysis.replay.policies.base import Setting
from analysis.replay.engine import (Outcome, RunTable, full_length, outcome_from_stops, replay, schedule_mask,
                                   stop_index)
from analysis.evaluate.stats import N_BOOT, bootstrap_ci, mcnemar, normal_ci
from analysis.replay.slices import slice_labels, slice_order

SPLITS = ("tune", "test", "all")


def split_mask(question_ids: np.ndarray, split: str, tune_share: float = 0.5, salt: str = "stopline") -> np.ndarray:
    if split not in SPLITS:
        raise StoplineError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "all":
        return np.ones(len(question_ids), bool)
    h = np.array([int(hashlib.sha1((salt + str(q)).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                  for q in question_ids])
    tune = h < tune_share
    return tune if split == "tune" else ~tune


HALF = {"tune": "tune half", "test": "held-out (test) half"}


class EmptySplit(StoplineError):
    """A tune or held-out half with no questions (``split_of``)."""


def split_of(t: RunTable, split: str) -> RunTable:
    """The questions of one split (``all``: the run itself). A half with no questions is our error: what is
    chosen on one half is checked on the other, and a tiny run can leave one of them empty."""
    if split == "all":
        return t
    sub = t.subset(split_mask(t.question_ids, split), fitted=False)     # no model fitted on the other half
    if sub.n == 0:
        raise EmptySplit(f"the {HALF[split]} of run {t.run_id} has no questions (the run has {t.n}; each question "
                            "goes to the tune or the held-out half by a hash of its id)",
                            hint="settings are chosen on one half and checked on the other: give the run more "
                                 "questions, or evaluate with --split all")
    return sub


def halves(t: RunTable) -> tuple[RunTable, RunTable]:
    """The tune and the held-out half, neither empty (``split_of``)."""
    return split_of(t, "tune"), split_of(t, "test")


def evaluate(t: RunTable, stop: np.ndarray, label: str, n_boot: int = N_BOOT, setting: Setting | None = None) -> dict:
    """Summary of stops with CIs and McNemar against full length (``setting``: the one that made the stops,
    whose probe schedule the tokens computed count)."""
    return evaluate_outcome(outcome_from_stops(t, stop, label, setting), n_boot)


def evaluate_outcome(o: Outcome, n_boot: int = N_BOOT) -> dict:
    """``evaluate`` for any Outcome (a replayed setting, a preset, the incumbent)."""
    s = o.summary()
    if s["n"] == 0:
        return s
    if n_boot > 0:
        s["ci"] = bootstrap_ci(o.em, o.full_em, o.emitted, o.full_tokens, o.computed, n_boot=n_boot)
    else:   # n_boot=0: the normal approximation (instant; for live numbers on large runs)
        s["ci"] = normal_ci(o.em, o.full_em, o.emitted, o.full_tokens, o.computed)
    s["mcnemar"] = mcnemar(o.full_em > 0.5, o.em > 0.5)
    return s


def pick(points: pd.DataFrame, goal: str, value: float, cost: str = "emitted") -> pd.Series | None:
    """From sweep points: goal 'budget' = max EM with mean cost <= value (fewest tokens among ties);
    goal 'drop' = min cost with EM >= full EM - value."""
    pts = points[points["family"] != "full"]
    if goal == "budget":
        ok = pts[pts[cost] <= value]
        if ok.empty:
            return None
        return ok.sort_values(["em", cost], ascending=[False, True]).iloc[0]
    if goal == "drop":
        full_em = float(points.loc[points["family"] == "full", "em"].iloc[0])
        ok = pts[pts["em"] >= full_em - value - 1e-12]
        if ok.empty:
            return None
        return ok.sort_values([cost, "em"], ascending=[True, False]).iloc[0]
    raise StoplineError(f"goal must be 'budget' or 'drop', not {goal!r}")


def operating_point(t: RunTable, goal: str, value: float, cost: str = "emitted",
                    families: list[str] | None = None, n_boot: int = N_BOOT, pts: pd.DataFrame | None = None) -> dict:
    """Choose on the tune split, report on the test split. ``pts``: the tune split's sweep, when the caller
    has it already (it is computed otherwise)."""
    tune, test = halves(t)
    row = pick(sweep(tune, families) if pts is None else pts, goal, value, cost)
    if row is None:
        raise StoplineError(f"no setting meets {goal} = {value:g} on the tune split")
    s = setting_of(row)
    res = {"setting": s.to_dict(), "label": s.label(), "goal": goal, "value": value, "cost": cost,
           "tune": {"em": float(row["em"]), "emitted": float(row["emitted"]), "computed": float(row["computed"]),
                    "n": tune.n},
           "schedule": s.sched, "probes": _probes(test, s),
           "test": evaluate(test, stop_index(test, s), s.label(), n_boot, s)}
    res["missed"] = missed_target(goal, value, cost, res["test"])
    return res


def _probes(t: RunTable, s: Setting) -> dict:
    """What a setting's probing costs on ``t``: probes made per question and their tokens (0 for a setting
    that reads no trial answer)."""
    o = replay(t, s)
    r = t.rows
    if not s.policy.probes_needed(s.params):
        return {"per_question": 0.0, "tokens": 0.0}
    keep = schedule_mask(t, s.sched) & ~t.is_final
    n = np.cumsum(keep, axis=1)[r, o.stop]
    return {"per_question": float(n.mean()), "tokens": float((o.computed - o.stop_pos).mean())}


def missed_target(goal: str, value: float, cost: str, test: dict) -> str | None:
    """How a setting chosen on the tune split misses its own target on the held-out split, in words with the
    number, or None when it meets it: an EM drop beyond ``value`` ('drop'), mean tokens above ``value``
    ('budget')."""
    if not test.get("n"):
        return None
    if goal == "drop" and test["delta_em"] < -value - 1e-12:
        return (f"misses its target on the held-out questions: ΔEM {test['delta_em']:+.3f} there, beyond the "
                f"allowed drop of {value:g}")
    if goal == "budget" and test["tokens_" + cost] > value + 1e-9:
        return (f"misses its target on the held-out questions: {test['tokens_' + cost]:.0f} tokens {cost} there, "
                f"over the budget of {value:g}")
    return None


# --- slices -----------------------------------------------------------------------------------------------
def optimize_slices(t: RunTable, by: str, budget: float, cost: str = "emitted",
                    families: list[str] | None = None, labels: np.ndarray | None = None) -> dict:
    """Per-slice settings maximising total EM with mean tokens (over all questions) <= budget. ``labels``: each
    question's slice when given (a half of a run, labelled with the whole run's bins, so that the other half
    falls in the same slices), else ``slice_labels(t, by)``."""
    labels = slice_labels(t, by) if labels is None else np.asarray(labels)
    options = {}
    for lab in slice_order(labels):
        sub = t.subset(labels == lab)
        pts = sweep(sub, families)
        pts = pts[pts["pareto" if cost == "emitted" else "pareto_computed"]]
        options[lab] = (sub.n, pts.reset_index(drop=True))
    total_budget = budget * t.n

    def choose(lam: float) -> dict:
        return {lab: int(np.argmax(p["em"].to_numpy() * n - lam * p[cost].to_numpy() * n))
                for lab, (n, p) in options.items()}

    def spend(choice: dict) -> float:
        return sum(options[lab][1][cost].iloc[i] * options[lab][0] for lab, i in choice.items())
    lo, hi = 0.0, 1.0
    while spend(choose(hi)) > total_budget and hi < 1e6:
        hi *= 2
    if spend(choose(hi)) > total_budget:
        raise StoplineError(f"no per-slice choice meets a mean of {budget:g} tokens")
    for _ in range(50):
        mid = (lo + hi) / 2
        if spend(choose(mid)) > total_budget:
            lo = mid
        else:
            hi = mid
    choice = choose(hi)
    per = {}
    for lab, i in choice.items():
        row = options[lab][1].iloc[i]
        per[lab] = {"n": options[lab][0], "em": float(row["em"]), cost: float(row[cost]),
                    "setting": (setting_of(row).to_dict() if row["family"] != "full" else None),
                    "label": row["label"]}
    n_tot = sum(v["n"] for v in per.values())
    return {"by": by, "budget": budget, "cost": cost, "slices": per,
            "em": sum(v["em"] * v["n"] for v in per.values()) / n_tot,
            cost: sum(v[cost] * v["n"] for v in per.values()) / n_tot}
