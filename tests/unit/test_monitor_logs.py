"""The monitor and check-log on the logs production writes: the bundled serve-demo log with some of its labels, a
gateway's log (its preset and calibration in ``preset`` records, several versions), and request ids that repeat
(clients' retries). The logs are written by the real controller and decision log, the gateway's way."""
import json

import numpy as np
import pytest

from analysis.core.errors import StoplineError
from analysis.core.store import Store
from analysis.ingest.synthetic import write_synthetic_run
from analysis.presets.schema import from_dict
from analysis.production.controller import Controller, DecisionLog, simulate
from analysis.production.gateway import VersionedLog
from analysis.production.monitor import _labelled, calibration_inputs, monitor, monitor_inputs, read_labels, read_log
from analysis.production.verify import check_decisions
from analysis.replay.engine import RunTable
from tests.helpers import gateway_log, preset_version, ROOT

DEMO_LOG = ROOT / "data" / "demo-logs" / "serve-demo.jsonl"
DEMO_LABELS = DEMO_LOG.with_suffix(".labels.jsonl")
CONF = {"stopline_preset": 1, "name": "conf", "setting": {"family": "confidence", "params": {"tau": 0.9}},
        "routing": {"explore": 0.3}}
BUDGET = {"stopline_preset": 1, "name": "b96", "setting": {"family": "budget", "params": {"B": 96}},
          "routing": {"explore": 0.3}}


# --- labels for some of the requests ---------------------------------------------------------------------------
def _some_labels(tmp_path, n_first: int, extra=()):
    """The first ``n_first`` lines of the demo's labels, and the lines of the requests ``extra``."""
    lines = DEMO_LABELS.read_text().splitlines()
    keep = lines[:n_first] + [x for x in lines[n_first:] if json.loads(x)["request"] in set(extra)]
    path = tmp_path / "some.labels.jsonl"
    path.write_text("\n".join(keep) + "\n")
    return path, {json.loads(x)["request"] for x in keep}


def test_requests_without_a_label_are_unlabelled_not_wrong(tmp_path, cli):
    """With labels for a few requests, only those are labelled (a request the labels leave out was scored against
    "nan" before: EM 0, and counted as labelled); EM and its check are computed on the labelled ones alone."""
    _, _, fin = read_log(DEMO_LOG)
    full = _labelled(fin, read_labels(DEMO_LABELS), "number")
    right = full[(full["arm"] == "champion") & (full["em"] == 1)]["request"].tolist()
    assert len(right) >= 2
    some, ids = _some_labels(tmp_path, 5, right[:2])
    t, p = monitor_inputs([DEMO_LOG])
    res = monitor([DEMO_LOG], t, p, [some], propose=False)
    champ = full[(full["arm"] == "champion") & full["request"].isin(ids)]
    assert res["labelled"] == len(ids) == 7, res["labelled"]
    assert res["observed"]["n_labelled"] == len(champ) and res["observed"]["em"] == pytest.approx(champ["em"].mean())
    assert res["observed"]["em"] > 0
    # the EM check, with enough labels: on the labelled champion requests only
    some, ids = _some_labels(tmp_path, 20)
    res = monitor([DEMO_LOG], t, p, [some], propose=False)
    n = int(((full["arm"] == "champion") & full["request"].isin(ids)).sum())
    assert res["labelled"] == 20 and res["checks"]["em"]["n_labelled"] == n < 26
    code, out, err = cli("monitor", "--log", DEMO_LOG, "--labels", _some_labels(tmp_path, 5)[0])
    assert code in (0, None), err
    assert "5 labelled" in out and "EM 0.000 on 4 labelled" in out, out


