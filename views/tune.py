"""Tune: controls generated from the family's declared parameters (nested ones for a hybrid's parts);
numbers recompute live; operating-point helpers jump to the best setting for a budget or an EM drop."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.errors import StoplineError
from analysis.evaluate.optimize import evaluate
from analysis.evaluate.stats import N_BOOT
from analysis.replay.policies import Setting, available_families, get_family
from analysis.replay.policies.base import SCHEDULE, SCHEDULE_DEFAULTS
from analysis.replay.engine import stop_index
from views import common, data


SET_BY_JUMP = "tune_set_by_jump"      # the control keys a jump set (its callback), for the rerun that follows


def int_high(t, p) -> int:
    """An int control's top: a token count's declared top (thousands) cut to the run's longest trace."""
    return int(min(p.high, max(t.full_tokens.max(), 64))) if p.high and p.high >= 1024 else int(p.high)


def shown(p, named: bool) -> str:
    """A control's label. A family's parameter (``named``) leads with its name, as the setting's label writes it
    (min_steps=3), followed by its declared label or a short help (entropy's delta: the variance threshold, not the
    jump's EM drop nor a certificate's failure probability); the schedule's controls keep their labels."""
    if not named:
        return p.label or p.name
    words = p.label or (p.help if len(p.help) <= 24 else "")
    return f"{p.name} — {words}" if words and words.replace(" ", "_") != p.name else p.name


def control(t, p, v, key: str, fresh: frozenset = frozenset(), named: bool = True):
    """One control for a declared parameter (a family's or the probe schedule's). A key in ``fresh`` holds the
    value a jump set: drawn with no default of its own, so Streamlit takes it without a duplicate-value warning."""
    new = key in fresh
    label = shown(p, named)
    if p.kind == "int":
        hi = int_high(t, p)
        return st.slider(label, int(p.low), hi, None if new else int(min(v, hi)), help=p.help, key=key)
    if p.kind == "float" and p.log:
        opts = sorted(set(p.sweep_values()) | {p.default, v})
        return st.select_slider(label, opts, value=None if new else v, help=p.help, key=key,
                                format_func=lambda x: f"{x:g}")
    if p.kind == "float":
        return st.slider(label, float(p.low), float(p.high), None if new else float(v), step=0.005,
                         help=p.help, key=key)
    if p.kind == "choice":
        return st.selectbox(label, p.choices, index=0 if new else p.choices.index(v), help=p.help, key=key)
    if p.kind == "bool":
        return st.checkbox(label, False if new else v, help=p.help, key=key)
    raise ValueError(p.kind)


def control_values(t, s: Setting) -> dict:
    """Every control's value for setting ``s``, by the keys ``widgets`` and ``schedule_widgets`` draw them with."""
    out = {}

    def walk(fam: str, params: dict, prefix: str) -> None:
        for p in get_family(fam).params:
            if p.kind == "setting":
                sub = Setting.from_dict(params.get(p.name, p.default))
                out[f"{prefix}.{p.name}.family"] = sub.family
                walk(sub.family, sub.params, f"{prefix}.{p.name}.{sub.family}")
            elif p.kind != "object":
                v = params.get(p.name, p.default)
                out[f"{prefix}.{p.name}"] = int(min(v, int_high(t, p))) if p.kind == "int" else v
    walk(s.family, s.params, s.family)
    out.update({f"{s.family}.schedule.{p.name}": s.declared_sched.get(p.name, p.default) for p in SCHEDULE})
    return out


def show_setting(t, s: Setting) -> None:
    """(A callback's) make ``s`` current and put its values in the controls: the ones on this page keep what the
    browser shows unless their state is set (deleting it would leave the old values on screen)."""
    data.make_current(s)
    values = control_values(t, s)
    st.session_state.update(values)
    st.session_state[SET_BY_JUMP] = frozenset(values)


