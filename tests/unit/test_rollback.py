"""Automatic rollback (analysis/production/rollback.py, issue 23 item 4): a sequential test of the deployed version's
certificate on live exploration requests; it fires on a real drift and not on traffic like the calibration's, and
the rollback is a new version in the history. Real stored data: the demo store's qwen2.5-coder-0.5b runs."""
import json

import numpy as np
import pytest

from analysis.evaluate.certify import certify
from analysis.presets.schema import Preset, load
from analysis.production.controller import Controller, simulate
from analysis.production.recalibrate import history_records, record_deployed
from analysis.production.rollback import rollback, sequential_test
from analysis.replay.engine import RunTable
from analysis.replay.policies.base import Setting

EPS, DELTA = 0.05, 0.1
EASY, OTHER = "c7a2483a9092", "7b48e137cfbb"    # easy arithmetic (calibration), harder arithmetic (a shift)


def _preset(t, name):
    c = certify(t, EPS, DELTA, families=["budget"])
    assert c["certified"], c["message"]
    return Preset(name, Setting.from_dict(c["setting"]), routing={"explore": 1.0},
                  certificate={k: v for k, v in c.items() if k != "families"})


@pytest.fixture(scope="module")
def world(demo):
    """v0: a budget certified on the whole easy run; v1: one certified on its short-trace half only (more
    aggressive: it saw no long reasoning). Golds from the store, for the late labels."""
    t = RunTable.from_store(demo, EASY)
    other = RunTable.from_store(demo, OTHER)
    short = t.full_tokens <= np.median(t.full_tokens)
    p0, p1 = _preset(t, "whole run"), _preset(t.subset(np.flatnonzero(short)), "short questions")
    assert p1.setting.params["B"] < p0.setting.params["B"]
    gold = {}
    for rid in (EASY, OTHER):
        q = demo.questions(demo.run(rid)["dataset"]).to_pandas()
        gold.update(dict(zip(q["question_id"], q["gold"].map(json.loads))))
    return {"t": t, "other": other, "short": t.subset(np.flatnonzero(short)), "long": t.subset(np.flatnonzero(~short)),
            "p0": p0, "p1": p1, "gold": gold}


def _serve(world, t, preset, path):
    """Serve a run's questions through the controller (all explored: full length, every checkpoint logged) and
    write their late labels from the store's golds."""
    simulate(t, Controller(preset, log=path), with_em=False)
    labels = path.with_suffix(".labels.jsonl")
    labels.write_text("".join(json.dumps({"request": str(q), "gold": world["gold"][q]}) + "\n" for q in t.question_ids))
    return labels


def _history(world, path):
    record_deployed(path, world["p0"], "certified on the whole easy run")
    record_deployed(path, world["p1"], "certified on its short questions")
    return str(path)


def test_a_drift_to_long_questions_rolls_back(world, tmp_path):
    """v1 served the long-trace questions it never saw: its EM drop there is far above ε, the test fires, and
    production returns to v0, recorded as v2."""
    hist = _history(world, tmp_path / "h.jsonl")
    log = tmp_path / "long.jsonl"
    res = rollback(log, _serve(world, world["long"], world["p1"], log), world["p1"], hist)
    assert res["rolled_back"], res["reason"]
    assert res["test"]["mean"] > EPS and res["test"]["at"] < res["test"]["n"] - 1      # it fired before the end
    assert load(json.dumps(res["preset"])).setting == world["p0"].setting and res["to_version"] == 0
    recs = history_records(hist)
    assert [r["version"] for r in recs] == [0, 1, 2]
    assert recs[2]["rollback"] and recs[2]["rolled_back_from"] == 1 and recs[2]["rolled_back_to"] == 0
    assert recs[2]["certificate"]["epsilon"] == EPS and len(recs[2]["data"]["requests"]) == world["long"].n
    # v0 on the same requests holds: no second rollback
    again = rollback(log, log.with_suffix(".labels.jsonl"), load(json.dumps(res["preset"])), hist)
    assert not again["rolled_back"] and again["test"]["n"] == 0         # they were served under v1, not v0
    assert again["reason"].startswith("nothing to test yet: no labelled exploration request served under version 2")
    assert "nan" not in again["reason"]                                 # (it said "the EM drop is +nan" before)


