"""AppTest: The Monitor page: decision logs against their calibration run."""
import json
from tests.helpers import open_app


def _monitor_log(tmp_path, synthetic_db, difficulty):
    """A decision log of the controller over a synthetic run, calibrated on the session's synthetic run."""
    import json
    from analysis.production.controller import Controller, simulate
    from analysis.presets.schema import from_dict
    from analysis.replay.engine import RunTable
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    db, rid, _ = synthetic_db
    s = Store(tmp_path / "live.duckdb")
    live = write_synthetic_run(s, 200, 30, seed=9, dataset="live", difficulty=difficulty)
    t = RunTable.from_store(s, live)
    p = from_dict({"stopline_preset": 1, "name": "conf", "setting": {"family": "confidence", "params": {"tau": 0.9}},
                   "routing": {"explore": 0.25}})
    logs = tmp_path / "logs"
    logs.mkdir()
    simulate(t, Controller(p, log=logs / "prod.jsonl", log_header={"calibration": {"db": db, "run": rid}}),
             with_em=False)
    with open(logs / "prod.labels.jsonl", "w") as f:
        for q in t.question_ids:
            f.write(json.dumps({"request": q, "gold": "42"}) + "\n")
    return logs


def test_monitor_page_flags_drift_and_proposes(tmp_path, synthetic_db, monkeypatch):
    logs = _monitor_log(tmp_path, synthetic_db, (0.8, 1.0))        # much harder than the calibration run
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/monitor.py")
    assert not at.exception
    assert at.header[0].value == "Monitor"
    assert at.error and "Recalibrate" in at.error[0].value
    assert {m.label for m in at.metric} >= {"Tokens / request", "EM (labelled)"}
    assert any("exploration requests" in md.value for md in at.markdown)


def test_monitor_page_without_logs_and_with_a_broken_log(tmp_path, synthetic_db, monkeypatch):
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(tmp_path / "none"))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/monitor.py")
    assert not at.exception and any("serve-demo" in i.value for i in at.info)
    logs = tmp_path / "bad"
    logs.mkdir()
    (logs / "x.jsonl").write_text('{"type": "header", "stopline_log": 1}\n{"type": "final"}\n')
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    at = open_app(db, rid, "views/monitor.py")
    assert not at.exception and "line 2" in at.error[0].value


def test_monitor_page_shows_the_closed_loops_versions(tmp_path, synthetic_db, monkeypatch):
    import json
    logs = _monitor_log(tmp_path, synthetic_db, (0.0, 1.0))
    hist = tmp_path / "versions.jsonl"
    hist.write_text("\n".join(json.dumps(r) for r in [
        {"version": 0, "applied": True, "setting": "budget(B=416)", "note": "deployed"},
        {"version": 1, "applied": True, "setting": "budget(B=704)", "epsilon": 0.05, "delta": 0.1, "n_explore": 400,
         "observed": {"em_drop": 0.2}, "certificate": {"savings": 0.3}, "reason": "Certified: ..."}]) + "\n")
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    monkeypatch.setenv("STOPLINE_HISTORY", str(hist))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/monitor.py")
    assert not at.exception
    assert any(s.value == "Versions (closed loop)" for s in at.subheader)
    assert list(at.dataframe[-1].value["setting"]) == ["budget(B=416)", "budget(B=704)"]


def test_monitor_page_recertifies_and_keeps_the_attempt(tmp_path, synthetic_db, monkeypatch):
    logs = _monitor_log(tmp_path, synthetic_db, (0.0, 1.0))
    hist = tmp_path / "hist" / "versions.jsonl"
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    monkeypatch.setenv("STOPLINE_HISTORY", str(hist))
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/monitor.py")
    at.number_input(key="rc_eps").set_value(0.05).run()
    at.button(key="rc_go").click().run()
    assert not at.exception
    said = [m.value for m in [*at.success, *at.info] if m.value.startswith(("Applied", "Not applied"))]
    assert said
    from analysis.production.recalibrate import history_records
    recs = history_records(hist)
    assert [r["version"] for r in recs] == [0, 1] and recs[1]["epsilon"] == 0.05
    assert any(s.value == "Versions (closed loop)" for s in at.subheader)


