"""Tune: sliders generated from the family's declared parameters; numbers recompute live."""
import plotly.express as px
import streamlit as st

from analysis.errors import StoplineError
from analysis.optimize import evaluate
from analysis.policies import Setting, get_family
from analysis.replay import stop_index
from views import common

st.header("Tune")
run = common.current_run()
if run:
    t = common.table_for(run)
    fam = common.family_picker(t)
    cls = get_family(fam)
    st.caption(f"{cls.description} ({cls.source})")
    start = common.current_setting(t, fam).params       # the link's or the last setting, else the defaults
    params = {}
    cols = st.columns(max(1, len([p for p in cls.params if p.kind != "setting"])))
    i = 0
    for p in cls.params:
        key = f"{fam}.{p.name}"
        if p.kind == "setting":
            params[p.name] = start[p.name]
            continue
        with cols[i]:
            if p.kind == "int":
                hi = int(min(p.high, max(t.full_tokens.max(), 64))) if p.high and p.high > 10_000 else int(p.high)
                params[p.name] = st.slider(p.label or p.name, int(p.low), hi, int(min(start[p.name], hi)), help=p.help,
                                           key=key)
            elif p.kind == "float":
                if p.log:
                    opts = sorted(set(p.sweep_values()) | {p.default, start[p.name]})
                    params[p.name] = st.select_slider(p.label or p.name, opts, value=start[p.name], help=p.help, key=key,
                                                      format_func=lambda v: f"{v:g}")
                else:
                    params[p.name] = st.slider(p.label or p.name, float(p.low), float(p.high), float(start[p.name]),
                                               step=0.005, help=p.help, key=key)
            elif p.kind == "choice":
                params[p.name] = st.selectbox(p.label or p.name, p.choices, index=p.choices.index(start[p.name]),
                                              help=p.help, key=key)
            elif p.kind == "bool":
                params[p.name] = st.checkbox(p.label or p.name, start[p.name], help=p.help, key=key)
        i += 1
    try:
        setting = Setting.from_dict({"family": fam, "params": params})
        stops = stop_index(t, setting)
        common.remember_setting(setting)
    except StoplineError as e:
        st.error(str(e))
        st.stop()
    res = evaluate(t, stops, setting.label(), n_boot=1000)
    ci = res["ci"]
    m = st.columns(5)
    m[0].metric("EM", f"{res['em']:.3f}", f"{res['delta_em']:+.3f} vs full", delta_color="normal")
    m[1].metric("ΔEM 95% CI", f"{ci['delta_em'][0]:+.2f} … {ci['delta_em'][1]:+.2f}")
    m[2].metric("Tokens saved (emitted)", f"{res['savings_emitted']:.1%}", f"{res['tokens_emitted']:.0f} vs {res['tokens_full']:.0f}",
                delta_color="off")
    m[3].metric("Tokens saved (computed)", f"{res['savings_computed']:.1%}", "probes included", delta_color="off")
    m[4].metric("Lost / gained", f"{res['lost']} / {res['gained']}", f"McNemar p={res['mcnemar']['p_value']:.2g}",
                delta_color="off")
    frac = stops / t.final_idx.clip(min=1)
    fig = px.histogram(x=t.pos[t.rows, stops], nbins=40, labels={"x": "stop position (tokens)"},
                       title="Where questions stop")
    fig.update_layout(height=320, yaxis_title="questions", margin=dict(t=40))
    st.plotly_chart(fig, width="stretch")
    st.caption(f"{int((frac < 1).sum())} of {t.n} questions stop before their end. Setting: `{setting.label()}`")
