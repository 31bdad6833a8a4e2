"""The sidebar's shared pickers and the widgets every page uses; the data behind them comes from views/data.py."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis.core.errors import StoplineError
from analysis.core.store import DEMO_DB
from views import data


def access_gate() -> None:
    """Before any page: the login when one is configured (``st.login``, OIDC; ``[auth]`` in
    .streamlit/secrets.toml); nothing of the stores is read before it. On this machine only, a page reached
    under a name that is not this machine's (DNS rebinding: a web site elsewhere driving the local workbench)
    shows nothing."""
    if (host := data.foreign_host()) is not None:
        st.title(":material/stop_circle: Stopline")
        st.error(f"This dashboard answers only to this machine's names (localhost, 127.0.0.1), not to {host[:80]!r}. "
                 "Open it as http://localhost:PORT, or list the name in STOPLINE_ALLOWED_HOSTS.")
        st.stop()
    auth = data.auth_section()
    if auth is not None:
        if not st.user.is_logged_in:
            st.title(":material/stop_circle: Stopline")
            st.write("This dashboard needs a login.")
            providers = [k for k, v in auth.items() if isinstance(v, dict)]
            for p in providers or [None]:
                st.button(f"Log in with {p}" if p else "Log in", type="primary", key=f"login_{p}",
                          on_click=st.login, args=(p,) if p else ())
            st.stop()
        who = st.user.get("email") or st.user.get("name") or "signed in"
        st.sidebar.caption(f"Signed in: {who}")
        st.sidebar.button("Log out", key="logout", on_click=st.logout)


def sidebar_pickers() -> None:
    """Store and run pickers; every pick (the family and setting too) is kept in the session and mirrored in the
    URL, which the browser empties on a page change."""
    _store_and_run()
    data.keep_in_url(url_setting)


def _store_and_run() -> None:
    st.sidebar.title(":material/stop_circle: Stopline")
    if data.viewer():
        st.sidebar.caption(":material/visibility: " + data.viewer_reason())
    stores = data.stores()
    labels = list(stores)
    by_key = dict(zip(data.allowed_stores(), labels))
    ref = data.query("db")
    key = data.store_key(ref) if ref else data.store_key(data.picked_db())
    if ref and key is None:           # a name off the list: refused, and nothing about it is looked up
        st.sidebar.warning("The store this link names is not one this dashboard offers; showing another. "
                           "Pick a store below.")
    # a fresh visit: the user's own store once it has runs, else the demo (a viewer's visitors: the demo)
    mine_first = not data.viewer() and _has_runs(data.my_db())
    cur = by_key[key] if key else by_key["mine"] if mine_first or not Path(DEMO_DB).exists() else by_key["demo"]
    if st.session_state.get("store_pick") not in labels:
        st.session_state.pop("store_pick", None)
    # picks a page made (data.show_run) are the values; drawn without a default then, as Streamlit asks
    by_code = data.picks_set_by_code()
    choice = st.sidebar.selectbox("Store", labels, key="store_pick",
                                  index=None if by_code else labels.index(cur)) or cur
    path = stores[choice]
    data.pick_store(path, None, [])
    if not Path(path).exists():
        st.sidebar.info("This store is empty." + ("" if data.viewer() else
                                                   " Import or generate a run (see the Runs page)."))
        return
    try:
        store = data.open_store(path)
        runs = data.runs(path)
    except StoplineError as e:
        st.sidebar.error(str(e))
        return
    data.pick_store(path, store, runs)
    if not runs:
        st.sidebar.info("No runs in this store yet.")
        return
    ids = [r["id"] for r in runs]
    want = data.query("run") or st.session_state.get("run_pick")
    missing = None
    if want not in ids:                 # a link that names no run (or a gone one): the store's default run
        if want and not st.session_state.get("url_seeded"):       # a link being opened, not a store switched
            missing = want
        want = data.default_run(path)
    idx = ids.index(want) if want in ids else 0
    label = data.run_labeller(runs, questions=True)
    rid = st.sidebar.selectbox("Run", ids, index=None if by_code else idx, key="run_pick",
                               format_func=label) or ids[idx]
    run = data.run_by_id(runs, rid)
    st.sidebar.caption(f"{label(rid)} · `{rid}`")      # what the picker cuts
    if missing:                                         # above the page, where it is read
        st.warning(f"The run this link names, '{data.link_text(missing)}', is not in {choice}; showing its default "
                   f"run instead: {label(rid)} (`{rid}`).", icon=":material/link_off:")
    data.pick_run(run)


def _has_runs(path: str) -> bool:
    try:
        return Path(path).exists() and bool(data.runs(path))
    except StoplineError:           # unreadable: the demo first; picking it says what is wrong
        return False


def current_run() -> dict | None:
    run = data.picked_run()
    if not run:
        st.info("Pick a store with runs in the sidebar. To make runs: `python -m analysis run …` or "
                "`python -m analysis import …` (see the Runs page).")
        return None
    return run


def family_picker(t, key: str = "family") -> str:
    from analysis.replay.policies import available_families, families, get_family
    fams = available_families(t)
    missing = [f for f in families() if f not in fams]
    want = data.current_family()
    # the session's family, set before the widget is drawn (each page has its own widget: Streamlit keys a
    # widget by page), with no index passed, so Streamlit has no second default to warn about
    st.session_state[key] = want if want in fams else fams[0]
    fam = st.sidebar.selectbox("Policy family", fams, key=key, format_func=lambda f: get_family(f).label,
                               on_change=lambda: data.pick_family(st.session_state[key]))
    if want is not None and want not in families():         # a link's unknown name: said above the page, and replaced
        st.warning(f"The policy family this link names, '{data.link_text(want)}', does not exist; showing "
                   f"{get_family(fam).label} instead.", icon=":material/link_off:")
        want = None
    elif want is not None and want not in fams:             # kept for the next run that has its signals
        st.info(f"{get_family(want).label} needs probe signals this run does not have; showing "
                f"{get_family(fam).label} (a run with them shows {get_family(want).label} again).",
                icon=":material/info:")
    if want in fams or want is None:
        data.pick_family(fam)
    if missing:
        st.sidebar.caption("Not available for this run (it has no probe signals): " + ", ".join(missing))
    return fam


def url_setting(quiet: bool = False):
    """The setting kept in the URL (``s=sl1.…``), or None when absent, broken or refused (a warning says so,
    unless ``quiet``: the page's own read warns, the seeding read before it does not)."""
    from analysis.presets.schema import loads
    raw = data.query("s")
    if not raw:
        return None
    try:
        s = loads(raw).setting
        data.check_viewer_cost(s.to_dict())
        return s
    except StoplineError as e:
        why = e.message
    except Exception as e:  # noqa: BLE001 - a link is a visitor's input: never an exception box (tests fuzz loads)
        why = f"it does not decode ({type(e).__name__})"
    if not quiet:
        st.warning(f"The setting in this link could not be used: {why}. Showing the defaults instead.")
    return None


def current_setting(t, fam: str):
    """The current setting of the picked family: the Tune page's, else the link's, else the family's last one
    this session (picked again after another), else the defaults."""
    from analysis.replay.policies import Setting, get_family
    for s in (data.session_setting(), url_setting(), data.family_setting(fam)):
        if s is not None and s.family == fam:
            return s
    return Setting(fam, get_family(fam).defaults_for(t))


# a right-hand axis of shares (EM, tokens saved) on a chart whose left axis counts tokens: its own ticks at
# 0, 0.25 … 1 and no grid of its own (Streamlit's theme would sync its ticks to the left axis: 0.095, 0.35 …)
SHARE_AXIS = dict(tickmode="linear", tick0=0, dtick=0.25, showgrid=False)
LEARNED_MIN_QUESTIONS = 50      # below this, the learned stopper's cross-fitted classifiers train on a handful


def learned_caveat(t, fam: str) -> None:
    """The learned stopper on a small run: say what its numbers rest on."""
    if fam == "learned" and t.n < LEARNED_MIN_QUESTIONS:
        st.warning(f"The learned stopper trains its classifiers on this run's own questions (cross-fitted, five "
                   f"folds): with {t.n} questions each one learns from about {t.n * 4 // 5}, too few to trust (at "
                   f"least {LEARNED_MIN_QUESTIONS} are advised). Treat its numbers as a sketch.")


def noted_metric(where, label: str, value: str, note: str, **kw) -> None:
    """A metric whose line beneath is a plain note: no arrow, no colour."""
    where.metric(label, value, note, delta_color="off", delta_arrow="off", **kw)


def change_metric(where, label: str, value: str, delta: float, fmt: str, delta_color: str = "normal", **kw) -> None:
    """A metric with a signed change beneath; a change that rounds to zero reads "no change", uncoloured."""
    text = format(delta, fmt)
    if float(text) == 0:
        noted_metric(where, label, value, "no change", **kw)
    else:
        where.metric(label, value, text, delta_color=delta_color, **kw)


def page_start(title: str):
    """The start every run page shares: its header, the picked run's table, the family and current setting.
    Stops the page with a way forward when there is no run."""
    st.header(title)
    run = current_run()
    if not run:
        st.stop()
    t = data.table_for(run)
    fam = family_picker(t)
    learned_caveat(t, fam)
    return run, t, fam, current_setting(t, fam)


def field_name(by: str) -> str:
    """A break-down's name as a reader says it: a question field without its ``meta.`` prefix, ``length`` as
    question length."""
    return "question length" if by == "length" else by.removeprefix("meta.")


ON = {"all questions": "all", "the held-out half": "held-out"}


def questions_on(key: str) -> str:
    """The radio "all questions / the held-out half" (the split the Report and `optimize` choose on one half
    and check on, and the Frontier's tune half leaves out), kept in the link as ``on`` and shared by the
    pages; it opens on the held-out half when the Frontier was swept on the tune half. Returns the split's
    name for ``split_of``: ``all`` or ``test``."""
    held = "the held-out half" if data.kept_pick("fit") == "the tune half" else "all questions"
    if (said := data.url_pick(key, "on", list(ON), held, ON, "the questions")):
        st.warning(said)
    on = st.radio("Questions", list(ON), key=key, horizontal=True,
                  help="each question goes to the tune or the held-out half by a hash of its id; a setting picked "
                       "on the tune half (Frontier, Tune's jumps, the Report, `optimize`) is checked out of sample "
                       "on the held-out half")
    return "all" if ON[on] == "all" else "test"


def check_on_the_other_half() -> None:
    """The Frontier's "Questions" pick changed: Compare and Questions follow it, on the held-out half after a
    sweep of the tune half and on all questions after one of all (their own pick overrides it afterwards)."""
    data.keep_pick("on", "the held-out half" if st.session_state.get("fit_on") == "the tune half" else "all questions")


def mark_picked_on_the_tune_half(setting) -> None:
    """Record that ``setting`` was chosen looking at the tune half alone (a point clicked on the Frontier swept
    on it, a Tune jump), or (None) that the last pick looked at every question."""
    st.session_state["picked_on_tune"] = setting.key() if setting is not None else None


def picked_on_the_tune_half(setting) -> bool:
    """Whether ``setting`` is the last one chosen on the tune half alone (``mark_picked_on_the_tune_half``)."""
    return setting is not None and st.session_state.get("picked_on_tune") == setting.key()
