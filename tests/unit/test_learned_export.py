"""The learned family deploys (issue 23, item 3): its logistic model exported as plain JSON inside the preset, read
by the replay and the live controller alike, so their decisions agree; a damaged export is refused, naming the field."""
import copy
import json

import numpy as np
import pytest

from analysis.core.errors import PresetError
from analysis.presets.routing import preset_stops
from analysis.presets.schema import Preset, from_dict, loads
from analysis.production.controller import Controller, check_deployable, simulate
from analysis.production.verify import check_decisions
from analysis.replay.engine import RunTable, stop_index
from analysis.replay.policies.base import Setting
from analysis.replay.policies.learned import export_model, export_proba, features, make_model, resolve_features

TRAIN, SERVE = "c7a2483a9092", "7b48e137cfbb"     # demo runs: qwen2.5-coder-0.5b on easy and on harder arithmetic


@pytest.fixture(scope="module")
def runs(demo):
    return RunTable.from_store(demo, TRAIN), RunTable.from_store(demo, SERVE)


@pytest.fixture(scope="module")
def export(runs):
    return export_model(runs[0])


def test_the_json_gives_scikit_learns_probabilities(runs, export):
    train, serve = runs
    which = resolve_features(train, "auto")
    X, y = features(train, which)[train.valid], (train.em > 0.5)[train.valid]
    clf = make_model("logistic").fit(X, y)
    want = clf.predict_proba(features(serve, which).reshape(-1, X.shape[-1]))[:, 1].reshape(serve.n, serve.m)
    got = export_proba(serve, json.loads(json.dumps(export)))       # through JSON text, as a preset carries it
    assert np.abs(got - want)[serve.valid].max() < 1e-12
    assert export["features"][0] == "p_mean" and export["trained_on"]["questions"] == train.n and export["sklearn"]


@pytest.mark.parametrize("schedule", [{}, {"every": 2}])
def test_replay_and_controller_decide_alike(runs, export, schedule, tmp_path):
    """An exported preset served on another run through the controller (its stream path): every request stops
    where the replay stops, and check_decisions (verify-controller's first claim) agrees on the log: 1.0."""
    _, serve = runs
    tau = float(np.quantile(export_proba(serve, export)[serve.valid], 0.6))
    s = Setting.make("learned", schedule, tau=round(tau, 4), export=export)
    preset = loads(Preset("learned", s, routing={"explore": 0.25}).to_json())       # through its JSON
    check_deployable(preset)
    log = tmp_path / "log.jsonl"
    recs = simulate(serve, Controller(preset, log=log))
    stopped = np.array([r["stopped"] for r in recs])
    replay = preset_stops(serve, preset)
    live = np.array([r["ck"] if r["stopped"] else serve.final_idx[i] for i, r in enumerate(recs)])
    # the controller's record holds the index among the checkpoints it saw; map it through the schedule
    if schedule:
        from analysis.replay.engine import scheduled
        _, src = scheduled(serve, s.schedule)
        live = np.where(stopped, src[serve.rows, np.where(stopped, live, 0)], serve.final_idx)
    assert 0 < stopped.sum() < serve.n                      # it does stop some, and not all
    assert np.array_equal(live, replay)
    chk = check_decisions(log)
    assert chk["agreement"] == 1.0 and chk["n"] == serve.n, chk["mismatches"]


def test_a_hybrid_with_an_exported_part_deploys(runs, export, tmp_path):
    _, serve = runs
    s = Setting.make("hybrid", a={"family": "learned", "params": {"tau": 0.7, "export": export}},
                     b={"family": "budget", "params": {"B": 400}}, op="or")
    check_deployable(Preset("h", s))
    simulate(serve, Controller(Preset("h", s), log=tmp_path / "h.jsonl"))
    assert check_decisions(tmp_path / "h.jsonl")["agreement"] == 1.0


def test_without_an_export_the_controller_refuses_and_old_presets_are_unchanged():
    old = {"stopline_preset": 1, "name": "old", "setting": {"family": "learned", "params": {"tau": 0.8}}}
    p = from_dict(old)
    assert p.to_dict()["setting"] == {"family": "learned", "params": {"tau": 0.8, "features": "auto",
                                                                     "model": "logistic"}}
    assert p.setting.label() == "learned(tau=0.8, features=auto, model=logistic)"
    with pytest.raises(PresetError, match="export it first"):
        check_deployable(p)


def _damaged(export, path, value):
    d = copy.deepcopy(export)
    if value is KeyError:
        del d[path]
    elif isinstance(path, tuple):
        d[path[0]][path[1]] = value
    else:
        d[path] = value
    return {"stopline_preset": 1, "setting": {"family": "learned", "params": {"tau": 0.8, "export": d}}}


@pytest.mark.parametrize("path, value, field", [
    ("coef", [1.0, 2.0], "setting.params.export.coef"),
    (("scale", 3), 0.0, "setting.params.export.scale[3]"),
    (("mean", 0), "x", "setting.params.export.mean[0]"),
    ("intercept", KeyError, "setting.params.export.intercept"),
    ("intercept", float("nan"), "setting.params.export.intercept"),
    (("features", 1), "gpu_temperature", "setting.params.export.features"),
    ("format", "pickle", "setting.params.export.format"),
    ("weights", [1], "setting.params.export"),
])
def test_a_malformed_export_is_refused_naming_the_field(export, path, value, field):
    with pytest.raises(PresetError) as e:
        from_dict(_damaged(export, path, value))
    assert e.value.field == field, e.value


def test_an_export_contradicting_the_setting_is_refused(export):
    with pytest.raises(PresetError) as e:
        Setting.make("learned", tau=0.8, features="text", export=export)
    assert e.value.field == "setting.params.features"
    with pytest.raises(PresetError) as e:
        Setting.make("learned", tau=0.8, model="boosting", export=export)
    assert e.value.field == "setting.params.model"


def test_cli_export_learned(cli, tmp_path, runs):
    out = tmp_path / "p.json"
    code, stdout, err = cli("export-learned", "--run", TRAIN, "--tau", "0.8", "--save", out)
    assert code == 0, err
    p = loads(out.read_text())
    check_deployable(p)
    assert p.setting.params["export"]["trained_on"]["run"] == TRAIN
    _, serve = runs
    assert np.array_equal(stop_index(serve, p.setting), preset_stops(serve, p))
