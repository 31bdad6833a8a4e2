"""Presets: a named, versioned, validated setting (plus optional per-slice overrides), as JSON or as a
compact URL-safe string.

    {"stopline_preset": 1, "name": "deer-ish", "setting": {"family": "confidence", "params": {"tau": 0.95}},
     "slices": {"by": "meta.difficulty", "settings": {"3": {"family": "budget", "params": {"B": 512}}}},
     "notes": "...", "made_on": {"dataset": "gsm8k", "answer_type": "number"}}

``made_on`` (optional) records the run a preset was made on: pages offer it on runs of another dataset or
answer type too, with a warning (``made_for``).

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


from analysis.core.answers import ANSWER_TYPES
from analysis.core.errors import PresetError, brief
from analysis.replay.policies.base import Setting

VERSION = 1
URL_PREFIX = "sl1."
MAX_BYTES = 64 * 1024
_KEYS = {"stopline_preset", "name", "setting", "slices", "notes", "routing", "certificate", "made_on"}
# what a certificate (analysis/evaluate/certify.py) must say; the rest of it (families, counts) is kept as given
_CERT_NUMBERS = {"epsilon": (0.0, 1.0), "delta": (0.0, 1.0)}     # epsilon in [0, 1), delta in (0, 1)


@dataclass
class Preset:
    name: str
    setting: Setting
    slices_by: str | None = None
    slices: dict[str, Setting] = field(default_factory=dict)
    notes: str = ""
    routing: dict | None = None
    certificate: dict | None = None     # "risk <= epsilon with probability >= 1 - delta" (certify.py)
    made_on: dict | None = None         # the run it was made on: {"dataset", "answer_type"} (either may be absent)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"stopline_preset": VERSION, "name": self.name, "setting": self.setting.to_dict()}
        if self.slices_by:
            d["slices"] = {"by": self.slices_by, "settings": {k: v.to_dict() for k, v in self.slices.items()}}
        if self.notes:
            d["notes"] = self.notes
        if self.routing:
            d["routing"] = routing_to_json(self.routing)
        if self.certificate:
            d["certificate"] = self.certificate
        if self.made_on:
            d["made_on"] = self.made_on
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
        raise PresetError(f"must be an integer, got {brief(v, 100)}", field="stopline_preset")
    if v > VERSION or v < 1:
        raise PresetError(f"version {brief(v)} is not one this Stopline reads (1..{VERSION})", field="stopline_preset")
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
        routing = validate_routing(routing)
    cert = d.get("certificate")
    if cert is not None:
        cert = validate_certificate(cert)
    made_on = d.get("made_on")
    if made_on is not None:
        made_on = validate_made_on(made_on)
    return Preset(name, setting, slices_by, slices, notes, routing, cert, made_on=made_on)


def validate_made_on(v: Any, where: str = "made_on") -> dict:
    """The run a preset was made on: an object with an optional dataset (a string) and answer type (one of
    ANSWER_TYPES)."""
    if not isinstance(v, dict):
        raise PresetError(f"must be an object with 'dataset' and 'answer_type', got {type(v).__name__}", field=where)
    unknown = [k for k in v if k not in ("dataset", "answer_type")]
    if unknown:
        raise PresetError(f"unknown key {str(unknown[0])[:80]!r} (known: answer_type, dataset)", field=where)
    out = {}
    if v.get("dataset") is not None:
        out["dataset"] = _check_str(v["dataset"], f"{where}.dataset", 500)
    if v.get("answer_type") is not None:
        if v["answer_type"] not in ANSWER_TYPES:
            raise PresetError(f"must be one of {', '.join(ANSWER_TYPES)}, got {brief(v['answer_type'])}",
                              field=f"{where}.answer_type")
        out["answer_type"] = v["answer_type"]
    return out


def made_on(run: dict) -> dict:
    """What a preset made on ``run`` (a store's run row) records of it."""
    return {"dataset": run["dataset"], "answer_type": run["answer_type"]}


def made_for(p: Preset, run: dict) -> str | None:
    """How the run a preset was made on differs from ``run`` (another dataset, another answer type), in words,
    or None when it does not, or the preset does not say (made before presets recorded it)."""
    if not p.made_on:
        return None
    diff = []
    if p.made_on.get("dataset") not in (None, run.get("dataset")):
        diff.append(f"dataset {p.made_on['dataset']} (this run: {run.get('dataset')})")
    if p.made_on.get("answer_type") not in (None, run.get("answer_type")):
        diff.append(f"answer type {p.made_on['answer_type']} (this run: {run.get('answer_type')})")
    return "made on " + " and ".join(diff) if diff else None


def validate_certificate(cert: Any, where: str = "certificate") -> dict:
    """A preset's certificate: an object with epsilon and delta in (0, 1), n (questions tested), risk and
    bound; other plain JSON (the families' details, the words) is kept as it is."""
    if not isinstance(cert, dict):
        raise PresetError(f"must be an object, got {type(cert).__name__}", field=where)
    for k, (lo, hi) in _CERT_NUMBERS.items():
        v = cert.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v < hi if k == "epsilon" else lo < v < hi):
            raise PresetError(f"must be a number in {'[' if k == 'epsilon' else '('}{lo:g}, {hi:g}), got {brief(v)}",
                              field=f"{where}.{k}")
    n = cert.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PresetError(f"must be a whole number of questions, got {brief(n)}", field=f"{where}.n")
    for k in ("risk", "bound"):
        _check_str(cert.get(k), f"{where}.{k}")
    try:
        size = len(json.dumps(cert))
    except (TypeError, ValueError, RecursionError):
        raise PresetError("must be plain JSON", field=where) from None
    if size > 16_000:
        raise PresetError("is larger than 16 KB", field=where)
    return cert


