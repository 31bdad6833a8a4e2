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

The block is validated with the preset (``schema.validate_routing``: it may hold a whole preset, the
challenger). The same resolution runs for one request (``route``, used live) and for a whole run (``route_table``,
vectorised, used by replay: ``preset_stops``), and a test checks that they agree.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.presets.schema import Preset
from analysis.replay.engine import computed_tokens, outcome_from_stops, stop_index
from analysis.replay.slices import slice_labels, value_label, value_labels

CHAMPION, CHALLENGER, EXPLORE = "champion", "challenger", "explore"


def _hash01(salt: str, key: str) -> float:
    return int(hashlib.sha1(f"{salt}\x00{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


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
        want = None if lab is None else value_label(lab)       # "2.0" and 2 alike
        hit = next((s for k, s in preset.slices.items() if value_label(k) == want), None)   # the first, as replay
        if hit is not None:
            return hit, f"slice {preset.slices_by}={lab}"
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
        labs = value_labels(fields[preset.slices_by])
        have = fields[preset.slices_by].notna().to_numpy()
        for lab, s in preset.slices.items():
            m = (labs == value_label(lab)) & have & ~decided
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


# --- replaying a preset (with its per-slice overrides) ----------------------------------------------------
def _preset_parts(t, preset: Preset) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """(questions it decides, questions it stops, setting) triples, later ones overriding earlier ones. An
    exploration request is decided by its setting (it probes on its schedule, for the shadow stop) but runs
    to its end."""
    if preset.slices_by and preset.slices and not preset.routing:
        # slices by a derived label (question-length tertiles, binned numbers) exist only in replay
        everyone = np.ones(t.n, bool)
        labels = slice_labels(t, preset.slices_by)
        parts, seen = [(everyone, everyone, preset.setting)], set()
        for lab, s in preset.slices.items():
            key = lab if lab in labels else value_label(lab)        # (a bin's label as it is)
            if key not in seen:                                     # "2" and "2.0": the first, as live
                seen.add(key)
                parts.append((labels == key, labels == key, s))
        return parts
    arm, settings, choice = route_table(t, preset)
    return [(choice == i, (choice == i) & (arm != EXPLORE), s) for i, s in enumerate(settings)]


def preset_stops(t, preset: Preset) -> np.ndarray:
    """Per question, where the preset stops: its routing rules, slices, A/B arms and exploration share
    resolved per question (as the live controller resolves them per request), then each setting replayed
    on all questions at once."""
    return preset_outcome(t, preset).stop


def preset_outcome(t, preset: Preset, label: str | None = None):
    """The preset replayed: ``preset_stops`` with each question's tokens computed under its own setting (its
    probe schedule's probes; none for a budget, but on an exploration request, which probes all the same)."""
    stop = t.final_idx.copy()
    computed = t.computed[t.rows, stop]
    for decides, stops, s in _preset_parts(t, preset):
        if decides.any():
            st = np.where(stops, stop_index(t, s), t.final_idx)
            stop = np.where(decides, st, stop)
            explored = decides & ~stops
            cost = computed_tokens(t, st, s)
            if explored.any():         # probed on the declared schedule, a budget's too (its log serves all)
                cost = np.where(explored, computed_tokens(t, st, s, probed=True), cost)
            computed = np.where(decides, cost, computed)
    return outcome_from_stops(t, stop, preset.name if label is None else label, computed=computed)