def _drifted(tmp_path, demo):
    """A real drift (the data of tests/unit/test_rollback.py): v0 a budget certified on the demo store's whole easy
    arithmetic run, v1 one certified on its short-trace half only; v1 then serves the long-trace half, all explored
    and labelled from the store's golds. Returns the logs folder and the history."""
    import json
    import numpy as np
    from analysis.evaluate.certify import certify
    from analysis.presets.schema import Preset
    from analysis.production.controller import Controller, simulate
    from analysis.production.recalibrate import record_deployed
    from analysis.replay.engine import RunTable
    from analysis.replay.policies.base import Setting

    def certified(t, name):
        c = certify(t, 0.05, 0.1, families=["budget"])
        assert c["certified"], c["message"]
        return Preset(name, Setting.from_dict(c["setting"]), routing={"explore": 1.0},
                      certificate={k: v for k, v in c.items() if k != "families"})
    t = RunTable.from_store(demo, EASY)
    short = t.full_tokens <= np.median(t.full_tokens)
    p0, p1 = certified(t, "whole run"), certified(t.subset(np.flatnonzero(short)), "short questions")
    hist = tmp_path / "hist" / "versions.jsonl"
    record_deployed(hist, p0, "certified on the whole easy run")
    record_deployed(hist, p1, "certified on its short questions")
    logs = tmp_path / "logs"
    logs.mkdir()
    long = t.subset(np.flatnonzero(~short))
    simulate(long, Controller(p1, log=logs / "prod.jsonl"), with_em=False)
    q = demo.questions(demo.run(EASY)["dataset"]).to_pandas()
    gold = dict(zip(q["question_id"], q["gold"].map(json.loads)))
    (logs / "prod.labels.jsonl").write_text("".join(json.dumps({"request": str(i), "gold": gold[i]}) + "\n"
                                                    for i in long.question_ids))
    return logs, hist


EASY = "c7a2483a9092"       # the demo store's easy arithmetic run (qwen2.5-coder-0.5b)


def test_monitor_page_tests_the_deployed_version_and_rolls_back(tmp_path, demo, monkeypatch):
    """The live panel shows the sequential test firing on v1's drifted traffic; "Run rollback check" writes the
    rollback version, which the history chart marks and its table says."""
    from analysis.core.store import DEMO_DB
    from analysis.production.recalibrate import history_records
    logs, hist = _drifted(tmp_path, demo)
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    monkeypatch.setenv("STOPLINE_HISTORY", str(hist))
    at = open_app(str(DEMO_DB), EASY, "views/monitor.py")
    assert not at.exception
    assert any(s.value.startswith("Deployed version against its certificate") for s in at.subheader)
    assert any(e.value.startswith("Breach: would roll back to version 0") for e in at.error)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Labelled exploration requests"] == "100" and float(shown["Observed EM drop"]) > 0.05
    assert float(shown["Evidence of a breach"]) >= 20
    assert not [w for w in at.warning if "version history deploys" in w.value]     # the log runs v1, as deployed
    at.button(key="rb_go").click().run()
    assert not at.exception
    recs = history_records(hist)
    assert [r["version"] for r in recs] == [0, 1, 2]
    assert recs[2]["rollback"] and recs[2]["rolled_back_from"] == 1 and recs[2]["rolled_back_to"] == 0
    assert any(w.value.startswith("Rolled back: ") for w in at.warning)
    assert list(at.dataframe[-1].value["rollback"]) == ["", "", "rolled back from 1 to 0"]
    # v0 is deployed again; it served none of these requests, and the page says why: the log's gateway runs v1's
    assert any("no labelled exploration requests served under version 2" in i.value.lower() for i in at.info)
    step = [w.value for w in at.warning if "version history deploys" in w.value]
    assert len(step) == 1 and step[0].startswith("The version history deploys version 2 (budget(B="), step
    assert "but this log's gateway ran budget(B=" in step[0] and "Reload the gateway" in step[0], step


def test_monitor_page_hides_the_rollback_check_in_viewer_mode(tmp_path, demo, monkeypatch):
    from analysis.core.store import DEMO_DB
    logs, hist = _drifted(tmp_path, demo)
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    monkeypatch.setenv("STOPLINE_HISTORY", str(hist))
    monkeypatch.setenv("STOPLINE_VIEWER", "1")
    at = open_app(str(DEMO_DB), EASY, "views/monitor.py")
    assert not at.exception
    assert any(e.value.startswith("Breach: would roll back") for e in at.error)      # the panel is read-only
    assert not [b for b in at.button if b.key in ("rb_go", "rc_go")]


def _uploaded(at, name: str, body: bytes):
    at.radio(key="log_src").set_value("upload").run()
    at.file_uploader(key="log_up").upload(name, body).run()
    return at


def test_an_uploaded_log_with_a_wrongly_typed_field_is_named_and_its_copy_removed(tmp_path, monkeypatch):
    """A final record whose tokens_emitted is "lots" (a ValueError deep in the monitor before) is our error naming
    the upload, line and field; the upload's copy is gone after the script run, also when the page fails on
    something it did not expect (here Streamlit itself, made to fail)."""
    import json
    import tempfile
    from streamlit.delta_generator import DeltaGenerator
    from tests.helpers import ROOT
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))        # where the page's copies go
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(tmp_path / "no-logs"))
    recs = [json.loads(x) for x in (ROOT / "data" / "demo-logs" / "serve-demo.jsonl").read_text().splitlines()]
    line = 1 + next(i for i, r in enumerate(recs) if r["type"] == "final" and r["arm"] == "champion")
    recs[line - 1]["tokens_emitted"] = "lots"
    at = _uploaded(open_app(None, None, "views/monitor.py"), "prod.jsonl",
                   "".join(json.dumps(r) + "\n" for r in recs).encode())
    assert not at.exception
    assert at.error[0].value.startswith(f"'prod.jsonl', line {line}, field 'tokens_emitted': must be a number, not 'lots'")
    assert not list((tmp_path / "stopline-monitor").iterdir())

    def broken(*a, **k):
        raise RuntimeError("a library failed")
    monkeypatch.setattr(DeltaGenerator, "metric", broken)      # drawn once the report was made from the upload
    recs[line - 1]["tokens_emitted"] = 100
    at = _uploaded(open_app(None, None, "views/monitor.py"), "prod.jsonl",
                   "".join(json.dumps(r) + "\n" for r in recs).encode())
    assert at.exception and "a library failed" in at.exception[0].value
    assert any("**40** requests" in m.value for m in at.markdown)     # (it failed after the copy was read)
    assert not list((tmp_path / "stopline-monitor").iterdir())


