"""Frontier: every family's settings as (tokens, EM) points, the Pareto set and the convex hull."""
import plotly.graph_objects as go
import streamlit as st

from views import common

st.header("Frontier")
run = common.current_run()
if run:
    pts = common.sweep_points(st.session_state["db"], run["id"], run["n_checkpoints"])
    axis = st.radio("Cost", ["tokens emitted", "tokens computed (probes included)"], horizontal=True, key="axis")
    x = "emitted" if axis.startswith("tokens emitted") else "computed"
    suffix = "" if x == "emitted" else "_computed"
    full = pts[pts.family == "full"].iloc[0]
    fig = go.Figure()
    colors = {"budget": "#64748b", "consistency": "#2563eb", "confidence": "#c2410c", "entropy": "#16a34a",
              "learned": "#9333ea", "hybrid": "#db2777"}
    for fam, g in pts[pts.family != "full"].groupby("family", sort=False):
        front = g[g["pareto_family" + suffix]].sort_values(x)
        fig.add_scatter(x=g[x], y=g.em, mode="markers", name=fam, opacity=0.25, marker=dict(color=colors.get(fam), size=6),
                        text=g.label, hovertemplate="%{text}<br>%{x:.0f} tokens, EM %{y:.3f}<extra></extra>",
                        legendgroup=fam, showlegend=False)
        fig.add_scatter(x=front[x], y=front.em, mode="lines+markers", name=fam, line=dict(color=colors.get(fam)),
                        marker=dict(size=7), text=front.label, legendgroup=fam,
                        hovertemplate="%{text}<br>%{x:.0f} tokens, EM %{y:.3f}<extra></extra>")
    hull = pts[pts["hull" + suffix]].sort_values(x)
    fig.add_scatter(x=hull[x], y=hull.em, mode="lines", name="convex hull (mixing settings)",
                    line=dict(color="black", dash="dot"))
    fig.add_scatter(x=[full[x]], y=[full.em], mode="markers", name="full length",
                    marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)))
    fig.update_layout(height=520, xaxis_title=f"mean {axis}", yaxis_title="exact match",
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=30))
    st.plotly_chart(fig, width="stretch", key="frontier_chart")
    st.caption(f"{run['model']} on {run['dataset']}: {run['n_questions']} questions, full-length EM "
               f"{full.em:.3f} at {full.emitted:.0f} tokens. Faint points are dominated within their family.")
    best = pts[pts["pareto" + suffix] & (pts.family != "full")].sort_values(x)
    st.subheader("Pareto settings")
    st.dataframe(best[["label", "em", "delta_em", "emitted", "computed", "savings_emitted", "lost", "gained"]],
                 hide_index=True, width="stretch")