def test_the_monitor_says_why_em_is_unknown_and_what_it_left_out(tmp_path, cli):
    """Labels on exploration requests only read "no labelled request: add --labels", with labels given; and the
    headline counted requests the upstream refused without a word (check-log named them)."""
    _, _, fin = read_log(DEMO_LOG)
    explore = fin[fin["arm"] == "explore"]["request"].astype(str).tolist()[:3]
    labels, _ = _some_labels(tmp_path, 0, explore)
    code, out, err = cli("monitor", "--log", DEMO_LOG, "--labels", labels)
    assert code in (0, None), err
    assert "3 labelled" in out and "no champion request is labelled; the 3 labelled are other arms'" in out, out
    lines = DEMO_LOG.read_text().splitlines()
    champs = [i for i, x in enumerate(lines) if '"type": "final"' in x and '"arm": "champion"' in x]
    for i, cause in zip(champs[:3], ("upstream_rejected", "upstream_rejected", "gateway_failed")):
        lines[i] = json.dumps({**json.loads(lines[i]), "cause": cause})
    log = tmp_path / "refused.jsonl"
    log.write_text("\n".join(lines) + "\n")
    code, out, err = cli("monitor", "--log", log)
    assert code in (0, None), err
    assert "3 ended by a failure or a refusal (2 upstream_rejected, 1 gateway_failed)" in out.splitlines()[0], out


# --- a gateway's log ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A calibration store with its run, and a live run of new questions the gateway serves."""
    home = tmp_path_factory.mktemp("gw")
    s = Store(home / "cal.duckdb")
    cal = write_synthetic_run(s, 200, 30, seed=1, dataset="calibration")
    live = write_synthetic_run(s, 120, 30, seed=2, dataset="live")
    return {"home": home, "db": home / "cal.duckdb", "cal": cal, "t": RunTable.from_store(s, live)}


def test_a_gateways_log_names_its_preset_and_calibration_in_preset_records(world, tmp_path, monkeypatch, cli):
    """The gateway's header names no preset; its preset record does, with the calibration (a store path relative
    to the log's folder, the monitor run from elsewhere). Monitor, CLI and recalibrate need no flags."""
    home, t = world["home"], world["t"]
    log = gateway_log(home / "gw.jsonl", [(CONF, {"db": "cal.duckdb", "run": world["cal"]}, t)])
    assert "preset" not in json.loads(log.read_text().splitlines()[0])
    monkeypatch.chdir(tmp_path)                       # not where the log and its store are
    got = calibration_inputs([log])
    assert got["preset"].name == "conf" and got["t"].n == 200 and "line 2 (a preset record)" in got["calibration_from"]
    res = monitor([log], got["t"], got["preset"], propose=False)
    assert res["preset"] == "conf" and res["promised"]["n"] == 200 and res["n_requests"] == t.n
    assert res["preset_version"] == preset_version(CONF)
    code, out, err = cli("monitor", "--log", log)
    assert code in (0, None), err
    assert "calibration: run " + world["cal"] in out and "promised" in out, out
    # the calibration store named but not there: the path, where it was looked for, and the record that named it
    bad = gateway_log(tmp_path / "bad.jsonl", [(CONF, {"db": "gone.duckdb", "run": world["cal"]}, t.subset(range(5)))])
    with pytest.raises(StoplineError, match=r"'gone.duckdb' named by .*bad.jsonl, line 2 \(a preset record\) is not "
                                           r"here \(looked at .*gone.duckdb"):
        calibration_inputs([bad])
    code, _, err = cli("monitor", "--log", bad)
    assert code == 2 and "gone.duckdb" in err and "--db" in err


def test_a_gateways_log_without_calibration_shows_the_live_figures_and_how_to_add_it(world, tmp_path, cli):
    log = gateway_log(tmp_path / "gw.jsonl", [(CONF, None, world["t"])])
    t, p = monitor_inputs([log])
    assert t is None and p.name == "conf"
    res = monitor([log], t, p, propose=False)
    assert res["promised"] is None and res["observed"]["tokens_emitted"] > 0
    code, out, err = cli("monitor", "--log", log)
    assert code in (0, None), err
    assert "tokens/request" in out and "serve --calibration-run RUN --db PATH" in out and "--run RUN" in out, out
    # flags still name it; the header's calibration stands in for a preset record without one
    code, out, err = cli("monitor", "--log", log, "--run", world["cal"], "--db", world["db"])
    assert code in (0, None) and "promised" in out, err
    log = gateway_log(tmp_path / "gw2.jsonl", [(CONF, None, world["t"])],
                      header={"calibration": {"db": str(world["db"]), "run": world["cal"]}})
    got = calibration_inputs([log])
    assert got["t"] is not None and got["calibration_from"] == "the log's header"


