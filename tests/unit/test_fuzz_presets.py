"""Fuzzing presets and preset links (issue 21, "inputs that never crash"): whatever a visitor puts in a preset
document or a link, the loader raises our PresetError or returns a preset; never OverflowError, RecursionError,
ValueError or anything else.

Counts run by the suite (about 30 s on one core of the 2-core box):
- 10,000 preset documents from a seeded generator (``test_10000_random_presets``: plain ``random``, ~3 s) and
  400 more from Hypothesis (``test_fuzzed_presets_raise_only_preset_error``: the same shapes, shrunk to a
  minimal example on failure; Hypothesis spends ~25 ms generating each, so 10,000 of them would take 4 min);
- 400 mutated or crafted links through Hypothesis (``test_mutated_links_raise_only_preset_error``) and 2,000
  random mutations of real links (``test_2000_random_link_mutations``).
"""
import base64
import json
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.core.errors import PresetError
from analysis.presets.schema import Preset, decode, encode, from_dict, loads
from analysis.replay.policies import Setting

N_RANDOM_PRESETS = 10_000
N_HYPOTHESIS_PRESETS = 400
N_HYPOTHESIS_LINKS = 400
N_RANDOM_LINKS = 2_000

FAMILIES = ["budget", "consistency", "confidence", "entropy", "learned", "hybrid", "x", ""]
PARAM_NAMES = ["B", "k", "min_tokens", "tau", "aggregate", "transition_only", "alpha", "delta", "min_steps",
               "features", "model", "folds", "a", "b", "op", "floor", "cap", "zz"]

# numbers at and past every edge: huge integers (OverflowError in float()), floats that overflow, NaN/inf
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.sampled_from([10 ** 309, -(10 ** 309), 2 ** 1024, 2 ** 63, -(2 ** 63) - 1, 32768, 32767, 0, -1, 1]),
    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12),
                    st.sampled_from(["or", "and", "mean", "min", "auto", "text", "hybrid", "budget"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(PARAM_NAMES + ["family", "params"]) | st.text(max_size=6), c, max_size=4), max_leaves=16)


@st.composite
def settings_(draw, depth: int = 0):
    """A setting-like object: a real family with fuzzed parameters, sometimes nested (hybrids in hybrids)."""
    if depth > 3 or draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    fam = draw(st.sampled_from(FAMILIES))
    params = draw(st.dictionaries(st.sampled_from(PARAM_NAMES), scalars, max_size=4))
    if fam == "hybrid" or draw(st.booleans()):
        for part in ("a", "b"):
            if draw(st.booleans()):
                params[part] = draw(settings_(depth + 1))
    d = {"family": fam, "params": params}
    if draw(st.integers(0, 19)) == 0:
        d[draw(st.text(max_size=4))] = draw(scalars)
    return d


def deep_hybrid(depth: int, leaf=None) -> dict:
    d = leaf or {"family": "budget", "params": {"B": 64}}
    for _ in range(depth):
        d = {"family": "hybrid", "params": {"a": d, "op": "and"}}
    return d


@st.composite
def presets(draw):
    d = {"stopline_preset": draw(st.one_of(st.just(1), numbers, json_values)), "setting": draw(settings_())}
    if draw(st.integers(0, 4)) == 0:
        d["setting"] = deep_hybrid(draw(st.integers(2, 3000)))
    for key, value in (("name", json_values), ("notes", json_values)):
        if draw(st.booleans()):
            d[key] = draw(value)
    if draw(st.integers(0, 3)) == 0:
        d["slices"] = {"by": draw(st.one_of(st.just("meta.difficulty"), json_values)),
                       "settings": draw(st.dictionaries(st.text(max_size=5), settings_(), max_size=3))}
    if draw(st.integers(0, 3)) == 0:
        rules = draw(st.lists(st.fixed_dictionaries(
            {"if": st.dictionaries(st.sampled_from(["field", "eq", "in", "min", "max", "zz"]),
                                   st.one_of(st.just("meta.x"), json_values), max_size=3),
             "setting": settings_()}), max_size=3))
        routing = {"rules": rules}
        if draw(st.booleans()):
            routing["ab"] = {"challenger": draw(st.one_of(presets(), json_values)),
                             "share": draw(numbers), "salt": draw(st.text(max_size=5))}
        if draw(st.booleans()):
            routing["explore"] = draw(numbers)
        d["routing"] = routing
    drop = draw(st.sampled_from([None, None, None, "stopline_preset", "setting"]))
    if drop:
        del d[drop]
    return d


def _only_preset_error(doc):
    try:
        p = from_dict(doc)
    except PresetError as e:
        assert str(e)   # the message itself must be printable
        return None
    assert isinstance(p, Preset)
    assert loads(p.to_url()).to_dict() == p.to_dict()   # what validates also round-trips through a link
    return p


