"""Presets: a named, versioned, validated setting (plus optional per-slice overrides), as JSON or as a
compact URL-safe string.

    {"stopline_preset": 1, "name": "deer-ish", "setting": {"family": "confidence", "params": {"tau": 0.95}},
     "slices": {"by": "meta.difficulty", "settings": {"3": {"family": "budget", "params": {"B": 512}}}},
     "notes": "..."}

Anything else — unknown keys, unknown families, out-of-range values, broken strings — raises PresetError
with the path of the offending field; nothing else escapes the loader.
"""
from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PresetError
from .policies.base import Setting

VERSION = 1
URL_PREFIX = "sl1."
MAX_BYTES = 64 * 1024
_KEYS = {"stopline_preset", "name", "setting", "slices", "notes", "routing"}


@dataclass
class Preset:
    name: str
    setting: Setting
    slices_by: str | None = None
    slices: dict[str, Setting] = field(default_factory=dict)
    notes: str = ""
    routing: dict | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"stopline_preset": VERSION, "name": self.name, "setting": self.setting.to_dict()}
        if self.slices_by:
            d["slices"] = {"by": self.slices_by, "settings": {k: v.to_dict() for k, v in self.slices.items()}}
        if self.notes:
            d["notes"] = self.notes
        if self.routing:
            from .routing import to_json
            d["routing"] = to_json(self.routing)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_url(self) -> str:
        return encode(self.to_dict())

    def settings(self) -> list[Setting]:
        """Every setting this preset can apply (routing rules and an A/B challenger's included)."""
        out = [self.setting, *self.slices.values()]
        if self.routing:
            out += [r["setting"] for r in self.routing.get("rules", [])]
            if "ab" in self.routing:
                out += self.routing["ab"]["challenger"].settings()
        return out


def _check_str(v: Any, where: str, max_len: int = 200) -> str:
    if not isinstance(v, str):
        raise PresetError(f"must be a string, got {type(v).__name__}", field=where)
    if len(v) > max_len:
        raise PresetError(f"is longer than {max_len} characters", field=where)
    return v


def from_dict(d: Any) -> Preset:
    if not isinstance(d, dict):
        raise PresetError(f"a preset must be a JSON object, got {type(d).__name__}")
    unknown = [k for k in d if k not in _KEYS]
    if unknown:
        raise PresetError(f"unknown key {str(unknown[0])[:80]!r} (known: {', '.join(sorted(_KEYS))})")
    v = d.get("stopline_preset")
    if v is None:
        raise PresetError("missing 'stopline_preset' (the schema version)", field="stopline_preset")
    if isinstance(v, bool) or not isinstance(v, int):
        raise PresetError(f"must be an integer, got {v!r}"[:120], field="stopline_preset")
    if v > VERSION or v < 1:
        raise PresetError(f"version {v} is not one this Stopline reads (1..{VERSION})", field="stopline_preset")
    name = _check_str(d.get("name", "unnamed"), "name")
    if "setting" not in d:
        raise PresetError("missing", field="setting")
    setting = Setting.from_dict(d["setting"], "setting")
    slices_by, slices = None, {}
    if d.get("slices") is not None:
        sl = d["slices"]
        if not isinstance(sl, dict) or set(sl) - {"by", "settings"}:
            raise PresetError("must be an object with 'by' and 'settings'", field="slices")
        slices_by = _check_str(sl.get("by"), "slices.by")
        if not isinstance(sl.get("settings"), dict):
            raise PresetError("must be an object of slice label -> setting", field="slices.settings")
        if len(sl["settings"]) > 256:
            raise PresetError("too many slices (at most 256)", field="slices.settings")
        for lab, s in sl["settings"].items():
            _check_str(lab, "slices.settings (a label)")
            slices[lab] = Setting.from_dict(s, f"slices.settings.{lab[:40]}")
    notes = _check_str(d.get("notes", ""), "notes", 10_000)
    routing = d.get("routing")
    if routing is not None:
        from .routing import validate
        routing = validate(routing)
    return Preset(name, setting, slices_by, slices, notes, routing)


def encode(d: dict) -> str:
    raw = json.dumps(d, separators=(",", ":"), sort_keys=True).encode()
    return URL_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode(s: str) -> dict:
    if not isinstance(s, str):
        raise PresetError("a preset link must be a string")
    s = s.strip()
    if not s.startswith(URL_PREFIX):
        raise PresetError(f"not a Stopline preset link (it should start with {URL_PREFIX!r})")
    body = s[len(URL_PREFIX):]
    if len(body) > MAX_BYTES:
        raise PresetError("preset link is too long")
    try:
        comp = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        z = zlib.decompressobj()
        raw = z.decompress(comp, MAX_BYTES)
        if z.unconsumed_tail:
            raise PresetError("preset link expands to more than 64 KB")
        return json.loads(raw.decode("utf-8"))
    except PresetError:
        raise
    except (ValueError, zlib.error, UnicodeDecodeError, RecursionError) as e:
        raise PresetError(f"the preset link is damaged or truncated ({type(e).__name__})") from None


def loads(text: str) -> Preset:
    """A preset from JSON text or a URL string (``sl1.…``)."""
    if not isinstance(text, str):
        raise PresetError("a preset must be given as text")
    t = text.strip()
    if t.startswith(URL_PREFIX):
        return from_dict(decode(t))
    if len(t.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PresetError("preset JSON is larger than 64 KB")
    try:
        d = json.loads(t)
    except (ValueError, RecursionError) as e:
        raise PresetError(f"not valid JSON ({str(e)[:120]})") from None
    return from_dict(d)


def load(arg: str) -> Preset:
    """A preset from a file path, a JSON string or a URL string."""
    p = Path(arg) if len(arg) < 4096 and "\n" not in arg else None
    if p is not None and not arg.strip().startswith(("{", URL_PREFIX)):
        try:
            if p.is_file():
                try:
                    return loads(p.read_text(encoding="utf-8"))
                except PresetError as e:
                    raise PresetError(e.message, file=str(p), field=e.field) from None
                except UnicodeDecodeError:
                    raise PresetError("not UTF-8 text", file=str(p)) from None
        except OSError:
            pass
        if not arg.strip().startswith(("{", "[", '"')):
            raise PresetError("no such preset file, and not preset JSON or a link", file=arg)
    return loads(arg)


def from_setting(setting: Setting, name: str = "") -> Preset:
    return Preset(name or setting.label(), setting)


# --- replaying a preset (with its per-slice overrides) ----------------------------------------------------
def preset_stops(t, preset: Preset) -> np.ndarray:
    """Per question, where the preset stops: its routing rules, slices, A/B arms and exploration share
    resolved per question (as the live controller resolves them per request), then each setting replayed
    on all questions at once."""
    from .optimize import slice_labels
    from .replay import stop_index
    from .routing import EXPLORE, route_table
    if preset.slices_by and preset.slices and not preset.routing:
        # slices by a derived label (question-length tertiles, binned numbers) exist only in replay
        stop = stop_index(t, preset.setting)
        labels = slice_labels(t, preset.slices_by)
        for lab, s in preset.slices.items():
            mask = labels == lab
            if mask.any():
                stop = np.where(mask, stop_index(t, s), stop)
        return stop
    arm, settings, choice = route_table(t, preset)
    stop = t.final_idx.copy()
    for i, s in enumerate(settings):
        mask = (choice == i) & (arm != EXPLORE)
        if mask.any():
            stop = np.where(mask, stop_index(t, s), stop)
    return stop
