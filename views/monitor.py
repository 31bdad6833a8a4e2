"""Monitor: the deployed preset's decision logs against its calibration run; drift, flags, recalibration."""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.errors import StoplineError
from analysis.core.store import DEMO_DB
from views import common, data

LOG_DIR = Path(os.environ.get("STOPLINE_LOG_DIR", "data/logs"))

st.header("Monitor")
st.caption("Is the stopping preset running in production still delivering what the replay promised? "
           "Open a decision log written by the controller (`python -m analysis serve-demo` makes one).")

SAMPLE_DIR = Path("data/demo-logs")      # a bundled log of serve-demo, so the page has data on first open
dirs = [LOG_DIR] + ([SAMPLE_DIR] if "STOPLINE_LOG_DIR" not in os.environ else [])
logs = [p for d in dirs if d.exists() for p in sorted(d.glob("*.jsonl")) if not p.name.endswith(".labels.jsonl")]
viewer = data.viewer()         # viewer mode: the logs folder only, no uploads, no re-certify
src = "from the logs folder" if viewer else st.radio("Decision log", ["from the logs folder", "upload"],
                                                     horizontal=True, key="log_src", index=0 if logs else 1)
log_path = labels_path = None
log_key = None                # what keys the cached report: a log file's mtime, an upload's content
scratch = None                # an upload's copy, deleted at the end of this script run (cleanup below)


def cleanup() -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


if src == "upload":
    mb = data.upload_limit_mb()
    up = st.file_uploader(f"decision log (JSON lines, at most {mb} MB)", type=["jsonl", "json", "txt"], key="log_up",
                          max_upload_size=mb)
    lab = st.file_uploader("late labels (optional: JSON lines with request and em or gold)", type=["jsonl", "json", "txt"],
                           key="lab_up", max_upload_size=mb)
    for f in (up, lab):
        if (too_big := data.upload_too_big(f)) is not None:
            st.error(too_big)
            st.stop()
    if up is not None:
        scratch = Path(tempfile.mkdtemp(prefix="stopline-monitor-"))
        log_path = scratch / "log.jsonl"
        log_path.write_bytes(up.getvalue())
        log_key = hashlib.sha1(up.getvalue()).hexdigest()
        if lab is not None:
            labels_path = scratch / "labels.jsonl"
            labels_path.write_bytes(lab.getvalue())
            log_key += hashlib.sha1(lab.getvalue()).hexdigest()
elif logs:
    want = data.query("log")
    names = [str(p) for p in logs]
    pick = st.selectbox("log file", names, index=names.index(want) if want in names else 0, key="log_pick")
    data.set_query("log", pick)
    log_path = Path(pick)
    cand = log_path.with_suffix(".labels.jsonl")
    labels_path = cand if cand.exists() else None

if log_path is None:
    st.info("No decision log yet. Make one with `python -m analysis serve-demo` (a small model answers new "
            "questions with the controller; about a minute on a CPU)" + ("." if viewer else ", or upload one."))
    st.stop()


try:
    from analysis.production.monitor import read_log
    header, _, _ = read_log([log_path])
    cal = header.get("calibration") or {}
    run_db, run_id = cal.get("db"), cal.get("run")
    if not run_id and data.picked_run():      # no calibration named: the run picked in the sidebar
        run_db, run_id = data.picked_db(), data.picked_run()["id"]
    if run_db and data.store_key(run_db) is None:     # a log names its calibration store: only an offered one
        if Path(run_db).name != Path(DEMO_DB).name:
            raise StoplineError("the log's calibration store is not one this dashboard offers",
                                hint="list it in STOPLINE_STORES, or pick the calibration run in the sidebar")
        run_db = DEMO_DB                            # a log made elsewhere against the bundled store
    res, ck, fin = data.monitor_report(str(log_path), str(labels_path) if labels_path else None,
                                       log_key or f"{log_path}|{labels_path}|{log_path.stat().st_mtime_ns}",
                                       run_db, run_id)
except StoplineError as e:
    cleanup()
    st.error(str(e).replace(str(scratch), "the upload") if scratch else str(e))
    st.stop()

pr, ob = res.get("promised"), res["observed"]
st.markdown(f"**{res['n_requests']}** requests · preset **{res['preset']}** · calibration run `{run_id}` · "
            f"{res['labelled']} labelled" + (f" · arms: {', '.join(f'{k} {v}' for k, v in res['arms'].items())}"
                                            if res["arms"] else ""))
if pr is None:
    st.warning("The log names no calibration run, so there is nothing to compare with. Pick the run in the sidebar.")
