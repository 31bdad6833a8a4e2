"""The dashboard's one data seam: every cached read of a store, the store paths, and typed access to the
session state and the URL's query parameters. Pages call this module and ``analysis/``, never ``Store``.

Caching: a store file's *stamp* (size and modification time of the file and of its write-ahead log) keys the
reads of small things (the runs with their counts, presets, attributions, one trace), so a batch committed or a
file imported by another process shows up on the next rerun while a rerun with nothing new reads nothing
(``Store.runs()`` aggregates every checkpoint of the store). A run's table is keyed on the run's counts, read
from those runs, so it is loaded again only when its own checkpoints or incumbent change.

The analysis imports inside functions are as they were in common.py: they keep the replay, sweep and monitor
code (pandas, scipy, scikit-learn) out of this module's import, which the sidebar of every page triggers.

About 500 lines, on purpose: this is the one seam between the pages and the stores (every cached read, every
write a page may make, viewer mode's refusals), so that no page reaches a store any other way."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import streamlit as st

from analysis.core import sharing
from analysis.core.errors import StoplineError
from analysis.core.store import DEMO_DB, portable_path, Store, resolve_db_path

DEMO_LABEL, MINE_LABEL = "Demo store (read-only)", "My store"
UPLOAD_ENV, UPLOAD_DEFAULT_MB = sharing.UPLOAD_ENV, sharing.UPLOAD_DEFAULT_MB
# What an uploaded file may hold, per MB of the upload limit (at 25 MB: 500,000 records, 200 MB of data once
# decoded): a JSONL file's size bounds what reading it makes (Python objects take up to ~30x its bytes), a
# Parquet file's does not (its pages and dictionaries can expand a thousandfold: sources.Limits). Text Parquet
# compresses 2-5x (zstd), so eight times leaves room for honest files and values repeated on every row (a
# question on each checkpoint's row).
UPLOAD_RECORDS_PER_MB, UPLOAD_DECODED_TIMES = 20_000, 8


# -- who is served: viewer mode, the login ----------------------------------------------------------------------
def exposed() -> bool:
    """Whether the server listens beyond this machine (its ``server.address`` is not a loopback one)."""
    return not sharing.is_local(st.get_option("server.address"))


def foreign_host() -> str | None:
    """The request's Host when this dashboard, listening on this machine only, should not answer to it
    (``sharing.host_allowed``), else None."""
    host = st.context.headers.get("host")
    return None if sharing.host_allowed(host, st.get_option("server.address")) else host


def auth_section() -> dict | None:
    """The ``[auth]`` section of the secrets (``st.login``'s OIDC settings), or None when no login is configured."""
    try:
        auth = st.secrets.get("auth")
    except Exception:      # noqa: BLE001 - no secrets file, or one that does not parse: no login configured
        return None
    return dict(auth) if auth else None


def viewer() -> bool:
    """Viewer mode: read-only, for sharing. Asked for (``--viewer``, ``STOPLINE_VIEWER``), or forced when the
    dashboard is exposed beyond this machine without a login configured."""
    return sharing.viewer_mode() or (exposed() and auth_section() is None)


def viewer_reason() -> str:
    if sharing.viewer_mode():
        return "Viewer mode: read-only, for sharing. Runs, imports, uploads and saved presets are off."
    return ("Viewer mode, because this dashboard is reachable beyond this machine and no login is configured "
            "(an [auth] section in .streamlit/secrets.toml, docs/security.md): read-only, no runs, uploads or writes.")


def refuse_in_viewer(what: str) -> None:
    """A write asked for in viewer mode: our error (the pages do not offer it; this is the second lock)."""
    if viewer():
        raise StoplineError(f"{what} is off in viewer mode (a read-only dashboard)",
                            hint="run the dashboard without --viewer, on this machine, to change things")


def check_viewer_cost(body: dict) -> None:
    """Viewer mode replays what a visitor's link asks for, within bounds: a learned rule is fitted again (seconds
    to tens of seconds of CPU) for each probe schedule, so there it runs on the recorded schedule only. ``body``:
    a setting's or a preset's JSON (``to_dict()``); our error names what is refused."""
    if not viewer():
        return

    def learned(x) -> bool:
        return (isinstance(x, dict) and (x.get("family") == "learned" or any(map(learned, x.values())))) or \
            (isinstance(x, list) and any(map(learned, x)))

    def walk(x) -> None:
        if isinstance(x, dict):
            if x.get("family") and x.get("schedule") and learned(x):
                raise StoplineError("a learned rule on its own probe schedule is off in viewer mode (each schedule "
                                    "means fitting the rule again)", hint="use the recorded schedule, or the full "
                                    "workbench on your own machine")
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(body)


def upload_limit_mb() -> int:
    """The largest upload a page takes, in MB: ``STOPLINE_MAX_UPLOAD_MB`` (default 25)."""
    return sharing.env_int(UPLOAD_ENV, UPLOAD_DEFAULT_MB)


def upload_read_limits():
    """The caps on reading an uploaded file (``sources.Limits``), in proportion to ``upload_limit_mb``."""
    from analysis.ingest.sources import Limits
    mb = upload_limit_mb()
    return Limits(records=UPLOAD_RECORDS_PER_MB * mb, decoded_mb=UPLOAD_DECODED_TIMES * mb,
                  what="a file imported from the dashboard",
                  hint=f"import it with `python -m analysis import` (no cap there), or raise {UPLOAD_ENV} "
                       f"(now {mb} MB; the caps grow with it)")


def upload_too_big(up) -> str | None:
    """Why an uploaded file is refused (larger than ``upload_limit_mb``), or None."""
    mb = upload_limit_mb()
    if up is not None and up.size > mb * 1024 * 1024:
        return (f"'{up.name}' is {up.size / 1024 / 1024:.1f} MB; uploads here are at most {mb} MB "
                f"({UPLOAD_ENV} raises it). Import larger files with `python -m analysis import`.")
    return None


# -- where the stores are -------------------------------------------------------------------------------------
def my_db() -> str:
    """The user's own store, where new runs, imports and presets go: ``$STOPLINE_DB`` or data/stopline.duckdb
    (the one place the dashboard resolves it)."""
    return resolve_db_path()


def allowed_stores() -> dict[str, str]:
    """The stores a link may name, by key (``demo``, ``mine`` and those of ``$STOPLINE_STORES``)."""
    return sharing.store_allow_list(DEMO_DB, my_db())


def store_key(ref: str | None) -> str | None:
    """The key of the allowed store a link's ``db=`` names (a key, or an allowed store's path), else None."""
    return sharing.store_key(ref, allowed_stores())


def stores() -> dict[str, str]:
    """The stores the sidebar offers, by label: the demo, the user's, and those configured (by key)."""
    labels = {"demo": DEMO_LABEL, "mine": MINE_LABEL}
    return {labels.get(k, k): path for k, path in allowed_stores().items()}


def stamp(path: str) -> tuple:
    """What changes when a writer commits: size and mtime of the file and of its write-ahead log."""
    out = []
    for p in (path, path + ".wal"):
        try:
            s = os.stat(p)
            out += [s.st_size, s.st_mtime_ns]
        except OSError:
            out += [None, None]
    return tuple(out)


@st.cache_resource(show_spinner=False, max_entries=32)
def _open(path: str, stamp_: tuple) -> Store:
    return Store(path, read_only=True)


def open_store(path: str) -> Store:
    """The store at ``path`` for reading, read-only: a visit never creates or migrates a store (writes open
    their own, ``my_store``)."""
    return _open(path, stamp(path))


def my_store() -> Store:
    """The user's store, writable (made on first use, with its folder)."""
    refuse_in_viewer("Writing to your store")
    path = my_db()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Store(path)


# -- cached reads ---------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _runs(path: str, stamp_: tuple) -> list[dict]:
    return open_store(path).runs()


def runs(path: str) -> list[dict]:
    """``Store.runs()`` (an aggregate over every checkpoint), read again only when the file changed."""
    return _runs(path, stamp(path))


@st.cache_data(show_spinner=False, max_entries=32)
def _default_run(path: str, stamp_: tuple) -> str | None:
    return open_store(path).default_run()


def default_run(path: str) -> str | None:
    return _default_run(path, stamp(path))


@st.cache_data(show_spinner=False, max_entries=32)
def _presets(path: str, stamp_: tuple) -> dict[str, dict]:
    return open_store(path).presets()


def presets(path: str | None = None) -> dict[str, dict]:
    """The presets kept in a store (default: the picked one); {} when there is no such store."""
    path = path or picked_db()
    if not path or not Path(path).exists():
        return {}
    return _presets(path, stamp(path))


def user_presets() -> dict[str, tuple[str, dict]]:
    """Every preset the user has, by name: (the store that keeps it, its JSON). Presets belong to the user, not
    to a store of runs: those in the user's store, then those in the picked store (when it is another one)."""
    out: dict[str, tuple[str, dict]] = {}
    for path in dict.fromkeys(p for p in (my_db(), picked_db()) if p):
        try:
            kept = presets(path)
        except StoplineError:
            continue
        for name, body in kept.items():
            out.setdefault(name, (path, body))
    return out


def applies(body: dict, t) -> bool:
    """Whether a preset can be replayed on the run of table ``t``: every setting it can apply reads only signals
    the run has."""
    from analysis.core.errors import PresetError
    from analysis.presets.schema import from_dict
    try:
        p = from_dict(body)
    except PresetError:
        return False

    def reads(s) -> set[str]:
        return set(s.policy.required_signals(s.params)).union(*[reads(x) for x in s.policy.parts(s.params)])
    return all(t.has_signal(sig) for s in p.settings() for sig in reads(s))


def presets_for(t) -> dict[str, dict]:
    """The user's presets that apply to the run of table ``t`` (whichever store it is in), by name: those made on
    another dataset or answer type too (``made_elsewhere`` says so)."""
    return {name: body for name, (_, body) in user_presets().items() if applies(body, t)}


def made_elsewhere(preset, run: dict) -> str | None:
    """A warning when a preset (a Preset or its JSON) was made on a run of another dataset or answer type than
    ``run``, else None (the same, or a preset that does not record it)."""
    from analysis.core.errors import PresetError
    from analysis.presets.schema import from_dict, made_for
    try:
        p = from_dict(preset) if isinstance(preset, dict) else preset
    except PresetError:
        return None
    words = made_for(p, run)
    return (f"Preset '{p.name}' was {words}: it is offered here, but its thresholds were chosen on other questions; "
            "check its numbers on this run before relying on it.") if words else None


def save_preset(path: str, name: str, body: dict) -> None:
    """Keep a preset in the store at ``path`` (made on the first save)."""
    refuse_in_viewer("Saving presets")
    Store(path).save_preset(name, body)
    _presets.clear()


def delete_preset(path: str, name: str) -> None:
    refuse_in_viewer("Deleting presets")
    Store(path).delete_preset(name)
    _presets.clear()


@st.cache_data(show_spinner=False, max_entries=32)
def _attributions(path: str, stamp_: tuple) -> dict[str, str]:
    return open_store(path).attributions()


def attributions() -> dict[str, str]:
    """Where the picked store's datasets come from ({} without a store)."""
    return _attributions(picked_db(), stamp(picked_db())) if picked_store() is not None else {}


@st.cache_data(show_spinner=False, max_entries=64)
def _trace(path: str, stamp_: tuple, run_id: str, question_id: str) -> dict:
    return open_store(path).trace(run_id, question_id)


def trace(run: dict, question_id: str) -> dict:
    """One question's trace (text, question, gold) in the picked store."""
    return _trace(picked_db(), stamp(picked_db()), run["id"], question_id)


@st.cache_resource(show_spinner="Loading the run's checkpoints…", max_entries=8)
def run_table(path: str, run_id: str, n_checkpoints: int, n_incumbent: int = 0):
    """The run's table (with its incumbent); keyed on its counts, so new checkpoints or an incumbent attached
    later show up."""
    from analysis.replay.engine import RunTable
    return RunTable.from_store(open_store(path), run_id)


def table_for(run: dict):
    """The picked store's table of ``run``."""
    return run_table(picked_db(), run["id"], run["n_checkpoints"], run.get("n_incumbent", 0))


@st.cache_data(show_spinner="Sweeping the families…", max_entries=16)
def sweep_points(path: str, run_id: str, n_questions: int, n_checkpoints: int, learned: bool | None = None,
                 split: str = "all"):
    """Every family's sweep; ``learned=False`` leaves out the learned stopper, whose cross-fitting (five
    classifiers) dominates a large run's sweep (None: left out above ``LEARNED_AUTO_MAX`` checkpoints).
    ``split``: the questions swept, ``all`` or the ``tune`` half (what is picked there is checked on the
    held-out half, as ``optimize`` and the Report do; each family's grid is drawn from that half alone).
    The run's writer keeps its default sweep in the store; any other is computed once and kept on disk
    (``data/cache`` or ``$STOPLINE_CACHE``, keyed by the store file, the run, the split and the code), so a
    restarted server finds it."""
    import pandas as pd
    from analysis.evaluate.frontier import default_families, stored_sweep, sweep, sweep_key
    from analysis.evaluate.optimize import split_of
    from analysis.replay.policies import families
    fams = default_families(n_checkpoints) if learned is None else [f for f in families() if learned or f != "learned"]
    run = {"id": run_id, "n_questions": n_questions, "n_checkpoints": n_checkpoints}
    try:
        pts = stored_sweep(open_store(path), run, fams) if split == "all" else None
    except StoplineError:
        pts = None
    if pts is not None:
        return pts
    disk = _sweep_cache_file(path, f"{run_id}|{sweep_key(run, fams)}|{split}")     # two runs may share counts
    if disk is not None and disk.exists():
        try:
            return pd.read_parquet(disk)
        except Exception:          # noqa: BLE001 - a damaged cache file is recomputed
            pass
    pts = sweep(split_of(run_table(path, run_id, n_checkpoints), split), fams)
    if disk is not None:
        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            tmp = disk.with_suffix(".tmp")
            pts.to_parquet(tmp)
            tmp.replace(disk)
        except OSError:
            pass
    return pts


def sweep_for(run: dict, learned: bool | None = None, split: str = "all"):
    """The sweep of ``run`` in the picked store (see ``sweep_points``)."""
    return sweep_points(picked_db(), run["id"], run["n_questions"], run["n_checkpoints"], learned, split)


def _sweep_cache_file(path: str, key: str) -> Path | None:
    try:
        st_ = Path(path).stat()
    except OSError:
        return None
    key = f"{Path(path).resolve()}|{st_.st_size}|{st_.st_mtime_ns}|{key}"
    cache = Path(os.environ.get("STOPLINE_CACHE") or Path(__file__).resolve().parent.parent / "data" / "cache")
    return cache / f"sweep-{hashlib.sha1(key.encode()).hexdigest()[:20]}.parquet"


@st.cache_data(show_spinner="Certifying (Learn-then-Test)…", max_entries=16)
def certificate(path: str, run_id: str, n_checkpoints: int, epsilon: float, delta: float,
                families: tuple[str, ...] | None = None) -> dict:
    """The run's certified setting for "EM drop <= epsilon with probability >= 1 - delta"
    (analysis.evaluate.certify); keyed on the run's counts."""
    from analysis.evaluate.certify import certify
    return certify(run_table(path, run_id, n_checkpoints), epsilon, delta, list(families) if families else None)


def certificate_for(run: dict, epsilon: float, delta: float, families: tuple[str, ...] | None = None) -> dict:
    """``certificate`` for ``run`` in the picked store."""
    return certificate(picked_db(), run["id"], run["n_checkpoints"], epsilon, delta, families)


def recalibrate(log: str, labels: str, header_preset: dict, epsilon: float, delta: float, history: str) -> dict:
    """The closed loop's step from the Monitor page (analysis.production.recalibrate): certify on the log's
    labelled exploration requests, append the attempt to ``history``."""
    from analysis.presets.schema import from_dict
    from analysis.production.recalibrate import recalibrate as run
    refuse_in_viewer("Re-certifying")
    return run([log], [labels], from_dict(header_preset), epsilon, delta, history=history)


def deployed_preset(history: str, header_preset: dict | None):
    """The deployed preset (analysis.production.rollback.deployed): the history's latest applied version, else
    the log's own preset; None when neither."""
    from analysis.presets.schema import from_dict
    from analysis.production.rollback import deployed
    return deployed(history, from_dict(header_preset) if header_preset else None)


def rollback_out_of_step(preset: dict, log_preset: dict | None, version: int | None) -> str | None:
    """The history's deployed ``preset`` against the log's: words when they differ
    (analysis.production.rollback.out_of_step)."""
    from analysis.presets.schema import from_dict
    from analysis.production.rollback import out_of_step
    return out_of_step(from_dict(preset), log_preset, version)


@st.cache_data(show_spinner="Testing the deployed version against its certificate…", max_entries=8)
def rollback_evidence(log: str, labels: str, preset: dict, history: str, alpha: float, key: str) -> dict:
    """What automatic rollback would decide now (analysis.production.rollback.evidence), without writing; keyed
    on ``key`` (the log's, labels' and history's mtimes)."""
    from analysis.presets.schema import from_dict
    from analysis.production.rollback import evidence
    return evidence([log], [labels], from_dict(preset), history, alpha)


def rollback(log: str, labels: str, preset: dict, history: str, alpha: float) -> dict:
    """Automatic rollback from the Monitor page (analysis.production.rollback): test the deployed version on the
    log's labelled exploration requests; when the test fires, append the rollback version to ``history``."""
    from analysis.presets.schema import from_dict
    from analysis.production.rollback import rollback as run
    refuse_in_viewer("Rolling back")
    return run([log], [labels], from_dict(preset), history, alpha)


@st.cache_data(show_spinner=False, max_entries=4)
def preset_history(path: str, mtime: float) -> list[dict]:
    """The closed loop's version history (analysis.production.recalibrate); keyed by the caller on its mtime."""
    from analysis.production.recalibrate import history_records
    return history_records(path)


@st.cache_data(show_spinner="Reading the log and testing for drift…", max_entries=8)
def monitor_report(_log: str, _labels: str | None, key: str, run_db: str | None, run_id: str | None,
                   version: str | None = None):
    """A decision log against its calibration run (analysis.production.monitor; none: the live figures alone),
    with the checkpoint and final rows of the preset ``version`` it reads (default: the latest); keyed on ``key``
    (a log file's path and mtime, an upload's content), not on the files' paths: an upload's copy has a new one
    each script run (and is deleted after)."""
    from analysis.production.monitor import monitor, monitor_inputs, no_preset, one_version, read_log
    t, preset = monitor_inputs([_log], None, run_id, run_db, version)
    if preset is None:
        raise no_preset([_log])
    res = monitor([_log], t, preset, [_labels] if _labels else None, version=version)
    _, ck, fin = read_log([_log])
    ck, fin, _ = one_version(ck, fin, res["preset_version"])
    return res, ck, fin


# -- runs, by label -------------------------------------------------------------------------------------------
def run_label(run: dict, questions: bool = False) -> str:
    """How a run is named in pickers and legends, short enough to tell runs apart where a picker cuts it:
    model · dataset options (· n q). ``qwen2.5-coder-0.5b · basic_arithmetic terms≤3 digits≤2 · 200 q`` for
    ``qwen2.5-coder-0.5b-instruct`` on ``rg:basic_arithmetic?max_terms=3&max_digits=2``."""
    from urllib.parse import parse_qsl
    model = _short_model(run["model"])
    if run.get("traces_model"):            # a re-probed run: whose traces, probed by which model
        traces = _short_model(run["traces_model"])
        model = f"{model} re-probed" if traces == model else f"{traces} probed by {model}"
    name, _, opts = str(run["dataset"]).partition("?")
    if ":" in name and not name.split(":", 1)[1].startswith(("/", ".")):
        name = name.split(":", 1)[1]                                      # rg:basic_arithmetic -> basic_arithmetic
    elif ":" in name:
        kind, path = name.split(":", 1)
        name = f"{kind} {Path(path).stem}"                                # gsm8k:/path/test.jsonl -> gsm8k test
    words = []
    for k, v in parse_qsl(opts):
        k = k.replace("_", " ")
        words.append(f"{k[4:]}≤{v}" if k.startswith("max ") else f"{k[4:]}≥{v}" if k.startswith("min ") else f"{k}={v}")
    label = f"{model} · {' '.join([name, *words])}"
    return label + (f" · {run['n_questions']} q" if questions else "")


def _short_model(name) -> str:
    model = str(name).rstrip("/").split("/")[-1]
    for tail in ("-instruct", "-Instruct", "-it", "-chat"):
        model = model.removesuffix(tail)
    return model


def run_labeller(runs_: list[dict], questions: bool = False):
    """A ``format_func`` for a picker of run ids."""
    by_id = {r["id"]: r for r in runs_}
    labels = {i: run_label(r, questions) for i, r in by_id.items()}
    twice = {lab for lab, n in Counter(labels.values()).items() if n > 1}
    return lambda i: labels[i] + (f" · {i[:6]}" if labels[i] in twice else "")   # runs alike: their ids tell


def run_by_id(runs_: list[dict], run_id: str) -> dict:
    return next(r for r in runs_ if r["id"] == run_id)


def engine_figures(run: dict) -> dict:
    """A run computed through a server (``--engine openai``): what its execution info recorded, for a table."""
    eng, ex = run["config"].get("engine") or {}, run["config"].get("execution") or {}

    def pct(v):
        return None if v is None else f"{100 * v:.1f}%"
    return {"id": run["id"], "server": f"{eng.get('server') or '?'} {eng.get('server_version') or ''}".strip(),
            "replicas": ex.get("replicas"), "questions at once": ex.get("concurrency"),
            "tokens generated": ex.get("gen_tokens"), "probes": ex.get("probes"),
            "probes past the context": ex.get("probes_past_context"),     # checkpoints the context's end left unprobed
            "probe prefix-cache hits": pct(ex.get("probe_cache_hit_rate")),
            "cacheable share": pct(ex.get("cacheable_share")),
            "server prefix-cache hits": pct(ex.get("server_prefix_cache_hit_rate")),
            "tokens/s": ex.get("gen_tok_s"), "token ids": ex.get("token_ids"), "retries": ex.get("retries")}


# -- the session: what the sidebar picked, the current setting, the URL ---------------------------------------
def query(key: str, default=None):
    return st.query_params.get(key, default)


def query_all(key: str) -> list[str]:
    """Every value of a repeated parameter (``run_ids=a&run_ids=b``)."""
    return st.query_params.get_all(key)


def set_query(key: str, value: str | list[str] | None) -> None:
    """Put ``value`` in the URL as ``key`` (a list: a repeated parameter; None: the parameter left out)."""
    if value is None:
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = value


def kept_pick(param: str) -> str | None:
    """The session's copy of a ``url_pick`` (it outlives a page change, which drops widgets and the URL)."""
    return st.session_state.get(f"url_pick.{param}")


def keep_pick(param: str, value: str) -> None:
    """Set the session's copy of ``url_pick``'s ``param``: the pages that pick it open on ``value``."""
    st.session_state[f"url_pick.{param}"] = value


def link_text(raw, n: int = 40) -> str:
    """A value read from a link, to name in a message: cut to ``n`` characters, anything but word characters,
    spaces and ``.:=()-`` replaced, and ``_`` escaped (a link is anyone's text: no emphasis, link or HTML of theirs
    is drawn; an emoji code may be)."""
    import re
    text = re.sub(r"[^\w .:=()-]", "?", str(raw))
    return (text[:n] + ("…" if len(text) > n else "")).replace("_", "\\_")


def url_pick(key: str, param: str, options: list[str] | None, default: str, codes: dict[str, str] | None = None,
             what: str = "this pick") -> str | None:
    """A page's own picker whose value the URL keeps as ``param`` (a permalink reopens it). Call before drawing
    the picker ``key`` with no index or value: its value is set from, in order, the picker's state, the session's
    copy (a page change drops both the widget's state and the query string), the link's ``param``, else
    ``default``; then written back to the copy and the URL. ``options``: what a picker offers (None: free text);
    ``codes``: how some options are written in the URL (others as they are). Returns a sentence when the link
    named an option not offered (``what``, then the value shown instead), else None."""
    codes = codes or {}
    decode = {c: o for o, c in codes.items()}

    def offered(v) -> bool:
        return isinstance(v, str) and (options is None or v in options)
    said = None
    value = st.session_state.get(key)
    if not offered(value):
        value = kept_pick(param)
    if not offered(value):
        raw = query(param)
        value = decode.get(raw, raw)
        if raw and not offered(value):
            said = f"{what[:1].upper() + what[1:]} in this link, '{link_text(raw)}', is not offered here; showing {default!r} instead."
            value = None
    if not offered(value):
        value = default
    st.session_state[key] = value
    keep_pick(param, value)
    if value:
        set_query(param, codes.get(value, value))
    elif param in st.query_params:          # an emptied text field: out of the link
        del st.query_params[param]
    return said


def pick_store(path: str, store: Store | None, runs_: list[dict]) -> None:
    """Record the sidebar's store (None: absent or unreadable) and its runs; the URL names it by its key."""
    st.session_state["db"] = path
    st.session_state["store"] = store
    st.session_state["runs"] = runs_
    st.session_state["run"] = None
    set_query("db", store_key(path) or "demo")


def show_run(path: str, run_id: str) -> None:
    """Make a store's run the sidebar's pick, as if picked there (a button's callback: it runs before the sidebar
    draws its pickers again). A store the dashboard does not offer is left alone."""
    label = {p: lab for lab, p in stores().items()}.get(path)
    if label is None:
        return
    st.session_state["store_pick"], st.session_state["run_pick"] = label, run_id
    st.session_state["picks_by_code"] = True
    set_query("db", store_key(path))
    set_query("run", run_id)


def picks_set_by_code() -> bool:
    """Whether ``show_run`` set the sidebar's picks for this rerun (asked once: the next rerun is as usual)."""
    return st.session_state.pop("picks_by_code", False)


def pick_run(run: dict) -> None:
    st.session_state["run"] = run
    set_query("run", run["id"])


def picked_db() -> str | None:
    """The path of the store picked in the sidebar."""
    return st.session_state.get("db")


def store_as_named() -> str | None:
    """How a report names the picked store (its Reproduce section): its path, relative to here when it lies
    below; in viewer mode a store elsewhere by its file name alone (a visitor learns no path of the server's)."""
    path = picked_db()
    if not path:
        return None
    shown = portable_path(path)
    return Path(path).name if viewer() and Path(shown).is_absolute() else shown


def picked_store() -> Store | None:
    """The picked store, or None when it is absent or could not be read."""
    return st.session_state.get("store")


def picked_runs() -> list[dict]:
    """The picked store's runs ([] without a store)."""
    return st.session_state.get("runs") or []


def picked_run() -> dict | None:
    """The run picked in the sidebar, or None when there is no store with runs."""
    if not picked_store():
        return None
    return st.session_state.get("run")


def session_setting():
    """The current setting kept in the session (the Tune page's, a clicked point's, a loaded preset's), or None."""
    return st.session_state.get("setting")


def remember_setting(setting) -> None:
    """Make a setting the current one: kept in the session and in the URL (a shareable link)."""
    from analysis.presets.schema import from_setting
    st.session_state["setting"] = setting
    st.session_state.setdefault("setting_by_family", {})[setting.family] = setting
    set_query("s", from_setting(setting).to_url())


def family_setting(family: str):
    """The setting last current in ``family`` this session (its family picked again: it comes back), or None."""
    return st.session_state.get("setting_by_family", {}).get(family)


def current_family() -> str | None:
    """The family the user picked last (the sidebar's family picker shows it on every page), or None."""
    return st.session_state.get("cur_family")


def pick_family(family: str) -> None:
    """Make ``family`` the current one: the family picker shows it on every page, the URL carries it."""
    st.session_state["cur_family"] = family
    set_query("family", family)


def make_current(setting) -> None:
    """Make a setting (a clicked point, a jump, a loaded preset) the current one, family included; Tune's
    controls for its family are drawn again from it (call from a callback or before Tune draws them)."""
    remember_setting(setting)
    pick_family(setting.family)
    for k in [k for k in st.session_state if isinstance(k, str) and k.startswith(setting.family + ".")]:
        del st.session_state[k]


def keep_in_url(read_link) -> None:
    """Every rerun, on every page: the session's family and setting go back into the URL (a page change in the
    browser drops the query string), and a link's family and setting seed a fresh session once."""
    if not st.session_state.get("url_seeded"):
        st.session_state["url_seeded"] = True
        url_setting = read_link(quiet=True)         # the page's own read says what is wrong with it
        if session_setting() is None and url_setting is not None:
            st.session_state["setting"] = url_setting
        fam = query("family") or (url_setting.family if url_setting is not None else None)
        if fam and current_family() is None:
            st.session_state["cur_family"] = fam
    if current_family():
        set_query("family", current_family())
    if session_setting() is not None:
        remember_setting(session_setting())