def test_a_log_of_several_preset_versions_is_read_one_version_at_a_time(world, tmp_path, cli):
    """A hot reload: the figures are the latest version's, against its preset; the earlier version's requests are
    counted apart, and --preset-version reads them instead."""
    t, cal = world["t"], {"db": str(world["db"]), "run": world["cal"]}
    log = gateway_log(tmp_path / "gw.jsonl", [(CONF, cal, t.subset(np.arange(70))),
                                              (BUDGET, cal, t.subset(np.arange(70, 120)))])
    got = calibration_inputs([log])
    assert got["preset"].name == "b96" and got["versions"] == [preset_version(CONF), preset_version(BUDGET)]
    res = monitor([log], got["t"], got["preset"], propose=False)
    assert res["n_requests"] == 50 and res["versions"]["left_out"] == 70 and res["preset_version"] == preset_version(BUDGET)
    old = calibration_inputs([log], version=preset_version(CONF))
    res = monitor([log], old["t"], old["preset"], propose=False, version=preset_version(CONF))
    assert old["preset"].name == "conf" and res["n_requests"] == 70 and res["versions"]["left_out"] == 50
    code, out, err = cli("monitor", "--log", log)
    assert code in (0, None), err
    assert "2 preset versions" in out and f"version {preset_version(BUDGET)}'s alone, 70 requests" in out, out
    code, out, err = cli("monitor", "--log", log, "--preset-version", preset_version(CONF))
    assert code in (0, None) and out.startswith("70 requests") and "preset conf" in out, err + out
    code, _, err = cli("monitor", "--log", log, "--preset-version", "nope")
    assert code == 2 and "no preset version 'nope'" in err


def test_right_after_a_reload_the_monitor_reads_the_version_before_it(world, tmp_path, cli):
    """The latest preset record (a reload) with no finished request yet: monitor with no flags failed ("no
    request of preset version ... has finished"); now it reads the latest version that has, and says so."""
    t, cal = world["t"], {"db": str(world["db"]), "run": world["cal"]}
    log = gateway_log(tmp_path / "gw.jsonl", [(CONF, cal, t.subset(np.arange(70))),
                                              (BUDGET, cal, t.subset(np.arange(70, 120)))])
    newer = {**BUDGET, "name": "b50", "setting": {"family": "budget", "params": {"B": 50}}}
    with open(log, "a") as f:
        f.write(json.dumps({"type": "preset", "preset_version": preset_version(newer),
                            "preset": from_dict(newer).to_dict(), "calibration": cal}) + "\n")
    got = calibration_inputs([log])
    assert got["preset"].name == "b96" and got["version"] == preset_version(BUDGET)
    res = monitor([log], got["t"], got["preset"], propose=False)
    assert res["n_requests"] == 50 and res["not_yet"] == [preset_version(newer)], res["not_yet"]
    code, out, err = cli("monitor", "--log", log)
    assert code in (0, None), err
    assert f"the latest preset version ({preset_version(newer)}) has no finished request yet" in out, out
    code, _, err = cli("monitor", "--log", log, "--preset-version", preset_version(newer))
    assert code == 2 and "has finished" in err                  # asked for by name: still said plainly


def test_recalibrate_takes_the_preset_from_a_gateways_preset_record(world, tmp_path, cli):
    t = world["t"]
    log = gateway_log(tmp_path / "gw.jsonl", [(CONF, None, t)])
    labels = tmp_path / "gw.labels.jsonl"
    labels.write_text("".join(json.dumps({"request": str(q), "gold": "42"}) + "\n" for q in t.question_ids))
    code, out, err = cli("recalibrate", "--log", log, "--labels", labels, "--out", tmp_path / "p2.json",
                         "--history", tmp_path / "h.jsonl")
    assert code in (0, 1) and "Traceback" not in err, err
    assert "champion confidence(tau=0.9," in out, out


