"""Compare: preset A vs preset B on the same questions — paired table, McNemar, ΔEM and Δtokens with CIs,
and the same per slice."""
import plotly.graph_objects as go
import streamlit as st

from analysis.evaluate.compare import compare, default_slice, slice_fields
from analysis.core.errors import PresetError, StoplineError
from analysis.evaluate.incumbent import LABEL as INCUMBENT, incumbent_outcome
from analysis.evaluate.optimize import split_of
from analysis.presets.schema import Preset, from_dict, from_setting, loads
from analysis.replay.policies import Setting
from views import common, data

run, t, fam, current = common.page_start("Compare")
saved = data.presets_for(t)        # the user's presets, whichever store is picked


# how the sides are written in the URL (a saved preset as "preset: NAME")
CODES = {"the current setting": "current", "full length": "full", INCUMBENT: "mine", "a link or JSON…": "link"}


def chooser(side: str, default: str) -> Preset | str:
    """A side: a preset, or INCUMBENT (its Outcome is made on the questions compared)."""
    mine = [INCUMBENT] if t.incumbent is not None else []      # the user's own stopper, when the run has it
    opts = ["the current setting", "full length", *mine, *[f"preset: {n}" for n in saved], "a link or JSON…"]
    if (said := data.url_pick(f"cmp_{side}", side.lower(), opts, default, CODES, f"side {side}")):
        st.warning(said)
    pick = st.selectbox(f"Side {side}", opts, key=f"cmp_{side}")
    if pick == INCUMBENT:
        return INCUMBENT
    if pick == "the current setting":
        return from_setting(current)
    if pick == "full length":
        return from_setting(Setting.make("budget", B=32768), "full length")
    if pick.startswith("preset: "):
        return from_dict(saved[pick[len("preset: "):]])
    data.url_pick(f"cmp_{side}_text", f"{side.lower()}_preset", None, "")
    text = st.text_input(f"Preset {side}: link (a URL with s=sl1.…, or the sl1.… code) or JSON", key=f"cmp_{side}_text")
    if not text:
        st.info(f"Paste preset {side}.")
        st.stop()
    pasted = loads(text)
    data.check_viewer_cost(pasted.to_dict())
    return pasted


ca, cb = st.columns(2)
try:
    with ca:
        A = chooser("A", "full length")
    with cb:
        B = chooser("B", "the current setting")
except PresetError as e:
    st.error(f"That preset cannot be read: {e}")
    st.stop()
except StoplineError as e:          # one this dashboard will not replay (viewer mode's bounds)
    st.error(str(e))
    st.stop()
for side in (A, B):
    if isinstance(side, Preset) and (w := data.made_elsewhere(side, run)):
        st.warning(w)
qa, qb = st.columns(2)
with qa:
    split = common.questions_on("cmp_on")
with qb:
    slice_opts = ["(none)", "length", *slice_fields(t)]
    if (said := data.url_pick("cmp_slice", "by", slice_opts, default_slice(t), {"(none)": "none"}, "the break-down")):
        st.warning(said)
    slice_by = st.selectbox("Break down by", slice_opts, key="cmp_slice", format_func=common.field_name)
try:
    tt = split_of(t, split)             # as optimize: no model fitted on the other half
    sides = [incumbent_outcome(tt) if x == INCUMBENT else x for x in (A, B)]
    res = compare(tt, *sides, None if slice_by == "(none)" else slice_by)     # N_BOOT resamples, as everywhere
except StoplineError as e:
    st.error(str(e))
    st.stop()

m = st.columns(3)
common.change_metric(m[0], "EM: A → B", f"{res['em_a']:.3f} → {res['em_b']:.3f}", res["delta_em"], "+.3f")
lo, hi = res["delta_em_ci"]           # as on Tune: the half-width, the bounds beneath
common.noted_metric(m[1], "ΔEM 95% CI (B − A)", f"±{(hi - lo) / 2:.3f}", f"{lo:+.3f} to {hi:+.3f}")
common.noted_metric(m[2], "McNemar p", f"{res['mcnemar']['p_value']:.3g}",
                    f"{res['a_only']} right only with A, {res['b_only']} only with B")
