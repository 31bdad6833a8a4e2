"""Questions: the per-question EM diff of the current setting, down to one question's trace."""
import hashlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.core.errors import StoplineError
from analysis.evaluate.incumbent import LABEL as INCUMBENT, incumbent_outcome
from analysis.evaluate.optimize import split_of
from analysis.presets.schema import loads
from analysis.replay.engine import full_length, outcome_from_stops, stop_index
from views import common, data

run, t, fam, setting = common.page_start("Questions")
st.caption(f"Current setting: `{setting.label()}` (change it on the Tune page). Each question: where it stops, "
           "and whether its answer there is right compared with the other side.")

notice = st.empty()         # a link naming a question this run lacks is said here, above all
saved = data.presets_for(t)        # the user's presets, whichever store is picked
mine = [INCUMBENT] if t.incumbent is not None else []      # the user's own stopper, when the run has its stops
opts = ["full length", *mine, *[f"preset: {n}" for n in saved], "a preset link or JSON…"]
if (said := data.url_pick("q_against", "vs", opts, "full length",
                          {"full length": "full", INCUMBENT: "mine", "a preset link or JSON…": "link"}, "the other side")):
    st.warning(said)
qa, qb = st.columns([3, 2])
against = qa.selectbox("Compare against", opts, key="q_against")
with qb:
    split = common.questions_on("q_on")
whole = t
try:
    t = split_of(t, split)             # both sides on the half alone (no model fitted on the other half)
    a = outcome_from_stops(t, stop_index(t, setting), setting.label(), setting)
    if against == "full length":
        b = full_length(t)
    elif against == INCUMBENT:
        b = incumbent_outcome(t)
    else:
        if against.startswith("preset: "):
            from analysis.presets.schema import from_dict
            other = from_dict(saved[against[len("preset: "):]])
        else:
            data.url_pick("q_other", "vs_preset", None, "")
            text = st.text_input("Preset link (a URL with s=sl1.…, or the sl1.… code) or JSON", key="q_other")
            if not text:
                st.info("Paste a preset link or JSON to compare with.")
                st.stop()
            other = loads(text)
            data.check_viewer_cost(other.to_dict())
        from analysis.presets.routing import preset_outcome
        b = preset_outcome(t, other)
        if (w := data.made_elsewhere(other, run)):
            st.warning(w)
except StoplineError as e:
    st.error(str(e))
    st.stop()

right_a, right_b = a.em > 0.5, b.em > 0.5
status = np.select([right_a & right_b, ~right_a & ~right_b, right_b & ~right_a], ["kept right", "kept wrong", "lost"],
                   "gained")
df = pd.DataFrame({"question": t.question_ids, "status": status, "stop at": a.stop_pos, f"{b.label[:24]} at": b.stop_pos,
                   "tokens saved": b.emitted - a.emitted,
                   "computed saved": b.computed - a.computed,       # probes included: may be negative
                   "answer": a.answers, "other answer": b.answers})
counts = df["status"].value_counts()
c = st.columns(4)
for col, k in zip(c, ["lost", "gained", "kept right", "kept wrong"]):
    col.metric(k.capitalize(), int(counts.get(k, 0)))
SHOW = ["lost", "gained", "kept right", "kept wrong"]
linked = data.query("show")                 # the filter lives in the link too (show=lost,gained)
show = st.multiselect("Show", SHOW, key="q_filter",
                      default=[x for x in linked.split(",") if x in SHOW] if linked is not None else ["lost", "gained"])
data.set_query("show", ",".join(show))
view = df[df["status"].isin(show)].sort_values("tokens saved", ascending=False)
# a line between the filter and the table: the table's toolbar (shown on hover) sits above its top edge and
# covered the filter's chips
st.caption(f"{len(view)} of {len(df)} questions, most tokens saved first; pick a row to see its trace below (until "
           "then it shows the question shown last, or the first row).")
# a picked row is a row of this view: the table is keyed by the questions it lists, in order, so that another
# half, filter, setting or other side does not move the pick to whichever question is now at that row (the
# link's q keeps the question shown)
order = hashlib.sha1("\n".join(map(str, view["question"])).encode()).hexdigest()[:12]
event = st.dataframe(view, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key=f"q_table.{order}", height=260)
rows = event.selection.rows if event and event.selection else []
ids = view["question"].tolist()
if not ids:
    st.info("No question in this selection.")
    st.stop()
pick = ids[rows[0]] if rows else data.query("q")
if pick not in set(t.question_ids):
    if pick:
        where = "in the tune half, not this one" if pick in set(whole.question_ids) else "not in this run"
        notice.warning(f"The question this link names, '{data.link_text(pick)}', is {where}; showing "
                       f"{ids[0]} instead (the first in the table below).", icon=":material/link_off:")
    pick = ids[0]
