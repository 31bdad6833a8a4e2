"""Shared pickers and cached data access for the pages (the pages themselves stay thin)."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from analysis.core.errors import StoplineError
from analysis.core.store import DEFAULT_DB, DEMO_DB, Store

STORES = {"Demo store (read-only)": DEMO_DB, "My store": os.environ.get("STOPLINE_DB", DEFAULT_DB)}


def _qp(key: str, default=None):
    return st.query_params.get(key, default)


@st.cache_resource(show_spinner=False)
def open_store(path: str, mtime: float) -> Store:
    return Store(path, read_only=(Path(path).resolve() == Path(DEMO_DB).resolve()) or not os.access(path, os.W_OK))


@st.cache_resource(show_spinner="Loading the run's checkpoints…", max_entries=8)
def run_table(path: str, run_id: str, n_checkpoints: int, n_incumbent: int = 0):
    """The run's table (with its incumbent); keyed on its counts, so new checkpoints or an incumbent attached
    later show up."""
    from analysis.replay.engine import RunTable
    return RunTable.from_store(open_store(path, _mtime(path)), run_id)


@st.cache_data(show_spinner="Sweeping the families…", max_entries=16)
def sweep_points(path: str, run_id: str, n_questions: int, n_checkpoints: int, learned: bool | None = None):
    """Every family's sweep; ``learned=False`` leaves out the learned stopper, whose cross-fitting (five
    classifiers) dominates a large run's sweep (None: left out above ``LEARNED_AUTO_MAX`` checkpoints).
    The run's writer keeps its default sweep in the store; any other is computed once and kept on disk
    (``data/cache`` or ``$STOPLINE_CACHE``, keyed by the store file, the run and the code), so a restarted
    server finds it."""
    import pandas as pd
    from analysis.evaluate.frontier import default_families, stored_sweep, sweep, sweep_key
    from analysis.replay.policies import families
    fams = default_families(n_checkpoints) if learned is None else [f for f in families() if learned or f != "learned"]
    run = {"id": run_id, "n_questions": n_questions, "n_checkpoints": n_checkpoints}
    store = open_store(path, _mtime(path))
    try:
        pts = stored_sweep(store, run, fams)
    except StoplineError:
        pts = None
    if pts is not None:
        return pts
    disk = _sweep_cache_file(path, sweep_key(run, fams))
    if disk is not None and disk.exists():
        try:
            return pd.read_parquet(disk)
        except Exception:          # noqa: BLE001 - a damaged cache file is recomputed
            pass
    pts = sweep(run_table(path, run_id, n_checkpoints), fams)
    if disk is not None:
        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            tmp = disk.with_suffix(".tmp")
            pts.to_parquet(tmp)
            tmp.replace(disk)
        except OSError:
            pass
    return pts


def _sweep_cache_file(path: str, key: str) -> Path | None:
    import hashlib
    try:
        st_ = Path(path).stat()
    except OSError:
        return None
    key = f"{Path(path).resolve()}|{st_.st_size}|{st_.st_mtime_ns}|{key}"
    cache = Path(os.environ.get("STOPLINE_CACHE") or Path(__file__).resolve().parent.parent / "data" / "cache")
    return cache / f"sweep-{hashlib.sha1(key.encode()).hexdigest()[:20]}.parquet"


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def sidebar_pickers() -> None:
    """Store, run and family pickers; every pick is mirrored in the URL."""
    st.sidebar.title(":material/stop_circle: Stopline")
    labels = list(STORES)
    extra = _qp("db")
    if extra and extra not in STORES.values():
        STORES[f"{Path(extra).name}"] = extra
        labels = list(STORES)
    cur = next((k for k, v in STORES.items() if v == extra), labels[0] if Path(DEMO_DB).exists() else labels[1])
    choice = st.sidebar.selectbox("Store", labels, index=labels.index(cur), key="store_pick")
    path = STORES[choice]
    st.session_state["db"] = path
    st.query_params["db"] = path
    st.session_state["store"] = None
    st.session_state["runs"] = []
    if not Path(path).exists():
        st.sidebar.info("This store is empty. Import or generate a run (see the Runs page).")
        return
    try:
        store = open_store(path, _mtime(path))
        runs = store.runs()
    except StoplineError as e:
        st.sidebar.error(str(e))
        return
    st.session_state["store"], st.session_state["runs"] = store, runs
    if not runs:
        st.sidebar.info("No runs in this store yet.")
        return
    ids = [r["id"] for r in runs]
    want = _qp("run")
    if want not in ids:                 # a link that names no run (or a gone one): the store's default run
        want = store.default_run()
    idx = ids.index(want) if want in ids else 0
    rid = st.sidebar.selectbox("Run", ids, index=idx, key="run_pick",
                               format_func=lambda i: next(f"{r['model']} · {r['dataset']} · {r['n_questions']} q"
                                                          for r in runs if r["id"] == i))
    st.query_params["run"] = rid
    st.session_state["run"] = next(r for r in runs if r["id"] == rid)


def current_run() -> dict | None:
    run = st.session_state.get("run")
    if not run or not st.session_state.get("store"):
        st.info("Pick a store with runs in the sidebar. To make runs: `python -m analysis run …` or "
                "`python -m analysis import …` (see the Runs page).")
        return None
    return run


def table_for(run: dict):
    return run_table(st.session_state["db"], run["id"], run["n_checkpoints"], run.get("n_incumbent", 0))


def family_picker(t, key: str = "family") -> str:
    from analysis.replay.policies import families, get_family
    fams = [f for f in families() if all(t.has_signal(s) for s in get_family(f).required_signals(get_family(f).defaults()))]
    missing = [f for f in families() if f not in fams]
    want = _qp("family")
    idx = fams.index(want) if want in fams else 0
    fam = st.sidebar.selectbox("Policy family", fams, index=idx, key=key,
                               format_func=lambda f: get_family(f).label)
    st.query_params["family"] = fam
    if missing:
        st.sidebar.caption("Not available for this run (it has no probe signals): " + ", ".join(missing))
    return fam


def url_setting():
    """The setting kept in the URL (``s=sl1.…``), or None when absent or broken (a warning says so)."""
    from analysis.core.errors import PresetError
    from analysis.presets.schema import loads
    raw = _qp("s")
    if not raw:
        return None
    try:
        return loads(raw).setting
    except PresetError as e:
        st.warning(f"The setting in this link could not be read ({e.message}); showing the defaults instead.")
        return None
    except Exception as e:  # noqa: BLE001 - a link is a visitor's input: never an exception box (tests fuzz loads)
        st.warning(f"The setting in this link could not be read ({type(e).__name__}); showing the defaults instead.")
        return None


def remember_setting(setting) -> None:
    """Make a setting the current one: kept in the session and in the URL (a shareable link)."""
    from analysis.presets.schema import from_setting
    st.session_state["setting"] = setting
    st.query_params["s"] = from_setting(setting).to_url()


def current_setting(t, fam: str):
    """The current setting of the picked family: the Tune page's, else the link's, else the defaults."""
    from analysis.replay.policies import Setting, get_family
    for s in (st.session_state.get("setting"), url_setting()):
        if s is not None and s.family == fam:
            return s
    return Setting(fam, get_family(fam).defaults_for(t))


def noted_metric(where, label: str, value: str, note: str, **kw) -> None:
    """A metric whose line beneath is a plain note: no arrow, no colour."""
    where.metric(label, value, note, delta_color="off", delta_arrow="off", **kw)


def change_metric(where, label: str, value: str, delta: float, fmt: str, delta_color: str = "normal") -> None:
    """A metric with a signed change beneath; a change that rounds to zero reads "no change", uncoloured."""
    text = format(delta, fmt)
    if float(text) == 0:
        noted_metric(where, label, value, "no change")
    else:
        where.metric(label, value, text, delta_color=delta_color)


def page_start(title: str):
    """The start every run page shares: its header, the picked run's table, the family and current setting.
    Stops the page with a way forward when there is no run."""
    st.header(title)
    run = current_run()
    if not run:
        st.stop()
    t = table_for(run)
    fam = family_picker(t)
    return run, t, fam, current_setting(t, fam)
