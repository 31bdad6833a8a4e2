"""Learned stopper (LearnStop-style): a classifier's P(trial answer correct) >= tau.

Features at checkpoint j use checkpoints 0..j only: the answer's token probabilities and the after-cue
entropy (when the run has them), how long the current answer has been stable, its vote share among the
trial answers so far, the position, and the density of backtracking (transition) words so far.

Cross-fitting: questions are split into folds; each question's probabilities come from a model trained on
the other folds, so no question is decided by a model that saw it. Probabilities are cached per feature
set, so sweeping tau costs one comparison.
"""
from __future__ import annotations

import numpy as np

from analysis.replay.policies.base import Param, Policy, register

TEXT_FEATURES = ("log_pos", "stable_run", "stable_share", "vote_share", "backtrack_density", "has_answer")
SIGNAL_FEATURES = ("p_mean", "p_geo", "p_min", "p_first", "entropy")
MAX_TRAIN_ROWS = 200_000


def feature_names(which: str) -> tuple[str, ...]:
    return {"text": TEXT_FEATURES, "signals": SIGNAL_FEATURES + ("has_answer",),
            "all": SIGNAL_FEATURES + TEXT_FEATURES}[which]


def resolve_features(t, which: str) -> str:
    if which == "auto":
        return "all" if t.has_signal("p_mean") and t.has_signal("entropy") else "text"
    return which


def features(t, which: str) -> np.ndarray:
    """(n, m, f) feature array; each column j is computed from checkpoints 0..j."""
    j = np.arange(t.m)[None, :] + 1.0
    rl = t.run_length().astype(np.float64)
    f = {
        "log_pos": np.log1p(t.pos),
        "stable_run": rl,
        "stable_share": rl / j,
        "vote_share": t.votes() / j,
        "backtrack_density": np.cumsum(t.is_transition, axis=1) / j,
        "has_answer": (t.ans >= 0).astype(np.float64),
    }
    for s in SIGNAL_FEATURES:
        f[s] = np.nan_to_num(getattr(t, s), nan=0.0)
    return np.stack([f[k] for k in feature_names(which)], axis=-1)


def make_model(kind: str):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if kind == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=0)
    from sklearn.linear_model import LogisticRegression
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))


def fold_of(t, n_folds: int, seed: int = 0) -> np.ndarray:
    """Question -> fold, from a seeded permutation: the cross-fitting split."""
    rng = np.random.default_rng(seed)
    return rng.permutation(t.n) % n_folds


def cross_fit(t, which: str, model: str = "logistic", n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(correct) for every checkpoint, (n, m); cached on the table."""
    which = resolve_features(t, which)
    key = ("learned", which, model, n_folds, seed)
    if key in t.cache:
        return t.cache[key]
    X = features(t, which)
    y = t.em > 0.5
    fold = fold_of(t, n_folds, seed)
    proba = np.zeros((t.n, t.m))
    rng = np.random.default_rng(seed)
    for k in range(n_folds):
        train_q, test_q = fold != k, fold == k
        if not test_q.any():          # fewer questions than folds
            continue
        mask = t.valid & train_q[:, None]
        Xtr, ytr = X[mask], y[mask]
        if len(ytr) > MAX_TRAIN_ROWS:
            pick = rng.choice(len(ytr), MAX_TRAIN_ROWS, replace=False)
            Xtr, ytr = Xtr[pick], ytr[pick]
        if len(ytr) == 0 or ytr.all() or not ytr.any():
            proba[test_q] = float(ytr.mean()) if len(ytr) else 0.0
            continue
        clf = make_model(model).fit(Xtr, ytr)
        Xte = X[test_q].reshape(-1, X.shape[-1])
        proba[test_q] = clf.predict_proba(Xte)[:, 1].reshape(int(test_q.sum()), t.m)
    t.cache[key] = proba
    return proba


@register
class Learned(Policy):
    name = "learned"
    label = "Learned stopper"
    description = ("A classifier predicts, at each checkpoint, the chance that the trial answer is right; stop "
                   "when it reaches tau. Cross-fitted: a question is decided by a model trained on other questions.")
    source = "LearnStop; probing for answer correctness"
    requires = ()                    # features='auto' uses the signals when the run has them
    deployable = False
    undeployable_because = "its classifier is cross-fitted per question in replay; export is not built yet"
    sweep_schedules = False          # its classifiers are refitted per schedule: seconds each on a large run
    params = (
        Param("tau", "float", 0.8, "stop when P(trial answer correct) reaches this", low=0.0, high=1.0,
              grid=tuple(round(x, 2) for x in np.linspace(0.3, 0.98, 21))),
        Param("features", "choice", "auto", "feature set: signals (probabilities, entropy), text (stability, "
              "votes, position, backtracking), all, or auto (all when the run has signals)",
              choices=("auto", "all", "signals", "text"), grid=("auto",)),
        Param("model", "choice", "logistic", "classifier", choices=("logistic", "boosting"), grid=("logistic",)),
    )

    @classmethod
    def required_signals(cls, params):
        return () if params["features"] in ("auto", "text") else ("p_mean", "entropy")

    @classmethod
    def fires(cls, t, params):
        p = cross_fit(t, params["features"], params["model"])
        return (p >= params["tau"]) & t.has_answer
