"""The production loop: routing, the live controller (stream and generation), fidelity, monitoring."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis.production.controller import Controller, StreamSession, check_deployable, simulate
from analysis.core.errors import PresetError
from analysis.production.monitor import monitor, read_log
from analysis.presets.schema import from_dict, loads
from analysis.presets.routing import preset_outcome, preset_stops
from analysis.replay.engine import RunTable
from analysis.presets.routing import request_fields, route, route_table
from analysis.ingest.synthetic import write_synthetic_run
from tests.helpers import synthetic_table


_table = synthetic_table


def _preset(setting, routing=None, name="p"):
    d = {"stopline_preset": 1, "name": name, "setting": setting}
    if routing:
        d["routing"] = routing
    return from_dict(d)


ROUTING = {"rules": [{"if": {"field": "tag.difficulty", "in": [3]}, "setting": {"family": "budget", "params": {"B": 128}}},
                     {"if": {"field": "question_chars", "min": 40, "max": 48},
                      "setting": {"family": "consistency", "params": {"k": 4}}}],
           "ab": {"challenger": {"stopline_preset": 1, "setting": {"family": "consistency", "params": {"k": 2}}},
                  "share": 0.3, "salt": "exp"},
           "explore": 0.1}


@pytest.mark.parametrize("setting", [
    {"family": "budget", "params": {"B": 300}},
    {"family": "consistency", "params": {"k": 3}},
    {"family": "confidence", "params": {"tau": 0.9, "aggregate": "min"}},
    {"family": "entropy", "params": {"delta": 0.1}},
    {"family": "hybrid", "params": {"op": "and", "floor": 64}},
])
@pytest.mark.parametrize("routed", [False, True])
def test_stream_controller_stops_where_replay_predicts(setting, routed):
    t = _table()
    p = _preset(setting, ROUTING if routed else None)
    want = preset_stops(t, p)
    recs = simulate(t, Controller(p))
    got = np.array([r["ck"] if r["stopped"] else t.final_idx[i] for i, r in enumerate(recs)])
    assert (got == want).all()
    assert 0 < (want < t.final_idx).sum() < t.n or setting["family"] == "budget"   # a real mix of stops
    assert np.allclose([r["tokens_emitted"] for r in recs], t.emitted[t.rows, want])
    if routed:
        arms = pd.Series([r["arm"] for r in recs]).value_counts()
        assert {"champion", "challenger", "explore"} <= set(arms.index)


@pytest.mark.parametrize("schedule", [{}, {"every": 2}])
def test_stream_controller_and_replay_agree_where_entropies_are_missing(schedule):
    """A probe without an entropy (NaN; None in the log) fires neither side's entropy rule, and the EMA carries
    over it, live as in replay: questions with no entropy at all run to their end, the others never stop on a
    missing one."""
    t = _table(120)
    h = t.cols["entropy"]
    rng = np.random.default_rng(3)
    h[:20] = np.nan                                          # no entropy at all
    h[20:] = np.where(rng.random(h[20:].shape) < 0.3, np.nan, h[20:])
    p = _preset({"family": "entropy", "params": {"delta": 0.1, "min_steps": 1}, "schedule": schedule})
    want = preset_stops(t, p)
    recs = simulate(t, Controller(p, every=t.interval))
    assert (np.array([r["stop_pos"] for r in recs]) == t.pos[t.rows, want]).all()
    early = want < t.final_idx
    assert not early[:20].any() and early[20:].any()
    assert not np.isnan(h[t.rows, want][early]).any()


@pytest.mark.parametrize("setting", [{"family": "confidence", "params": {"tau": 0.9}},
                                     {"family": "consistency", "params": {"k": 3}, "schedule": {"every": 2}},
                                     {"family": "budget", "params": {"B": 300}}])
def test_tokens_computed_in_the_final_record_are_the_replays(setting):
    """Tokens computed (emitted plus every probe up to the stop, domain.md): the controller's final records equal
    the replay's, also for a request that ran to its end (it left out its last checkpoint's probe) or explored."""
    from analysis.replay.engine import computed_tokens
    t = _table(150)
    p = _preset(setting, {"explore": 0.2})
    want = preset_stops(t, p)
    recs = simulate(t, Controller(p, every=t.interval))
    full = want == t.final_idx
    assert full.any() and (~full).any() and any(r["arm"] == "explore" for r in recs)
    assert np.array_equal([r["tokens_computed"] for r in recs], preset_outcome(t, p).computed)
    mine = np.array([r["arm"] != "explore" for r in recs])     # an exploration request probes even for a budget
    assert np.array_equal(np.array([r["tokens_computed"] for r in recs])[mine],
                          computed_tokens(t, want, p.setting)[mine])


def test_live_route_equals_vectorised_route_table():
    t = _table(200)
    p = _preset({"family": "confidence", "params": {"tau": 0.9}}, ROUTING)
    arm, settings, choice = route_table(t, p)
    for i in range(t.n):
        f = request_fields("x" * int(t.meta["question_chars"][i]), {"difficulty": int(t.meta["meta.difficulty"][i])},
                           {"difficulty": int(t.meta["meta.difficulty"][i])})
        r = route(p, str(t.question_ids[i]), f)
        assert r.arm == arm[i] and r.setting == settings[choice[i]]


def test_slices_by_a_number_route_live_as_in_replay_when_a_question_lacks_it():
    """A column with a missing value is read as floats: its slice labels were "2.0", "3.0" (and "nan"), so a
    request sending {"difficulty": 2} matched no slice live and got the default. Labels are now the value's
    own ("2"), in replay and live, and a preset saved with "2.0" keys routes the same."""
    from analysis.replay.slices import slice_labels
    t = _table(200)
    d = t.meta["meta.difficulty"].to_numpy(dtype=float).copy()
    d[::17] = np.nan
    t.meta["meta.difficulty"] = d
    assert set(slice_labels(t, "meta.difficulty")) == {"(none)", *{str(int(x)) for x in d[~np.isnan(d)]}}
    k3 = {"family": "consistency", "params": {"k": 3}}
    for keys in ("2", "2.0"):
        p = from_dict({"stopline_preset": 1, "name": "s", "setting": {"family": "budget", "params": {"B": 64}},
                       "slices": {"by": "meta.difficulty", "settings": {keys: k3}}})
        check_deployable(p)
        arm, settings, choice = route_table(t, p)
        assert (np.asarray(settings, dtype=object)[choice] == p.slices[keys]).sum() == (d == 2).sum() > 0
        for i in range(t.n):
            meta = {} if np.isnan(d[i]) else {"difficulty": int(d[i])}
            assert route(p, str(t.question_ids[i]), request_fields("q", meta)).setting == settings[choice[i]]
    huge = route(p, "x", request_fields("q", {"difficulty": 10 ** 400}))      # JSON carries such an integer
    assert huge.setting == p.setting and huge.reason == "default"
    both = from_dict({"stopline_preset": 1, "name": "s", "setting": {"family": "budget", "params": {"B": 64}},
                      "slices": {"by": "meta.difficulty", "settings": {"2": k3, "2.0": {"family": "budget",
                                                                                       "params": {"B": 8}}}}})
    arm, settings, choice = route_table(t, both)                               # two keys, one label: the first
    at2 = int(np.flatnonzero(d == 2)[0])
    assert settings[choice[at2]] == both.slices["2"]
    assert route(both, "y", request_fields("q", {"difficulty": 2})).setting == both.slices["2"]
    assert (preset_stops(t, both)[d == 2] == preset_stops(t, p)[d == 2]).all()


def test_ab_split_is_stable_and_near_its_share():
    p = _preset({"family": "budget", "params": {"B": 64}}, {"ab": ROUTING["ab"]})
    arms = [route(p, f"req-{i}", {}).arm for i in range(4000)]
    assert arms == [route(p, f"req-{i}", {}).arm for i in range(4000)]
    assert 0.27 < arms.count("challenger") / 4000 < 0.33


def test_high_priority_traffic_stops_less_aggressively():
    t = _table(400)
    t.meta["meta.priority"] = np.where(np.arange(t.n) % 4 == 0, "high", "normal")
    p = _preset({"family": "consistency", "params": {"k": 2}},
                {"rules": [{"if": {"field": "tag.priority", "eq": "high"},
                            "setting": {"family": "consistency", "params": {"k": 5}}}]})
    stop = preset_stops(t, p)
    high = t.meta["meta.priority"].to_numpy() == "high"
    assert t.pos[t.rows, stop][high].mean() > t.pos[t.rows, stop][~high].mean()


@pytest.mark.parametrize("bad, field", [
    ({"rules": [{"if": {"field": "nope", "eq": 1}, "setting": {"family": "budget"}}]}, "routing.rules[0].if.field"),
    ({"rules": [{"if": {"field": "meta.x"}, "setting": {"family": "budget"}}]}, "routing.rules[0].if"),
    ({"rules": [{"if": {"field": "meta.x", "min": "a"}, "setting": {"family": "budget"}}]}, "routing.rules[0].if.min"),
    ({"rules": [{"if": {"field": "meta.x", "eq": 1}, "setting": {"family": "nope"}}]},
     "routing.rules[0].setting.family"),
    ({"ab": {"challenger": {"stopline_preset": 1, "setting": {"family": "budget"}}, "share": 2}}, "routing.ab.share"),
    ({"ab": {"challenger": {"setting": {"family": "budget"}}}}, "routing.ab.challenger.stopline_preset"),
    ({"explore": -0.1}, "routing.explore"),
    ({"shadow": 1}, "routing"),
])
def test_bad_routing_names_the_field(bad, field):
    with pytest.raises(PresetError) as e:
        _preset({"family": "budget", "params": {}}, bad)
    assert e.value.field == field


def test_routing_survives_a_link_round_trip():
    p = _preset({"family": "confidence", "params": {"tau": 0.9}}, ROUTING)
    q = loads(p.to_url())
    assert q.to_dict() == p.to_dict()


def test_controller_refuses_what_it_cannot_reproduce():
    with pytest.raises(PresetError, match="learned"):
        check_deployable(_preset({"family": "learned", "params": {}}))
    with pytest.raises(PresetError, match="learned"):
        check_deployable(_preset({"family": "hybrid", "params": {"a": {"family": "learned", "params": {}}}}))
    with pytest.raises(PresetError, match="one request"):
        check_deployable(from_dict({"stopline_preset": 1, "setting": {"family": "budget"},
                                    "slices": {"by": "length", "settings": {"short": {"family": "budget"}}}}))


def test_a_stream_checkpoint_that_is_a_step_and_a_transition_is_probed_on_a_steps_schedule(tmp_path):
    """After a blank line, "Wait" starts a step and a transition at once: a schedule that probes at steps only
    probes there (as the replay, which keeps both flags), and the log says it was both."""
    p = _preset({"family": "consistency", "params": {"k": 2}, "schedule": {"every": 0, "at_transitions": False}})
    ctl = Controller(p, "number", tmp_path / "log.jsonl", every=4)
    s = StreamSession(ctl, "req-1", "What is 6*7?")
    asked = []
    for ch in ["6", "*", "7", " is", " 42", ".", "\n\n", "Wait", ",", " 42", ".", "\n\n", "Yes", "."]:
        if s.feed(ch, 1):
            asked.append(s.n_tokens)
            if s.probe_result("42", [0.9], 0.3, probe_tokens=6).stop:
                break
            s.feed(ch, 1, resume=True)
    assert asked == [7, 12]                       # both steps, the first one a transition too
    s.end()
    ctl.log.close()
    _, ck, _ = read_log(tmp_path / "log.jsonl")
    assert ck[["is_step", "is_transition"]].values.tolist() == [[True, True], [True, False]]
    from analysis.production.verify import check_decisions
    assert check_decisions(tmp_path / "log.jsonl")["agreement"] == 1.0     # replayed from the log: the same stop


def test_a_budget_on_a_stream_is_probed_only_where_it_stops(tmp_path):
    """A budget reads positions only: the stream asks for no probe until it stops, then one, for its answer."""
    ctl = Controller(_preset({"family": "budget", "params": {"B": 8}}), "number", tmp_path / "log.jsonl", every=4)
    s = StreamSession(ctl, "req-1", "What is 6*7?")
    asked, d = [], None
    for ch in ["6", "*", "7", " is", " 42", ".", " So", " 42", ".", " Done"]:
        if s.feed(ch, 1):
            asked.append(s.n_tokens)
            d = s.probe_result("42", [0.9, 0.8], 0.3, probe_tokens=7)
            assert d.stop
            break
    assert asked == [8] and d.answer == "42" and d.pos == 8
    rec = s.end()
    # charged as the replay charges a budget: it computes what it emits (its probe's cue is not counted)
    assert rec["stopped"] and rec["answer"] == "42" and rec["tokens_emitted"] == 10 and rec["tokens_computed"] == 10
    ctl.log.close()


def test_stream_session_on_a_plain_token_stream(tmp_path):
    """A server elsewhere: feed chunks, probe when asked, stop when told."""
    p = _preset({"family": "consistency", "params": {"k": 2}})
    ctl = Controller(p, "number", tmp_path / "log.jsonl", every=4)
    s = StreamSession(ctl, "req-1", "What is 6*7?")
    chunks = ["Let", " me", " think", ".", "\n\n", "6", "*", "7", " is", " 42", ".", " Wait", ",", " yes", "."]
    probes, stopped = [], None
    for ch in chunks:
        if s.feed(ch, 1):
            probes.append((len(s.text), s._due[0]))
            d = s.probe_result("42" if "42" in s.text else "", [0.9], 0.3, probe_tokens=6)
            if d.stop:
                stopped = d
                break
            s.feed(ch, 1, resume=True)
    # every 4 tokens, after the blank line, before "Wait"; "42" twice in a row stops at token 12
    assert [k for _, k in probes] == ["interval", "step", "interval", "transition", "interval"]
    assert stopped is not None and stopped.answer == "42" and stopped.pos == 12
    rec = s.end()
    assert rec["stopped"] and rec["answer"] == "42" and rec["tokens_emitted"] == 13
    ctl.log.close()
    header, ck, fin = read_log(tmp_path / "log.jsonl")
    assert header["preset"]["setting"]["family"] == "consistency"
    assert list(ck["decision"]) == ["continue"] * 4 + ["stop"]


# --- live generation with a tiny random model ----------------------------------------------------------------
def _tiny_run(tmp_path, cli, limit: int, batch_size: int, probes: str = "batched"):
    """A run of a tiny random model (every 6 tokens) in a scratch store: (store path, run id)."""
    from analysis.backend.tiny import save_tiny
    model_dir = save_tiny(tmp_path / "tiny", seed=7)
    db = tmp_path / "v.duckdb"
    code, out, err = cli("run", "--model", model_dir, "--dataset", "rg:basic_arithmetic", "--limit", limit,
                         "--batch-size", batch_size, "--every", 6, "--max-new-tokens", 40, "--device", "cpu",
                         "--db", db, "--json", "--probes", probes)
    assert code == 0, err
    return db, json.loads(out.strip().splitlines()[-1])["run_id"]


def test_verify_controller_agreement_is_one_on_a_tiny_model(tmp_path, cli):
    # probed as the live controller probes (each checkpoint at once): a batched run's probes attend over masked key
    # columns the live ones do not have, and torch's CPU attention rounds those differently (numerics.py)
    db, rid = _tiny_run(tmp_path, cli, 10, 4, probes="immediate")
    from analysis.core.store import Store
    ck = Store(db, read_only=True).checkpoints(rid).to_pandas()
    tau = float(ck.p_mean.median())             # half the checkpoints pass: a mix of early and full-length stops
    preset = {"stopline_preset": 1, "name": "mix", "setting": {"family": "confidence", "params": {"tau": tau}},
              "routing": {"ab": {"challenger": {"stopline_preset": 1, "setting": {"family": "budget",
                                                                                 "params": {"B": 12}}},
                                 "share": 0.3, "salt": "t"}}}
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps(preset))
    log = tmp_path / "live.jsonl"
    # no --batch-size: the run's own (4, recorded with the run) is taken
    code, out, err = cli("verify-controller", "--run", rid, "--preset", pf, "--device", "cpu",
                         "--db", db, "--log", log, "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["batch_size"] == res["run_batch_size"] == 4
    # decisions on the values the live run saw: exact, on any processor
    assert res["decision_agreement"] == 1.0 and res["decisions"]["n"] == 10, res["decisions"]["mismatches"]
    assert res["n"] == 10 and res["moved"]["unexplained"] == 0, res["mismatches"]
    assert res["run_probes"] == "immediate"
    assert res["exact_expected"]["expected"] == res["platform"]["batch_invariant"]["invariant"], res["exact_expected"]
    if res["exact_expected"]["expected"]:
        # where a row's products do not depend on its batch-mates, the live values are the recorded ones
        assert res["agreement"] == 1.0, res["mismatches"]
        assert res["tokens_agreement"] == 1.0 and res["em_agreement"] == 1.0
        assert res["numeric"]["answers_differ"] == 0 and res["sensitivity"]["moved_share"] == 0, json.dumps(res["numeric"]["signals"])
    assert 0 < res["live"]["stopped_early"] < 10
    # stopping saves real generation work: fewer tokens generated than the recorded full traces
    full = Store(db, read_only=True).run(rid)["mean_tokens"] * 10
    assert res["live"]["generated_tokens"] < full
    header, cks, fin = read_log(log)
    assert len(fin) == 10 and set(fin["arm"]) <= {"champion", "challenger"}


def test_verify_controller_shows_where_each_moved_stop_was(tmp_path, cli):
    """The served model is not the recorded one (another tiny model's weights in its folder): every stop moves, and
    each "differs" line says where, by token, on both sides ("replay stops at ck 0, live at ck 0" said nothing)."""
    import re
    from analysis.backend.tiny import save_tiny
    from analysis.core.store import Store
    db, rid = _tiny_run(tmp_path, cli, 6, 3)
    tau = float(Store(db, read_only=True).checkpoints(rid).to_pandas().p_mean.median())
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps({"stopline_preset": 1, "name": "c", "setting": {"family": "confidence",
                                                                           "params": {"tau": tau}}}))
    save_tiny(tmp_path / "tiny", seed=8)
    code, out, err = cli("verify-controller", "--run", rid, "--preset", pf, "--device", "cpu", "--db", db)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("differs:")]
    assert lines, out
    side = r"token \d+ \((checkpoint \d+|the end)\)"
    assert all(re.search(f"replay stops at {side}, live at {side}: ", ln) for ln in lines), lines


def test_controlled_generate_in_a_transformers_loop():
    """The documented ten-line use: a model, a tokenizer, questions, a preset."""
    from analysis.backend.tiny import build_model
    from analysis.production.controller import controlled_generate
    from analysis.ingest.datasets import load_dataset
    model, tok = build_model(seed=3, initializer_range=0.3)
    ctl = Controller(_preset({"family": "budget", "params": {"B": 10}}), every=5)
    recs = controlled_generate(model, tok, load_dataset("rg:basic_arithmetic", 3).questions, ctl, batch_size=3)
    assert [r["stopped"] for r in recs] == [True] * 3 and all(r["stop_pos"] == 10 for r in recs)


# --- monitoring -------------------------------------------------------------------------------------------------
def _log_from(store, rid, preset, path, label=True):
    t = RunTable.from_store(store, rid)
    simulate(t, Controller(preset, log=path, log_header={"calibration": {"db": str(store.path), "run": "x"}}),
             with_em=False)
    labels = path.with_suffix(".labels.jsonl")
    with open(labels, "w") as f:
        for q in t.question_ids if label else []:
            f.write(json.dumps({"request": q, "gold": "42"}) + "\n")
    return labels


@pytest.fixture(scope="module")
def drift_store(tmp_path_factory):
    from analysis.core.store import Store
    s = Store(tmp_path_factory.mktemp("drift") / "d.duckdb")
    cal = write_synthetic_run(s, 400, 30, seed=1, dataset="easy", difficulty=(0.0, 0.5))
    same = write_synthetic_run(s, 300, 30, seed=2, dataset="easy-later", difficulty=(0.0, 0.5))
    hard = write_synthetic_run(s, 300, 30, seed=3, dataset="hard", difficulty=(0.5, 1.0))
    return s, cal, same, hard


def test_monitor_flags_a_shift_to_harder_questions_and_not_a_same_distribution_sample(drift_store, tmp_path):
    s, cal, same, hard = drift_store
    tc = RunTable.from_store(s, cal)
    p = _preset({"family": "confidence", "params": {"tau": 0.9}}, {"explore": 0.2})
    ok = monitor(tmp_path / "same.jsonl", tc, p, _log_from(s, same, p, tmp_path / "same.jsonl"))
    assert ok["status"] == "ok" and ok["flags"] == []
    bad = monitor(tmp_path / "hard.jsonl", tc, p, _log_from(s, hard, p, tmp_path / "hard.jsonl"))
    assert bad["status"] == "recalibrate"
    flagged = {f["check"] for f in bad["flags"]}
    assert {"tokens", "em", "drift_p_mean"} <= flagged
    assert bad["observed"]["tokens_emitted"] > bad["promised"]["tokens_emitted"]
    prop = bad["proposal"]
    assert prop["ok"] and prop["n"] >= 20 and prop["setting"]["family"]


def test_monitor_ab_and_unlabelled_logs(drift_store, tmp_path):
    s, cal, same, _ = drift_store
    tc = RunTable.from_store(s, cal)
    p = _preset({"family": "confidence", "params": {"tau": 0.95}},
                {"ab": {"challenger": {"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": 96}}},
                        "share": 0.5, "salt": "ab"}})
    res = monitor(tmp_path / "ab.jsonl", tc, p, _log_from(s, same, p, tmp_path / "ab.jsonl"))
    ab = res["ab"]
    assert ab["challenger"]["n"] > 100 and ab["champion"]["n"] > 100
    assert ab["delta_tokens"] < 0 and ab["delta_tokens_ci"][1] < 0        # the tight budget saves tokens
    assert ab["delta_em"] < 0 and ab["em_p_value"] < 0.01                  # and costs EM
    res = monitor(tmp_path / "ab2.jsonl", tc, p, _log_from(s, same, p, tmp_path / "ab2.jsonl", label=False))
    assert res["labelled"] == 0 and "em" not in res["checks"] and not res["proposal"]["ok"]


def test_monitor_cli_and_bad_logs(drift_store, tmp_path, cli):
    s, cal, same, _ = drift_store
    p = _preset({"family": "consistency", "params": {"k": 3}})
    log = tmp_path / "c.jsonl"
    labels = _log_from(s, same, p, log)
    code, out, err = cli("monitor", "--log", log, "--labels", labels, "--run", cal, "--db", s.path, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n_requests"] == 300 and res["labelled"] == 300 and res["promised"]["n"] == 400
    bad = tmp_path / "bad.jsonl"
    bad.write_text(log.read_text().splitlines()[0] + "\n{not json\n")
    code, _, err = cli("monitor", "--log", bad)
    assert code == 2 and "bad.jsonl" in err and "line 2" in err and "Traceback" not in err


def test_monitor_counts_requests_cut_by_their_clients_apart(tmp_path):
    """The gateway's final record of a request whose client left (cause client_disconnected): counted, and left
    out of the preset's figures (tokens, stop rate, EM, stop positions, A/B, the exploration table), its label
    unused (its answer is incomplete); check-log still replays the decisions it logged before the cut."""
    from analysis.production.monitor import _labelled, explore_table, read_labels
    from analysis.production.verify import check_decisions
    b64 = {"family": "budget", "params": {"B": 64}}
    p = _preset(b64)
    rows = [{"type": "header", "stopline_log": 1, "preset": p.to_dict(), "answer_type": "number",
             "checkpoints": {"every": 32}}]
    # request, arm, checkpoint positions (and decisions), where it ended, stopped, answer, cause
    for rid, arm, cks, end, stopped, answer, cause in (
            ("a", "champion", {32: "continue", 64: "stop"}, 64, True, "7", None),
            ("b", "champion", {32: "continue"}, 50, False, "7", None),
            ("c", "champion", {32: "continue"}, 40, False, "", "client_disconnected"),
            ("d", "challenger", {32: "continue"}, 50, False, "7", None),
            ("e", "challenger", {}, 20, False, "", "client_disconnected"),
            ("x", "explore", {32: "continue", 64: "shadow-stop"}, 80, False, "7", None),
            ("y", "explore", {32: "continue"}, 40, False, "", "client_disconnected")):
        for j, (pos, verdict) in enumerate(cks.items()):
            rows.append({"type": "checkpoint", "request": rid, "arm": arm, "ck": j, "pos": pos, "kind": "interval",
                         "answer": "7", "answer_tokens": 2, "probe_tokens": 9, "p_mean": 0.9, "entropy": 0.5,
                         "decision": verdict})
        rec = {"type": "final", "request": rid, "arm": arm, "setting": b64, "question_chars": 6, "stopped": stopped,
               "ck": 1 if stopped else len(cks) - 1, "stop_pos": end, "tokens_emitted": end + 2 * stopped,
               "tokens_computed": end + 9 * len(cks), "answer": answer, "full_length": not stopped and not cause,
               "n_checkpoints": len(cks)}
        if arm == "explore" and "shadow-stop" in cks.values():
            rec["shadow_ck"], rec["shadow_pos"] = 1, 64
        rows.append({**rec, "cause": cause} if cause else rec)
    log, labels = tmp_path / "l.jsonl", tmp_path / "labels.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels.write_text("".join(json.dumps({"request": r, "gold": "7"}) + "\n" for r in "abcdexy"))
    res = monitor(log, _table(60, 10), p, str(labels), propose=False)
    assert res["n_requests"] == 7 and res["cut_by_client"] == 3 and res["ended_by_upstream"] == 0, res
    ob = res["observed"]
    assert ob["n"] == 2 and ob["stop_rate"] == 0.5 and ob["tokens_emitted"] == 58 and ob["em"] == 1.0, ob
    assert res["labelled"] == 4 and int(res["windows"]["requests"].sum()) == 2          # a, b, d, x
    assert res["ab"]["champion"]["n"] == 2 and res["ab"]["challenger"]["n"] == 1, res["ab"]
    _, ck, fin = read_log(log)
    t = explore_table(ck, _labelled(fin, read_labels(labels), "number"), "number")
    assert list(t.question_ids) == ["x"]
    res = check_decisions(str(log))
    assert res["agreement"] == 1.0 and res["n"] == 7 and res["ended_by_upstream"] == 0, res


def test_serve_demo_writes_a_log_and_labels_the_monitor_reads(tmp_path):
    from analysis.backend.prompts import GenConfig
    from analysis.ingest.pipeline import run
    from analysis.backend.tiny import build_model
    from analysis.production.serve_demo import serve_demo
    from analysis.core.store import Store
    tiny = build_model(seed=3, initializer_range=0.3)
    db = tmp_path / "cal.duckdb"
    res = run(Store(db), "tiny", "rg:basic_arithmetic", limit=12, cfg=GenConfig(every=6, max_new_tokens=30),
              batch_size=4, loaded=(*tiny, {"kind": "instruct", "dtype": "float32"}), show_progress=False)
    preset = json.dumps({"stopline_preset": 1, "name": "b12", "setting": {"family": "budget", "params": {"B": 12}},
                         "routing": {"explore": 0.3}})
    out = serve_demo(model="tiny", run=res["run_id"], preset=preset, n=10, seed=5, batch_size=5,
                     log=str(tmp_path / "logs" / "s.jsonl"), db=str(db), loaded=(*tiny, {}), show_progress=False)
    assert out["n"] == 10 and out["stopped"] >= 1
    from analysis.production.monitor import monitor_inputs
    t, p = monitor_inputs([out["log"]])
    rep = monitor([out["log"]], t, p, [out["labels"]])
    assert rep["n_requests"] == 10 and rep["labelled"] == 10 and p.name == "b12"


def test_verify_controller_on_a_sparse_schedule_probes_only_there(tmp_path, cli):
    """A schedule of every 2x the run's interval, no transitions: the live controller probes only there (fewer
    checkpoints logged, none off the schedule), decides exactly as the replay on the values it saw, and stops
    where the replay of the dense recorded run says."""
    from analysis.core.store import Store
    db, rid = _tiny_run(tmp_path, cli, 6, 3, probes="immediate")   # probed as live: exact where products allow
    ck = Store(db, read_only=True).checkpoints(rid).to_pandas()
    tau = float(ck.p_mean.quantile(0.7))
    sch = {"every": 2, "at_transitions": False}
    preset = {"stopline_preset": 1, "name": "sparse",
              "setting": {"family": "confidence", "params": {"tau": tau}, "schedule": sch}}
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps(preset))
    log = tmp_path / "live.jsonl"
    code, out, err = cli("verify-controller", "--run", rid, "--preset", pf, "--device", "cpu", "--db", db,
                         "--log", log, "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["decision_agreement"] == 1.0, res["decisions"]["mismatches"]
    assert res["moved"]["unexplained"] == 0, res["mismatches"]
    assert res["numeric"]["checkpoints_misplaced"] == 0
    if res["exact_expected"]["expected"]:
        assert res["agreement"] == 1.0, res["mismatches"]
    _, cks, fin = read_log(log)
    assert len(cks) and not (cks["kind"] == "transition").any()
    assert all(p % 12 == 0 or k == "step" for p, k in zip(cks["pos"], cks["kind"]))
    # fewer probes than the dense recording made before the same stops
    t = RunTable.from_store(Store(db, read_only=True), rid)
    assert len(cks) < int((t.valid & ~t.is_final).sum())


@pytest.mark.parametrize("sch", [{"every": 2}, {"every": 4, "at_steps": False}, {"every": 0, "min_tokens": 200}])
@pytest.mark.parametrize("family", [{"family": "consistency", "params": {"k": 2}},
                                    {"family": "entropy", "params": {"delta": 0.1}}])
def test_stream_controller_on_a_schedule_stops_where_replay_predicts(sch, family):
    t = _table(120)
    p = _preset({**family, "schedule": sch})
    want = preset_stops(t, p)
    ctl = Controller(p, every=t.interval)
    recs = simulate(t, ctl)
    pos = np.array([r["stop_pos"] for r in recs])
    assert (pos == t.pos[t.rows, want]).all()
    # only scheduled checkpoints were probed: fewer than the run recorded before each stop
    probed = np.array([r["n_checkpoints"] for r in recs])
    assert (probed <= want + 1).all() and (probed < want).any()


def test_an_exploration_request_probes_on_the_declared_schedule_and_is_charged_so(tmp_path):
    """A rule that reads transitions only probes only there; an exploration request probes as declared (every
    checkpoint), since its logged answers serve every family a recalibration certifies, and the replay charges it
    those probes."""
    t = _table(150)
    p = _preset({"family": "confidence", "params": {"tau": 0.9, "transition_only": True}}, {"explore": 0.3})
    recs = simulate(t, Controller(p, log=tmp_path / "log.jsonl", every=t.interval))
    _, ck, fin = read_log(tmp_path / "log.jsonl")
    arm = dict(zip(fin["request"], fin["arm"]))
    explored = ck[ck["request"].map(arm) == "explore"]
    assert len(explored) and not explored["is_transition"].all()            # not only at transition words
    assert ck[ck["request"].map(arm) != "explore"]["is_transition"].all()    # the champion: only there
    assert np.array_equal([r["tokens_computed"] for r in recs], preset_outcome(t, p).computed)
