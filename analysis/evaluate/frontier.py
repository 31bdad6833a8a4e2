"""Sweeps and fronts: every setting of every family's declared grid -> (cost, EM) points, with the Pareto
set and the upper convex hull (two settings mixed at random reach any point on the chord between them)."""
from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.core.errors import MissingSignal, StoplineError, brief
from analysis.replay.policies.base import (Setting, check_signals, describe_schedule, families, get_family,
                                           schedule_grid)
from analysis.replay.engine import computed_tokens, RunTable, stop_index

COST_AXES = ("emitted", "computed")
# above this many checkpoints the learned stopper (five cross-fitted classifiers, seconds on a large run) is
# left out of the first sweep and waits to be asked for
LEARNED_AUTO_MAX = 200_000
SPARSE_SHARE = 6          # a sparser schedule sweeps 1 in this many of the family's settings


def settings_for(t: RunTable, family: str) -> list[Setting]:
    """The family's grid on every checkpoint, then (for a family that probes) a sixth of it, the same sixth for
    each, on each sparser schedule of the declared schedule grid: what probing less often buys in computed
    tokens, within the sweep-time target."""
    cls = get_family(family)
    grid = [cls.validate(p) for p in cls.grid(t)]
    out = [Setting(family, p) for p in grid]
    if cls.sweep_schedules and cls.probes_needed(cls.defaults()) and grid:
        pick = np.sort(np.random.default_rng(len(grid)).permutation(len(grid))[:-(-len(grid) // SPARSE_SHARE)])
        out += [Setting(family, grid[i], sch) for sch in schedule_grid()[1:] for i in pick]
    return out


def sweep(t: RunTable, family_names: list[str] | None = None, skip_missing: bool = True) -> pd.DataFrame:
    """One row per setting: EM, mean tokens emitted and computed, savings, lost/gained, and front flags.

    Families whose signals the run lacks are skipped (or raise, with skip_missing=False).
    """
    rows = []
    full_em, full_tok = float(t.full_em.mean()), float(t.full_tokens.mean()) or 1.0
    full_right = t.full_em > 0.5
    r = t.rows
    for fam in family_names or families():
        try:
            sets = settings_for(t, fam)
            # a run may hold some of a family's signals (an export with p_mean only): keep what it can replay
            usable = [s for s in sets if all(t.has_signal(x) for x in s.policy.required_signals(s.params))]
            if sets and not usable:
                check_signals(t, sets[0])
            sets = usable
        except MissingSignal:
            if skip_missing:
                continue
            raise
        for s in sets:
            stop = stop_index(t, s)
            em_q = t.em[r, stop]
            em, emitted = float(em_q.mean()), float(t.emitted[r, stop].mean())
            computed = float(computed_tokens(t, stop, s).mean())
            right = em_q > 0.5
            rows.append({"family": fam, "label": s.label(), "setting": s.key(),
                         "schedule": describe_schedule(s.schedule) or "every checkpoint", "em": em, "delta_em": em - full_em,
                         "emitted": emitted, "computed": computed,
                         "savings_emitted": 1 - emitted / full_tok, "savings_computed": 1 - computed / full_tok,
                         "lost": int((full_right & ~right).sum()), "gained": int((~full_right & right).sum())})
    rows.append({"family": "full", "label": "full length", "setting": "", "schedule": "", "em": full_em, "delta_em": 0.0,
                 "emitted": full_tok, "computed": full_tok, "savings_emitted": 0.0, "savings_computed": 0.0,
                 "lost": 0, "gained": 0})
    return mark_fronts(pd.DataFrame(rows))


def mark_fronts(df: pd.DataFrame) -> pd.DataFrame:
    """The front flags of a sweep's points, on both cost axes: the Pareto set, its convex hull, and each
    family's own Pareto set (columns pareto, hull, pareto_family, each also with a _computed suffix)."""
    df = df.reset_index(drop=True)
    for axis in COST_AXES:
        suffix = "" if axis == "emitted" else "_computed"
        df["pareto" + suffix] = pareto_mask(df[axis].to_numpy(), df["em"].to_numpy())
        df["hull" + suffix] = hull_mask(df[axis].to_numpy(), df["em"].to_numpy())
        df["pareto_family" + suffix] = False
        for fam, idx in df.groupby("family").groups.items():
            sub = df.loc[idx]
            df.loc[idx, "pareto_family" + suffix] = pareto_mask(sub[axis].to_numpy(), sub["em"].to_numpy())
    return df


def schedules_of(pts: pd.DataFrame) -> list[str]:
    """The probe schedules a sweep's points were replayed on (its schedule column), every checkpoint first."""
    names = [s for s in pts["schedule"].unique() if s]
    return sorted(names, key=lambda s: (s != "every checkpoint", s))


def on_schedules(pts: pd.DataFrame, schedules: list[str]) -> pd.DataFrame:
    """A sweep's points on the given schedules only (names from ``schedules_of``), with the full-length point,
    and the fronts drawn again among them: what the best settings are when a deployment probes that often."""
    unknown = sorted(set(schedules) - set(schedules_of(pts)))
    if unknown:
        raise StoplineError(f"no points on the probe schedule {brief(unknown[0])} (the sweep has: "
                            f"{', '.join(schedules_of(pts))})", field="schedule")
    keep = pts["schedule"].isin(schedules) | (pts.family == "full")
    return mark_fronts(pts[keep])


def pareto_mask(cost: np.ndarray, em: np.ndarray) -> np.ndarray:
    """Points no other point beats on both axes (lower cost and higher EM, one of them strictly). Identical
    points are all on the front, since none beats another: two settings that land on one point are both
    among the best (the charts draw a zero-length segment between them; ``optimize`` and ``certify`` keep both)."""
    order = np.lexsort((-em, cost))
    mask = np.zeros(len(cost), bool)
    best, at = -np.inf, None
    for i in order:
        if em[i] > best or (em[i] == best and cost[i] == at):
            mask[i] = True
            best, at = em[i], cost[i]
    return mask


def hull_mask(cost: np.ndarray, em: np.ndarray) -> np.ndarray:
    """Vertices of the upper-left convex hull of the Pareto points: the best EM reachable at each cost by
    mixing two settings at random."""
    p = np.flatnonzero(pareto_mask(cost, em))
    p = p[np.argsort(cost[p])]
    hull: list[int] = []
    for i in p:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or below the chord a->i: drop it
            cross = (cost[b] - cost[a]) * (em[i] - em[a]) - (em[b] - em[a]) * (cost[i] - cost[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    # A point identical to a vertex is that vertex too (the chord test above keeps only one of them).
    vertices = set(zip(cost[hull].tolist(), em[hull].tolist()))
    return np.array([pt in vertices for pt in zip(cost.tolist(), em.tolist())], bool)


def setting_of(row: pd.Series | dict) -> Setting:
    return Setting.from_dict(json.loads(row["setting"]))


# --- sweeps materialised in the store ---------------------------------------------------------------------
# A run's writer (run, import, re-probe, synthetic) stores the sweep the dashboard draws first, so opening a
# run never starts with a sweep. The key names the families, the code that computes a sweep and the run's
# counts: a change to any of them makes the stored sweep a miss, never a wrong answer.

def default_families(n_checkpoints: int) -> list[str]:
    return [f for f in families() if f != "learned" or n_checkpoints <= LEARNED_AUTO_MAX]


@functools.lru_cache(maxsize=None)
def _code_version(with_learned: bool) -> str:
    pkg = Path(__file__).resolve().parents[1]           # analysis/
    rp = pkg / "replay"
    h = hashlib.sha1()
    for p in [rp / "engine.py", rp / "slices.py", pkg / "evaluate" / "frontier.py",
              *sorted((rp / "policies").glob("*.py"))]:
        h.update(p.name.encode() + p.read_bytes())
    if with_learned:
        import sklearn
        h.update(sklearn.__version__.encode())
    return h.hexdigest()[:16]


def sweep_key(run: dict, fams: list[str]) -> str:
    """run: a dict from Store.runs() (id, n_questions, n_checkpoints)."""
    return (f"{','.join(fams)}|{_code_version('learned' in fams)}|{pd.__version__}|"
            f"{run['n_questions']}x{run['n_checkpoints']}")


def stored_sweep(store, run: dict, fams: list[str]) -> pd.DataFrame | None:
    data = store.get_sweep(run["id"], sweep_key(run, fams))
    return pd.read_parquet(io.BytesIO(data)) if data is not None else None


def materialise(store, run_id: str) -> str | None:
    """Compute the run's default sweep and keep it in the store; returns its key (None for an empty run)."""
    run = store.run(run_id)
    if not run["n_checkpoints"]:
        return None
    fams = default_families(run["n_checkpoints"])
    key = sweep_key(run, fams)
    if store.get_sweep(run["id"], key) is None:
        buf = io.BytesIO()
        sweep(RunTable.from_store(store, run["id"]), fams).to_parquet(buf)
        store.put_sweep(run["id"], key, buf.getvalue())
    return key