data.set_query("q", pick)
i = int(np.flatnonzero(t.question_ids == pick)[0])

st.subheader(f"Trace of {pick}")
tr = data.trace(run, pick)
n_ck = int(t.lengths[i])
ck = pd.DataFrame({"checkpoint": np.arange(n_ck), "pos": t.pos[i, :n_ck], "answer": t.answers[i, :n_ck],
                   "EM": t.em[i, :n_ck], "p_mean": t.p_mean[i, :n_ck], "entropy": t.entropy[i, :n_ck],
                   "step": t.is_step[i, :n_ck], "transition": t.is_transition[i, :n_ck]})
left, right = st.columns([3, 2])
side_b = "the pasted preset" if against == "a preset link or JSON…" else against.removeprefix("preset: ")
with left:
    fig = go.Figure()
    ok = ck["EM"] > 0.5
    fig.add_scatter(x=ck["pos"], y=np.where(ok, 1.0, 0.0), mode="markers", name="trial answer (right / wrong)",
                    text=ck["answer"],
                    marker=dict(size=11, color=np.where(ok, "#16a34a", "#dc2626"), symbol="circle"),
                    hovertemplate="token %{x}<br>answer %{text}<extra></extra>")
    if np.isfinite(ck["p_mean"]).any():
        fig.add_scatter(x=ck["pos"], y=ck["p_mean"], mode="lines", name="answer probability (mean)",
                        line=dict(color="#c2410c"))
    if np.isfinite(ck["entropy"]).any():
        fig.add_scatter(x=ck["pos"], y=ck["entropy"], mode="lines", name="entropy after the cue", yaxis="y2",
                        line=dict(color="#2563eb", dash="dot"))
    # the stops as lines named in the legend (labels on the chart ran over the lines and each other)
    fig.add_scatter(x=[float(a.stop_pos[i])] * 2, y=[-0.1, 1.25], mode="lines", name="current setting stops",
                    line=dict(color="black"), hoverinfo="skip")
    if against != "full length":
        fig.add_scatter(x=[float(b.stop_pos[i])] * 2, y=[-0.1, 1.25], mode="lines", hoverinfo="skip",
                        name=f"{side_b} stops", line=dict(color="#9333ea", dash="dash"))
    fig.update_layout(height=360, xaxis_title="tokens into the trace", yaxis=dict(title="right (1) / probability",
                      range=[-0.1, 1.25]), yaxis2=dict(overlaying="y", side="right", title="entropy (nats)", showgrid=False,
                      rangemode="tozero", tickformat=".1f"),
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=30))
    st.plotly_chart(fig, width="stretch", key="trace_chart")
with right:
    st.markdown(f"**Question.** {tr.get('question') or '(not stored)'}")
    gold = tr.get("gold")
    if isinstance(gold, str) and gold.startswith("["):
        import json
        gold = json.loads(gold)
    other_said = "" if against == "full length" else (
        f" · **{side_b}:** `{b.answers[i]}` ({'right' if right_b[i] else 'wrong'}) "
        f"at token {b.stop_pos[i]:.0f}")
    st.markdown(f"**Gold:** `{', '.join(gold) if isinstance(gold, list) else gold}` · **full-length answer:** "
                f"`{tr.get('final_norm')}` ({'right' if t.full_em[i] > 0.5 else 'wrong'}) · **current setting:** "
                f"`{a.answers[i]}` ({'right' if right_a[i] else 'wrong'}) at token {a.stop_pos[i]:.0f} of "
                f"{t.full_tokens[i]:.0f}{other_said}")
    st.dataframe(ck, hide_index=True, height=220, width="stretch")
text = tr.get("text") or ""
cuts = tr.get("char_pos") or []
stop = int(a.stop[i])
if stop < len(cuts) and cuts[stop] is not None:     # where the stop's checkpoint cuts the text, recorded with it
    cut, how = min(int(cuts[stop]), len(text)), "the cut is where the stop's checkpoint ends the text"
else:                                               # a store from before v5, or an export without the text's tokens
    n_tok = max(1, int(tr.get("n_tokens") or 1))
    cut = int(len(text) * min(1.0, float(a.stop_pos[i]) / n_tok))
    how = "the cut is placed in proportion to tokens, so approximate"
with st.expander(f"The trace's text (the part after the current setting's stop is greyed; {how})", expanded=True):
    import html
    st.html(f"<div style='white-space: pre-wrap; font-family: monospace; font-size: 0.85em'>"
            f"{html.escape(text[:cut])}<span style='color:#9ca3af'>{html.escape(text[cut:])}</span></div>")
