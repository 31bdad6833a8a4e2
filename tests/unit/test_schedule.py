"""Probe schedules: a schedule replayed from a dense run equals the same rule on a run that only had the
sparse checkpoints (every family), costs count only scheduled probes, and the declaration validates."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.core.errors import PresetError
from analysis.presets.routing import preset_outcome
from analysis.presets.schema import from_dict, from_setting
from analysis.replay.engine import computed_tokens, replay, schedule_mask, scheduled, stop_index
from analysis.replay.policies import Setting
from analysis.replay.policies.base import SCHEDULE_DEFAULTS, schedule_grid
from tests.helpers import checkpoint_table, table_of_rows

EVERY = 32
ANSWERS = ["", "7", "8", "9"]


def recording(n: int, seed: int):
    """Per question, what a model 'would say' at every token position (a deterministic function of the
    prefix, as greedy probes are), and where its steps and transitions fall."""
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n):
        length = int(rng.integers(40, 420))
        settle = int(rng.integers(0, length))
        code = np.where(np.arange(length + 1) >= settle, 1 + q % 2, rng.integers(0, 4, length + 1))
        code = np.where(rng.uniform(0, 1, length + 1) < 0.15, rng.integers(0, 4, length + 1), code)
        out.append({
            "length": length,
            "steps": set(rng.choice(np.arange(1, length), size=min(length - 1, int(rng.integers(0, 8))), replace=False).tolist()),
            "trans": set(rng.choice(np.arange(1, length), size=min(length - 1, int(rng.integers(0, 6))), replace=False).tolist()),
            "ans": code, "p": rng.uniform(0.2, 1.0, length + 1), "h": rng.uniform(0.0, 2.0, length + 1),
            "em": (code == 1).astype(float), "probe": rng.integers(5, 15, length + 1),
        })
    return out


def rows_of(rec, every: int, steps: bool, transitions: bool, min_tokens: int = 0):
    """The checkpoints a run recorded with this placement (and no probe before min_tokens) would hold."""
    rows = []
    for q, r in enumerate(rec):
        L = r["length"]
        places = {p for p in range(1, L) if every and p % every == 0}
        places |= r["steps"] if steps else set()
        places |= r["trans"] if transitions else set()
        places = sorted(p for p in places if p >= min_tokens) + [L]
        for j, p in enumerate(places):
            a = int(r["ans"][p])
            rows.append({"question_id": f"q{q:03d}", "ck_idx": j, "pos": p, "answer_norm": ANSWERS[a],
                         "em": float(r["em"][p]) if a else 0.0, "f1": 0.0,
                         "p_mean": float(r["p"][p]) if a else np.nan, "p_geo": float(r["p"][p]) ** 1.1 if a else np.nan,
                         "p_min": float(r["p"][p]) ** 2 if a else np.nan, "p_first": float(r["p"][p]) if a else np.nan,
                         "entropy": float(r["h"][p]),
                         "is_step": steps and p in r["steps"],
                         "is_transition": transitions and p in r["trans"] and p != L,
                         "answer_tokens": 2, "probe_tokens": int(r["probe"][p])})
    t = table_of_rows(rows, "rec")
    t.interval = EVERY
    return t


SETTINGS = [
    Setting.make("budget", B=150),
    Setting.make("consistency", k=2), Setting.make("consistency", k=3, min_tokens=64),
    Setting.make("confidence", tau=0.8), Setting.make("confidence", tau=0.6, transition_only=True),
    Setting.make("confidence", tau=0.7, aggregate="min"),
    Setting.make("entropy", alpha=0.3, delta=0.05, min_steps=2),
    Setting.make("learned", tau=0.6),
    Setting.make("hybrid", a={"family": "entropy", "params": {"delta": 0.1}},
                 b={"family": "consistency", "params": {"k": 2}}, op="and", floor=64, cap=300),
]
SCHEDULES = [{"every": 2}, {"every": 4}, {"every": 8}, {"every": 0}, {"every": 2, "at_steps": False},
             {"at_transitions": False, "min_tokens": 96}, {"every": 4, "at_steps": False, "at_transitions": False}]
REC = recording(60, 3)
DENSE = rows_of(REC, EVERY, True, True)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_dense_with_schedule_equals_the_sparse_run(sch):
    full = {**SCHEDULE_DEFAULTS, **sch}
    sparse = rows_of(REC, EVERY * full["every"], full["at_steps"], full["at_transitions"], full["min_tokens"])
    for base in SETTINGS:
        s = Setting.from_dict({**base.to_dict(), "schedule": sch})
        got, want = replay(DENSE, s), replay(sparse, base)
        assert (got.stop_pos == want.stop_pos).all(), s.label()
        assert list(got.answers) == list(want.answers), s.label()
        assert (got.em == want.em).all() and (got.emitted == want.emitted).all(), s.label()
        assert np.allclose(got.computed, want.computed), s.label()


def test_every_family_is_covered():
    from analysis.replay.policies import families
    assert {s.family for s in SETTINGS} == set(families())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), every=st.sampled_from([0, 1, 2, 4, 8]), steps=st.booleans(),
       trans=st.booleans(), floor=st.sampled_from([0, 32, 100]), which=st.integers(0, len(SETTINGS) - 2))
def test_property_dense_schedule_equals_sparse(seed, every, steps, trans, floor, which):
    rec = recording(8, seed)
    dense = rows_of(rec, EVERY, True, True)
    sparse = rows_of(rec, EVERY * every, steps, trans, floor)
    base = SETTINGS[which]
    s = Setting.from_dict({**base.to_dict(), "schedule": {"every": every, "at_steps": steps,
                                                          "at_transitions": trans, "min_tokens": floor}})
    got, want = replay(dense, s), replay(sparse, base)
    assert (got.stop_pos == want.stop_pos).all()
    assert list(got.answers) == list(want.answers)
    assert np.allclose(got.computed, want.computed)


def test_default_schedule_is_the_table_itself_and_costs_are_unchanged():
    s = Setting.make("consistency", k=2)
    assert scheduled(DENSE, s.schedule) == (DENSE, None)
    stop = stop_index(DENSE, s)
    assert (computed_tokens(DENSE, stop, s) == DENSE.computed[DENSE.rows, stop]).all()


def test_sparser_schedule_computes_fewer_probe_tokens():
    s1, s4 = Setting.make("consistency", k=2), Setting.make("consistency", k=2, schedule={"every": 4})
    o4 = replay(DENSE, s4)
    # at the same stops, the sparse schedule paid for fewer probes
    assert (computed_tokens(DENSE, o4.stop, s4) <= computed_tokens(DENSE, o4.stop, s1)).all()
    keep = schedule_mask(DENSE, {"every": 4})
    assert keep.sum() < DENSE.valid.sum()
    assert keep[DENSE.rows, DENSE.final_idx].all()


def test_confidence_at_transitions_only_probes_there_only():
    """A rule that reads transition checkpoints only probes nowhere else: the same stops, fewer probes."""
    only = Setting.make("confidence", tau=0.5, transition_only=True)
    assert only.sched["every"] == 0 and not only.sched["at_steps"] and only.sched["at_transitions"]
    o = replay(DENSE, only)
    fires = only.policy.fires(DENSE, only.params) & DENSE.valid            # the rule on every checkpoint
    first = np.where(fires.any(axis=1), fires.argmax(axis=1), DENSE.final_idx)
    assert (o.stop == first).all()                                        # the same stops
    every = DENSE.valid & ~DENSE.is_final
    charged_everywhere = DENSE.pos[DENSE.rows, o.stop] + np.cumsum(np.where(every, DENSE.probe_tokens, 0),
                                                                     axis=1)[DENSE.rows, o.stop]
    assert (o.computed <= charged_everywhere).all() and (o.computed < charged_everywhere).any()


def test_a_budget_is_charged_no_probes():
    o = replay(DENSE, Setting.make("budget", B=150))
    assert (o.computed == o.emitted).all()
    # a hybrid whose parts read trial answers is charged them
    h = replay(DENSE, Setting.make("hybrid"))
    assert (h.computed >= h.emitted).all() and (h.computed > h.emitted).any()


def test_consistency_counts_probed_answers_only():
    # answers 7,8,7,8,7 at 32..160; every 2x probes 64,128 (8, 8): two agreeing probed answers
    t = checkpoint_table([[{"pos": 32 * (j + 1), "answer_norm": a} for j, a in enumerate(["7", "8", "7", "8", "7", "7"])]])
    t.interval = 32
    assert stop_index(t, Setting.make("consistency", k=2))[0] == 5
    assert stop_index(t, Setting.make("consistency", k=2, schedule={"every": 2}))[0] == 3


def test_schedule_validation_and_presets():
    s = Setting.make("confidence", tau=0.9, schedule={"every": 2, "at_steps": True})
    assert s.schedule == {"every": 2} and s.to_dict()["schedule"] == {"every": 2}
    assert "every 2x" in s.label()
    assert Setting.make("confidence").to_dict().keys() == {"family", "params"}     # old keys unchanged
    for bad, field in (({"every": 3}, "every"), ({"every": True}, "every"), ({"often": 1}, "schedule"),
                       ({"min_tokens": -1}, "min_tokens"), ("dense", "schedule")):
        with pytest.raises(PresetError) as e:
            Setting.from_dict({"family": "budget", "params": {}, "schedule": bad})
        assert field in (e.value.field or "")
    with pytest.raises(PresetError, match="hybrid's schedule"):
        Setting.make("hybrid", a={"family": "confidence", "params": {}, "schedule": {"every": 2}})
    # a preset carries it; an old preset without one means every checkpoint
    p = from_setting(s, "sparse")
    assert from_dict(p.to_dict()).setting == s
    old = from_dict({"stopline_preset": 1, "name": "old", "setting": {"family": "confidence", "params": {"tau": 0.9}}})
    assert old.setting.sched == SCHEDULE_DEFAULTS
    o = preset_outcome(DENSE, p)
    r = replay(DENSE, s)
    assert (o.stop == r.stop).all() and np.allclose(o.computed, r.computed)


def test_schedule_grid_comes_from_the_declaration():
    g = schedule_grid()
    assert g[0] == {} and {"every": 2} in g and len(g) <= 4


def test_sweeps_include_a_few_sparser_schedules_for_families_that_probe():
    from analysis.evaluate.frontier import settings_for, sweep
    t = DENSE
    for fam in ("consistency", "confidence", "entropy", "hybrid"):
        sets = settings_for(t, fam)
        scheds = {json.dumps(s.schedule, sort_keys=True) for s in sets}
        assert scheds == {"{}", '{"every": 2}', '{"every": 4}'}, fam
        dense = [s for s in sets if not s.schedule]
        assert len(sets) - len(dense) <= 2 * (len(dense) // 6 + 1)
    assert all(not s.schedule for s in settings_for(t, "budget"))       # it probes nowhere
    assert all(not s.schedule for s in settings_for(t, "learned"))      # refitted per schedule: not swept
    pts = sweep(t, ["budget", "consistency"])
    assert set(pts["schedule"]) == {"every checkpoint", "probes every 2x", "probes every 4x", ""}
    b = pts[pts.family == "budget"]
    assert (b["computed"] == b["emitted"]).all()                         # a budget is charged no probes
    # a sparse point is its setting's replay (its schedule's probes only)
    from analysis.evaluate.frontier import setting_of
    for _, row in pts[pts.schedule == "probes every 4x"].head(3).iterrows():
        o = replay(t, setting_of(row))
        assert np.isclose(o.computed.mean(), row["computed"]) and np.isclose(o.em.mean(), row["em"])


def test_perturbed_copies_keep_the_interval():
    from analysis.evaluate.robustness import perturb
    t = rows_of(REC, EVERY, True, True)
    t.interval = 7
    noise = {"answers_differ": 0.0, "signals": {}}
    assert perturb(t, noise, np.random.default_rng(0)).interval == 7


def test_a_table_keeps_a_bounded_number_of_packed_schedules():
    from analysis.replay.engine import MAX_SCHEDULES
    t = rows_of(REC, EVERY, True, True)
    for floor in range(0, 32 * (MAX_SCHEDULES + 4), 32):
        stop_index(t, Setting.make("consistency", k=2, schedule={"every": 2, "min_tokens": floor}))
    assert sum(1 for k in t.cache if isinstance(k, tuple) and k[0] == "seen") <= MAX_SCHEDULES
    assert len(t.cache["_schedules"]) <= MAX_SCHEDULES


def test_a_schedule_of_one_kind_of_checkpoint_is_named_so():
    from analysis.replay.policies.base import describe_schedule
    assert describe_schedule({"every": 0, "at_steps": False}) == "probes at transition words only"
    assert describe_schedule({"every": 0, "at_transitions": False, "min_tokens": 64}) == "probes at steps only, from 64 tokens"
    assert describe_schedule({"every": 2, "at_steps": False}) == "probes every 2x, not at steps"
    assert describe_schedule({}) == ""