def widgets(t, fam: str, start: dict, prefix: str, fresh: frozenset = frozenset()) -> dict:
    """One control per declared parameter; a nested setting gets a family picker and its own controls."""
    cls = get_family(fam)
    params = {}
    flat = [p for p in cls.params if p.kind not in ("setting", "object")]
    for p in cls.params:
        if p.kind == "object":             # an exported model: kept as the preset carries it, no control
            params[p.name] = start.get(p.name, p.default)
    cols = st.columns(max(1, len(flat)))
    for col, p in zip(cols, flat):
        with col:
            params[p.name] = control(t, p, start.get(p.name, p.default), f"{prefix}.{p.name}", fresh)
    for p in cls.params:
        if p.kind != "setting":
            continue
        sub = Setting.from_dict(start.get(p.name, p.default))
        allowed = [f for f in available_families(t, nested=True) if f != fam]
        with st.container(border=True):
            fkey = f"{prefix}.{p.name}.family"
            f = st.selectbox(f"{p.name}: {p.help}", allowed, key=fkey, format_func=lambda x: get_family(x).label,
                             index=0 if fkey in fresh or sub.family not in allowed else allowed.index(sub.family))
            params[p.name] = {"family": f, "params": widgets(t, f, sub.params if f == sub.family else {},
                                                             f"{prefix}.{p.name}.{f}", fresh)}
    return params


def schedule_widgets(t, fam: str, start: dict, params: dict, fresh: frozenset = frozenset()) -> dict:
    """The probe schedule's controls, from its declaration (shared by every family)."""
    config = data.picked_run().get("config") or {}
    if config.get("format") == "checkpoints":           # another tool's probes
        said = f"this run's checkpoints are its file's, every {t.interval} tokens or so"
    elif config.get("source") == "import":              # text only: its answers read off the text, nothing probed
        said = f"this run's checkpoints are placed on its traces' text, every {t.interval} tokens, at steps and transitions"
    else:
        said = f"this run probed every {t.interval} tokens, at steps and transitions"
    with st.expander(f"Probe schedule ({said})", icon=":material/schedule:", expanded=start != SCHEDULE_DEFAULTS):
        policy, full = get_family(fam), Setting.from_dict({"family": fam, "params": params}).params
        if not policy.probes_needed(full):
            st.caption("This family reads no trial answer: it is charged no probes, and the schedule only says at "
                       "which checkpoints it may stop.")
        ignored = [p.label or p.name for p in SCHEDULE
                   if policy.probes_at(full, SCHEDULE_DEFAULTS)[p.name] != SCHEDULE_DEFAULTS[p.name]]
        if ignored:             # the rule narrows where it probes (confidence at transition words only)
            st.warning(f"With these parameters the rule reads some checkpoints only and probes nowhere else: "
                       f"{', '.join(ignored)} do not apply to it (an exploration request still probes as set here).",
                       icon=":material/info:")
        cols = st.columns(len(SCHEDULE))
        out = {}
        for col, p in zip(cols, SCHEDULE):
            with col:
                out[p.name] = control(t, p, start.get(p.name, p.default), f"{fam}.schedule.{p.name}", fresh,
                                      named=False)
    return out


def jump(t, fam: str, goal: str, value: float, scope: str, cost: str) -> None:
    """Button callback: choose the best setting for the goal on the tune half of the questions, on the cost basis
    asked for, make it current, and check it on the held-out half (the message says when it misses there)."""
    from analysis.evaluate.frontier import LEARNED_AUTO_MAX
    from analysis.evaluate.optimize import EmptySplit, operating_point
    fams = [fam] if scope == "this family" else [f for f in available_families(t)
                                                 if f != "learned" or data.picked_run()["n_checkpoints"] <= LEARNED_AUTO_MAX]
    try:
        op = operating_point(t, goal, value, cost, fams, n_boot=0)
    except EmptySplit as e:                # a run too small to split: that, not "no setting"
        st.session_state["jump_msg"] = ("warning", f"No jump: {e}")
        return
    except StoplineError:
        st.session_state["jump_msg"] = ("warning", f"No setting meets that ({goal} {value:g}, tokens {cost}) on the "
                                        "tune half of the questions.")
        return
    s = Setting.from_dict(op["setting"])
    show_setting(t, s)            # the family picker and the controls are drawn from it on the rerun
    common.mark_picked_on_the_tune_half(s)       # Compare's held-out half is out of sample for it
    te = op["test"]
    text = (f"Jumped to `{s.label()}`, chosen on the tune half ({op['tune']['n']} questions) by tokens {cost}: "
            f"EM {op['tune']['em']:.3f}, {op['tune'][cost]:.0f} tokens {cost}. On the held-out half ({te['n']}): EM "
            f"{te['em']:.3f} against {te['em_full']:.3f} at full length (ΔEM {te['delta_em']:+.3f}), "
            f"{te['tokens_emitted']:.0f} tokens emitted and {te['tokens_computed']:.0f} "
            f"computed against {te['tokens_full']:.0f} at full length.")
    # red only when it misses its target on the held-out half; a setting that meets it there but computes more
    # than full length (its probes) is a warning that names that cost
    problems = [op["missed"]] if op["missed"] else []
    if te["tokens_computed"] > te["tokens_full"]:
        problems.append(f"computes {te['tokens_computed'] / te['tokens_full'] - 1:.0%} more tokens than full length, "
                        "counting its probes")
    kind = "error" if op["missed"] else "warning" if problems else "info"
    st.session_state["jump_msg"] = (kind, text + (" It " + "; it ".join(problems) + "." if problems else ""))


