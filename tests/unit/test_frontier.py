"""Fronts, operating points and per-slice settings."""
import numpy as np
import pytest

from analysis.core.errors import StoplineError
from analysis.evaluate.frontier import hull_mask, pareto_mask, sweep
from analysis.evaluate.optimize import operating_point, optimize_slices, split_mask
from analysis.presets.schema import Preset
from analysis.presets.routing import preset_stops
from analysis.replay.policies import Setting
from analysis.replay.engine import RunTable, outcome_from_stops
from analysis.core.store import Store


def test_pareto_and_hull_on_known_points():
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.5, 3.0])
    em = np.array([0.1, 0.5, 0.6, 0.9, 0.4, 0.55])
    assert pareto_mask(cost, em).tolist() == [True, True, True, True, False, False]
    # (3, .6) lies under the chord from (2, .5) to (4, .9): not on the hull
    assert hull_mask(cost, em).tolist() == [True, True, False, True, False, False]


def test_identical_points_are_all_on_the_front():
    """Two settings at one (cost, EM): none beats the other, so both are Pareto (only one was), and a hull
    vertex's twin is a vertex too."""
    cost, em = np.array([100.0, 100, 200, 150]), np.array([0.8, 0.8, 0.9, 0.7])
    assert pareto_mask(cost, em).tolist() == [True, True, True, False]
    assert hull_mask(cost, em).tolist() == [True, True, True, False]
    cost, em = np.array([1.0, 2, 2, 3, 3, 2.5]), np.array([0.1, 0.5, 0.5, 0.6, 0.6, 0.4])
    assert pareto_mask(cost, em).tolist() == [True, True, True, True, True, False]
    assert hull_mask(cost, em).tolist() == [True, True, True, True, True, False]


@pytest.fixture(scope="module")
def syn(synthetic_db):
    path, rid, rid_text = synthetic_db
    s = Store(path, read_only=True)
    return RunTable.from_store(s, rid), RunTable.from_store(s, rid_text)


def test_sweep_covers_families_and_flags_fronts(syn):
    t, t_text = syn
    df = sweep(t)
    assert set(df.family) == {"budget", "consistency", "confidence", "entropy", "learned", "hybrid", "full"}
    assert len(df) > 400
    front = df[df.pareto].sort_values("emitted")
    assert (np.diff(front.em.to_numpy()) > 0).all()            # rising EM along the front
    assert df[df.hull].index.isin(df[df.pareto].index).all()
    # The budget frontier rises with the budget.
    b = df[df.family == "budget"].sort_values("emitted")
    assert b.em.iloc[-1] > b.em.iloc[0]
    # A run without signals sweeps only the families it supports.
    assert set(sweep(t_text).family) == {"budget", "consistency", "learned", "full"}


def test_split_is_stable_and_disjoint(syn):
    t, _ = syn
    tune, test = split_mask(t.question_ids, "tune"), split_mask(t.question_ids, "test")
    assert not (tune & test).any() and (tune | test).all()
    assert 0.4 < tune.mean() < 0.6
    assert (split_mask(t.question_ids[::-1], "tune")[::-1] == tune).all()


def test_operating_points(syn):
    t, _ = syn
    budget = float(t.full_tokens.mean()) * 0.6
    res = operating_point(t, "budget", budget, n_boot=200)
    assert res["tune"]["emitted"] <= budget
    assert res["test"]["n"] + res["tune"]["n"] == t.n
    lo, hi = res["test"]["ci"]["delta_em"]
    assert lo <= res["test"]["delta_em"] <= hi
    res = operating_point(t, "drop", 0.01, n_boot=200)
    assert res["tune"]["em"] >= float(t.subset(split_mask(t.question_ids, "tune")).full_em.mean()) - 0.01 - 1e-9
    with pytest.raises(StoplineError):
        operating_point(t, "budget", 1.0)


def test_per_slice_optimiser_meets_the_global_budget_and_replays(syn):
    t, _ = syn
    budget = float(t.full_tokens.mean()) * 0.5
    res = optimize_slices(t, "meta.difficulty", budget)
    assert res["emitted"] <= budget + 1e-6
    assert set(res["slices"]) == {"1", "2", "3"}
    preset = Preset("per-slice", Setting.make("budget", B=32768), "meta.difficulty",
                    {k: Setting.from_dict(v["setting"]) for k, v in res["slices"].items() if v["setting"]})
    o = outcome_from_stops(t, preset_stops(t, preset))
    assert o.emitted.mean() == pytest.approx(res["emitted"])
    assert o.em.mean() == pytest.approx(res["em"])
    # No single setting of the same families does better than the per-slice choice at that budget.
    df = sweep(t)
    best_single = df[df.emitted <= budget].em.max()
    assert res["em"] >= best_single - 1e-9
    with pytest.raises(StoplineError, match="no question field"):
        optimize_slices(t, "meta.nothing", budget)


def test_a_written_run_keeps_its_default_sweep_and_a_change_makes_it_a_miss(tmp_path):
    """The writer materialises the sweep the dashboard draws first; it equals a fresh sweep, and other
    families, other code or other counts never read it."""
    import pandas as pd
    from analysis.evaluate.frontier import default_families, materialise, stored_sweep, sweep_key
    from analysis.ingest.synthetic import write_synthetic_run
    s = Store(tmp_path / "s.duckdb")
    rid = write_synthetic_run(s, 60, 8, seed=3)
    run = s.run(rid)
    fams = default_families(run["n_checkpoints"])
    assert "learned" in fams and "learned" not in default_families(10**7)
    got = stored_sweep(s, run, fams)
    assert got is not None
    pd.testing.assert_frame_equal(got, sweep(RunTable.from_store(s, rid), fams))
    assert stored_sweep(s, run, [f for f in fams if f != "learned"]) is None
    assert stored_sweep(s, {**run, "n_questions": run["n_questions"] + 1}, fams) is None
    assert sweep_key(run, fams) != sweep_key({**run, "n_checkpoints": run["n_checkpoints"] - 1}, fams)
    assert materialise(s, rid) == sweep_key(run, fams)                  # idempotent
    with s.connect() as con:
        assert con.execute("SELECT COUNT(*) FROM sweeps WHERE run_id = ?", [rid]).fetchone()[0] == 1
