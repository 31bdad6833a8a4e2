"""Presets: schema, round trip through the URL string, and a loader that only ever raises PresetError."""
import json
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.core.errors import PresetError
from analysis.replay.policies import Setting
from analysis.presets.schema import Preset, decode, encode, from_dict, load, loads


def sample_preset():
    return Preset("mixed", Setting.make("confidence", tau=0.93, aggregate="min"), "meta.difficulty",
                  {"3": Setting.make("budget", B=512),
                   "1": Setting.make("hybrid", a={"family": "confidence", "params": {"tau": 0.9}},
                                     b={"family": "consistency", "params": {"k": 2}}, op="and", floor=64)},
                  notes="for the hard slice, a budget")


def test_round_trip_json_and_url():
    p = sample_preset()
    assert from_dict(json.loads(p.to_json())).to_dict() == p.to_dict()
    url = p.to_url()
    assert url.startswith("sl1.") and all(c in string.ascii_letters + string.digits + "-_." for c in url)
    assert loads(url).to_dict() == p.to_dict()
    assert len(url) < 400


def test_load_from_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(sample_preset().to_json())
    assert load(str(f)).name == "mixed"
    f.write_text('{"stopline_preset": 1, "setting": {"family": "nope"}}')
    with pytest.raises(PresetError) as e:
        load(str(f))
    assert "p.json" in str(e.value) and "setting.family" in str(e.value) and "unknown policy family" in str(e.value)
    with pytest.raises(PresetError, match="no such preset file"):
        load(str(tmp_path / "missing.json"))


def test_the_dashboards_shareable_link_is_a_link_wherever_one_is_taken(tmp_path):
    """A new user found the Presets page's shareable link (a full URL) refused by eval, report and Compare: only
    its bare sl1.… code was read. loads and load take the URL's s= parameter; a URL without one is a clear error."""
    p = sample_preset()
    code = p.to_url()
    for url in (f"http://127.0.0.1:8611/tune?db=demo&run=c7a2483a9092&family=confidence&s={code}",
                f"  https://stopline.example/compare?s={code}#top\n", f"HTTP://host/?s={code.replace('.', '%2E')}",
                f"http://host/tune?s={code}&s={code}"):
        assert loads(url).to_dict() == p.to_dict()
        assert load(url).to_dict() == p.to_dict()
    for url, match in ((f"http://127.0.0.1:8611/tune?db=demo&run=c7a2483a9092", "has no setting in it"),
                       ("https://host/tune", "has no setting in it"),
                       (f"http://host/?s={code}&s=sl1.other", "more than one setting"),
                       ("http://host/?s=abc", "not a Stopline preset link")):
        with pytest.raises(PresetError, match=match):
            load(url)
    from analysis.production.gateway import read_preset      # serve's --preset: the URL is the preset itself
    url = f"http://127.0.0.1:8611/tune?s={code}"
    assert read_preset(url) == (None, url)


@pytest.mark.parametrize("doc,match", [
    ({"setting": {"family": "budget"}}, "stopline_preset"),
    ({"stopline_preset": 2, "setting": {"family": "budget"}}, "version 2"),
    ({"stopline_preset": 1, "setting": {"family": "warp"}}, "unknown policy family"),
    ({"stopline_preset": 1, "setting": {"family": "confidence", "params": {"tau": 2}}}, "out of range"),
    ({"stopline_preset": 1, "setting": {"family": "confidence", "params": {"tau": "high"}}}, "must be a number"),
    ({"stopline_preset": 1, "setting": {"family": "confidence", "params": {"aggregate": "max"}}}, "one of"),
    ({"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": 3.5}}}, "whole number"),
    ({"stopline_preset": 1, "setting": {"family": "budget"}, "evil": 1}, "unknown key"),
    ({"stopline_preset": 1, "setting": {"family": "hybrid", "params": {"a": {"family": "hybrid"}}}}, "cannot themselves"),
    ([1, 2], "JSON object"),
])
def test_clear_validation_errors(doc, match):
    with pytest.raises(PresetError, match=match):
        from_dict(doc)