def certified(run: dict, fam: str, epsilon: float, scope: str, delta: float = 0.05) -> None:
    """Beside the jump helpers: the setting certified for "EM drop <= epsilon with probability >= 1 - delta" on new
    questions drawn like this run's (Learn-then-Test; analysis/evaluate/certify.py)."""
    from analysis.evaluate.certify import UNCERTIFIABLE
    if scope == "this family" and fam in UNCERTIFIABLE:
        st.caption(f"No certificate for the {fam} family: {UNCERTIFIABLE[fam]}.")
        return
    try:
        c = data.certificate_for(run, float(epsilon), delta, (fam,) if scope == "this family" else None)
    except StoplineError as e:
        st.caption(f"No certificate: {e}")
        return
    if c["certified"]:
        st.success(f"**Certified for ε={epsilon:g}, failure probability δ={delta:g}**: `{c['label']}` saves {c['savings']:.0%} of the "
                   f"tokens; its EM drop on new questions drawn like these is at most {epsilon:g} with probability "
                   f"{1 - delta:.0%} ({c['bound']} bound on {c['n']} of its {c['n_calibration']} calibration questions; the "
                   f"other {c['n_order']} order the settings tested).", icon=":material/verified:")
        if c["family"] == fam and not any(isinstance(v, dict) for v in c["setting"]["params"].values()):
            st.button("Use the certified setting", key="cert_use", on_click=show_setting,
                      args=(data.table_for(run), Setting.from_dict(c["setting"])))
    else:
        st.caption(f"Certified for ε={epsilon:g}, failure probability δ={delta:g}: nothing. " + c["message"])


def learned_note(t, setting: Setting, saved: float) -> None:
    """Why the learned stopper saves next to nothing at its setting, when it does (its default, tau 0.8, does
    so on most runs): tau is a probability that the trial answer is right, not a rank, so on a run whose answers
    are seldom right the classifier seldom reaches it before the end. Lower taus' figures, replayed, beside it."""
    if setting.family != "learned" or setting.params.get("export") or saved >= 0.02:
        return
    from analysis.replay.engine import replay
    tau = setting.params["tau"]
    lower = []
    for v in (0.7, 0.6, 0.5, 0.4):
        if v < tau:
            r = replay(t, Setting.from_dict({**setting.to_dict(), "params": {**setting.params, "tau": v}})).summary()
            lower.append(f"τ = {v:g} saves {r['savings_emitted']:.0%} of the tokens emitted "
                         f"({r['savings_computed']:.0%} computed) at ΔEM {r['delta_em']:+.3f}")
    st.info(f"**Why this saves next to nothing**: the learned stopper stops where its classifier gives the trial "
            f"answer at least a τ = {tau:g} chance of being right. τ is a probability, not a rank: on this run "
            f"(EM {t.full_em.mean():.3f} at full length) the classifier seldom reaches it before a trace's end, "
            "and a run whose answers are mostly wrong may never reach it. Its probes at every checkpoint are paid "
            "for all the same, so it computes more than full length. Lower τ to stop earlier, at a cost in EM"
            + (": " + "; ".join(lower) + "." if lower else ".")
            + " The Frontier draws its τ grid and the jump above chooses τ for a target.", icon=":material/info:")