@settings(max_examples=N_HYPOTHESIS_PRESETS, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(presets())
def test_fuzzed_presets_raise_only_preset_error(doc):
    _only_preset_error(doc)


# the same shapes from a seeded random generator: cheap enough for 10,000 in a few seconds
EDGE_NUMBERS = [10 ** 400, -(10 ** 400), 10 ** 309, 2 ** 1024, 2 ** 63, 32768, 32767, 0, -1, 1, 0.5, 1e308,
                -1e-308, float("inf"), float("-inf"), float("nan"), 10 ** 5000]


def r_scalar(r):
    return r.choice([None, True, False, r.choice(EDGE_NUMBERS), r.randint(-10 ** 6, 10 ** 6), r.random() * 2 - 0.5,
                     r.choice(["or", "and", "mean", "min", "auto", "text", "hybrid", "", "x" * 300]),
                     r.randint(-2 ** 70, 2 ** 70)])


def r_json(r, depth=0):
    k = r.random()
    if depth > 3 or k < 0.6:
        return r_scalar(r)
    if k < 0.8:
        return [r_json(r, depth + 1) for _ in range(r.randint(0, 3))]
    return {r.choice(PARAM_NAMES + ["family", "params"]): r_json(r, depth + 1) for _ in range(r.randint(0, 3))}


def r_setting(r, depth=0):
    if depth > 3 or r.random() < 0.1:
        return r_json(r)
    params = {r.choice(PARAM_NAMES): r_scalar(r) for _ in range(r.randint(0, 4))}
    fam = r.choice(FAMILIES)
    if fam == "hybrid" or r.random() < 0.3:
        for part in ("a", "b"):
            if r.random() < 0.5:
                params[part] = r_setting(r, depth + 1)
    d = {"family": fam, "params": params}
    if r.random() < 0.05:
        d[r.choice(["x", "", "familly"])] = r_scalar(r)
    return d


def r_preset(r, depth=0):
    d = {"stopline_preset": r.choice([1, 1, 1, r_scalar(r), r_json(r)]), "setting": r_setting(r)}
    if r.random() < 0.2:
        d["setting"] = deep_hybrid(r.randint(2, 3000))
    for key in ("name", "notes"):
        if r.random() < 0.3:
            d[key] = r_json(r)
    if r.random() < 0.25:
        d["slices"] = {"by": r.choice(["meta.difficulty", r_json(r)]),
                       "settings": {r.choice(["1", "2", "", "x" * 50]) + str(r.randint(0, 9)): r_setting(r) for _ in range(r.randint(0, 3))}}
    if r.random() < 0.25:
        routing = {"rules": [{"if": {r.choice(["field", "eq", "in", "min", "max", "zz"]): r.choice(["meta.x", r_json(r)])
                                     for _ in range(r.randint(0, 3))}, "setting": r_setting(r)}
                             for _ in range(r.randint(0, 3))]}
        if r.random() < 0.5:
            routing["ab"] = {"challenger": r_preset(r, depth + 1) if depth < 2 else r_json(r),
                             "share": r_scalar(r), "salt": r.choice(["ab", r_scalar(r)])}
        if r.random() < 0.5:
            routing["explore"] = r_scalar(r)
        d["routing"] = routing
    if r.random() < 0.1:
        del d[r.choice(["stopline_preset", "setting"])]
    return d


def test_10000_random_presets():
    r = random.Random(21)
    valid = 0
    for _ in range(N_RANDOM_PRESETS):
        valid += _only_preset_error(r_preset(r)) is not None
    assert 0 < valid < N_RANDOM_PRESETS    # the generator reaches both sides of the validator


# --- the defects the fuzzer found, one each -----------------------------------------------------------------
@pytest.mark.parametrize("params", [{"B": 10 ** 400}, {"B": -(10 ** 400)}, {"B": 2 ** 1024}])
def test_huge_integer_is_out_of_range_not_overflow(params):
    with pytest.raises(PresetError, match="out of range"):
        from_dict({"stopline_preset": 1, "setting": {"family": "budget", "params": params}})


@pytest.mark.parametrize("family,params", [("confidence", {"tau": 10 ** 400}), ("entropy", {"delta": 10 ** 400}),
                                           ("hybrid", {"floor": 10 ** 400})])
def test_huge_integer_for_any_number_param(family, params):
    with pytest.raises(PresetError, match="out of range"):
        from_dict({"stopline_preset": 1, "setting": {"family": family, "params": params}})


def test_integer_too_long_to_print_gives_preset_error():
    # past Python's 4,300-digit limit, even repr() of the int raises ValueError
    big = 10 ** 5000
    for doc in ({"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": big}}},
                {"stopline_preset": big, "setting": {"family": "budget"}}):
        with pytest.raises(PresetError):
            from_dict(doc)


