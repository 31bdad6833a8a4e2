"""No orphans (issue 21): the processes an import or the dashboard starts end when their parent dies.

Real processes and real kills: an import is killed with SIGKILL while its derivation workers run, and a
stand-in for the dashboard is killed with SIGKILL after starting a background job (production/jobs.py).
Before core/lifeline.py the workers slept forever on their task queue and the job ran on.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _kill(pids, group: bool = False):
    for p in pids:
        try:
            os.killpg(p, signal.SIGKILL) if group else os.kill(p, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process table from /proc (Linux)")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="an import derives in worker processes only with 2+ cores")
def test_import_workers_exit_when_the_import_is_killed(tmp_path):
    # text answers take the per-trace path: long enough a derivation to kill the import in the middle of it
    rows = [{"question": f"Who wrote book {i}?", "answer": f"author {i}",
             "response": ("Let me think about it.\n\nWait, maybe it is someone else. " * 12) + f"So: author {i}"}
            for i in range(16_000)]
    src = tmp_path / "gens.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.Popen([sys.executable, "-m", "analysis", "import", str(src), "--model", "m", "--dataset", "d",
                             "--answer-type", "text", "--db", str(tmp_path / "s.duckdb")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.02)
        if len(workers) < 2:
            pytest.fail(f"the import's workers were never seen (exit {proc.poll()}): {proc.stderr.read()[-500:]!r}"
                        if proc.poll() is not None else "the import started no workers in 120 s")
        time.sleep(0.3)                                      # in the middle of deriving
        assert all(_alive(w) for w in workers), "the workers ended before the kill: the test proves nothing"
        proc.kill()
        proc.wait()
        left = _wait_gone(workers, 10)
        assert not left, f"workers {left} outlived the killed import"
    finally:
        proc.kill()
        _kill(workers)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process table from /proc (Linux)")
def test_a_dashboard_job_ends_when_the_dashboard_dies(tmp_path):
    """The stand-in starts a job as the Runs page does (its own session, so that page reruns cannot stop
    it), then dies of SIGKILL: the job is interrupted like Ctrl-C and exits."""
    where = tmp_path / "jobs"
    stand_in = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from pathlib import Path\n"
         "from analysis.production import jobs\n"
         f"print(jobs.start_run('smollm2-135m-instruct', 'rg:basic_arithmetic', {str(tmp_path / 's.duckdb')!r},"
         f" limit=500, where=Path({str(where)!r})), flush=True)\n"
         "time.sleep(600)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    job_pid = None
    try:
        jid = stand_in.stdout.readline().strip()
        job = json.loads((where / jid / "job.json").read_text())
        job_pid = job["pid"]
        deadline = time.monotonic() + 60              # until its lifeline thread runs (a second thread)
        while _alive(job_pid) and len(os.listdir(f"/proc/{job_pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        if not _alive(job_pid):
            pytest.skip("the job ended before the dashboard was killed: " + (where / jid / "log").read_text()[-300:])
        stand_in.kill()
        stand_in.wait()
        left = _wait_gone([job_pid], 40)
        assert not left, "the job outlived the dashboard that started it"
    finally:
        stand_in.kill()
        if job_pid:
            _kill([job_pid], group=True)