elif res["flags"]:
    st.error("**Recalibrate.** " + " ".join(f"{f['message']}." for f in res["flags"]), icon=":material/warning:")
else:
    st.success("The preset delivers what the calibration promised: no check is significant.",
               icon=":material/check_circle:")

if pr:
    m = st.columns(4)
    m[0].metric("Tokens / request", f"{ob['tokens_emitted']:.0f}", f"{ob['tokens_emitted'] - pr['tokens_emitted']:+.0f} "
                f"vs {pr['tokens_emitted']:.0f} promised", delta_color="inverse")
    common.noted_metric(m[1], "Savings vs full length", f"{ob['savings_vs_calibration_full']:.0%}",
                        f"{pr['savings']:.0%} promised")
    common.noted_metric(m[2], "Stopped early", f"{ob['stop_rate']:.0%}", f"{pr['stop_rate']:.0%} promised")
    common.noted_metric(m[3], "EM (labelled)", "n/a" if ob["em"] is None else f"{ob['em']:.3f}",
                        f"{pr['em']:.3f} promised" + ("" if ob["em"] is not None else " · add labels"))

    w = res["windows"]
    fig = go.Figure()
    fig.add_scatter(x=w["window"], y=w["tokens_emitted"], mode="lines+markers", name="tokens / request (window mean)")
    fig.add_hline(y=pr["tokens_emitted"], line_dash="dot", annotation_text="promised", line_color="green")
    if w["em"].notna().any():
        fig.add_scatter(x=w["window"], y=w["em"], mode="lines+markers", name="EM (labelled)", yaxis="y2")
        fig.add_hline(y=pr["em"], line_dash="dot", line_color="orange", yref="y2")
    fig.update_layout(height=320, title=f"Over time: the champion's requests in windows of {res['window']}, in arrival order",
                      xaxis_title="window",
                      yaxis_title="tokens", yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="EM"),
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=40))
    st.plotly_chart(fig, width="stretch", key="mon_time")

    arr = res["calibration_arrays"]
    c1, c2, c3 = st.columns(3)
    champ = fin[fin["arm"] == "champion"] if "arm" in fin else fin
    cck = ck[ck["arm"] == "champion"] if len(ck) and "arm" in ck else ck

    def overlay(col, live, calib, title, xlabel, key):
        f = go.Figure()
        f.add_histogram(x=calib, name="calibration (replay)", histnorm="probability density", opacity=0.6, nbinsx=30,
                        marker_color="#64748b")
        f.add_histogram(x=live, name="live", histnorm="probability density", opacity=0.6, nbinsx=30,
                        marker_color="#ea580c")
        f.update_layout(barmode="overlay", height=280, title=title, xaxis_title=xlabel, margin=dict(t=40),
                        legend=dict(orientation="h", y=-0.35))
        col.plotly_chart(f, width="stretch", key=key)
    overlay(c1, champ["stop_pos"], arr["stop_pos"], "Where requests stop", "tokens", "mon_stop")
    for col, s, key in ((c2, "p_mean", "mon_p"), (c3, "entropy", "mon_h")):
        live = cck[s].dropna() if s in cck else []
        overlay(col, live, arr[s][np.isfinite(arr[s])], f"{s} at checkpoints", s, key)

    rows = [{"check": k, "test": v.get("test"), "statistic": v.get("ks", v.get("relative_change")),
             "p value": v.get("p_value"), "flagged": any(f["check"] == k for f in res["flags"])}
            for k, v in res["checks"].items()]
    with st.expander("The tests behind the flags", expanded=bool(res["flags"])):
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption("Flagged when p < 0.01 and the change is larger than its tolerance (tokens +10%, EM −5 points, "
                   "early stops −10 points, KS > 0.1). Calibration signals are taken at the checkpoints the "
                   "controller would have seen, like the live log's.")

if res.get("ab"):
    ab = res["ab"]
    st.subheader("A/B: champion vs challenger")
    st.dataframe([{"arm": a, **ab[a]} for a in ("champion", "challenger")], hide_index=True, width="stretch")
    txt = (f"Challenger − champion: tokens {ab['delta_tokens']:+.1f} (95% CI {ab['delta_tokens_ci'][0]:+.1f} … "
           f"{ab['delta_tokens_ci'][1]:+.1f}, Mann-Whitney p={ab['tokens_p_value']:.2g})")
    if "delta_em" in ab:
        txt += (f"; EM {ab['delta_em']:+.3f} (95% CI {ab['delta_em_ci'][0]:+.3f} … {ab['delta_em_ci'][1]:+.3f}, "
                f"Fisher p={ab['em_p_value']:.2g})")
    st.write(txt + ". The arms see different requests, so the tests are unpaired.")

