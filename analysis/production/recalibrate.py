"""The closed loop: re-certify the deployed preset on fresh labelled exploration traffic.

The exploration share of a preset's routing (``routing.explore``) runs requests to full length and logs every
checkpoint; once labelled (late labels: the gold answer), they are a small run drawn like today's traffic.
``recalibrate`` certifies on that run (analysis/evaluate/certify.py: "risk ≤ ε with probability ≥ 1 − δ" on
questions drawn like these), and applies the result only when it certifies:

- nothing certifies: the champion stays, and the answer says how many labelled requests would be needed;
- a move toward *more* tokens (more conservative) is always allowed: safety first;
- a move toward fewer tokens within the champion's family is limited to the family's declared
  ``recalibrate_step`` (policies/base.py; ``step`` overrides it per family) positions along the family's order (least to most aggressive) past the champion's place in it, so one batch of data cannot
  swing production far; settings of other families are taken when certified (their certificate is the
  same statement);
- the new preset keeps the champion's routing (exploration share, rules, A/B) and carries its certificate,
  with the data it was certified on (the log and labels files, the requests' ids and a hash of them).

Every attempt is appended to a history file (JSON lines), applied or not, so every version is kept with its
certificate, and the Monitor page draws the history (setting, promised bound, observed EM drop, tokens).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from analysis.core.errors import StoplineError
from analysis.evaluate.certify import (ORDER_SHARE, certifiable_families, certify_losses, family_order, losses,
                                       order_mask)
from analysis.presets.routing import preset_stops
from analysis.presets.schema import Preset, from_dict
from analysis.production.monitor import (_champion_only, _labelled, explore_rows, explore_table, read_labels,
                                         read_log)
from analysis.replay.policies import deployable_families, get_family

MIN_CERTIFY = 30          # labelled exploration requests below which no certificate is attempted
DEFAULT_HISTORY = "data/history/preset-versions.jsonl"   # not in data/logs: the Monitor lists logs there


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def observed(t, preset) -> dict:
    """The preset's champion replayed on the labelled exploration requests: EM drop and tokens."""
    stop = preset_stops(t, _champion_only(preset))
    r = t.rows
    right, full_right = t.em[r, stop] > 0.5, t.full_em > 0.5
    lost, gained = int((full_right & ~right).sum()), int((~full_right & right).sum())
    tokens = float(t.emitted[r, stop].mean())
    full = float(t.full_tokens.mean()) or 1.0
    return {"n": int(t.n), "em_drop": (lost - gained) / t.n, "lost_share": lost / t.n, "tokens": tokens,
            "tokens_full": full, "savings": 1 - tokens / full}