st.header("Tune")
run = common.current_run()
if run:
    t = data.table_for(run)
    fam = common.family_picker(t)
    cls = get_family(fam)
    st.caption(f"{cls.description} ({cls.source})")
    common.learned_caveat(t, fam)
    with st.expander("Jump to an operating point", icon=":material/my_location:"):
        g1, g2, g3, g5, g4 = st.columns([2, 1, 1, 1, 1])
        goal = g1.radio("Goal", ["budget", "drop"], horizontal=True, key="op_goal",
                        format_func=lambda g: {"budget": "max EM within a token budget B",
                                               "drop": "fewest tokens within an EM drop ε"}[g])
        value = g2.number_input("B (tokens)" if goal == "budget" else "ε (EM drop)", min_value=0.0,
                                value=float(round(t.full_tokens.mean() * 0.6)) if goal == "budget" else 0.02,
                                step=10.0 if goal == "budget" else 0.005, key=f"op_value_{goal}",
                                format="%.0f" if goal == "budget" else "%.3f")
        scope = g3.radio("Among", ["this family", "all families"], key="op_scope")
        cost = g5.radio("Tokens", ["emitted", "computed"], key="op_cost",
                        help="the cost the goal counts: tokens emitted, or computed (probes included)")
        g4.button("Jump", key="op_jump", type="primary", on_click=jump, args=(t, fam, goal, value, scope, cost))
        if st.session_state.get("jump_msg"):
            kind, msg = st.session_state.pop("jump_msg")
            (st.error if kind == "error" else st.warning if kind == "warning" else st.info)(msg)
        if goal == "drop" and 0 <= value < 1:
            certified(run, fam, value, scope)
    current = common.current_setting(t, fam)             # the link's or the last setting, else the defaults
    fresh = st.session_state.pop(SET_BY_JUMP, frozenset())
    params = widgets(t, fam, current.params, fam, fresh)
    try:
        schedule = schedule_widgets(t, fam, current.declared_sched, params, fresh)
    except StoplineError:
        schedule = {}                                     # the setting's own error is shown below
    try:
        setting = Setting.from_dict({"family": fam, "params": params, "schedule": schedule})
        data.check_viewer_cost(setting.to_dict())
        stops = stop_index(t, setting)
        data.remember_setting(setting)
    except StoplineError as e:
        st.error(str(e))
        st.stop()
    n_boot = N_BOOT if t.n <= 2000 else 0        # large runs: the normal approximation keeps the page live
    res = evaluate(t, stops, setting.label(), n_boot=n_boot, setting=setting)
    ci = res["ci"]
    m = st.columns(5)
    m[0].metric("EM", f"{res['em']:.3f}", f"{res['delta_em']:+.3f} vs full", delta_color="normal")
    lo, hi = ci["delta_em"]
    common.noted_metric(m[1], "ΔEM 95% CI", f"±{(hi - lo) / 2:.3f}", f"{lo:+.3f} to {hi:+.3f}",
                        help="the interval for EM minus full-length EM, paired on the same questions")
    common.noted_metric(m[2], "Tokens saved (emitted)", f"{res['savings_emitted']:.1%}",
                        f"{res['tokens_emitted']:.0f} vs {res['tokens_full']:.0f}")
    if res["savings_computed"] < 0:        # its probes make it compute more than full length: in red
        m[3].metric("Tokens saved (computed)", f"{res['savings_computed']:.1%}",
                    f"computes {-res['savings_computed']:.0%} more", delta_color="inverse",
                    help="probes included: their tokens make it compute more than running every question to its end")
    else:
        common.noted_metric(m[3], "Tokens saved (computed)", f"{res['savings_computed']:.1%}", "probes included")
    common.noted_metric(m[4], "Lost / gained", f"{res['lost']} / {res['gained']}",
                        f"McNemar p={res['mcnemar']['p_value']:.2g}")
    learned_note(t, setting, res["savings_emitted"])
    early = stops < t.final_idx
    where = t.pos[t.rows, stops]
    edges = np.histogram_bin_edges(where, bins=40)                     # binned here: 40 bars, not n points
    fig = go.Figure()
    for part, name, colour in ((early, "stopped early", "#2563eb"), (~early, "ran to its end", "#cbd5e1")):
        counts, _ = np.histogram(where[part], bins=edges)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color=colour, name=name)
    fig.update_layout(height=320, title="Where questions stop, or end", xaxis_title="position (tokens)",
                      yaxis_title="questions", margin=dict(t=40), bargap=0.05, barmode="stack",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
    st.plotly_chart(fig, width="stretch")
    st.caption(f"{int(early.sum())} of {t.n} questions stop before their end. Setting: `{setting.label()}`. "
               + (f"CIs: paired bootstrap, {N_BOOT:,} resamples, as on Compare and in the Report." if n_boot else
                  "CIs: normal approximation (paired differences, delta method), live on this many questions; "
                  "the Report bootstraps."))
