"""Decision exactness (a property of our code) and numeric agreement (a property of the hardware), kept apart:
``verify.check_decisions`` replays a decision log on the values it logged; ``verify.compare_values`` says where
live values left the recorded ones; ``robustness.stop_sensitivity`` says how many stops such noise moves."""
import json

import numpy as np
import pytest

from analysis.production.controller import Controller, simulate
from analysis.production.monitor import read_log
from analysis.presets.schema import from_dict
from analysis.evaluate.robustness import noise_from, perturb, stop_sensitivity
from analysis.production.verify import check_decisions, compare_values
from tests.helpers import synthetic_table


@pytest.fixture(scope="module")
def table():
    return synthetic_table(120, 20, seed=4)


def _preset(setting, routing=None):
    return from_dict({"stopline_preset": 1, "name": "p", "setting": setting, **({"routing": routing} if routing else {})})


ROUTED = {"ab": {"challenger": {"stopline_preset": 1, "setting": {"family": "consistency", "params": {"k": 3}}},
                 "share": 0.3, "salt": "v"}, "explore": 0.2}


@pytest.mark.parametrize("setting", [{"family": "confidence", "params": {"tau": 0.9}},
                                     {"family": "entropy", "params": {"delta": 1e-3}},
                                     {"family": "hybrid", "params": {"a": {"family": "budget", "params": {"B": 200}},
                                                                     "b": {"family": "consistency", "params": {"k": 2}},
                                                                     "op": "or", "floor": 40}}])
def test_a_log_replays_to_the_decisions_it_records(table, tmp_path, setting):
    log = tmp_path / "live.jsonl"
    simulate(table, Controller(_preset(setting, ROUTED), log=log))
    res = check_decisions(log)
    assert res["n"] == table.n and res["agreement"] == 1.0, res["mismatches"]
    _, ck, fin = read_log(log)
    assert res["checkpoints"] == len(ck) and (fin["arm"] == "explore").any() and fin["stopped"].any()


def test_a_decision_the_replay_would_not_take_is_caught(table, tmp_path, cli):
    log = tmp_path / "live.jsonl"
    simulate(table, Controller(_preset({"family": "consistency", "params": {"k": 2}}), log=log))
    lines = log.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    i = next(k for k, r in enumerate(recs) if r["type"] == "final" and r["stopped"] and r["ck"] > 0)
    recs[i]["ck"] -= 1                                   # the controller "stopped" one checkpoint too early
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = check_decisions(bad)
    assert res["agreement"] == 1 - 1 / table.n
    assert res["mismatches"][0]["request"] == recs[i]["request"]
    assert res["mismatches"][0]["live_ck"] == recs[i]["ck"] and res["mismatches"][0]["replay_ck"] == recs[i]["ck"] + 1
    assert cli("check-log", "--log", log)[0] == 0
    code, out, _ = cli("check-log", "--log", bad)
    assert code == 1 and "differs" in out and recs[i]["request"] in out


def test_live_values_are_compared_checkpoint_by_checkpoint(table, tmp_path):
    log = tmp_path / "live.jsonl"
    # a setting that probes every checkpoint and never stops (a budget probes none but its stop)
    simulate(table, Controller(_preset({"family": "consistency", "params": {"k": 2, "min_tokens": 8192}}), log=log))
    _, ck, _ = read_log(log)
    same, first = compare_values(table, ck)
    assert same["checkpoints_compared"] == len(ck) and same["answers_differ"] == 0 and not first
    q0, q1 = str(table.question_ids[0]), str(table.question_ids[1])
    ck = ck.copy()
    a = ck.index[(ck.request == q0) & (ck.ck == 5)][0]          # q0's first answers come at checkpoint 4
    ck.loc[a, "p_mean"] = ck.loc[a, "p_mean"] + 0.01
    b = ck.index[(ck.request == q1) & (ck.ck == 2)][0]
    ck.loc[b, "answer"] = "not-an-answer"
    ck.loc[ck.index[(ck.request == q1) & (ck.ck == 5)][0], "pos"] += 1
    res, first = compare_values(table, ck, {q0: ("abc", "abcdef", True), q1: ("abx", "abc", False)})
    assert first[q0][:2] == (5, "p_mean") and first[q0][2].startswith("p_mean")
    assert first[q1][:2] == (2, "trial answer") and "not-an-answer" in first[q1][2]
    assert res["n_answers_differ"] == 1 and res["checkpoints_misplaced"] == 1 and res["traces_diverged"] == 1
    assert res["signals"]["p_mean"]["n_differ"] == 1 and res["signals"]["p_mean"]["max_abs"] == pytest.approx(0.01)
    assert res["signals"]["entropy"]["n_differ"] == 0
    # a live checkpoint the recording has none at: where it is, and where the recording's are around it
    p5, p6 = int(table.pos[1, 5]), int(table.pos[1, 6])
    _, ck, _ = read_log(log)
    ck = ck[ck.request == q1].copy()
    ck.loc[ck.ck == 5, "pos"] += 1
    _, first = compare_values(table, ck)
    assert first[q1][:2] == (5, "checkpoint placement"), first
    assert first[q1][2].startswith(f"checkpoint placement: live checkpoint at token {p5 + 1}, the recording's "
                                   f"checkpoints are at tokens {p5} and {p6} around it"), first[q1]