# both costs (domain.md): emitted is the stop plus the answer, computed adds every probe the stopper read
m = st.columns(3)
for col, label, a, b, d, says in (
        (m[0], "Tokens emitted: A → B", "tokens_a", "tokens_b", "delta_tokens", "the stop's position plus the answer"),
        (m[1], "Tokens computed: A → B", "computed_a", "computed_b", "delta_computed",
         "emitted plus every probe read up to the stop (none at full length, none for a budget)")):
    common.change_metric(col, label, f"{res[a]:.0f} → {res[b]:.0f}", res[d], "+.0f", delta_color="inverse", help=says)


def saved(a: float, b: float) -> str:
    return f"{1 - b / a:.0%}" if a else "–"


common.noted_metric(m[2], "B saves, emitted / computed", f"{saved(res['tokens_a'], res['tokens_b'])} / "
                    f"{saved(res['computed_a'], res['computed_b'])}", "of A's tokens (negative: B costs more)")
if split == "all":
    st.caption(f"On all {res['n']} questions. A setting chosen on these same questions (a point picked on the Frontier, "
               "the best of a sweep) looks better here than it will on new ones: pick **the held-out half** to check "
               "it on questions it was not chosen on, as the Report and `optimize` do.")
else:
    mine_side = "the current setting" in (st.session_state.get("cmp_A"), st.session_state.get("cmp_B"))
    picked_on = ("the current setting was chosen on the tune half (a Tune jump, or a point clicked on the Frontier "
                 "swept on it), so it is checked out of sample here"
                 if mine_side and common.picked_on_the_tune_half(current) else
                 "one picked looking at every question (a point clicked on the Frontier swept on all questions) is "
                 "partly in-sample here; a Tune jump, or a point clicked on the Frontier swept on the tune half, is "
                 "not")
    st.caption(f"On the held-out half: {res['n']} of {t.n} questions (each goes to a half by a hash of its id: the "
               "split the Report, `optimize` and Tune's jumps use, choosing on the other half). Held out only for a "
               f"setting chosen on the other half: {picked_on}.")
st.caption(f"95% CIs (B − A): tokens emitted {res['delta_tokens_ci'][0]:+.1f} … {res['delta_tokens_ci'][1]:+.1f}, "
           f"tokens computed {res['delta_computed_ci'][0]:+.1f} … {res['delta_computed_ci'][1]:+.1f}. "
           f"A = {res['a']}; B = {res['b']}. Paired on the same {res['n']} questions: the CIs resample questions, "
           "McNemar uses only the questions where the two disagree.")
st.dataframe({"": ["A right", "A wrong"], "B right": [res["both_right"], res["b_only"]],
              "B wrong": [res["a_only"], res["both_wrong"]]}, hide_index=True)
if "slices" in res:
    sl = res["slices"]
    st.subheader(f"By {common.field_name(res['slice_by'])}")
    fig = go.Figure()
    lo = sl["delta_em_ci"].map(lambda c: c[0])
    hi = sl["delta_em_ci"].map(lambda c: c[1])
    fig.add_scatter(x=sl["slice"], y=sl["delta_em"], mode="markers", marker=dict(size=11),
                    error_y=dict(type="data", array=hi - sl["delta_em"], arrayminus=sl["delta_em"] - lo),
                    name="ΔEM (B − A)")
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(height=300, yaxis_title="ΔEM (B − A), 95% CI", xaxis_title=common.field_name(res["slice_by"]), margin=dict(t=20),
                      xaxis_type="category")
    st.plotly_chart(fig, width="stretch", key="cmp_slices")
    show = sl[["slice", "n", "em_a", "em_b", "delta_em", "tokens_a", "tokens_b", "delta_tokens", "delta_computed",
               "mcnemar_p"]]
    num = st.column_config.NumberColumn          # one precision a column
    st.dataframe(show, hide_index=True, width="stretch", column_config={
        "slice": common.field_name(res["slice_by"]), "n": "questions",
        "em_a": num("EM (A)", format="%.3f"), "em_b": num("EM (B)", format="%.3f"),
        "delta_em": num("ΔEM (B − A)", format="%+.3f"), "tokens_a": num("emitted (A)", format="%.1f"),
        "tokens_b": num("emitted (B)", format="%.1f"), "delta_tokens": num("Δ emitted (B − A)", format="%+.1f"),
        "delta_computed": num("Δ computed (B − A)", format="%+.1f"), "mcnemar_p": num("McNemar p", format="%.2g")})