def test_traffic_like_the_calibration_does_not_roll_back(world, tmp_path):
    """v1 on the questions like the ones it was certified on, and v0 on another dataset whose drop stays within
    ε: the test does not fire, and the history is unchanged."""
    hist = _history(world, tmp_path / "h.jsonl")
    for t, p in ((world["short"], world["p1"]), (world["other"], world["p0"])):
        log = tmp_path / f"{p.name}.jsonl"
        res = rollback(log, _serve(world, t, p, log), p, hist)
        assert not res["rolled_back"] and not res["test"]["fired"], res["reason"]
        assert res["test"]["n"] == t.n and res["test"]["mean"] <= EPS and "holds" in res["reason"]
    assert len(history_records(hist)) == 2


def test_cli_recalibrate_rollback(world, tmp_path, cli):
    hist = _history(world, tmp_path / "h.jsonl")
    log = tmp_path / "long.jsonl"
    labels = _serve(world, world["long"], world["p1"], log)
    pf, out = tmp_path / "p1.json", tmp_path / "out.json"
    pf.write_text(world["p1"].to_json())
    code, stdout, err = cli("recalibrate", "--log", log, "--labels", labels, "--preset", pf, "--out", out,
                            "--history", hist, "--rollback", "--epsilon", EPS, "--delta", DELTA)
    assert code == 0, err
    assert "ROLLED BACK to version 0" in stdout and load(str(out)).setting == world["p0"].setting


def test_the_sequential_test_keeps_its_false_alarm_rate():
    """Losses whose mean is exactly ε (the null's edge), looked at after every one of 400 requests, in 1,000
    streams: the share that ever fires is at most α (plus binomial slack); a mean 0.15 above ε fires in most."""
    rng = np.random.default_rng(0)
    alpha = 0.05
    # drop losses in {-1, 0, 1}: P(lost) - P(gained) = ε
    p_lost, p_gained = 0.05 + EPS, 0.05
    null = [sequential_test(rng.choice([1.0, -1.0, 0.0], 400, p=[p_lost, p_gained, 1 - p_lost - p_gained]), EPS, alpha)
            for _ in range(1000)]
    rate = np.mean([r["fired"] for r in null])
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 1000), rate
    alt = [sequential_test(rng.choice([1.0, -1.0, 0.0], 400, p=[0.2 + EPS, 0.05, 0.75 - EPS]), EPS, alpha)
           for _ in range(200)]
    assert np.mean([r["fired"] for r in alt]) > 0.8
    with pytest.raises(Exception, match=r"losses must lie in \[0, 1\]"):
        sequential_test(np.array([0.5, -0.5]), EPS, alpha, low=0.0)


def test_out_of_step_says_when_the_history_deploys_another_setting_than_the_log_ran():
    from analysis.production.rollback import out_of_step
    b100, b200 = (Preset(f"b{b}", Setting.from_dict({"family": "budget", "params": {"B": b}})) for b in (100, 200))
    assert out_of_step(b100, {**b100.to_dict(), "name": "renamed"}, 3) is None      # the same setting: fine
    assert out_of_step(b100, None, 3) is None                              # the log names no preset
    assert out_of_step(b100, {"stopline_preset": 1, "setting": "not a setting"}, 3) is None    # said elsewhere
    said = out_of_step(b100, b200.to_dict(), 3)
    assert said.startswith("The version history deploys version 3 (budget(B=100)), but this log's gateway ran "
                           "budget(B=200)"), said
    assert "history deploys budget(B=100), but" in out_of_step(b100, b200.to_dict())     # no version