def test_monitor_page_counts_only_the_labelled_requests(tmp_path, monkeypatch):
    """Labels for 5 of the demo log's 40 requests: 5 labelled (every request counted as labelled before, scored
    against no gold), EM on the 4 labelled champion requests."""
    import shutil
    from tests.helpers import ROOT
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(ROOT / "data" / "demo-logs" / "serve-demo.jsonl", logs / "prod.jsonl")
    lines = (ROOT / "data" / "demo-logs" / "serve-demo.labels.jsonl").read_text().splitlines()
    (logs / "prod.labels.jsonl").write_text("\n".join(lines[:5]) + "\n")
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    at = open_app(None, None, "views/monitor.py")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("**40** requests" in m.value and " · 5 labelled" in m.value for m in at.markdown)
    em = next(m for m in at.metric if m.label == "EM (labelled)")
    assert em.value == "0.000" and "on 4 labelled" in str(em.proto.delta)


def test_monitor_page_reads_a_gateways_log(tmp_path, monkeypatch):
    """A gateway's log: its preset in preset records (two versions), no preset in the header. Its calibration named
    in the preset record by a path relative to the log's folder: compared, the latest version's requests alone;
    named nowhere: the live figures, and how to name it."""
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    from analysis.replay.engine import RunTable
    from tests.helpers import gateway_log, preset_version
    logs = tmp_path / "logs"
    logs.mkdir()
    s = Store(logs / "cal.duckdb")
    cal = write_synthetic_run(s, 150, 30, seed=1, dataset="calibration")
    t = RunTable.from_store(s, write_synthetic_run(s, 90, 30, seed=2, dataset="live"))
    conf = {"stopline_preset": 1, "name": "conf", "setting": {"family": "confidence", "params": {"tau": 0.9}}}
    budget = {"stopline_preset": 1, "name": "b96", "setting": {"family": "budget", "params": {"B": 96}}}
    named = {"db": "cal.duckdb", "run": cal}
    gateway_log(logs / "gw.jsonl", [(conf, named, t.subset(range(60))), (budget, named, t.subset(range(60, 90)))])
    monkeypatch.setenv("STOPLINE_LOG_DIR", str(logs))
    at = open_app(str(logs / "cal.duckdb"), cal, "views/monitor.py")
    assert not at.exception and not at.error, [e.value for e in at.error]
    top = next(m.value for m in at.markdown if "requests · preset" in m.value)
    assert top.startswith("**30** requests · preset **b96**") and f"calibration run `{cal}`" in top, top
    assert at.selectbox(key="mon_version").value == preset_version(budget)
    assert any("60 requests of the others are left out" in c.value for c in at.caption)
    assert {"Tokens / request", "Savings vs full length"} <= {m.label for m in at.metric}
    at.selectbox(key="mon_version").set_value(preset_version(conf)).run()
    assert any(m.value.startswith("**60** requests · preset **conf**") for m in at.markdown)
    # right after a reload (a preset record, no request finished under it): the version before it, and said so
    newer = {**budget, "name": "b50", "setting": {"family": "budget", "params": {"B": 50}}}
    from analysis.presets.schema import from_dict
    with open(logs / "gw.jsonl", "a") as f:
        f.write(json.dumps({"type": "preset", "preset_version": preset_version(newer),
                            "preset": from_dict(newer).to_dict(), "calibration": named}) + "\n")
    at = open_app(str(logs / "cal.duckdb"), cal, "views/monitor.py")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="mon_version").value == preset_version(budget)
    assert "no finished request yet" in at.selectbox(key="mon_version").format_func(preset_version(newer))
    # no calibration anywhere: the live figures, and how to add it
    (logs / "gw.jsonl").unlink()
    gateway_log(logs / "gw.jsonl", [(conf, None, t)])
    at = open_app(str(logs / "cal.duckdb"), cal, "views/monitor.py")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("serve --calibration-run RUN --db PATH" in i.value for i in at.info)
    assert {"Tokens / request", "Stopped early", "EM (labelled)"} <= {m.label for m in at.metric}