def test_stops_move_with_noise_only_where_the_setting_reads_it(table):
    noise = noise_from({"answers_differ": 0.0, "signals": {"p_mean": {"differ": 0.5, "quantiles": [0.0, 0.05]}}})
    conf = _preset({"family": "confidence", "params": {"tau": 0.9}})
    assert stop_sensitivity(table, conf, noise_from({}), draws=3)["moved_share"] == 0
    moved = stop_sensitivity(table, conf, noise, draws=5)
    assert 0 < moved["moved_share"] < 1 and moved["moved_range"][0] <= moved["moved_share"] <= moved["moved_range"][1]
    assert stop_sensitivity(table, conf, noise, draws=5, scale=4)["moved_share"] > moved["moved_share"]
    budget = _preset({"family": "budget", "params": {"B": 100}})
    assert stop_sensitivity(table, budget, noise, draws=3)["moved_share"] == 0
    flips = noise_from({"answers_differ": 0.2})
    assert stop_sensitivity(table, _preset({"family": "consistency", "params": {"k": 3}}), flips, draws=3)["moved_share"] > 0
    p = perturb(table, noise, np.random.default_rng(0), scale=100)
    assert np.nanmax(p.p_mean) <= 1 and np.nanmin(p.p_mean) >= 0
    assert np.array_equal(p.p_mean[table.rows, table.final_idx], table.p_mean[table.rows, table.final_idx],
                          equal_nan=True)


def test_sensitivity_cli_reads_verify_output(synthetic_db, tmp_path, cli):
    db, rid, _ = synthetic_db
    noise = tmp_path / "verify.json"
    noise.write_text(json.dumps({"numeric": {"answers_differ": 0.01,
                                             "signals": {"p_mean": {"differ": 0.3, "quantiles": [0.001, 0.02]}}}}))
    preset = json.dumps({"stopline_preset": 1, "name": "c", "setting": {"family": "confidence", "params": {"tau": 0.9}}})
    code, out, err = cli("sensitivity", "--run", rid, "--preset", preset, "--noise", noise, "--scale", 1, "--scale", 4,
                         "--draws", 4, "--db", db, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [r["scale"] for r in res["results"]] == [1, 4] and res["results"][1]["moved_share"] > 0
    noise.write_text("[1, 2]")
    code, _, err = cli("sensitivity", "--run", rid, "--preset", preset, "--noise", noise, "--db", db)
    assert code == 2 and "verify.json" in err and "JSON object" in err


def test_a_request_ended_by_an_upstream_failure_is_not_replayed_as_the_presets_decision(tmp_path):
    """The gateway's --on-upstream-error answer ends a request where the upstream failed (final record with
    cause upstream_error): check-log leaves it out and counts it, and still replays the others. The same
    record without the cause is a stop the never-stopping preset would not make: a disagreement."""
    import json
    from analysis.production.verify import check_decisions
    never = {"family": "budget", "params": {"B": 32768}}

    def log(cause):
        rows = [{"type": "header", "stopline_log": 1, "answer_type": "number", "checkpoints": {"every": 32}}]
        for r, stopped in (("a", True), ("b", False)):
            for j, pos in enumerate((32, 64)):
                rows.append({"type": "checkpoint", "request": r, "arm": "champion", "ck": j, "pos": pos,
                             "kind": "interval", "answer": "1", "answer_tokens": 1, "probe_tokens": 5,
                             "decision": "continue"})
            fin = {"type": "final", "request": r, "arm": "champion", "setting": never, "stopped": stopped,
                   "ck": 0 if stopped else 1, "stop_pos": 32 if stopped else 64, "tokens_emitted": 40,
                   "n_checkpoints": 2}
            rows.append({**fin, "cause": cause} if stopped and cause else fin)
        (tmp_path / "l.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        return check_decisions(str(tmp_path / "l.jsonl"))

    res = log("upstream_error")
    assert res["ended_by_upstream"] == 1 and res["n"] == 1 and res["agreement"] == 1.0, res
    assert res["causes"] == {"upstream_error": 1}             # said by cause: a refusal is not a failure
    for cause in ("upstream_rejected", "gateway_failed"):
        assert log(cause)["causes"] == {cause: 1}
    res = log(None)
    assert res["ended_by_upstream"] == 0 and res["n"] == 2 and res["agreement"] == 0.5, res
