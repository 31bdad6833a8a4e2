"""Hand-built cases where the right stop is known, for each family; cross-fitting of the learned stopper."""
import numpy as np
import pytest

from analysis.core.errors import MissingSignal, PresetError
from analysis.replay.policies import Setting, available_families, deployable_families, families, get_family
from analysis.replay.policies.learned import cross_fit, fold_of
from analysis.replay.engine import RunTable, full_length, replay, stop_index
from tests.helpers import checkpoint_table


table = checkpoint_table       # questions: lists of checkpoint dicts (pos, answer_norm, em, ...)


TRACE = [  # answers settle on "7" (right) at checkpoint 2, drift to "8" (wrong) at the end
    {"pos": 32, "answer_norm": "", "em": 0.0, "p_mean": 0.2, "entropy": 2.0},
    {"pos": 64, "answer_norm": "5", "em": 0.0, "p_mean": 0.6, "entropy": 1.0},
    {"pos": 96, "answer_norm": "7", "em": 1.0, "p_mean": 0.97, "entropy": 0.50, "is_transition": True},
    {"pos": 128, "answer_norm": "7", "em": 1.0, "p_mean": 0.90, "entropy": 0.50},
    {"pos": 160, "answer_norm": "7", "em": 1.0, "p_mean": 0.99, "entropy": 0.50},
    {"pos": 192, "answer_norm": "8", "em": 0.0, "p_mean": 0.99, "entropy": 0.50},
]


@pytest.mark.parametrize("setting,stop", [
    (Setting.make("budget", B=100), 3),          # first checkpoint at or past 100 tokens is 128
    (Setting.make("budget", B=96), 2),
    (Setting.make("budget", B=10_000), 5),        # never fires: full length
    (Setting.make("consistency", k=2), 3),        # "7","7" at checkpoints 2,3
    (Setting.make("consistency", k=3), 4),
    (Setting.make("consistency", k=4), 5),        # never: full length
    (Setting.make("consistency", k=2, min_tokens=150), 4),
    (Setting.make("confidence", tau=0.95), 2),
    (Setting.make("confidence", tau=0.98), 4),
    (Setting.make("confidence", tau=0.95, transition_only=True), 2),
    (Setting.make("confidence", tau=0.98, transition_only=True), 5),
    (Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.95}},
                  b={"family": "consistency", "params": {"k": 3}}, op="and"), 4),
    (Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.999}},
                  b={"family": "consistency", "params": {"k": 9}}, op="or", cap=150), 4),
    (Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.95}},
                  b={"family": "consistency", "params": {"k": 2}}, op="or", floor=120), 3),
])
def test_known_stops(setting, stop):
    t = table([TRACE])
    assert int(stop_index(t, setting)[0]) == stop


