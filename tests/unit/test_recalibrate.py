"""The closed loop (analysis/production/recalibrate.py, issue 23): certify on labelled exploration traffic, apply only
what certifies, one limited step at a time, every version kept; the drift scenario end to end."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis.evaluate.certify import certify
from analysis.ingest.synthetic import synthetic_tables
from analysis.presets.schema import Preset, from_dict, load
from analysis.production.controller import Controller, simulate
from analysis.production.recalibrate import MIN_CERTIFY, history_records, recalibrate
from analysis.replay.engine import RunTable, replay
from analysis.replay.policies.base import Setting

EPS, DELTA = 0.05, 0.1


def _table(n, seed, difficulty, settle):
    qs, _, ck = synthetic_tables(n, 30, seed=seed, difficulty=difficulty, settle=settle)
    t = RunTable.from_arrow(ck)
    t.meta = pd.DataFrame({"question_id": t.question_ids, "question_chars": [len(q.text) for q in qs],
                           "meta.difficulty": [q.meta["difficulty"] for q in qs]})
    return t


def _stream(t, preset, path):
    """Serve a run's questions through the controller (a decision log) and label them (the gold is 42)."""
    simulate(t, Controller(preset, log=path), with_em=False)
    labels = path.with_suffix(".labels.jsonl")
    labels.write_text("".join(json.dumps({"request": q, "gold": "42"}) + "\n" for q in t.question_ids))
    return labels


def _drop(t, setting):
    s = replay(t, setting).summary()
    return (s["lost"] - s["gained"]) / s["n"], s["tokens_emitted"]


@pytest.fixture(scope="module")
def easy_preset():
    """Calibrated on easy questions (answers settle early): the budget family's certified setting."""
    easy = _table(600, 1, (0.0, 0.5), (0.1, 0.5))
    c = certify(easy, EPS, DELTA, families=["budget"])
    assert c["certified"]
    return Preset("easy", Setting.from_dict(c["setting"]), routing={"explore": 0.9},
                  certificate={k: v for k, v in c.items() if k != "families"})


def test_drift_to_hard_questions_certifies_a_more_conservative_setting(easy_preset, tmp_path):
    """The stream shifts to hard questions (answers settle late): the easy certificate no longer holds there; the
    loop certifies a larger budget on the labelled exploration requests, and on new hard questions its EM drop is
    back within epsilon."""
    hard = _table(600, 3, (0.5, 1.0), (0.6, 0.95))
    log = tmp_path / "hard.jsonl"
    labels = _stream(hard, easy_preset, log)
    hist = tmp_path / "history.jsonl"
    res = recalibrate(log, labels, easy_preset, EPS, DELTA, families=["budget"], history=str(hist))
    assert res["n_explore"] >= 300 and res["observed"]["em_drop"] > EPS        # the old promise is broken here
    assert res["applied"] and res["direction"] == "more conservative", res["reason"]
    new = load(json.dumps(res["preset"]))
    assert new.routing["explore"] == easy_preset.routing["explore"]            # exploration goes on
    assert new.certificate["epsilon"] == EPS and new.certificate["data"]["n"] == res["n_explore"]
    assert new.setting.params["B"] > easy_preset.setting.params["B"]
    fresh = _table(3000, 4, (0.5, 1.0), (0.6, 0.95))                          # new questions, drawn like the stream
    old_drop, old_tok = _drop(fresh, easy_preset.setting)
    new_drop, new_tok = _drop(fresh, new.setting)
    assert old_drop > EPS >= new_drop and new_tok > old_tok
    # served again: the new version through the controller on those new questions; the monitor's measure (its
    # exploration requests' shadow stops against their full-length answers) has the drop back within epsilon
    served = tmp_path / "served.jsonl"
    res2 = recalibrate(served, _stream(fresh, new, served), new, EPS, DELTA, families=["budget"])
    assert res2["n_explore"] >= 2000 and res2["observed"]["em_drop"] <= EPS < res["observed"]["em_drop"], res2
    recs = history_records(hist)
    assert [r["version"] for r in recs] == [0, 1] and recs[1]["applied"]
    assert recs[0]["preset"]["setting"] == easy_preset.setting.to_dict()
    assert recs[1]["certificate"]["epsilon"] == EPS and len(recs[1]["data"]["requests"]) == res["n_explore"]