# --- routing blocks (a routing block holds presets: an A/B challenger) ---------------------------------
_RULE_OPS = {"eq", "in", "min", "max"}


def validate_routing(routing: Any, where: str = "routing") -> dict:
    """Checks a routing block; returns it with settings parsed (raises PresetError naming the field)."""
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


def routing_to_json(routing: dict) -> dict:
    out: dict = {}
    if routing.get("rules"):
        out["rules"] = [{"if": r["if"], "setting": r["setting"].to_dict()} for r in routing["rules"]]
    if "ab" in routing:
        out["ab"] = {"challenger": routing["ab"]["challenger"].to_dict(), "share": routing["ab"]["share"],
                     "salt": routing["ab"]["salt"]}
    if "explore" in routing:
        out["explore"] = routing["explore"]
    return out



# --- the URL codec -----------------------------------------------------------------------------------------
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


_WEB = ("http://", "https://")


def is_link(text: str) -> bool:
    """Whether ``text`` is a preset link: its ``sl1.…`` code, or a dashboard URL that carries it (the Presets
    page's shareable link, ``http://HOST/tune?…&s=sl1.…``)."""
    t = text.strip()
    return t.startswith(URL_PREFIX) or t[:8].lower().startswith(_WEB)


def link_code(text: str) -> str:
    """The ``sl1.…`` code of a preset link: the text itself, or a URL's ``s=`` query parameter. A URL without
    one (or with two that differ) raises PresetError saying so."""
    from urllib.parse import parse_qs, urlsplit
    t = text.strip()
    if t.startswith(URL_PREFIX):
        return t
    if len(t) > 2 * MAX_BYTES:
        raise PresetError("preset link is too long")
    try:
        query = urlsplit(t).query
    except ValueError as e:
        raise PresetError(f"not a link that can be read ({str(e)[:120]})") from None
    codes = set(parse_qs(query).get("s", []))
    if not codes:
        raise PresetError(f"the link {brief(t, 120)} has no setting in it (no s=sl1.… parameter): share it from "
                          "the Presets page, or give the preset's sl1.… code or JSON")
    if len(codes) > 1:
        raise PresetError("the link has more than one setting in it (several s= parameters that differ)")
    return codes.pop()


def loads(text: str) -> Preset:
    """A preset from JSON text or a link: its code (``sl1.…``) or a dashboard URL carrying it (``…?s=sl1.…``).
    The one place a preset's text is parsed: every page and command that takes a preset reads it here."""
    if not isinstance(text, str):
        raise PresetError("a preset must be given as text")
    t = text.strip()
    if is_link(t):
        return from_dict(decode(link_code(t)))
    if len(t.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PresetError("preset JSON is larger than 64 KB")
    try:
        d = json.loads(t)
    except (ValueError, RecursionError) as e:
        raise PresetError(f"not valid JSON ({str(e)[:120]})") from None
    return from_dict(d)


def load(arg: str) -> Preset:
    """A preset from a file path, a JSON string or a link (``sl1.…``, or a dashboard URL carrying it)."""
    p = Path(arg) if len(arg) < 4096 and "\n" not in arg else None
    if p is not None and not arg.strip().startswith("{") and not is_link(arg):
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
