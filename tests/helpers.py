"""What the tests share beside pytest's fixtures (tests/conftest.py): paths, hand-built RunTables, a run with an
incumbent, the gateway on a real port, the AppTest opener and sample records."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CHROMIUM = "/usr/bin/chromium"      # the browser tests' Chromium: Debian's (never `playwright install`)

# One checkpoint's defaults in ``checkpoint_table``: a probed checkpoint with middling signals.
CHECKPOINT_DEFAULTS = {"answer_tokens": 2, "probe_tokens": 10, "f1": 0.0, "is_step": False, "is_transition": False,
                       "p_mean": 0.5, "p_geo": 0.5, "p_min": 0.5, "p_first": 0.5, "entropy": 1.0}


# -- decision logs as the gateway writes them --------------------------------------------------------------------
def preset_version(preset: dict) -> str:
    """The gateway's version of a preset (Gateway.reload)."""
    import hashlib
    import json
    from analysis.presets.schema import from_dict
    return hashlib.sha256(json.dumps(from_dict(preset).to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def gateway_log(path, served, header=None):
    """A decision log as the gateway writes it (Gateway.__init__, Gateway.reload, VersionedLog), by the real
    controller and decision log: a header naming no preset (``header`` adds to it), then per preset version a
    ``preset`` record and the checkpoint and final records of the requests it served, each stamped with the
    version. ``served``: (preset, calibration or None, table) per version, in order."""
    from analysis.presets.schema import from_dict
    from analysis.production.controller import Controller, DecisionLog, simulate
    from analysis.production.gateway import VersionedLog
    log = DecisionLog(path, {"gateway": {"on_stop": "answer", "upstreams": 1}, "answer_type": "number",
                             "checkpoints": {"every": 32, "steps": True, "transitions": True}, **(header or {})})
    for preset, cal, t in served:
        p, version = from_dict(preset), preset_version(preset)
        rec = {"type": "preset", "preset_version": version, "preset": p.to_dict()}
        log.write({**rec, "calibration": cal} if cal else rec)
        ctl = Controller(p, "number", every=t.interval or 32)
        ctl.log = VersionedLog(log, version)
        simulate(t, ctl, with_em=False)
    log.close()
    return path


# -- RunTables by hand ---------------------------------------------------------------------------------------
def table_of_rows(rows: list[dict], run_id: str = "hand"):
    """A RunTable from checkpoint rows (question_id, ck_idx, pos, answer_norm, em, signals …), ordered by
    question then checkpoint, as the store gives them."""
    from analysis.replay.engine import RunTable
    return RunTable.from_arrow(pa.Table.from_pylist(rows), run_id)


def checkpoint_table(questions: list[list[dict]], run_id: str = "hand", **defaults):
    """A RunTable of hand-written questions: each a list of checkpoint dicts (pos, answer_norm, em, …) over
    ``CHECKPOINT_DEFAULTS`` (and ``defaults``); question i is named q{i}."""
    base = {**CHECKPOINT_DEFAULTS, **defaults}
    return table_of_rows([{"question_id": f"q{qi}", "ck_idx": j, **base, **c}
                          for qi, cks in enumerate(questions) for j, c in enumerate(cks)], run_id)


def synthetic_table(n: int = 300, m: int = 30, seed: int = 1, difficulty=(0.0, 1.0)):
    """A synthetic run's table (analysis.ingest.synthetic), no store, with the meta a request would carry
    (question_chars, meta.difficulty), as the controller's routing reads them."""
    from analysis.ingest.synthetic import synthetic_tables
    from analysis.replay.engine import RunTable
    qs, _, ck = synthetic_tables(n, m, seed=seed, difficulty=difficulty)
    t = RunTable.from_arrow(ck)
    t.meta = pd.DataFrame({"question_id": t.question_ids, "question_chars": [len(q.text) for q in qs],
                           "meta.difficulty": [q.meta["difficulty"] for q in qs]})
    return t


def budget_like_run(store, n_questions: int, n_checkpoints: int, seed: int, share: float = 0.62) -> str:
    """A synthetic run whose incumbent (analysis/evaluate/incumbent.py) stops at ``share`` of each trace, as a
    budget-like production stopper would; returns the run's id."""
    from analysis.evaluate.incumbent import attach
    from analysis.ingest.synthetic import write_synthetic_run
    from analysis.replay.engine import RunTable
    rid = write_synthetic_run(store, n_questions, n_checkpoints, seed=seed)
    t = RunTable.from_store(store, rid)
    attach(store, rid, list(t.question_ids), list((share * t.full_tokens).astype(int)))
    return rid


def the_job_when_it_ends(timeout_s: float) -> dict:
    """The only background job (analysis/production/jobs.py) once it is no longer running (or at the timeout)."""
    import time

    from analysis.production import jobs
    deadline = time.time() + timeout_s
    while True:
        (job,) = jobs.list_jobs()
        if job["state"] != "running" or time.time() > deadline:
            return job
        time.sleep(1)


# -- the gateway on a real port ------------------------------------------------------------------------------
def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_gateway(upstreams, tok, folder: Path, preset: dict, model: str, *, api_key: str | None = None,
                  admin_key: str | None = None, calibration: dict | None = None, **options):
    """The gateway (``production.gateway``: its FastAPI app on uvicorn, in a thread) in front of ``upstreams``
    with ``preset`` written to ``folder``/preset.json and its decision log at ``folder``/decisions.jsonl;
    ``tok`` is ``load_tokenizer``'s triple, ``options`` the gateway's Options, ``calibration`` the run its log
    names. Yields (gateway, its /v1 URL)."""
    import json
    import threading
    import time

    import uvicorn

    from analysis.production.gateway import Gateway, Options
    from analysis.production.gateway_app import create_app
    path = folder / "preset.json"
    path.write_text(json.dumps(preset))
    t, kind, eos = tok
    gw = Gateway(upstreams if isinstance(upstreams, list) else [upstreams], str(path), t, eos, kind,
                 log_path=str(folder / "decisions.jsonl"), model=model, api_key=api_key, admin_key=admin_key,
                 options=Options(**options), calibration=calibration)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(gw), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not srv.started:
        assert th.is_alive() and time.monotonic() - t0 < 60, "the gateway did not start"
        time.sleep(0.1)
    try:
        yield gw, f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        th.join(30)


# -- the dashboard in AppTest --------------------------------------------------------------------------------
def offer_store(db: str) -> None:
    """Put a store on the dashboard's allow-list (``$STOPLINE_STORES``), so that a link may name it."""
    import os
    entries = [e for e in os.environ.get("STOPLINE_STORES", "").split(os.pathsep) if e]
    if str(db) not in entries:
        os.environ["STOPLINE_STORES"] = os.pathsep.join([*entries, str(db)])


def open_app(db: str | None, run: str | None = None, page: str | None = None):
    """The dashboard (app.py) run once in AppTest with a store and run in its link, then on ``page`` (the store is
    put on the allow-list first, as a user configures it)."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if db:
        offer_store(db)
        at.query_params["db"] = db
    if run:
        at.query_params["run"] = run
    at.run()
    if page:
        at.switch_page(page).run()
    return at


# -- sample records ------------------------------------------------------------------------------------------
# An OpenAI-style chat log with reasoning, in the shapes proxies write (the import's openai-chat format).
CHAT = [
    {"request": {"model": "r1", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Calculate 20 - 3."}]},
     "response": {"choices": [{"message": {"role": "assistant", "reasoning_content":
                                           "20 - 3 is 17.\n\nWait, let me check: 20 - 3 = 17.",
                                           "content": "The answer is \\boxed{17}."}}]},
     "gold": "17"},
    {"request": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Calculate 6 * 7."}]}]},
     "response": {"choices": [{"message": {"reasoning": "6 * 7 = 42. Hmm, 6 * 7 is 41?", "content": "\\boxed{42}"}}]},
     "gold": 42},
    {"request": {"messages": [{"role": "user", "content": "Calculate 9 + 9."}]},
     "response": {"body": {"choices": [{"message": {"content": "<think>9 + 9 = 18. So 18.</think>\\boxed{19}"}}]}},
     "gold": "18"},
    {"request": {"prompt": "Calculate 2 + 2."}, "response": {"choices": [{"text": "2 + 2 = 4. \\boxed{4}"}]},
     "gold": "4"},
]