def test_below_the_minimum_it_says_how_many_and_keeps_the_champion(easy_preset, tmp_path):
    small = _table(30, 5, (0.0, 0.5), (0.1, 0.5))
    log = tmp_path / "small.jsonl"
    res = recalibrate(log, _stream(small, easy_preset, log), easy_preset, EPS, DELTA, history=str(tmp_path / "h.jsonl"))
    assert not res["applied"] and res["n_explore"] < MIN_CERTIFY
    assert f"{MIN_CERTIFY - res['n_explore']} more" in res["reason"]
    assert from_dict(res["preset"]).setting == easy_preset.setting
    assert [r["applied"] for r in history_records(tmp_path / "h.jsonl")] == [True, False]


def test_nothing_certified_says_what_stays_deployed_and_what_to_do(easy_preset, tmp_path):
    """Enough requests, but too few to certify anything at ε = 0.01: the answer says the champion stays deployed
    (with the certificate it had), what it did on these requests, how many more would do, and what to do
    meanwhile (it said "run full length" before, while leaving the champion deployed)."""
    hard = _table(45, 9, (0.5, 1.0), (0.6, 0.95))
    log = tmp_path / "few.jsonl"
    res = recalibrate(log, _stream(hard, easy_preset, log), easy_preset, 0.01, DELTA, families=["budget"],
                      history=str(tmp_path / "h.jsonl"))
    r = res["reason"]
    assert not res["applied"] and res["n_explore"] >= MIN_CERTIFY and not res["certificate"]["certified"], r
    assert r.startswith("not applied: no setting's EM drop is provably at most ε = 0.01") and "run full length" not in r
    assert f"The deployed preset ({easy_preset.setting.label()}) stays as it is, with its certificate" in r
    assert f"drops {res['observed']['em_drop']:+.3f} EM" in r
    assert "more) would certify" in r or "would not help" in r
    assert from_dict(res["preset"]).setting == easy_preset.setting


def test_requests_a_certificate_used_are_not_used_again(easy_preset, tmp_path, cli):
    """Run twice on the same log: the second run has no new requests (it re-certified on the same ones and
    appended an identical version before); a setting that certifies and is the deployed one is no change."""
    hard = _table(300, 7, (0.5, 1.0), (0.6, 0.95))
    log = tmp_path / "h.jsonl"
    labels = _stream(hard, easy_preset, log)
    hist = tmp_path / "hist.jsonl"
    first = recalibrate(log, labels, easy_preset, EPS, DELTA, families=["budget"], history=str(hist))
    assert first["applied"], first["reason"]
    new = load(json.dumps(first["preset"]))
    again = recalibrate(log, labels, new, EPS, DELTA, families=["budget"], history=str(hist))
    assert not again["applied"] and again["n_explore"] == 0 and again["n_already_used"] == first["n_explore"]
    assert "the log has 0 new ones" in again["reason"] and "certificate of version 1 already" in again["reason"]
    assert [r["applied"] for r in history_records(hist)] == [True, True, False]
    # the same requests unspent (another history): the certified setting is the deployed one, said as such
    same = recalibrate(log, labels, new, EPS, DELTA, families=["budget"], history=str(tmp_path / "other.jsonl"))
    assert not same["applied"] and same["unchanged"] and same["reason"].startswith("no change: "), same["reason"]
    pf, out = tmp_path / "p.json", tmp_path / "out.json"
    pf.write_text(new.to_json())
    out.write_text(new.to_json())
    before = out.stat().st_mtime_ns
    code, stdout, err = cli("recalibrate", "--log", log, "--labels", labels, "--preset", pf, "--epsilon", EPS,
                            "--delta", DELTA, "--family", "budget", "--out", out, "--history", tmp_path / "third.jsonl")
    assert code == 0 and "NO CHANGE" in stdout and "APPLIED" not in stdout, err + stdout
    assert f"--out {out}: left as it was" in stdout and out.stat().st_mtime_ns == before


