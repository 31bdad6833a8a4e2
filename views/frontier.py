"""Frontier: every family's settings as (tokens, EM) points, the Pareto set and the convex hull; clicking a
point makes it the current setting; other runs (models) can be drawn on the same chart."""
import json

import plotly.graph_objects as go
import streamlit as st

from analysis.errors import StoplineError
from analysis.frontier import LEARNED_AUTO_MAX
from analysis.policies import Setting
from analysis.replay import replay
from views import common

st.header("Frontier")
run = common.current_run()
if run:
    db = st.session_state["db"]
    big = run["n_checkpoints"] > LEARNED_AUTO_MAX
    runs = st.session_state["runs"]
    c1, c2, c3 = st.columns([2, 3, 2])
    learned = c3.toggle("Learned stopper", value=not big, key="with_learned",
                        help="trains five cross-fitted classifiers; on a large run that takes several seconds, "
                             "so it waits to be asked for")
    pts = common.sweep_points(db, run["id"], run["n_questions"], run["n_checkpoints"], learned)
    axis = c1.radio("Cost", ["tokens emitted", "tokens computed (probes included)"], horizontal=True, key="axis")
    others = c2.multiselect("Also draw the Pareto front of", [r["id"] for r in runs if r["id"] != run["id"]],
                            key="other_runs", format_func=lambda i: next(
                                f"{r['model']} · {r['dataset']}" for r in runs if r["id"] == i))
    x = "emitted" if axis.startswith("tokens emitted") else "computed"
    suffix = "" if x == "emitted" else "_computed"
    full = pts[pts.family == "full"].iloc[0]
    fig = go.Figure()
    colors = {"budget": "#64748b", "consistency": "#2563eb", "confidence": "#c2410c", "entropy": "#16a34a",
              "learned": "#9333ea", "hybrid": "#db2777"}
    hover = "%{text}<br>%{x:.0f} tokens, EM %{y:.3f}<br><i>click to make it current</i><extra></extra>"
    for fam, g in pts[pts.family != "full"].groupby("family", sort=False):
        front = g[g["pareto_family" + suffix]].sort_values(x)
        fig.add_scatter(x=g[x], y=g.em, mode="markers", name=fam, opacity=0.25, marker=dict(color=colors.get(fam), size=7),
                        text=g.label, customdata=g.setting, hovertemplate=hover, legendgroup=fam, showlegend=False)
        fig.add_scatter(x=front[x], y=front.em, mode="lines+markers", name=fam, line=dict(color=colors.get(fam)),
                        marker=dict(size=8), text=front.label, customdata=front.setting, legendgroup=fam,
                        hovertemplate=hover)
    hull = pts[pts["hull" + suffix]].sort_values(x)
    fig.add_scatter(x=hull[x], y=hull.em, mode="lines", name="convex hull (mixing settings)",
                    line=dict(color="black", dash="dot"), hoverinfo="skip")
    fig.add_scatter(x=[full[x]], y=[full.em], mode="markers", name="full length",
                    marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)))
    for i, oid in enumerate(others):
        o = next(r for r in runs if r["id"] == oid)
        try:
            op = common.sweep_points(db, oid, o["n_questions"], o["n_checkpoints"], learned)
        except StoplineError as e:
            st.warning(f"{oid}: {e}")
            continue
        front = op[op["pareto" + suffix]].sort_values(x)
        fig.add_scatter(x=front[x], y=front.em, mode="lines+markers", name=f"{o['model']} · {o['dataset']} (front)",
                        line=dict(dash=["dash", "dashdot", "longdash"][i % 3], color="#0f172a", width=1.5),
                        marker=dict(size=5, symbol="square"), text=front.label, hoverinfo="text+x+y")
        ofull = op[op.family == "full"].iloc[0]
        fig.add_scatter(x=[ofull[x]], y=[ofull.em], mode="markers", showlegend=False, hoverinfo="skip",
                        marker=dict(symbol="star-open", size=14, color="#0f172a"))
    # the current setting, where it sits
    current = st.session_state.get("setting") or common.url_setting()
    if current is not None:
        try:
            s = replay(common.table_for(run), current).summary()     # the table only when needed
            fig.add_scatter(x=[s["tokens_" + x]], y=[s["em"]], mode="markers", name="current setting",
                            marker=dict(symbol="circle-open", size=22, color="#dc2626", line=dict(width=3)),
                            text=[current.label()], hovertemplate="current: %{text}<extra></extra>")
        except StoplineError:
            current = None
    fig.update_layout(height=540, xaxis_title=f"mean {axis}", yaxis_title="exact match", clickmode="event+select",
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=30))
    event = st.plotly_chart(fig, width="stretch", key="frontier_chart", on_select="rerun", selection_mode="points")
    picked = [p for p in (event.selection.points if event and event.selection else []) if p.get("customdata")]
    if picked:
        s = Setting.from_dict(json.loads(picked[0]["customdata"]))
        if s != current:
            common.remember_setting(s)
            st.query_params["family"] = s.family
            st.session_state["family"] = s.family
            st.rerun()
    if current is not None:
        st.markdown(f"**Current setting:** `{current.label()}` — open **Tune** to adjust it, **Questions** to see "
                    "which answers it loses or gains.")
    else:
        st.caption("Click a point to make it the current setting.")
    st.caption(f"{run['model']} on {run['dataset']}: {run['n_questions']} questions, full-length EM "
               f"{full.em:.3f} at {full.emitted:.0f} tokens. Faint points are dominated within their family.")
    best = pts[pts["pareto" + suffix] & (pts.family != "full")].sort_values(x)
    st.subheader("Pareto settings")
    st.dataframe(best[["label", "em", "delta_em", "emitted", "computed", "savings_emitted", "lost", "gained"]],
                 hide_index=True, width="stretch")