def test_entropy_stops_when_variance_settles():
    h = [2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    t = table([[{"pos": 32 * (i + 1), "answer_norm": "1", "em": 1.0, "entropy": v} for i, v in enumerate(h)]])
    # EMA variance with alpha=0.5: 0, .25, .375, .25, .14, .074, .038: first under 0.05 at checkpoint 6
    var = 0.0
    mean = h[0]
    expected = None
    for j, x in enumerate(h):
        if j:
            d = x - mean
            mean += 0.5 * d
            var = 0.5 * (var + 0.5 * d * d)
        if var < 0.05 and j + 1 >= 2 and expected is None:
            expected = j
    assert int(stop_index(t, Setting.make("entropy", alpha=0.5, delta=0.05, min_steps=2))[0]) == expected == 6


def test_a_missing_entropy_never_fires_the_entropy_rule():
    """A NaN entropy was read as 0: a question without entropies 'settled' at once and stopped at min_steps,
    though its full-length answer was the right one; NaNs between entropies jumped the EMA to 0 and back."""
    nan = float("nan")

    def rows(h):        # a new answer at every checkpoint, right only at the end
        return [{"pos": 32 * (i + 1), "answer_norm": str(i), "entropy": v, "em": float(i == len(h) - 1)}
                for i, v in enumerate(h)]
    t = table([rows([nan] * 6), rows([2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),
               rows([2.0, nan, 1.0, nan, 0.5, 0.5, nan, 0.5, 0.5, 0.5, 0.5, 0.5]), rows([1.0, 1.0, nan, nan, 1.0])])
    s = Setting.make("entropy", alpha=0.5, delta=0.05, min_steps=2)
    stops = stop_index(t, s).tolist()
    assert stops[0] == 5                                  # never fires: runs to its end, and keeps its EM
    assert replay(t, s).em[0] == 1.0
    # NaNs leave the EMA as it was: the same stop as without them, at the same entropy (the 7th recorded)
    assert stops[1] == 6 and stops[2] == 9
    mean, var = t.ema_var(0.5)
    assert np.isnan(mean[0]).all() and np.isnan(var[0]).all()
    assert mean[2, 1] == mean[2, 0] == 2.0 and var[2, 3] == var[2, 2] == 0.5 * 0.5 * 1.0
    assert stops[3] == 1                                  # settled at once, and not at the NaNs after it
    assert not any(np.isnan(t.entropy[q, stops[q]]) and stops[q] < t.final_idx[q] for q in range(t.n))


def test_one_entropy_has_no_variance_to_settle():
    """With min_steps=1 the rule fired at every question's first checkpoint: its variance is 0 by construction."""
    h = [2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    t = table([[{"pos": 32 * (i + 1), "answer_norm": "1", "em": 1.0, "entropy": v} for i, v in enumerate(h)]])
    assert int(stop_index(t, Setting.make("entropy", alpha=0.5, delta=0.05, min_steps=1))[0]) == 6
    flat = table([[{"pos": 32 * (i + 1), "answer_norm": "1", "em": 1.0, "entropy": 1.0} for i in range(4)]])
    assert int(stop_index(flat, Setting.make("entropy", alpha=0.5, delta=0.05, min_steps=1))[0]) == 1


def test_outcomes_and_costs():
    t = table([TRACE])
    o = replay(t, Setting.make("confidence", tau=0.95))
    s = o.summary()
    assert s["gained"] == 1 and s["lost"] == 0 and s["em"] == 1.0 and s["em_full"] == 0.0
    assert o.emitted[0] == 96 + 2                        # position + the trial answer's tokens
    assert o.computed[0] == 96 + 3 * 10                  # position + three probes (checkpoints 0..2)
    f = full_length(t)
    assert f.emitted[0] == 192 and f.computed[0] == 192  # the last checkpoint is the model's own answer


def test_text_only_run_says_which_signal_is_missing():
    t = table([[{"pos": 32, "answer_norm": "1", "em": 1.0, "p_mean": None, "p_geo": None, "p_min": None,
                 "p_first": None, "entropy": None}]])
    for fam in ("confidence", "entropy"):
        with pytest.raises(MissingSignal, match=fam):
            stop_index(t, Setting.make(fam))
    stop_index(t, Setting.make("consistency"))  # text-only families work
    stop_index(t, Setting.make("learned"))


def test_families_declare_what_they_can_do():
    """Availability (signals), probes and deployability are declared by each family and read from there."""
    text = table([[{"pos": 32, "answer_norm": "1", "em": 1.0, "p_mean": None, "p_geo": None, "p_min": None,
                    "p_first": None, "entropy": None}]])
    assert available_families(text) == ["budget", "consistency", "learned"]      # a hybrid starts with confidence
    assert available_families(text, nested=True) == ["budget", "consistency", "learned"]
    assert available_families(table([TRACE])) == families()
    assert deployable_families() == [f for f in families() if f != "learned"]
    assert not get_family("learned").deployable and get_family("learned").undeployable_because
    assert not get_family("budget").probes_needed({"B": 64})
    assert get_family("consistency").probes_needed(get_family("consistency").defaults())
    both_budgets = Setting.make("hybrid", a={"family": "budget", "params": {"B": 64}},
                                b={"family": "budget", "params": {"B": 96}})
    assert not both_budgets.policy.probes_needed(both_budgets.params)
    assert Setting.make("hybrid").policy.probes_needed(Setting.make("hybrid").params)
    assert [s.family for s in both_budgets.policy.parts(both_budgets.params)] == ["budget", "budget"]


def test_every_family_declares_parameters_with_help_and_valid_defaults():
    assert set(families()) >= {"budget", "consistency", "confidence", "entropy", "learned", "hybrid"}
    for f in families():
        cls = get_family(f)
        assert cls.description and cls.params
        for p in cls.params:
            assert p.help
        assert Setting.make(f).params == cls.validate({})


def test_out_of_range_parameter_is_a_clear_error():
    with pytest.raises(PresetError, match=r"params.tau.*out of range"):
        Setting.make("confidence", tau=1.5)
    with pytest.raises(PresetError, match="unknown parameter"):
        Setting.make("budget", X=1)


# --- learned: cross-fitting -------------------------------------------------------------------------------
def test_cross_fitting_never_decides_a_question_with_a_model_trained_on_it(synthetic_db):
    from analysis.core.store import Store
    path, rid, _ = synthetic_db
    t = RunTable.from_store(Store(path, read_only=True), rid)
    p = cross_fit(t, "all")
    folds = fold_of(t, 5)
    k = 2
    # Flip the labels of fold k's questions: a cross-fitted model for fold k never saw them, so fold k's
    # probabilities must not move, while every other fold's must.
    t2 = t.subset(np.arange(t.n))
    t2.cache.clear()
    t2.cols["em"] = np.where((folds == k)[:, None], 1.0 - t.em, t.em)
    p2 = cross_fit(t2, "all")
    np.testing.assert_allclose(p2[folds == k], p[folds == k])
    assert not np.allclose(p2[folds != k][t.valid[folds != k]], p[folds != k][t.valid[folds != k]])


def test_learned_stopper_beats_chance(synthetic_db):
    from analysis.core.store import Store
    path, rid, _ = synthetic_db
    t = RunTable.from_store(Store(path, read_only=True), rid)
    p = cross_fit(t, "all")
    y = t.em > 0.5
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y[t.valid], p[t.valid]) > 0.7


def test_learned_stopper_with_fewer_questions_than_folds():
    """Two questions, five folds: the empty folds are skipped (this used to crash the first sweep of an
    imported two-question run)."""
    t = table([TRACE, TRACE[:3]])
    p = cross_fit(t, "all")
    assert p.shape == (2, len(TRACE)) and np.isfinite(p).all()
    stop_index(t, Setting.make("learned", tau=0.5))


def test_budget_starts_where_it_bites():
    """A run's starting budget is 60% of its mean full length, so Tune opens on a setting that stops early
    (the declared 256 lay past every trace of the demo runs)."""
    t = table([TRACE, TRACE[:3]])
    b = get_family("budget").defaults_for(t)["B"]
    assert b == round(0.6 * t.full_tokens.mean()) and b < t.full_tokens.max()
    assert get_family("consistency").defaults_for(t) == get_family("consistency").defaults()