# --- repeated request ids ---------------------------------------------------------------------------------------
def test_a_retried_request_id_is_a_request_of_its_own_for_check_log_and_monitor(world, tmp_path, cli):
    """A client retries five requests with the same stopline.request_id after the first attempts ended: check-log
    crashed (an index past the end); now every final record is a request of its own, replayed with the checkpoints
    logged since the previous one, and the monitor counts the same requests and says which ids repeat."""
    t = world["t"].subset(np.arange(40))
    log = gateway_log(tmp_path / "gw.jsonl", [(CONF, None, t)])
    ctl = Controller(from_dict(CONF), "number", every=32)
    with DecisionLog(log) as d:                       # the retries, in the same log
        ctl.log = VersionedLog(d, preset_version(CONF))
        simulate(t.subset(np.arange(5)), ctl, with_em=False)
    res = check_decisions(str(log))
    assert res["n"] == 45 and res["agreement"] == 1.0, res["mismatches"]
    assert res["repeated_ids"]["ids"] == 5 and res["repeated_ids"]["extra_requests"] == 5
    code, out, err = cli("check-log", "--log", log)
    assert code == 0 and "5 request id(s) repeat" in out, err + out
    rep = monitor([log], None, from_dict(CONF), propose=False)
    assert rep["n_requests"] == 45 and rep["repeated_ids"]["ids"] == 5
    _, ck, fin = read_log(log)
    assert fin["key"].is_unique and set(fin.loc[fin["instance"] == 1, "key"]) == {f"{q}#2" for q in t.question_ids[:5]}
    assert (ck.groupby("key")["ck"].apply(lambda c: list(c) == list(range(len(c))))).all()


def test_a_request_that_never_ended_and_its_retry_under_the_same_id_leave_the_log_readable(tmp_path, cli):
    """The gateway stopped mid-request (no final record) and the client retried with the same id: its checkpoints
    started again before a final record, which refused the whole log (monitor, check-log, recalibrate, the page).
    Now the unfinished request's checkpoints are dropped and counted, and the retry is read as it was logged."""
    log = tmp_path / "l.jsonl"
    ctl = Controller(from_dict(CONF), "number", log=log, every=32)
    a = ctl.open("r-1", "1+1")
    a.checkpoint(32, "2", {"p_mean": 0.5})
    ctl.decide([a])                              # ... and the gateway dies: no final record
    b = ctl.open("r-1", "1+1")
    for pos in (32, 64):
        b.checkpoint(pos, "2", {"p_mean": 0.5})
        ctl.decide([b])
    ctl.finish(b, "2", 70)
    ctl.log.close()
    header, ck, fin = read_log(log)
    assert len(fin) == 1 and list(ck["ck"]) == [0, 1] and header["unfinished_requests"] == {"r-1": 1}
    code, out, err = cli("check-log", "--log", log)
    assert code == 0 and "1 requests, 2 checkpoints" in out and "1.000" in out, (out, err)


def test_two_requests_of_one_id_in_flight_at_once_are_named_not_mixed(tmp_path, cli):
    """Two requests with one id decided at once (a retry before the first ended): their checkpoints cannot be told
    apart, so the log is refused with the line and field rather than replayed wrongly."""
    log = tmp_path / "l.jsonl"
    ctl = Controller(from_dict(CONF), "number", log=log, every=32)
    a, b = ctl.open("r-1", "1+1"), ctl.open("r-1", "1+1")
    for s in (a, b):
        s.checkpoint(32, "2", {"p_mean": 0.5})
    ctl.decide([a, b])
    for s in (a, b):
        ctl.finish(s, "2", 40)
    ctl.log.close()
    with pytest.raises(StoplineError, match="line 3, field 'ck'.*two requests with this id were in flight at once"):
        read_log(log)
    code, _, err = cli("check-log", "--log", log)
    assert code == 2 and "l.jsonl, line 3, field 'ck'" in err
