"""Automatic rollback: when the live exploration traffic shows the deployed version breaking its certificate,
return to the previous certified version.

The certificate promises "risk ≤ ε" (the EM drop, lost − gained per question in [−1, 1], or the lost share in
[0, 1]) on questions drawn like its calibration ones. Each labelled exploration request served under the
deployed version gives one fresh loss x_i of its setting (its shadow stop against full length). Looking at
these after every request and rolling back at the first bad look would fire on noise, so the looks are one
sequential test, valid at any stopping time (Waudby-Smith and Ramdas, "Estimating means of bounded random
variables by betting", 2023):

    K_n = Π_{i ≤ n} (1 + λ_i (x_i − ε)),   λ_i ∈ [0, ½ / (1 + ε)] chosen from x_1..x_{i−1} only.

Under "the mean loss is ≤ ε" K is a nonnegative supermartingale, so by Ville's inequality the chance that it
*ever* reaches 1/α is at most α: rolling back when it does is a one-sided test whose error stays ≤ α however
often the log is looked at. λ_i is the predictable growth-rate (aGRAPA) bet: bold when the losses so far sit
above ε, zero when they sit below. scipy has no anytime-valid test for bounded means; this one is a
few vectorised numpy lines.

``rollback`` reads the version history (recalibrate.py's JSON lines), finds the deployed version, and when the
test fires records a new version: the latest earlier applied version that carries a certificate (one never
rolled back from), with the test's figures and the requests it saw.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis.core.errors import StoplineError
from analysis.presets.routing import preset_stops
from analysis.presets.schema import Preset, from_dict
from analysis.production.monitor import (_champion_only, _labelled, explore_rows, explore_table, read_labels,
                                         read_log)

ALPHA = 0.05
BET_CAP = 0.5          # λ(1 + ε) ≤ this: one request can halve the wealth at most


def log_wealth(x: np.ndarray, epsilon: float, low: float = -1.0) -> np.ndarray:
    """The test's evidence after each request: log K_n, n = 1..len(x), for losses in [low, 1] in arrival order
    (the curve the Monitor page draws; ``sequential_test`` fires where it first reaches log(1/alpha))."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n and (x.min() < low - 1e-12 or x.max() > 1 + 1e-12):
        raise StoplineError(f"losses must lie in [{low:g}, 1]")
    span = epsilon - low                               # the most a loss can fall below epsilon
    cap = BET_CAP / span
    # running estimates from the previous losses only (predictable), started at epsilon with a prior variance
    prior_n, prior_var = 1.0, 0.25
    csum = np.concatenate([[0.0], np.cumsum(x)])[:-1]
    cnt = np.arange(n, dtype=float)
    mu = (prior_n * epsilon + csum) / (prior_n + cnt)
    mu_after = (prior_n * epsilon + np.cumsum(x)) / (prior_n + cnt + 1)
    dev2 = np.concatenate([[0.0], np.cumsum((x - mu_after) ** 2)])[:-1]
    var = (prior_var * prior_n + dev2) / (prior_n + cnt)
    edge = mu - epsilon
    lam = np.clip(edge / (var + edge ** 2), 0.0, cap)
    return np.cumsum(np.log1p(lam * (x - epsilon)))