def history_records(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "version" in rec:
                out.append(rec)
    return out


def _append(path, rec: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def record_deployed(history, preset: Preset, note: str = "deployed") -> int:
    """Append a preset deployed by hand (a certified one from ``certify --save``) to the history as an applied
    version; returns its number. Rollback returns to such versions when they carry a certificate."""
    prev = history_records(history)
    v = max((r["version"] for r in prev), default=-1) + 1
    _append(history, {"version": v, "time": _now(), "applied": True, "preset": preset.to_dict(),
                      "setting": preset.setting.label(), "note": note,
                      "certificate": preset.certificate, "epsilon": (preset.certificate or {}).get("epsilon"),
                      "delta": (preset.certificate or {}).get("delta")})
    return v


def recalibrate(logs, labels, preset: Preset, epsilon: float, delta: float, risk: str = "drop",
                families: list[str] | None = None, cost: str = "emitted", order_share: float = ORDER_SHARE,
                step: dict | None = None, history: str | None = None) -> dict:
    """Certify on the labelled exploration requests of ``logs``; returns the outcome, with ``preset`` (the
    preset to deploy: the new one when applied, the champion otherwise) and ``applied``."""
    logs = [logs] if isinstance(logs, (str, Path)) else list(logs)
    labels = [labels] if isinstance(labels, (str, Path)) else list(labels or [])
    header, ck, fin = read_log(logs)
    answer_type = header.get("answer_type", "number")
    fin = _labelled(fin, read_labels(labels) if labels else None, answer_type)
    # requests an applied version was certified on are spent: a new certificate must rest on new ones
    spent = fin["request"].astype(str).isin(used_requests(history)).to_numpy()
    t = explore_table(ck, fin[~spent], answer_type)
    n = 0 if t is None else t.n
    n_spent = len(explore_rows(fin[spent]))
    out: dict = {"time": _now(), "epsilon": epsilon, "delta": delta, "risk": risk, "n_explore": n,
                 "n_already_used": n_spent, "champion": preset.setting.label(), "applied": False,
                 "preset": preset.to_dict(), "champion_preset": preset.to_dict(),
                 "data": {"logs": [str(p) for p in logs], "labels": [str(p) for p in labels]}}
    if n < MIN_CERTIFY:
        vs = used_by(history, fin[spent])
        had = (f"the log has {n} new ones" + (f" ({n_spent} more were used by the certificate{'s' * (len(vs) > 1)} "
                                              f"of version{'s' * (len(vs) > 1)} {', '.join(map(str, vs))} already)"
                                              if n_spent else ""))
        out["reason"] = (f"not applied: a certificate needs at least {MIN_CERTIFY} labelled exploration requests "
                         f"(full length, every checkpoint logged, with a gold answer) that no earlier certificate "
                         f"used; {had}: {MIN_CERTIFY - n} more. Raise routing.explore or add labels. "
                         f"{_kept(preset)}")
        return _record(out, history)
    ids = sorted(str(q) for q in t.question_ids)
    out["data"].update({"requests": ids, "sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest()})
    out["observed"] = observed(t, preset)
    fams = families or [f for f in certifiable_families(t) if f in deployable_families()]
    L = losses(t, fams, cost)
    ordering = order_mask(t.question_ids, order_share)
    steps = {f: get_family(f).recalibrate_step for f in fams} | (step or {})
    champ = preset.setting
    keys = [s.key() for s in L.settings]
    limited = {}

    def allowed(certified: dict[str, list[int]]) -> list[int]:
        ok = []
        for fam, idx in certified.items():
            if fam != champ.family or not idx:
                ok += idx
                continue
            order = family_order(L, fam, ordering, risk)
            if champ.key() in keys and keys.index(champ.key()) in order:
                here = order.index(keys.index(champ.key()))
            else:       # not in the grid: its place by tokens on the fresh data
                c_tok = out["observed"]["tokens"]
                here = int(np.sum(L.cost[order].mean(axis=1) >= c_tok)) - 1
            cap = max(here, -1) + steps[fam]
            keep = [i for i in idx if order.index(i) <= cap]
            if len(keep) < len(idx):
                limited[fam] = {"step": steps[fam], "held_back": len(idx) - len(keep)}
            ok += keep
        return ok
    cert = certify_losses(L, ordering, epsilon, delta, risk, choose=allowed)
    cert.update({"run": "explore", "cost": cost, "order_share": order_share})
    out["certificate"] = cert
    if limited:
        out["step_limited"] = limited
    if not cert["certified"]:
        out["reason"] = _nothing_certified(cert, out["observed"], preset, n)
        return _record(out, history)
    from analysis.replay.policies.base import Setting
    new = Setting.from_dict(cert["setting"])
    if new.key() == champ.key():
        out.update({"unchanged": True, "setting": new.label(), "reason": (
            f"no change: the setting certified on these {n} requests, {new.label()}, is the deployed one; the "
            "deployed preset stays as it is and no new version is written. " + cert["message"])})
        return _record(out, history)
    kept = {k: v for k, v in cert.items() if k != "families"}
    kept["data"] = {"logs": out["data"]["logs"], "labels": out["data"]["labels"], "sha1": out["data"]["sha1"],
                    "n": n}
    p2 = replace(preset, name=f"recalibrated ε={epsilon:g} δ={delta:g}: {new.label()}"[:200], setting=new,
                 certificate=kept)
    from_dict(p2.to_dict())            # what is written must load
    out.update({"applied": True, "preset": p2.to_dict(), "setting": new.label(),
                "direction": ("more conservative" if cert["tokens"] > out["observed"]["tokens"] + 1e-9 else
                              "more aggressive" if cert["tokens"] < out["observed"]["tokens"] - 1e-9 else "same tokens"),
                "reason": cert["message"]})
    return _record(out, history)


def used_requests(history) -> set[str]:
    """The request ids the applied versions of ``history`` were certified on (spent for a new certificate)."""
    recs = history_records(history) if history else []
    return {str(r) for rec in recs if rec.get("applied") and not rec.get("rollback")
            for r in (rec.get("data") or {}).get("requests") or []}


def used_by(history, fin) -> list[int]:
    """The applied versions of ``history`` whose certificates used any of ``fin``'s requests."""
    ids = set(fin["request"].astype(str))
    recs = history_records(history) if history else []
    return [rec["version"] for rec in recs if rec.get("applied") and not rec.get("rollback")
            and ids & {str(r) for r in (rec.get("data") or {}).get("requests") or []}]


def _kept(preset: Preset) -> str:
    """What stays deployed when nothing is applied, and on what footing."""
    if preset.certificate:
        return (f"The deployed preset ({preset.setting.label()}) stays as it is, with its certificate from earlier "
                "requests; `recalibrate --rollback` tests whether that still holds on the requests it served.")
    return (f"The deployed preset ({preset.setting.label()}) stays as it is, and it carries no certificate: nothing "
            "bounds its EM drop on this traffic.")


def _nothing_certified(cert: dict, observed: dict, preset: Preset, n: int) -> str:
    """Not applied, in words: what was found, what stays deployed, and what to do."""
    what = "EM drop" if cert.get("risk", "drop") == "drop" else "share of questions lost"
    if cert.get("held_back"):
        found = ("every certified setting is more aggressive than one step from the deployed one allows (the step "
                 "limit holds them back)")
    else:
        found = (f"no setting's {what} is provably at most ε = {cert['epsilon']:g} with probability "
                 f"{1 - cert['delta']:.0%} on these {n} labelled exploration requests")
    words = [f"not applied: {found}.", _kept(preset),
             f"On these requests it drops {observed['em_drop']:+.3f} EM against full length ({observed['tokens']:.0f} "
             f"tokens against {observed['tokens_full']:.0f})."]
    if cert.get("held_back"):
        words.append("Run recalibrate again on the next requests: each step may move it further.")
    elif cert.get("n_needed"):
        more = max(cert["n_needed"] - n, 1)
        words.append(f"About {cert['n_needed']} labelled exploration requests ({more} more) would certify "
                     f"{cert['n_needed_setting']} if its observed rates held: raise routing.explore or add labels, "
                     "then run recalibrate again.")
    else:
        words.append("More requests would not help: the least aggressive settings already lose more than ε on "
                     "these; only a larger ε would certify one.")
    drop = observed["em_drop"] if cert.get("risk", "drop") == "drop" else observed["lost_share"]
    if drop > cert["epsilon"]:
        words.append(f"Its observed {what} is above ε: if production must stay within ε meanwhile, serve full length "
                     "until a setting certifies (a preset that never stops, such as budget B=32768, keeping "
                     "routing.explore so the data keeps coming).")
    else:
        words.append(f"Its observed {what} is within ε on these requests: an estimate, not a guarantee.")
    return " ".join(words)


def _record(out: dict, history: str | None) -> dict:
    if history:
        prev = history_records(history)
        if not prev:       # the first version: the champion as it was deployed
            _append(history, {"version": 0, "time": out["time"], "applied": True, "preset": out["champion_preset"],
                              "setting": out["champion"],
                              "note": "the deployed preset before the first recalibration"})
            prev = history_records(history)
        rec = {"version": max(r["version"] for r in prev) + 1, "time": out["time"], "applied": out["applied"],
               "setting": out.get("setting", out["champion"]), "champion": out["champion"],
               "epsilon": out["epsilon"], "delta": out["delta"], "risk": out["risk"], "n_explore": out["n_explore"],
               "observed": out.get("observed"), "reason": out.get("reason", ""), "data": {
                   k: v for k, v in out["data"].items()},
               "certificate": {k: v for k, v in (out.get("certificate") or {}).items() if k != "families"} or None,
               "preset": out["preset"] if out["applied"] else None}
        _append(history, rec)
        out["version"] = rec["version"]
        out["history"] = str(history)
    return out