@pytest.mark.parametrize("depth", [2, 50, 400, 5000])
def test_deeply_nested_hybrid_is_refused_before_recursing(depth):
    with pytest.raises(PresetError, match="cannot themselves be hybrids"):
        from_dict({"stopline_preset": 1, "setting": deep_hybrid(depth)})


def test_deep_hybrid_in_b_and_in_a_slice_and_a_rule():
    inner = deep_hybrid(1000)
    docs = [{"stopline_preset": 1, "setting": {"family": "hybrid", "params": {"b": inner}}},
            {"stopline_preset": 1, "setting": {"family": "budget"},
             "slices": {"by": "meta.d", "settings": {"1": inner}}},
            {"stopline_preset": 1, "setting": {"family": "budget"},
             "routing": {"rules": [{"if": {"field": "meta.d", "eq": 1}, "setting": inner}]}}]
    for doc in docs:
        with pytest.raises(PresetError, match="cannot themselves be hybrids"):
            from_dict(doc)


def test_a_one_level_hybrid_still_validates():
    p = from_dict({"stopline_preset": 1, "setting": deep_hybrid(1)})
    assert p.setting.family == "hybrid" and p.setting.params["a"] == Setting.make("budget", B=64)


# --- links: what a visitor can paste or mutate in the address bar ---------------------------------------------
GOOD = Preset("mixed", Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.9}},
                                    b={"family": "consistency", "params": {"k": 2}}, op="and", floor=64)).to_url()
URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=%+/ \t\n\x00é😀"


@st.composite
def mutated_links(draw):
    s = list(draw(st.sampled_from([GOOD, encode({"stopline_preset": 1, "setting": deep_hybrid(3)}),
                                   encode({"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": 1}}})])))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
        i = draw(st.integers(0, max(0, len(s) - 1)))
        c = draw(st.sampled_from(URL_CHARS))
        if op == "replace" and s:
            s[i] = c
        elif op == "insert":
            s.insert(i, c)
        elif op == "delete" and s:
            del s[i]
        elif op == "truncate":
            s = s[:i]
        else:
            s += list(draw(st.text(max_size=8)))
    return "".join(s)


def _payload_link(raw: bytes) -> str:
    return "sl1." + base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


@st.composite
def crafted_links(draw):
    """Well-formed links around a fuzzed document: what passes the codec reaches the validator."""
    doc = draw(st.one_of(presets(), json_values))
    try:
        raw = json.dumps(doc).encode()
    except (ValueError, OverflowError, RecursionError):
        raw = b"[]"
    return _payload_link(raw)


@settings(max_examples=N_HYPOTHESIS_LINKS, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(mutated_links(), crafted_links(), st.text(max_size=60).map(lambda t: "sl1." + t)))
def test_mutated_links_raise_only_preset_error(link):
    try:
        loads(link)
    except PresetError as e:
        assert str(e)


@pytest.mark.parametrize("raw", [
    b"9" * 5000,                                   # an integer past Python's digit limit: ValueError
    b'{"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": 1' + b"0" * 400 + b"}}}",
    b'{"stopline_preset": 1, "setting": {"family": "confidence", "params": {"tau": 1e999}}}',
    b'{"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": NaN}}}',
    b'\xef\xbb\xbf{"stopline_preset": 1}',
    b"\x00\x01\x02",
    b"",
    json.dumps({"stopline_preset": 1, "setting": deep_hybrid(400)}).encode(),   # the issue's ~400 deep
    b"[" * 100_000 + b"]" * 100_000,
], ids=["digits", "huge-B", "tau-1e999", "NaN", "BOM", "binary", "empty", "hybrid-400-deep", "brackets"])
def test_crafted_link_payloads(raw):
    with pytest.raises(PresetError):
        loads(_payload_link(raw))


def test_decode_only_raises_preset_error_for_non_strings():
    for v in (None, 1, b"sl1.x", ["sl1."]):
        with pytest.raises(PresetError):
            decode(v)


def test_2000_random_link_mutations():
    r = random.Random(5)
    links = [GOOD, encode({"stopline_preset": 1, "setting": deep_hybrid(3)})]
    for _ in range(N_RANDOM_LINKS):
        s = list(r.choice(links))
        for _ in range(r.randint(1, 6)):
            i = r.randrange(len(s)) if s else 0
            op = r.random()
            if op < 0.5 and s:
                s[i] = r.choice(URL_CHARS)
            elif op < 0.7:
                s.insert(i, r.choice(URL_CHARS))
            elif op < 0.85 and s:
                del s[i]
            else:
                s = s[:i]
        try:
            loads("".join(s))
        except PresetError as e:
            assert str(e)