def sequential_test(x: np.ndarray, epsilon: float, alpha: float = ALPHA, low: float = -1.0) -> dict:
    """One-sided anytime-valid test of "mean(x) ≤ epsilon" for losses in [low, 1], in arrival order.
    Returns whether it rejects (``fired``), at which request (0-based, the first look where the wealth
    reached 1/alpha), the final and the largest log-wealth, and the observed mean."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    logk = log_wealth(x, epsilon, low)
    thr = math.log(1 / alpha)
    hit = np.flatnonzero(logk >= thr)
    return {"fired": bool(len(hit)), "at": int(hit[0]) if len(hit) else None, "n": int(n), "epsilon": float(epsilon),
            "alpha": float(alpha), "log_wealth": float(logk[-1]) if n else 0.0,
            "max_log_wealth": float(logk.max()) if n else 0.0, "threshold": thr,
            "mean": float(x.mean()) if n else float("nan"),
            "test": "betting supermartingale (Waudby-Smith & Ramdas), Ville's inequality: anytime-valid"}


def live_losses(logs, labels, preset: Preset, risk: str | None = None, exclude=()) -> tuple[np.ndarray, list[str]]:
    """The deployed setting's per-request losses on the labelled exploration requests it served (those whose
    logged setting is one of the preset's champion settings), in the order they finished; ``exclude``: request
    ids not to count (the ones the version was certified on)."""
    header, ck, fin = read_log(logs)
    answer_type = header.get("answer_type", "number")
    fin = _labelled(fin, read_labels(labels) if labels else None, answer_type)
    champ = _champion_only(preset)
    keys = {s.key() for s in champ.settings()}
    if "setting" in fin:
        from analysis.replay.policies.base import Setting
        mine = fin["setting"].map(lambda s: isinstance(s, dict) and Setting.from_dict(s).key() in keys)
        fin = fin[mine.astype(bool)]
    fin = fin[~fin["request"].astype(str).isin(set(map(str, exclude)))]
    t = explore_table(ck, fin, answer_type) if len(fin) else None
    if t is None:
        return np.zeros(0), []
    stop = preset_stops(t, champ)
    right, full_right = t.em[t.rows, stop] > 0.5, t.full_em > 0.5
    lost = (full_right & ~right).astype(float)
    loss = lost if (risk or "drop") == "lost" else lost - (~full_right & right)
    at = {str(q): i for i, q in enumerate(t.question_ids)}
    order = [at[r] for r in explore_rows(fin).sort_values("order")["request"].astype(str) if r in at]
    return loss[order], [str(t.question_ids[i]) for i in order]


def _setting_key(preset_dict) -> str | None:
    try:
        return from_dict(preset_dict).setting.key()
    except Exception:       # a damaged history line is skipped, not fatal
        return None


def _versions(recs: list[dict], preset: Preset) -> tuple[dict | None, dict | None]:
    """The history's version of the deployed ``preset`` (the latest applied one with its setting) and the one a
    rollback would return to: the latest earlier applied version that carries a certificate, never one rolled back
    from nor one with a setting rolled back from."""
    mine = preset.setting.key()
    current = next((r for r in reversed(recs) if r.get("applied") and r.get("preset")
                    and _setting_key(r["preset"]) == mine), None)
    left = {r.get("rolled_back_from") for r in recs if r.get("rollback")} | {current["version"] if current else None}
    bad = {_setting_key(r["preset"]) for r in recs if r.get("preset") and r.get("version") in left} | {mine}
    prev = next((r for r in reversed(recs) if r.get("applied") and r.get("preset") and r["version"] not in left
                 and from_dict(r["preset"]).certificate and _setting_key(r["preset"]) not in bad), None)
    return current, prev


def deployed(history, fallback: Preset | None = None) -> Preset | None:
    """The deployed preset: the history's latest applied version that keeps its preset (after a rollback, the
    version returned to), else ``fallback`` (the log's own preset)."""
    from analysis.production.recalibrate import history_records
    recs = history_records(history) if history and Path(history).is_file() else []
    last = next((r for r in reversed(recs) if r.get("applied") and r.get("preset")), None)
    return from_dict(last["preset"]) if last else fallback


def out_of_step(deployed_preset: Preset, log_preset: dict | None, version: int | None = None) -> str | None:
    """When the version history's deployed preset (``version``) runs another setting than the log's gateway ran
    (``log_preset``, the log's preset record or header), what that means for the rollback check, in words; None
    when they agree or the log names no preset. The check tests the history's version on the requests served
    under its setting: in such a log, none or only an older version's."""
    try:
        logged = from_dict(log_preset) if log_preset else None
    except Exception:           # a log whose preset cannot be read: the monitor says so elsewhere
        return None
    if logged is None or logged.setting.key() == deployed_preset.setting.key():
        return None
    v = f"version {version} ({deployed_preset.setting.label()})" if version is not None else \
        deployed_preset.setting.label()
    return (f"The version history deploys {v}, but this log's gateway ran {logged.setting.label()}: the check "
            "below tests the history's version on the requests served under its own setting, so this log's others "
            "are not counted. Reload the gateway with the history's preset (or pick the log of a gateway that runs "
            "it) to hold it to its certificate.")


def _test(logs, labels, preset: Preset, recs: list[dict], alpha: float) -> dict:
    """The sequential test of the certified ``preset`` on the labelled exploration requests it served (those its
    certificate was computed on left out): its ε and risk, the history's current and roll-back versions, the
    losses ``x`` of requests ``ids`` and the ``test``."""
    cert = preset.certificate
    eps, risk = float(cert["epsilon"]), cert.get("risk", "drop")
    risk = risk if risk in ("drop", "lost") else "drop"
    current, prev = _versions(recs, preset)
    certified_on = (current or {}).get("data", {}).get("requests") or []
    x, ids = live_losses(logs, labels, preset, risk, exclude=certified_on)
    test = sequential_test(x, eps, alpha, low=0.0 if risk == "lost" else -1.0)
    return {"eps": eps, "risk": risk, "current": current, "prev": prev, "x": x, "ids": ids, "test": test}


def evidence(logs, labels, preset: Preset, history=None, alpha: float = ALPHA) -> dict:
    """What ``rollback`` would decide now, without writing: the deployed ``preset``'s losses on the labelled
    exploration requests it served, the test's evidence after each (``wealth``: K_n, against ``1 / alpha``), the
    running mean loss against ε, and a plain-words ``verdict``. ``ok`` is False (with ``reason``) when the
    preset carries no certificate."""
    from analysis.production.recalibrate import history_records
    cert = preset.certificate
    if not cert:
        return {"ok": False, "reason": "the deployed preset carries no certificate: there is no bound to hold it to "
                                      "(certify it first: python -m analysis certify --save)"}
    r = _test(logs, labels, preset, history_records(history) if history and Path(history).is_file() else [], alpha)
    eps, risk, current, prev, x, ids, test = (r[k] for k in ("eps", "risk", "current", "prev", "x", "ids", "test"))
    v = f"version {current['version']}" if current else "the deployed preset"
    if not test["n"]:
        verdict = f"no labelled exploration requests served under {v} yet"
    elif not test["fired"]:
        verdict = (f"no evidence of a breach yet: {v}'s evidence is {math.exp(test['log_wealth']):.3g} "
                   f"(it fires at {1 / alpha:g})")
    elif prev is not None:
        verdict = f"breach: would roll back to version {prev['version']} (from {v}, at request {test['at'] + 1})"
    else:
        verdict = f"breach at request {test['at'] + 1}, but no earlier certified version to roll back to: re-certify"
    n = np.arange(1, len(x) + 1)
    return {"ok": True, "version": current["version"] if current else None, "setting": preset.setting.label(),
            "to_version": prev["version"] if prev else None, "risk": risk, "epsilon": eps, "alpha": float(alpha),
            "requests": ids, "n": test["n"], "wealth": np.exp(log_wealth(x, eps, 0.0 if risk == "lost" else -1.0)),
            "running_mean": np.cumsum(x) / n if len(x) else np.zeros(0), "test": test, "verdict": verdict}


def rollback(logs, labels, preset: Preset, history: str, alpha: float = ALPHA) -> dict:
    """Test the deployed ``preset`` against its certificate on the live exploration requests; when the test
    fires, append a rollback version to ``history`` and return it as ``preset`` (``rolled_back``)."""
    from analysis.production.recalibrate import _append, _now, history_records
    cert = preset.certificate
    if not cert:
        raise StoplineError("the deployed preset carries no certificate: there is no bound to hold it to",
                            field="certificate", hint="certify it first (python -m analysis certify --save)")
    recs = history_records(history)
    r = _test(logs, labels, preset, recs, alpha)
    eps, risk, current, prev, ids, test = (r[k] for k in ("eps", "risk", "current", "prev", "ids", "test"))
    out = {"time": _now(), "rolled_back": False, "test": test, "risk": risk, "setting": preset.setting.label(),
           "version": current["version"] if current else None, "preset": preset.to_dict()}
    what = "EM drop" if risk == "drop" else "lost share"
    if not test["n"]:
        v = f"version {current['version']}" if current else "the deployed preset"
        out["reason"] = (f"nothing to test yet: no labelled exploration request served under {v} (its setting, "
                         f"{preset.setting.label()}), less those it was certified on, is in the log")
        return out
    if not test["fired"]:
        out["reason"] = (f"holds: on {test['n']} labelled exploration requests the {what} is {test['mean']:+.3f} "
                         f"against ε = {eps:g}; the sequential test's evidence of a breach is "
                         f"{math.exp(test['max_log_wealth']):.3g} (it fires at {1 / alpha:g})")
        return out
    out["fired_at_request"] = ids[test["at"]]
    breach = (f"the {what} on {test['n']} labelled exploration requests is {test['mean']:+.3f}, above ε = {eps:g}: "
              f"the sequential test fired at request {test['at'] + 1} (evidence {math.exp(test['max_log_wealth']):.3g} "
              f"≥ {1 / alpha:g}; false alarm chance ≤ {alpha:g} however often it is looked at)")
    if prev is None:
        out["reason"] = breach + "; no earlier certified version to roll back to: re-certify (recalibrate) or stop early less"
        return out
    back = from_dict(prev["preset"])
    out.update({"rolled_back": True, "preset": back.to_dict(), "setting": back.setting.label(),
                "to_version": prev["version"], "reason": f"{breach}; rolled back to version {prev['version']}"})
    v = max(r["version"] for r in recs) + 1
    _append(history, {"version": v, "time": out["time"], "applied": True, "rollback": True,
                      "rolled_back_from": current["version"] if current else None, "rolled_back_to": prev["version"],
                      "setting": back.setting.label(), "champion": preset.setting.label(), "risk": risk,
                      "epsilon": eps, "delta": cert.get("delta"), "n_explore": test["n"], "reason": out["reason"],
                      "observed": {"n": test["n"], "em_drop" if risk == "drop" else "lost_share": test["mean"]},
                      "test": test, "data": {"logs": [str(p) for p in _list(logs)], "labels": [str(p) for p in _list(labels)],
                                             "requests": ids},
                      "certificate": back.certificate, "preset": back.to_dict()})
    out["new_version"] = v
    return out


def _list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]
