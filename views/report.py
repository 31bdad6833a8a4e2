"""Report: one click builds a self-contained HTML report, PNG/SVG charts and a Markdown summary."""
import streamlit as st

from analysis.core.errors import PresetError, StoplineError
from analysis.evaluate.compare import slice_fields
from analysis.presets.schema import from_dict, from_setting
from views import common, data

run, t, fam, current = common.page_start("Report")
runs = data.picked_runs()
saved = data.presets_for(t)        # the user's presets, whichever store is picked
st.caption("For a stakeholder: headline numbers, the frontier, where the losses come from, and the recommended "
           "operating point with its confidence intervals, chosen on one half of the questions and checked on the other. "
           "A run with your own stopper (imported with its stop positions) opens with how it compares.")
# the runs and presets live in the link as repeated parameters (run_ids=…&run_ids=…, preset=…; the current
# setting as preset=current), so that a report's link reopens it with every run and preset it names
CURRENT = "the current setting"
run_opts, preset_opts = [r["id"] for r in runs], [CURRENT, *saved]
ids = st.multiselect("Runs", run_opts, key="rep_runs", format_func=data.run_labeller(runs),
                     default=[r for r in data.query_all("run_ids") if r in run_opts] or [run["id"]])
linked = [CURRENT if n == "current" else n for n in data.query_all("preset")]
names = st.multiselect("Presets to report", preset_opts, key="rep_presets",
                       default=[n for n in linked if n in preset_opts] or [CURRENT])
data.set_query("run_ids", ids)
data.set_query("preset", ["current" if n == CURRENT else n for n in names])
c1, c2, c3 = st.columns([3, 2, 2])
# the picks live in the link (drop=, cost=, losses=): a report's link reopens the page as it was built
DROPS = [f"{i * 0.005:.3f}" for i in range(21)]
COSTS = {"emitted": "tokens emitted", "computed": "tokens computed (probes included)"}
try:                                   # a hand-written link's 0.02 is the step 0.020
    data.set_query("drop", f"{float(data.query('drop')):.3f}")
except (TypeError, ValueError):
    pass
said = [data.url_pick("rep_drop", "drop", DROPS, "0.020", what="the EM drop"),
        data.url_pick("rep_cost", "cost", list(COSTS), "emitted", what="the tokens to save")]
drop = float(c1.select_slider("Recommend the fewest tokens within this EM drop of full length", DROPS, key="rep_drop"))
cost = c2.radio("Tokens to save", list(COSTS), key="rep_cost", format_func=COSTS.get,
                help="emitted: what the model writes; computed: that plus the tokens its probes compute to ask "
                     "for interim answers (what the hardware pays for). The recommendation saves the chosen kind.")
slices = ["(auto)", "length", *slice_fields(t)]
said.append(data.url_pick("rep_slice", "losses", slices, "(auto)", {"(auto)": "auto"}, "the break-down"))
slice_by = c3.selectbox("Break losses down by", slices, key="rep_slice", format_func=common.field_name)
for w in filter(None, said):
    st.warning(w)
for n in names:
    if n in saved and (w := data.made_elsewhere(saved[n], run)):
        st.warning(w)
# a built report's link (built=1) builds it again when opened, with the picks it names; picks changed since
# the last build hide the report built before them (it says other things) until it is built again
picks = [ids, names, drop, cost, slice_by, current.key()]
opened = data.query("built") == "1" and not st.session_state.get("rep_opened")
st.session_state["rep_opened"] = True
built_now = st.session_state.get("report_picks") == picks
if st.button("Build the report", type="primary", key="rep_build", disabled=not ids) or (opened and not built_now):
    from analysis.evaluate.report import build, self_contained_markdown, zip_bundle
    try:
        presets = [from_setting(current, f"current: {current.label()}") if n == CURRENT
                   else from_dict(saved[n]) for n in names]
        tables = [(r, data.table_for(r)) for r in runs if r["id"] in ids]
        with st.spinner("Replaying, bootstrapping and drawing the charts (a few seconds)…"):
            rep = build(tables, presets, drop=drop, slice_by=None if slice_by == "(auto)" else slice_by,
                        store=data.store_as_named(), cost=cost)
        st.session_state["report"] = (rep["html"], self_contained_markdown(rep), zip_bundle(rep))
        st.session_state["report_picks"] = built_now = picks
    except (PresetError, StoplineError) as e:
        st.error(str(e))
data.set_query("built", "1" if st.session_state.get("report") and built_now else None)
if st.session_state.get("report") and not built_now:
    st.info("The picks above changed since the report was built: build it again to see it.",
            icon=":material/refresh:")
elif st.session_state.get("report"):
    page, md, bundle = st.session_state["report"]
    d = st.columns(3)           # short labels, so that each fits its column; the help says what each holds
    d[0].download_button("Download HTML report", page, "stopline-report.html", "text/html", key="rep_dl_html",
                         help="one self-contained file, charts inlined")
    d[1].download_button("Download Markdown", md, "stopline-report.md", "text/markdown", key="rep_dl_md",
                         help="the summary, with its charts inlined")
    d[2].download_button("Download all (.zip)", bundle, "stopline-report.zip", "application/zip", key="rep_dl_zip",
                         help="the HTML report, the Markdown summary, and every chart as PNG and SVG")
    with st.expander("Preview", expanded=True):
        st.html(page)
