"""Learned stopper (LearnStop-style): a classifier's P(trial answer correct) >= tau.

Features at checkpoint j use checkpoints 0..j only: the answer's token probabilities and the after-cue
entropy (when the run has them), how long the current answer has been stable, its vote share among the
trial answers so far, the position, and the density of backtracking (transition) words so far.

Cross-fitting: questions are split into folds; each question's probabilities come from a model trained on
the other folds, so no question is decided by a model that saw it. Probabilities are cached per feature
set, so sweeping tau costs one comparison.

Deploying: ``export_model`` fits the logistic model on a whole run and writes it as plain JSON (feature names,
the scaler's means and scales, the coefficients and the intercept; no pickle), carried by the setting's
``export`` parameter inside the preset. A setting with an export is decided by that model alone, in replay and
in the live controller alike (the same ``fires``, so their decisions agree exactly); tau is its threshold.
"""
from __future__ import annotations

import math

import numpy as np

from analysis.core.errors import PresetError, StoplineError, brief
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
    return feature_matrix(t, feature_names(which))


def feature_matrix(t, names) -> np.ndarray:
    """(n, m, f) array of the named features, in that order."""
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
    return np.stack([f[k] for k in names], axis=-1)


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


# --- the exported model: plain JSON a preset carries ---------------------------------------------------------
EXPORT_FORMAT = "stopline-logistic/1"
_EXPORT_KEYS = {"format", "features", "mean", "scale", "coef", "intercept", "sklearn", "trained_on", "label"}
ALL_FEATURES = SIGNAL_FEATURES + TEXT_FEATURES


def _numbers(v, n: int, where: str, positive: bool = False) -> list[float]:
    if not isinstance(v, list) or len(v) != n:
        raise PresetError(f"must be a list of {n} numbers (one per feature), got {brief(v)}", field=where)
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or (positive and x <= 0):
            raise PresetError(f"must be a {'positive ' if positive else ''}finite number, got {brief(x)}",
                              field=f"{where}[{i}]")
    return [float(x) for x in v]


def validate_export(d, where: str = "export") -> dict:
    """An exported logistic model: checked field by field (a PresetError names the one that is wrong)."""
    if not isinstance(d, dict):
        raise PresetError(f"must be an exported model (an object), got {type(d).__name__}", field=where)
    unknown = sorted(map(str, set(d) - _EXPORT_KEYS))
    if unknown:
        raise PresetError(f"unknown key {unknown[0][:80]!r} (known: {', '.join(sorted(_EXPORT_KEYS))})", field=where)
    if d.get("format") != EXPORT_FORMAT:
        raise PresetError(f"must be {EXPORT_FORMAT!r}, got {brief(d.get('format'))}", field=f"{where}.format")
    names = d.get("features")
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        raise PresetError(f"must be a non-empty list of feature names, got {brief(names)}", field=f"{where}.features")
    bad = [x for x in names if x not in ALL_FEATURES]
    if bad or len(set(names)) != len(names):
        raise PresetError(f"unknown or repeated feature {brief(bad[0] if bad else names)} (known: "
                          f"{', '.join(ALL_FEATURES)})", field=f"{where}.features")
    k = len(names)
    out = {"format": EXPORT_FORMAT, "features": list(names), "mean": _numbers(d.get("mean"), k, f"{where}.mean"),
           "scale": _numbers(d.get("scale"), k, f"{where}.scale", positive=True),
           "coef": _numbers(d.get("coef"), k, f"{where}.coef")}
    b = d.get("intercept")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        raise PresetError(f"must be a finite number, got {brief(b)}", field=f"{where}.intercept")
    out["intercept"] = float(b)
    for key in ("sklearn", "label"):
        if key in d:
            if not isinstance(d[key], str) or len(d[key]) > 200:
                raise PresetError("must be a short string", field=f"{where}.{key}")
            out[key] = d[key]
    if "trained_on" in d:
        if not isinstance(d["trained_on"], dict) or len(str(d["trained_on"])) > 2000:
            raise PresetError("must be a small object", field=f"{where}.trained_on")
        out["trained_on"] = d["trained_on"]
    return out


def export_logit(t, export: dict) -> np.ndarray:
    """(n, m) log-odds of "the trial answer is right" from an exported model: elementwise, in the features'
    order, so a checkpoint's value does not depend on how many others the table holds (replay == live)."""
    X = feature_matrix(t, export["features"])
    z = np.full(X.shape[:2], export["intercept"])
    for k in range(X.shape[-1]):
        z = z + export["coef"][k] * ((X[..., k] - export["mean"][k]) / export["scale"][k])
    return z


