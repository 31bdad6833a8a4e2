"""Monitor: the deployed preset's decision logs against its calibration run; drift, flags, recalibration."""
import hashlib
import json
import os
import shutil
import tempfile
import time
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
scratch = None                # an upload's copy, deleted when this script run ends (the finally below)
SCRATCH_ROOT = Path(tempfile.gettempdir()) / "stopline-monitor"


def cleanup() -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def mtimes(*paths) -> str:
    """What keys a cached result on files: their modification times ("-" for one that is not there)."""
    return "|".join(str(p.stat().st_mtime_ns) if p and p.is_file() else "-" for p in paths)


def prune_scratch(max_age_s: float = 3600) -> None:
    """Uploads' copies left by script runs a rerun interrupted before their cleanup: removed after an hour."""
    for p in SCRATCH_ROOT.glob("*") if SCRATCH_ROOT.is_dir() else ():
        try:
            if time.time() - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


try:        # the upload's copy is removed however this script run ends: an error, st.stop(), a rerun
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
            prune_scratch()
            SCRATCH_ROOT.mkdir(exist_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=SCRATCH_ROOT))
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
        from analysis.production.monitor import HOW_TO_CALIBRATE, left_out_words, log_preset, read_log, resolve_db
        header, _, _ = read_log([log_path])
        deployed = log_preset(header)
        version = None
        if len(deployed["versions"]) > 1:       # a gateway's hot reloads: one version at a time, the latest first
            vs = deployed["versions"][::-1]
            done = set(header.get("finished_versions") or [])
            marks = {v: " (latest)" if v == vs[0] else "" for v in vs}
            marks.update({v: marks[v] + " · no finished request yet" for v in vs if v not in done})
            version = st.selectbox("Preset version (the gateway's reloads; each promised something else)", vs,
                                   index=next((i for i, v in enumerate(vs) if v in done), 0), key="mon_version",
                                   format_func=lambda v: v + marks[v])
            deployed = log_preset(header, version)
        cal = deployed["calibration"] or {}
        run_db, run_id, cal_from = cal.get("db"), cal.get("run"), deployed["calibration_from"]
        if run_id and not run_db:
            raise StoplineError(f"the log names the calibration run {run_id!r} but not its store ({cal_from})")
        if not run_id and data.picked_run() and st.checkbox(
                f"Compare with the run picked in the sidebar ({data.run_label(data.picked_run())})", key="mon_sidebar",
                help="The log names no calibration run; compare only with the run the preset was tuned on."):
            run_db, run_id, cal_from = data.picked_db(), data.picked_run()["id"], "the sidebar"
        elif run_db and cal_from != "the sidebar":
            run_db = resolve_db(run_db, [log_path], cal_from)        # relative: from here, then the log's folder
            if data.store_key(run_db) is None and Path(run_db).resolve() != Path(DEMO_DB).resolve():
                # a log names its calibration store: only an offered one
                raise StoplineError(f"the log's calibration store {run_db!r} is not one this dashboard offers",
                                    hint="list it in STOPLINE_STORES, or pick the calibration run in the sidebar")
        res, ck, fin = data.monitor_report(str(log_path), str(labels_path) if labels_path else None,
                                           log_key or f"{log_path}|{labels_path}|" + mtimes(log_path, labels_path),
                                           run_db, run_id, version)            # (late labels refresh it too)
    except StoplineError as e:
        msg = str(e)
        if scratch:                                 # the uploads by their names, not their copies' paths
            msg = msg.replace(str(log_path), f"'{up.name}'")
            msg = msg.replace(str(labels_path), f"'{lab.name}'") if labels_path else msg
        st.error(msg)
        st.stop()

    pr, ob = res.get("promised"), res["observed"]
    st.markdown(f"**{res['n_requests']}** requests · preset **{res['preset']}**"
                + (f" (version `{res['preset_version']}`)" if res.get("preset_version") else "")
                + (f" · calibration run `{run_id}`" if run_id else " · no calibration run")
                + f" · {res['labelled']} labelled"
                + (f" · arms: {', '.join(f'{k} {v}' for k, v in res['arms'].items())}" if res["arms"] else "")
                + left_out_words(res))
    notes = []
    if res.get("not_yet"):
        notes.append(f"The latest preset version (`{'`, `'.join(res['not_yet'])}`) has no finished request yet: "
                     f"these figures are version `{res['preset_version']}`'s, the one before it.")
    if res["versions"]["left_out"]:
        notes.append(f"The log holds {len(res['versions']['versions'])} preset versions: these figures are version "
                     f"`{res['preset_version']}`'s alone; {res['versions']['left_out']} requests of the others are "
                     "left out (pick another version above).")
    if res["repeated_ids"]["ids"]:
        rep = res["repeated_ids"]
        notes.append(f"{rep['ids']} request id(s) repeat (clients' retries reusing `stopline.request_id`): each final "
                     f"record counts as a request of its own ({rep['extra_requests']} more), and a label joins every "
                     "instance of its id.")
    if notes:
        st.caption(" ".join(notes))
    if pr is None:
        st.info("No calibration run is known for this log, so there is no promise to compare with: these are the live "
                "figures alone. To compare, " + HOW_TO_CALIBRATE + "; or compare with the run picked in the sidebar "
                "(the box above), if it is the one the preset was tuned on.", icon=":material/info:")
        if ob["tokens_emitted"] is not None:
            m = st.columns(3)
            m[0].metric("Tokens / request", f"{ob['tokens_emitted']:.0f}")
            m[1].metric("Stopped early", f"{ob['stop_rate']:.0%}")
            m[2].metric("EM (labelled)", "n/a" if ob["em"] is None else f"{ob['em']:.3f}",
                        help=f"on {ob['n_labelled']} labelled requests" if ob["n_labelled"] else
                        "no champion request is labelled" if res["labelled"] else "add labels")
    elif res["flags"]:
        st.error("**Recalibrate.** " + " ".join(f"{f['message']}." for f in res["flags"]), icon=":material/warning:")
    elif ob["tokens_emitted"] is not None:       # with no champion-served request there is nothing to vouch for
        st.success("The preset delivers what the calibration promised: no check is significant.",
                   icon=":material/check_circle:")

    if pr and ob["tokens_emitted"] is None:       # every request explored (full length): no champion stops to compare
        st.info("No request in this log was served by the champion's stopping (all explored at full length): the "
                "drift checks need some. The exploration requests feed the rollback check and re-certification below.")
    if pr and ob["tokens_emitted"] is not None:
        m = st.columns(4)
        m[0].metric("Tokens / request", f"{ob['tokens_emitted']:.0f}", f"{ob['tokens_emitted'] - pr['tokens_emitted']:+.0f} "
                    f"vs {pr['tokens_emitted']:.0f} promised", delta_color="inverse")
        common.noted_metric(m[1], "Savings vs full length", f"{ob['savings_vs_calibration_full']:.0%}",
                            f"{pr['savings']:.0%} promised")
        common.noted_metric(m[2], "Stopped early", f"{ob['stop_rate']:.0%}", f"{pr['stop_rate']:.0%} promised")
        common.noted_metric(m[3], "EM (labelled)", "n/a" if ob["em"] is None else f"{ob['em']:.3f}",
                            f"{pr['em']:.3f} promised" + (f" · on {ob['n_labelled']} labelled" if ob["em"] is not None
                                                          else " · add labels"))

        w = res["windows"]
        fig = go.Figure()
        fig.add_scatter(x=w["window"], y=w["tokens_emitted"], mode="lines+markers", name="tokens / request (window mean)")
        fig.add_hline(y=pr["tokens_emitted"], line_dash="dot", annotation_text="promised", line_color="green")
        if w["em"].notna().any():
            fig.add_scatter(x=w["window"], y=w["em"], mode="lines+markers", name="EM (labelled)", yaxis="y2")
            fig.add_hline(y=pr["em"], line_dash="dot", line_color="orange", yref="y2")
        fig.update_layout(height=320, title=f"Over time: the champion's requests in windows of {res['window']}, in arrival order",
                          xaxis_title="window",
                          yaxis_title="tokens", yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="EM", **common.SHARE_AXIS),
                          legend=dict(orientation="h", y=-0.3), margin=dict(t=40))
        st.plotly_chart(fig, width="stretch", key="mon_time")

        arr = res["calibration_arrays"]
        c1, c2, c3 = st.columns(3)
        champ = fin[fin["arm"] == "champion"] if "arm" in fin else fin
        if "cause" in champ:        # as in the monitor's figures: the preset's own ends, not an upstream's or client's
            champ = champ[champ["cause"].isna()]
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
    dep = data.deployed_preset(str(HISTORY), deployed["preset"]) if labels_path is not None else None
    if dep is not None:
        st.subheader("Deployed version against its certificate (automatic rollback)")
        alpha = st.number_input("α (chance of a false rollback, however often it is checked)", 0.001, 0.5, 0.05, 0.01,
                                format="%.3f", key="rb_alpha")
        try:                # an upload keys on its content, a file on its mtime; the version history's mtime either way
            ev = data.rollback_evidence(str(log_path), str(labels_path), dep.to_dict(), str(HISTORY), float(alpha),
                                        f"{log_key}|{mtimes(HISTORY)}" if log_key else mtimes(log_path, labels_path, HISTORY))
        except StoplineError as e:
            ev = {"ok": False, "reason": str(e)}
        said = data.rollback_out_of_step(dep.to_dict(), deployed["preset"], ev.get("version"))
        if said:
            st.warning(said, icon=":material/sync_problem:")
        if not ev["ok"]:
            st.info(ev["reason"])
        elif not ev["n"]:
            st.info(ev["verdict"][0].upper() + ev["verdict"][1:] + ".")
        else:
            what = "EM drop" if ev["risk"] == "drop" else "lost share"
            k, m1 = ev["wealth"], ev["running_mean"]
            (st.error if ev["test"]["fired"] else st.success)(ev["verdict"][0].upper() + ev["verdict"][1:] + ".")
            m = st.columns(4)
            m[0].metric("Labelled exploration requests", ev["n"])
            common.noted_metric(m[1], f"Observed {what}", f"{m1[-1]:+.3f}", f"ε = {ev['epsilon']:g}")
            common.noted_metric(m[2], "Evidence of a breach", f"{k[-1]:.3g}", f"fires at {1 / ev['alpha']:g}")
            common.noted_metric(m[3], "Version tested", "—" if ev["version"] is None else str(ev["version"]), ev["setting"])
            n = np.arange(1, ev["n"] + 1)
            g1, g2 = st.columns(2)
            f = go.Figure()
            f.add_scatter(x=n, y=k, mode="lines", name="evidence K (running wealth)", line_color="#7c3aed")
            # the 1/α line as a trace: a shape's y on a log axis would be read as log10 of it
            f.add_scatter(x=[1, ev["n"]], y=[1 / ev["alpha"]] * 2, mode="lines+text", line=dict(color="red", dash="dot"),
                          text=["", f"1/α = {1 / ev['alpha']:g}"], textposition="top left", name="1/α")
            if ev["test"]["fired"]:
                f.add_vline(x=ev["test"]["at"] + 1, line_dash="dash", line_color="red", annotation_text="fires")
            f.update_layout(height=280, title="The sequential test's evidence over requests", xaxis_title="request",
                            yaxis=dict(type="log", title="K (log scale)", dtick=1,      # a log axis' range is in log10
                                       range=[np.log10(min(k.min(), 0.5)) - 0.1, np.log10(max(k.max(), 1 / ev["alpha"])) + 0.4]),
                            margin=dict(t=40), showlegend=False)
            g1.plotly_chart(f, width="stretch", key="rb_wealth")
            f = go.Figure()
            f.add_scatter(x=n, y=m1, mode="lines", name=f"observed {what} (running mean)", line_color="#ea580c")
            f.add_hline(y=ev["epsilon"], line_dash="dot", line_color="green", annotation_text=f"ε = {ev['epsilon']:g}")
            f.update_layout(height=280, title=f"Observed {what} over requests", xaxis_title="request",
                            yaxis_title=what, margin=dict(t=40), showlegend=False)
            g2.plotly_chart(f, width="stretch", key="rb_mean")
            st.caption("Each labelled exploration request served under the deployed setting is one loss; the evidence "
                       "is a betting wealth that grows while losses sit above ε. Under \"mean loss ≤ ε\" it reaches 1/α "
                       "with chance ≤ α however often it is looked at (Ville's inequality), so the check can run after "
                       "every request (analysis/production/rollback.py, docs/production.md).")
    if labels_path is not None and (deployed["preset"] is not None or dep is not None) and not viewer:
        with st.expander("Re-certify on the exploration requests (closed loop)", icon=":material/verified:"):
            r1, r2, r3, r4 = st.columns([1, 1, 1, 1])
            eps = r1.number_input("ε (largest EM drop)", 0.0, 0.5, 0.02, 0.005, format="%.3f", key="rc_eps")
            dlt = r2.number_input("δ (chance it fails)", 0.001, 0.5, 0.1, 0.01, format="%.3f", key="rc_delta")
            if r3.button("Re-certify", key="rc_go", type="primary"):
                try:
                    st.session_state["rc_res"] = data.recalibrate(str(log_path), str(labels_path),
                                                                  deployed["preset"] or dep.to_dict(),
                                                                  float(eps), float(dlt), str(HISTORY))
                except StoplineError as e:
                    st.session_state["rc_res"] = {"applied": False, "reason": str(e)}
            if dep is not None and r4.button("Run rollback check", key="rb_go"):
                try:
                    st.session_state["rb_res"] = data.rollback(str(log_path), str(labels_path), dep.to_dict(),
                                                               str(HISTORY), float(st.session_state.get("rb_alpha", 0.05)))
                except StoplineError as e:
                    st.session_state["rb_res"] = {"rolled_back": False, "reason": str(e)}
                st.rerun()        # the panel and the history above read the new version
            rb = st.session_state.get("rb_res")
            if rb:
                (st.warning if rb["rolled_back"] else st.info)(("Rolled back: " if rb["rolled_back"] else "No rollback: ")
                                                               + rb["reason"])
            rc = st.session_state.get("rc_res")
            if rc:
                said = rc["reason"]
                if rc["applied"]:
                    st.success("Applied: " + said)
                else:           # recalibrate's own words start "not applied: ..." or "no change: ..."
                    st.info(said[0].upper() + said[1:] if said.startswith(("not applied", "no change"))
                            else "Not applied. " + said)
                if rc["applied"]:
                    st.download_button("Download the certified preset", json.dumps(rc["preset"], indent=2),
                                       "recertified.json", "application/json", key="dl_rc")
            st.caption("Applied only when a setting certifies on these requests; a move toward fewer tokens is limited "
                       "per family; every attempt is kept in the version history below (docs/production.md). The "
                       "rollback check holds the deployed version to its certificate (the panel above) and, when the "
                       "test fires, returns to the previous certified version as a new version.")
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
                             "setting": v.get("setting"),
                             "rollback": (f"rolled back from {v.get('rolled_back_from')} to {v.get('rolled_back_to')}"
                                          if v.get("rollback") else ""), "ε (promised bound)": v.get("epsilon"), "δ": v.get("delta"),
                             "observed EM drop (champion, fresh data)": o.get("em_drop"),
                             "tokens saved (certified)": c.get("savings") if v.get("applied") else None,
                             "requests": v.get("n_explore"),
                             "why": v.get("reason", v.get("note", ""))})
            fig = go.Figure()
            x = [r["version"] for r in rows]
            fig.add_scatter(x=x, y=[r["ε (promised bound)"] for r in rows], mode="lines+markers", name="promised bound ε")
            fig.add_scatter(x=x, y=[r["observed EM drop (champion, fresh data)"] for r in rows], mode="lines+markers",
                            name="observed EM drop of the version then deployed")
            fig.add_scatter(x=x, y=[r["tokens saved (certified)"] for r in rows], mode="markers", name="tokens saved",
                            yaxis="y2")
            back = [(r, v) for r, v in zip(rows, versions) if v.get("rollback")]
            if back:        # a rollback version: where the test fired, at the drop it saw (else at ε)
                o = [(v.get("observed") or {}) for _, v in back]
                y = [d.get("em_drop", d.get("lost_share", r["ε (promised bound)"])) for (r, _), d in zip(back, o)]
                fig.add_scatter(x=[r["version"] for r, _ in back], y=y, mode="markers", name="rollback",
                                marker=dict(symbol="x", size=14, color="#dc2626", line=dict(width=2)))
                for (r, _), yy in zip(back, y):
                    fig.add_annotation(x=r["version"], y=yy, text=r["rollback"], showarrow=True, arrowhead=2, ay=-30,
                                       font=dict(color="#dc2626"))
            fig.update_layout(height=300, xaxis=dict(title="version", dtick=1), yaxis_title="EM drop",
                              yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="tokens saved", **common.SHARE_AXIS),
                              legend=dict(orientation="h", y=-0.35), margin=dict(t=20))
            st.plotly_chart(fig, width="stretch", key="mon_versions")
            st.dataframe(rows, hide_index=True, width="stretch")
finally:
    cleanup()
