"""Routing: which setting a request gets, from what is known when it arrives.

A preset's optional ``routing`` block:

    "routing": {
      "rules": [                                  # first match wins, before the preset's slices
        {"if": {"field": "tag.priority", "in": ["high"]}, "setting": {"family": "consistency", "params": {"k": 4}}},
        {"if": {"field": "question_chars", "min": 400}, "setting": {"family": "budget", "params": {"B": 512}}}
      ],
      "ab": {"challenger": { ...a preset without routing... }, "share": 0.2, "salt": "exp-7"},
      "explore": 0.05                             # share that runs to full length (shadow decisions logged)
    }

Fields a rule can read: ``question_chars`` (length of the question text), ``meta.X`` (the question's
metadata, e.g. a difficulty estimate), ``tag.X`` (a request tag such as a priority). A/B arms and the
exploration share are drawn from a stable hash of the request id, so a request always lands in the same
arm, in the replay and live alike.

The same resolution runs for one request (``route``, used live) and for a whole run (``route_table``,
vectorised, used by replay), and a test checks that they agree.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import PresetError

_RULE_OPS = {"eq", "in", "min", "max"}
CHAMPION, CHALLENGER, EXPLORE = "champion", "challenger", "explore"


def _hash01(salt: str, key: str) -> float:
    return int(hashlib.sha1(f"{salt}\x00{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def validate(routing: Any, where: str = "routing") -> dict:
    """Checks a routing block; returns it with settings parsed (raises PresetError naming the field)."""
    from .policies.base import Setting
    from .presets import from_dict
    if not isinstance(routing, dict):
        raise PresetError("must be an object", field=where)
    unknown = set(routing) - {"rules", "ab", "explore"}
    if unknown:
        raise PresetError(f"unknown key {sorted(map(str, unknown))[0][:80]!r} (known: ab, explore, rules)", field=where)
    out: dict = {}
    rules = routing.get("rules", [])
    if not isinstance(rules, list) or len(rules) > 64:
        raise PresetError("must be a list of at most 64 rules", field=f"{where}.rules")
    out["rules"] = []
    for i, r in enumerate(rules):
        w = f"{where}.rules[{i}]"
        if not isinstance(r, dict) or set(r) != {"if", "setting"}:
            raise PresetError("a rule is an object with 'if' and 'setting'", field=w)
        cond = r["if"]
        if not isinstance(cond, dict) or "field" not in cond or not (set(cond) - {"field"}) \
                or set(cond) - {"field"} - _RULE_OPS:
            raise PresetError("a condition is {'field': F, and one or more of eq / in / min / max}", field=f"{w}.if")
        f = cond["field"]
        if not isinstance(f, str) or not (f == "question_chars" or f.startswith(("meta.", "tag."))) or len(f) > 100:
            raise PresetError("field must be question_chars, meta.NAME or tag.NAME", field=f"{w}.if.field")
        for op in ("min", "max"):
            if op in cond and (isinstance(cond[op], bool) or not isinstance(cond[op], (int, float))):
                raise PresetError("must be a number", field=f"{w}.if.{op}")
        if "in" in cond and (not isinstance(cond["in"], list) or len(cond["in"]) > 100
                             or not all(isinstance(v, (str, int, float, bool)) for v in cond["in"])):
            raise PresetError("must be a list of plain values", field=f"{w}.if.in")
        if "eq" in cond and not isinstance(cond["eq"], (str, int, float, bool)):
            raise PresetError("must be a plain value", field=f"{w}.if.eq")
        out["rules"].append({"if": dict(cond), "setting": Setting.from_dict(r["setting"], f"{w}.setting")})
    if "ab" in routing:
        ab = routing["ab"]
        if not isinstance(ab, dict) or "challenger" not in ab or set(ab) - {"challenger", "share", "salt"}:
            raise PresetError("must be {'challenger': preset, 'share': 0..1, 'salt': text}", field=f"{where}.ab")
        share = ab.get("share", 0.5)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise PresetError("must be a number in [0, 1]", field=f"{where}.ab.share")
        salt = ab.get("salt", "ab")
        if not isinstance(salt, str) or len(salt) > 100:
            raise PresetError("must be a short string", field=f"{where}.ab.salt")
        ch = ab["challenger"]
        if isinstance(ch, dict) and "routing" in ch:
            raise PresetError("a challenger cannot route again", field=f"{where}.ab.challenger.routing")
        try:
            challenger = from_dict(ch)
        except PresetError as e:
            raise PresetError(e.message, field=f"{where}.ab.challenger" + (f".{e.field}" if e.field else "")) from None
        out["ab"] = {"challenger": challenger, "share": float(share), "salt": salt}
    if "explore" in routing:
        ex = routing["explore"]
        if isinstance(ex, bool) or not isinstance(ex, (int, float)) or not 0 <= ex <= 1:
            raise PresetError("must be a share in [0, 1]", field=f"{where}.explore")
        out["explore"] = float(ex)
    return out


def to_json(routing: dict) -> dict:
    out: dict = {}
    if routing.get("rules"):
        out["rules"] = [{"if": r["if"], "setting": r["setting"].to_dict()} for r in routing["rules"]]
    if "ab" in routing:
        out["ab"] = {"challenger": routing["ab"]["challenger"].to_dict(), "share": routing["ab"]["share"],
                     "salt": routing["ab"]["salt"]}
    if "explore" in routing:
        out["explore"] = routing["explore"]
    return out


# --- one request ------------------------------------------------------------------------------------------
@dataclass
class Route:
    arm: str            # champion, challenger or explore
    setting: Any        # the Setting to apply (for explore: the champion's, logged as shadow decisions)
    reason: str         # which rule / slice chose it


def request_fields(question: str = "", meta: dict | None = None, tags: dict | None = None) -> dict:
    f = {"question_chars": len(question or "")}
    f.update({f"meta.{k}": v for k, v in (meta or {}).items()})
    f.update({f"tag.{k}": v for k, v in (tags or {}).items()})
    return f


def _matches(cond: dict, value: Any) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if "eq" in cond and not (value == cond["eq"] or str(value) == str(cond["eq"])):
        return False
    if "in" in cond and not (value in cond["in"] or str(value) in {str(v) for v in cond["in"]}):
        return False
    for op, ok in (("min", lambda v, b: v >= b), ("max", lambda v, b: v <= b)):
        if op in cond:
            try:
                if not ok(float(value), float(cond[op])):
                    return False
            except (TypeError, ValueError):
                return False
    return True


def _resolve_arm_preset(preset, fields: dict) -> tuple[Any, str]:
    rules = (preset.routing or {}).get("rules", []) if preset.routing else []
    for i, r in enumerate(rules):
        if _matches(r["if"], fields.get(r["if"]["field"])):
            return r["setting"], f"rule {i}"
    if preset.slices_by and preset.slices:
        lab = fields.get(preset.slices_by)
        if lab is not None and str(lab) in preset.slices:
            return preset.slices[str(lab)], f"slice {preset.slices_by}={lab}"
    return preset.setting, "default"


def route(preset, request_id: str, fields: dict) -> Route:
    r = preset.routing or {}
    if r.get("explore") and _hash01("explore", str(request_id)) < r["explore"]:
        s, why = _resolve_arm_preset(preset, fields)
        return Route(EXPLORE, s, "explore: runs to full length; " + why)
    if "ab" in r and _hash01(r["ab"]["salt"], str(request_id)) < r["ab"]["share"]:
        s, why = _resolve_arm_preset(r["ab"]["challenger"], fields)
        return Route(CHALLENGER, s, why)
    s, why = _resolve_arm_preset(preset, fields)
    return Route(CHAMPION, s, why)


# --- a whole run (vectorised) -----------------------------------------------------------------------------
def table_fields(t) -> pd.DataFrame:
    """Per question, the request-time fields a replay can know: question length and metadata (a tag.X
    field reads the metadata field X when the questions carry it)."""
    f = pd.DataFrame({"question_chars": t.meta["question_chars"].to_numpy()}) if "question_chars" in t.meta \
        else pd.DataFrame(index=range(t.n))
    for c in t.meta.columns:
        if c.startswith("meta."):
            f[c] = t.meta[c].to_numpy()
            f["tag." + c[5:]] = t.meta[c].to_numpy()
    return f


def _mask(cond: dict, col: pd.Series | None, n: int) -> np.ndarray:
    if col is None:
        return np.zeros(n, bool)
    ok = col.notna().to_numpy().copy()
    s = col.astype(str)
    if "eq" in cond:
        ok &= ((col == cond["eq"]) | (s == str(cond["eq"]))).to_numpy()
    if "in" in cond:
        hit = s.isin({str(v) for v in cond["in"]}).to_numpy().copy()
        nums = [float(v) for v in cond["in"] if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums:
            hit |= np.isin(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float), nums)
        ok &= hit
    if "min" in cond or "max" in cond:
        x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            if "min" in cond:
                ok &= x >= float(cond["min"])
            if "max" in cond:
                ok &= x <= float(cond["max"])
    return ok


def _arm_choice(preset, fields: pd.DataFrame, n: int) -> tuple[list, np.ndarray]:
    settings = [preset.setting]
    choice = np.zeros(n, dtype=np.int64)
    decided = np.zeros(n, bool)
    for r in ((preset.routing or {}).get("rules", []) if preset.routing else []):
        m = _mask(r["if"], fields.get(r["if"]["field"]), n) & ~decided
        settings.append(r["setting"])
        choice[m] = len(settings) - 1
        decided |= m
    if preset.slices_by and preset.slices and preset.slices_by in fields:
        labs = fields[preset.slices_by].astype(str).to_numpy()
        have = fields[preset.slices_by].notna().to_numpy()
        for lab, s in preset.slices.items():
            m = (labs == lab) & have & ~decided
            settings.append(s)
            choice[m] = len(settings) - 1
            decided |= m
    return settings, choice


def route_table(t, preset) -> tuple[np.ndarray, list, np.ndarray]:
    """Per question: its arm, and an index into the returned list of settings."""
    fields = table_fields(t)
    n = t.n
    ids = [str(q) for q in t.question_ids]
    r = preset.routing or {}
    arm = np.full(n, CHAMPION, dtype=object)
    if "ab" in r:
        ch = np.array([_hash01(r["ab"]["salt"], q) < r["ab"]["share"] for q in ids], bool)
        arm[ch] = CHALLENGER
    if r.get("explore"):
        ex = np.array([_hash01("explore", q) < r["explore"] for q in ids], bool)
        arm[ex] = EXPLORE
    settings, choice = _arm_choice(preset, fields, n)
    if "ab" in r:
        cs, cc = _arm_choice(r["ab"]["challenger"], fields, n)
        off = len(settings)
        settings = settings + cs
        choice = np.where(arm == CHALLENGER, cc + off, choice)
    return arm, settings, choice
