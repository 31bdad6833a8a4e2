"""Background jobs started from the dashboard (analysis/production/jobs.py): first come first served for the
slots, the same run refused twice, and a stop that keeps what the run finished."""
import select
import subprocess
import sys
import time

import pytest

from analysis.core.errors import StoplineError
from tests.helpers import ROOT


def _line(p, timeout_s: float) -> str | None:
    """The next line ``p`` prints, or None when it prints none within ``timeout_s``."""
    ready, _, _ = select.select([p.stdout], [], [], timeout_s)
    return p.stdout.readline().strip() if ready else None


def test_waiting_jobs_take_a_free_slot_in_the_order_they_came(tmp_path):
    code = ("import sys; from pathlib import Path; from analysis.production import jobs; "
            f"jobs.take_slot(Path({str(tmp_path)!r}), 1, on_wait=lambda: print('waiting', flush=True), poll_s=0.05); "
            "print('holding', flush=True); sys.stdin.read()")
    procs = []
    try:
        for want in ("holding", "waiting", "waiting"):
            procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True))
            assert _line(procs[-1], 60) == want
        first, second, third = procs
        first.kill()
        first.wait()
        assert _line(second, 30) == "holding"           # the one that came first
        assert _line(third, 1.0) is None                 # still waiting, behind it
        second.kill()                                    # a waiter ahead that dies leaves the line too
        second.wait()
        assert _line(third, 30) == "holding"
        assert not list(tmp_path.glob("wait-*"))         # no ticket left behind
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_job_is_refused_twice_and_stops_keeping_what_it_finished(tmp_path, monkeypatch):
    from analysis.backend.tiny import save_tiny
    from analysis.core.store import Store
    from analysis.production import jobs
    model = str(save_tiny(tmp_path / "tiny", seed=2))
    db, where = str(tmp_path / "s.duckdb"), tmp_path / "jobs"
    args = (model, "rg:basic_arithmetic", db, 60, 8, 96, 1)
    jid = jobs.start_run(*args, where=where)
    try:
        with pytest.raises(StoplineError, match=f"already running or queued, as job {jid}"):
            jobs.start_run(*args, where=where)
        deadline = time.time() + 240
        while (jobs.status(jid, where)["done"] or 0) < 2:        # a few questions committed
            assert jobs.status(jid, where)["state"] in jobs.ALIVE and time.time() < deadline, \
                (where / jid / "log").read_text()[-2000:]
            time.sleep(0.5)
        jobs.stop(jid, where)
        while jobs.status(jid, where)["state"] == "stopping" and time.time() < deadline:
            time.sleep(0.5)
        job = jobs.status(jid, where)
    finally:
        jobs.stop(jid, where, kill=True)         # killed, whatever it was doing (nothing, by now)
    assert job["state"] == "stopped" and job["error"] is None, job
    assert "everything committed so far is kept" in (where / jid / "log").read_text()
    (run,) = Store(db, read_only=True).runs()
    assert 2 <= run["n_questions"] < 60
    jid2 = jobs.start_run(*args, where=where)    # no longer running: the same run may start again (and resumes)
    try:
        with pytest.raises(StoplineError, match=f"as job {jid2}"):     # more questions, more at once: the same run
            jobs.start_run(model, "rg:basic_arithmetic", db, 80, 8, 96, 4, where=where)
    finally:
        jobs.stop(jid2, where, kill=True)


def test_a_jobs_pid_given_to_another_process_is_not_the_job(tmp_path):
    """After a restart a job's pid may belong to some other process of the user's: not alive, and not stopped."""
    import json
    from analysis.production import jobs
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        d = tmp_path / "j1"
        d.mkdir()
        (d / "job.json").write_text(json.dumps({"id": "j1", "cmd": [], "pid": other.pid, "started": 0,
                                                "pid_start": jobs._pid_start(other.pid) - 1}))
        assert jobs.status("j1", tmp_path)["state"] == "failed"
        jobs.stop("j1", tmp_path, kill=True)
        assert other.poll() is None                      # untouched
        (d / "job.json").write_text(json.dumps({"id": "j1", "cmd": [], "pid": other.pid, "started": 0,
                                                "pid_start": jobs._pid_start(other.pid)}))
        assert jobs.status("j1", tmp_path)["state"] == "running"
    finally:
        other.kill()
        other.wait()