prop = res.get("proposal")
if prop:
    st.subheader("Recalibration")
    if prop.get("ok"):
        te = prop["test"]
        st.write(f"From {prop['n']} labelled full-length exploration requests, {prop['goal']}: **{prop['label']}** — "
                 f"held-out EM {te['em']:.3f} (full {te['em_full']:.3f}) at {te['tokens_emitted']:.0f} tokens "
                 f"({te['savings_emitted']:.0%} saved).")
        if te["n"] < 100:
            st.caption(f"A small sample: chosen on {prop['tune']['n']} requests, checked on {te['n']}. Treat it as a "
                       "direction, and raise routing.explore or wait for more labels before deploying it.")
        body = {"stopline_preset": 1, "name": f"recalibrated: {prop['label']}"[:200], "setting": prop["setting"]}
        st.download_button("Download the proposed preset", json.dumps(body, indent=2), "recalibrated.json",
                           "application/json", key="dl_prop")
    else:
        st.info(prop["reason"])


# -- the closed loop's versions (python -m analysis recalibrate) -------------------------------------------------
HISTORY = Path(os.environ.get("STOPLINE_HISTORY", "data/history/preset-versions.jsonl"))
if labels_path is not None and "preset" in header and not viewer:
    with st.expander("Re-certify on the exploration requests (closed loop)", icon=":material/verified:"):
        r1, r2, r3 = st.columns([1, 1, 1])
        eps = r1.number_input("ε (largest EM drop)", 0.0, 0.5, 0.02, 0.005, format="%.3f", key="rc_eps")
        dlt = r2.number_input("δ (chance it fails)", 0.001, 0.5, 0.1, 0.01, format="%.3f", key="rc_delta")
        if r3.button("Re-certify", key="rc_go", type="primary"):
            try:
                st.session_state["rc_res"] = data.recalibrate(str(log_path), str(labels_path), header["preset"],
                                                              float(eps), float(dlt), str(HISTORY))
            except StoplineError as e:
                st.session_state["rc_res"] = {"applied": False, "reason": str(e)}
        rc = st.session_state.get("rc_res")
        if rc:
            (st.success if rc["applied"] else st.info)(("Applied: " if rc["applied"] else "Not applied. ") + rc["reason"])
            if rc["applied"]:
                st.download_button("Download the certified preset", json.dumps(rc["preset"], indent=2),
                                   "recertified.json", "application/json", key="dl_rc")
        st.caption("Applied only when a setting certifies on these requests; a move toward fewer tokens is limited "
                   "per family; every attempt is kept in the version history below (docs/production.md).")
if HISTORY.is_file():
    versions = data.preset_history(str(HISTORY), HISTORY.stat().st_mtime)
    if versions:
        st.subheader("Versions (closed loop)")
        st.caption("Each `python -m analysis recalibrate` attempt: a version is applied only when it certifies "
                   "(EM drop ≤ ε with probability ≥ 1 − δ on questions drawn like the fresh exploration requests). "
                   f"From `{HISTORY}`.")
        rows = []
        for v in versions:
            c, o = v.get("certificate") or {}, v.get("observed") or {}
            rows.append({"version": v["version"], "time": v.get("time"), "applied": v.get("applied"),
                         "setting": v.get("setting"), "ε (promised bound)": v.get("epsilon"), "δ": v.get("delta"),
                         "observed EM drop (champion, fresh data)": o.get("em_drop"),
                         "tokens saved (certified)": c.get("savings") if v.get("applied") else None,
                         "requests": v.get("n_explore"), "why": v.get("reason", v.get("note", ""))})
        fig = go.Figure()
        x = [r["version"] for r in rows]
        fig.add_scatter(x=x, y=[r["ε (promised bound)"] for r in rows], mode="lines+markers", name="promised bound ε")
        fig.add_scatter(x=x, y=[r["observed EM drop (champion, fresh data)"] for r in rows], mode="lines+markers",
                        name="observed EM drop of the version then deployed")
        fig.add_scatter(x=x, y=[r["tokens saved (certified)"] for r in rows], mode="markers", name="tokens saved",
                        yaxis="y2")
        fig.update_layout(height=300, xaxis_title="version", yaxis_title="EM drop",
                          yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="tokens saved"),
                          legend=dict(orientation="h", y=-0.35), margin=dict(t=20))
        st.plotly_chart(fig, width="stretch", key="mon_versions")
        st.dataframe(rows, hide_index=True, width="stretch")
cleanup()
