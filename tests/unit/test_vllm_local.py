"""Stopping a local vLLM (analysis/backend/vllm_local.py) ends its whole process group, the processes that
outlive the server too."""
import subprocess
import sys
import time
from pathlib import Path

from analysis.backend import vllm_local

# a server's group as vLLM makes one: the leader spawns a worker that ignores SIGTERM (as vLLM's engine core and
# resource tracker outlived a SIGTERM'd server), prints its pid, and waits
# (the worker says its pid once it ignores SIGTERM: the pipe is the leader's stdout, which it inherits)
LEADER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print(os.getpid(), flush=True); time.sleep(600)"])
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_stop_ends_the_workers_that_outlive_the_server():
    """Before, stop() sent SIGTERM to the group and waited for the server alone: a worker that ignored it kept
    running (a new user found vLLM's left after a SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    worker = int(proc.stdout.readline())
    try:
        assert alive(worker)
        vllm_local.stop(proc, timeout=5)
        assert proc.poll() is not None
        deadline = time.monotonic() + 5
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), "the worker outlived stop()"
    finally:
        subprocess.run(["kill", "-9", str(worker)], capture_output=True)
    vllm_local.stop(proc)                   # a group already ended: nothing to do, no error