def export_proba(t, export: dict) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-export_logit(t, export)))


def _logit(tau: float) -> float:
    return -math.inf if tau <= 0 else math.inf if tau >= 1 else math.log(tau / (1 - tau))


def export_model(t, which: str = "auto", schedule: dict | None = None, seed: int = 0) -> dict:
    """Fit the logistic model on every question of run ``t`` (on the checkpoints ``schedule`` keeps) and return
    it as plain JSON (``validate_export``'s format). Not cross-fitted: it is meant for new questions; replaying
    it on ``t`` itself is in-sample (the cross-fitted replay is the honest estimate of what it does)."""
    import sklearn
    from analysis.replay.engine import scheduled
    seen = scheduled(t, schedule or {})[0]
    which = resolve_features(seen, which)
    names = feature_names(which)
    X, y = features(seen, which)[seen.valid], (seen.em > 0.5)[seen.valid]
    if len(y) > MAX_TRAIN_ROWS:
        pick = np.random.default_rng(seed).choice(len(y), MAX_TRAIN_ROWS, replace=False)
        X, y = X[pick], y[pick]
    if len(y) == 0 or y.all() or not y.any():
        raise StoplineError(f"run {t.run_id or '(this run)'} has {'no checkpoints' if not len(y) else 'only one class'}"
                            " of trial answers (all right or all wrong): no classifier to export")
    pipe = make_model("logistic").fit(X, y)
    scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
    return validate_export({
        "format": EXPORT_FORMAT, "features": list(names), "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(), "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]),
        "sklearn": sklearn.__version__, "label": f"logistic/{which}",
        "trained_on": {"run": str(t.run_id), "questions": int(t.n), "rows": int(len(y)), "seed": seed}})


@register
class Learned(Policy):
    name = "learned"
    label = "Learned stopper"
    description = ("A classifier predicts, at each checkpoint, the chance that the trial answer is right; stop "
                   "when it reaches tau. Cross-fitted: a question is decided by a model trained on other questions.")
    source = "LearnStop; probing for answer correctness"
    requires = ()                    # features='auto' uses the signals when the run has them
    deployable = False               # its grid's settings are cross-fitted; an exported one deploys (deploy_problem)
    undeployable_because = ("its classifier is cross-fitted per question in replay: export it first "
                            "(python -m analysis export-learned)")
    sweep_schedules = False          # its classifiers are refitted per schedule: seconds each on a large run
    params = (
        Param("tau", "float", 0.8, "stop when P(trial answer correct) reaches this", low=0.0, high=1.0,
              grid=tuple(round(x, 2) for x in np.linspace(0.3, 0.98, 21))),
        Param("features", "choice", "auto", "feature set: signals (probabilities, entropy), text (stability, "
              "votes, position, backtracking), all, or auto (all when the run has signals)",
              choices=("auto", "all", "signals", "text"), grid=("auto",)),
        Param("model", "choice", "logistic", "classifier", choices=("logistic", "boosting"), grid=("logistic",)),
        Param("export", "object", None, "an exported logistic model (plain JSON: features, means, scales, "
              "coefficients, intercept); when given it decides alone, in replay and live", check=validate_export,
              label="exported model"),
    )

    @classmethod
    def check(cls, params, where):
        ex = params.get("export")
        if ex is None:
            return
        if params["model"] != "logistic":
            raise PresetError("an exported model is logistic", field=f"{where}.model")
        if params["features"] != "auto" and list(feature_names(params["features"])) != ex["features"]:
            raise PresetError(f"is {params['features']!r} but the exported model reads {', '.join(ex['features'])} "
                              "(use 'auto' with an export)", field=f"{where}.features")

    @classmethod
    def required_signals(cls, params):
        if params.get("export"):
            return tuple(f for f in params["export"]["features"] if f in SIGNAL_FEATURES)
        return () if params["features"] in ("auto", "text") else ("p_mean", "entropy")

    @classmethod
    def deploy_problem(cls, params):
        return None if params.get("export") else cls.undeployable_because

    @classmethod
    def fires(cls, t, params):
        if params.get("export"):
            return (export_logit(t, params["export"]) >= _logit(params["tau"])) & t.has_answer
        p = cross_fit(t, params["features"], params["model"])
        return (p >= params["tau"]) & t.has_answer