def test_a_step_toward_fewer_tokens_is_limited(tmp_path):
    """A very conservative champion on easy traffic: the loop moves toward fewer tokens at most the declared (here overridden) step."""
    easy = _table(700, 6, (0.0, 0.5), (0.1, 0.5))
    champ = Preset("slow", Setting.make("budget", B=int(np.quantile(easy.full_tokens, 0.95))), routing={"explore": 0.6})
    log = tmp_path / "e.jsonl"
    res = recalibrate(log, _stream(easy, champ, log), champ, EPS, DELTA, families=["budget"],
                      step={"budget": 1})
    assert res["applied"] and res["direction"] == "more aggressive"
    assert res["step_limited"]["budget"]["held_back"] >= 1
    free = recalibrate(log, log.with_suffix(".labels.jsonl"), champ, EPS, DELTA, families=["budget"],
                       step={"budget": 100})
    assert from_dict(free["preset"]).setting.params["B"] < from_dict(res["preset"]).setting.params["B"]


def test_cli_recalibrate(easy_preset, tmp_path, cli):
    hard = _table(300, 7, (0.5, 1.0), (0.6, 0.95))
    log = tmp_path / "h.jsonl"
    labels = _stream(hard, easy_preset, log)
    pf = tmp_path / "p.json"
    pf.write_text(easy_preset.to_json())
    out = tmp_path / "p2.json"
    code, stdout, err = cli("recalibrate", "--log", log, "--labels", labels, "--preset", pf, "--epsilon", EPS,
                            "--delta", DELTA, "--family", "budget", "--out", out, "--history", tmp_path / "hist.jsonl")
    assert code in (0, 1), err
    assert ("APPLIED" in stdout) == (code == 0) and "labelled exploration requests" in stdout
    assert load(str(out)).routing["explore"] == easy_preset.routing["explore"]


# -- the Monitor's recalibration guard (issue 22 item 5) ------------------------------------------------------
def test_monitor_never_proposes_a_preset_worse_on_both_axes(easy_preset, tmp_path, monkeypatch):
    from analysis.evaluate import optimize
    from analysis.production import monitor as mon
    easy = _table(200, 8, (0.0, 0.5), (0.1, 0.5))
    champ = Preset("conf", Setting.make("confidence", tau=0.9), routing={"explore": 0.5})
    log = tmp_path / "m.jsonl"
    labels = _stream(easy, champ, log)

    def full_length_op(t, goal, value, cost="emitted", families=None, n_boot=2000, pts=None):
        test = t.subset(optimize.split_mask(t.question_ids, "test"))
        s = Setting.make("budget", B=32768)          # runs to the end: more tokens, and it gains nothing
        return {"setting": s.to_dict(), "label": s.label(), "tune": {"n": 1},
                "test": optimize.evaluate(test, optimize.stop_index(test, s), s.label(), 0)}
    monkeypatch.setattr(mon, "operating_point", full_length_op)
    res = mon.monitor(log, easy, champ, labels)
    prop = res["proposal"]
    assert not prop["ok"] and "no better than the deployed preset" in prop["reason"], prop
    few = tmp_path / "few.jsonl"
    res = mon.monitor(few, easy, champ, _stream(easy.subset(np.arange(20)), champ, few))
    assert not res["proposal"]["ok"] and res["proposal"]["needed"] == mon.MIN_EXPLORE - res["proposal"]["n"]
    assert f"{res['proposal']['needed']} more" in res["proposal"]["reason"]
