"""Frontier: every family's settings as (tokens, EM) points, the Pareto set and the convex hull; clicking a
point makes it the current setting; other runs (models) can be drawn on the same chart."""
import functools
import json

import streamlit as st

from analysis.core.errors import StoplineError
from analysis.evaluate.frontier import LEARNED_AUTO_MAX, on_schedules, schedules_of
from analysis.evaluate.incumbent import incumbent_outcome
from analysis.evaluate.optimize import split_of
from analysis.replay.policies import Setting
from analysis.replay.engine import replay
from views import common, data
from views.charts import frontier_option, picked_setting

ALL = "all schedules"

st.header("Frontier")
run = common.current_run()
if run:
    big = run["n_checkpoints"] > LEARNED_AUTO_MAX
    runs = data.picked_runs()
    c1, c2, c3 = st.columns([2, 3, 2])
    learned = c3.toggle("Learned stopper", value=not big, key="with_learned",
                        help="trains five cross-fitted classifiers; on a large run that takes several seconds, "
                             "so it waits to be asked for")
    # which questions: all, or the tune half, so that a point picked here is checked out of sample on the
    # held-out half (Compare, the Report, `optimize`); the pick lives in the link (`fit`)
    FIT = {"all questions": "all", "the tune half": "tune"}
    if (said := data.url_pick("fit_on", "fit", list(FIT), "all questions", FIT, "the questions")):
        st.warning(said)
    on = c3.radio("Questions", list(FIT), key="fit_on", horizontal=True, on_change=common.check_on_the_other_half,
                  help="the tune half: each question goes to the tune or the held-out half by a hash of its id; "
                       "pick a setting here, then check it on the held-out half on Compare")
    split = FIT[on]
    try:
        pts = data.sweep_for(run, learned, split)
    except StoplineError as e:          # a run too small to halve
        st.error(str(e))
        st.stop()
    # both picks live in the URL (`cost`, `also`: run ids joined by commas), as the schedule's does below
    axes = {"emitted": "tokens emitted", "computed": "tokens computed (probes included)"}
    x = c1.radio("Cost", list(axes), horizontal=True, key="axis", format_func=axes.get,
                 index=list(axes).index(data.query("cost")) if data.query("cost") in axes else 0)
    data.set_query("cost", x)
    axis = axes[x]
    choices = [r["id"] for r in runs if r["id"] != run["id"]]
    others = c2.multiselect("Also draw the Pareto front of", choices, key="other_runs",
                            default=[r for r in (data.query("also") or "").split(",") if r in choices],
                            format_func=data.run_labeller(runs))
    if others or data.query("also"):         # an emptied pick is written too, so that the link drops the runs
        data.set_query("also", ",".join(others))
    scheds = schedules_of(pts)
    pick = ALL
    if len(scheds) > 1:                                # a sparser schedule swept: the points can be filtered
        choices = [ALL, *scheds]
        want = data.query("schedule")
        pick = st.radio("Probe schedule", choices, horizontal=True, key="schedule_pick",
                        index=choices.index(want) if want in choices else 0,
                        format_func=lambda v: v.removeprefix("probes "),
                        help="the settings replayed with a probe at every recorded checkpoint, or with a sparser "
                             "schedule; the fronts are drawn among the points shown")
        data.set_query("schedule", pick)
        if pick != ALL:
            pts = on_schedules(pts, [pick])
    suffix = "" if x == "emitted" else "_computed"
    full = pts[pts.family == "full"].iloc[0]
    drawn = []
    for oid in others:
        o = data.run_by_id(runs, oid)
        try:
            op = data.sweep_for(o, learned, split)
            if pick != ALL and pick in schedules_of(op):
                op = on_schedules(op, [pick])
            drawn.append((data.run_label(o), op))
        except StoplineError as e:
            st.warning(f"{oid}: {e}")
    # the current setting, where it sits
    current = data.session_setting() or common.url_setting()
    mark = None
    questions = functools.cache(lambda: split_of(data.table_for(run), split))     # the swept questions' table, once
    if current is not None:
        try:
            s = replay(questions(), current).summary()
            mark = (s["tokens_" + x], s["em"], current.label())
        except StoplineError:
            current = None
    mine = None
    if run.get("n_incumbent"):                          # the user's own stopper: its own marked point
        s = incumbent_outcome(questions()).summary()
        mine = (s["tokens_" + x], s["em"])
    option, picks = frontier_option(pts, x, f"mean {axis}", drawn, mark, mine)
    event = st.echarts_chart(option, height=504 + option["grid"]["bottom"], key="frontier_chart", on_select="rerun",
                             renderer="svg")
    picked = picked_setting(event, picks)
    if picked:
        s = Setting.from_dict(json.loads(picked))
        common.mark_picked_on_the_tune_half(s if split == "tune" else None)     # Compare says so
        if s != current:
            data.make_current(s)
            st.rerun()
    if current is not None:
        st.markdown(f"**Current setting:** `{current.label()}` — open **Tune** to adjust it, **Questions** to see "
                    "which answers it loses or gains.")
    else:
        st.caption("Click a point to make it the current setting (until you do, Tune, Questions, Compare and the "
                   "Report start from the policy family's defaults).")
    where = (f"{run['n_questions']} questions" if split == "all" else
             f"the tune half of its {run['n_questions']} questions (check what you pick on the held-out half: "
             "Compare, Report)")
    st.caption(f"{run['model']} on {run['dataset']}: {where}, full-length EM "
               f"{full.em:.3f} at {full.emitted:.0f} tokens. Faint points are dominated within their family.")
    if mine is not None:
        st.caption(f"Your mechanism (the orange diamond): EM {mine[1]:.3f} at {mine[0]:.0f} tokens, "
                   f"{1 - mine[0] / full[x]:.0%} fewer than full length; `python -m analysis optimize "
                   f"--beat-incumbent` or the Report page gives its cost on all questions and compares it with "
                   f"the settings on held-out ones.")
    best = pts[pts["pareto" + suffix] & (pts.family != "full")].sort_values(x)
    st.subheader("Pareto settings")
    table = best[["label", "schedule", "em", "delta_em", "emitted", "computed", "savings_emitted", "savings_computed",
                  "lost", "gained"]].copy()
    table["schedule"] = table["schedule"].map(lambda v: "all" if v == "every checkpoint" else v.removeprefix("probes "))
    # the schedule has its column: the label without it (Setting.label's " [schedule]")
    table["label"] = [lab.removesuffix(f" [{sc}]") for lab, sc in zip(best["label"], best["schedule"])]
    table[["savings_emitted", "savings_computed"]] *= 100           # shown as percentages
    num = st.column_config.NumberColumn
    # short headers in small columns (each explained on hover) and the setting's column of a fixed width (a long
    # label is cut, whole on hover; its probe schedule has a column of its own), so that all ten fit without
    # scrolling sideways
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "label": st.column_config.TextColumn("setting", pinned=True, width=265),
        "schedule": st.column_config.TextColumn("probes", width=60, help="the probe schedule it was replayed "
                                                "with: at every recorded checkpoint (all), or a sparser one"),
        "em": num("EM", format="%.3f", width="small"),
        "delta_em": num("ΔEM", format="%+.3f", width="small", help="EM minus full length's EM"),
        "emitted": num("emitted", format="%.0f", width="small", help="mean tokens emitted per question"),
        "computed": num("computed", format="%.0f", width="small",
                        help="mean tokens computed per question, the probes' included"),
        "savings_emitted": num("saved", format="%.1f%%", width="small",
                               help="share of full length's emitted tokens saved"),
        "savings_computed": num("net saved", format="%.1f%%", width="small",
                                help="share of full length's tokens saved, counting the tokens the probes compute"),
        "lost": num("lost", width="small", help="questions full length answers right and this setting wrong"),
        "gained": num("gained", width="small", help="questions full length answers wrong and this setting right")})