def test_malicious_links():
    import base64
    import zlib
    bomb = "sl1." + base64.urlsafe_b64encode(zlib.compress(b"[" * 10_000_000)).decode()
    for s in ["", "sl1.", "sl1.!!!", "sl1." + "A" * 100, bomb, "sl1." + base64.urlsafe_b64encode(b"x").decode(),
              "sl1." + base64.urlsafe_b64encode(zlib.compress(b"\xff\xfe")).decode(),
              "sl1." + base64.urlsafe_b64encode(zlib.compress(b"[" * 100000 + b"]" * 100000)).decode()]:
        with pytest.raises(PresetError):
            loads(s)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
preset_like = st.fixed_dictionaries(
    {"stopline_preset": st.one_of(st.just(1), json_values),
     "setting": st.one_of(st.fixed_dictionaries({"family": st.sampled_from(["budget", "confidence", "hybrid", "x"]),
                                                 "params": st.dictionaries(st.sampled_from(
                                                     ["B", "tau", "k", "a", "op", "cap", "zz"]), json_values)}),
                          json_values)},
    optional={"name": json_values, "slices": json_values, "notes": json_values, "routing": json_values})


@settings(max_examples=500, deadline=None)
@given(st.one_of(preset_like, json_values))
def test_random_documents_raise_only_preset_error(doc):
    try:
        p = from_dict(doc)
    except PresetError:
        return
    assert loads(p.to_url()).to_dict() == p.to_dict()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_strings_raise_only_preset_error(s):
    for text in (s, "sl1." + s, "{" + s, "http://h/?s=" + s, "https://h/t?" + s):
        try:
            loads(text)
        except PresetError:
            pass


def test_random_byte_mutations_of_a_real_link():
    rnd = random.Random(0)
    url = sample_preset().to_url()
    for _ in range(200):
        chars = list(url)
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(4, len(chars))
            chars[i] = rnd.choice(string.ascii_letters + string.digits + "-_")
        try:
            loads("".join(chars))
        except PresetError:
            pass


def test_a_preset_records_the_run_it_was_made_on_and_says_when_another_differs():
    from analysis.presets.schema import made_for, made_on
    run = {"id": "r1", "dataset": "gsm8k", "answer_type": "number"}
    p = from_dict({**sample_preset().to_dict(), "made_on": made_on(run)})
    assert p.made_on == {"dataset": "gsm8k", "answer_type": "number"}
    assert from_dict(json.loads(p.to_json())).to_dict() == p.to_dict() and loads(p.to_url()).made_on == p.made_on
    assert made_for(p, run) is None
    assert made_for(p, {**run, "dataset": "math500"}) == "made on dataset gsm8k (this run: math500)"
    assert made_for(p, {"dataset": "nq", "answer_type": "text"}) == \
        "made on dataset gsm8k (this run: nq) and answer type number (this run: text)"
    # a preset from before: loads unchanged, writes no made_on, and warns about nothing
    old = sample_preset().to_dict()
    assert "made_on" not in old and from_dict(old).to_dict() == old and made_for(from_dict(old), run) is None
    # one half known: only that half is compared
    half = from_dict({**old, "made_on": {"answer_type": "number"}})
    assert made_for(half, {"dataset": "x", "answer_type": "number"}) is None


@pytest.mark.parametrize("made_on,match", [
    ("gsm8k", "field 'made_on': must be an object"),
    ({"dataset": "a", "run": "r1"}, "unknown key 'run'"),
    ({"dataset": 3}, "field 'made_on.dataset': must be a string"),
    ({"answer_type": "numeric"}, "field 'made_on.answer_type': must be one of number, math, text, choice"),
])
def test_a_bad_made_on_is_a_clear_error(made_on, match):
    with pytest.raises(PresetError, match=match):
        from_dict({**sample_preset().to_dict(), "made_on": made_on})
