"""Processes that end when the process that started them dies: no orphans (issue 21).

Two kinds of children outlive a killed parent unless told otherwise:
- an import's derivation workers (``ProcessPoolExecutor``, forked): after ``kill -9`` of the import they sleep
  forever on the task queue, whose write end they hold themselves, so they never see it close;
- the dashboard's background jobs (``python -m analysis run …``, production/jobs.py): in a session of their
  own, so that a page rerun cannot stop them, and so nothing stops them when the dashboard stops.

Each of them runs a daemon thread that polls its parent's pid (``os.getppid()`` changes when the parent dies
and the child is re-parented); ``prctl(PR_SET_PDEATHSIG)`` is not used because Linux sends it when the *thread*
that forked the child ends, and Streamlit runs each page in a thread of its own. A worker exits at once; a
command (a job) is interrupted as Ctrl-C would, so the batch in flight is rolled back and what was committed
stays, and is ended outright if it has not exited a grace period later.
"""
from __future__ import annotations

import os
import signal
import threading
import time

# set by whoever starts a ``python -m analysis`` command that must end with it (production/jobs.py);
# the command reads it (cli/main.py) and removes it, so that its own children do not watch the wrong process
PARENT_ENV = "STOPLINE_EXIT_WITH_PARENT"
POLL_S = 0.5


def _watch(parent: int, on_orphan, poll_s: float) -> threading.Thread:
    def run():
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_orphan()
    t = threading.Thread(target=run, name="stopline-lifeline", daemon=True)
    t.start()
    return t


def worker_exits_with_parent(parent: int | None = None, poll_s: float = POLL_S) -> threading.Thread:
    """In a worker process (a pool's ``initializer``): exit at once when ``parent`` (default: the process
    that forked this one) is gone. A worker holds nothing that needs closing: its results had nowhere to go."""
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:          # the parent died before the worker got here
        os._exit(1)
    return _watch(parent, lambda: os._exit(1), poll_s)


def command_exits_with_parent(parent: int, grace_s: float = 20.0, poll_s: float = POLL_S) -> threading.Thread:
    """In a command: when ``parent`` is gone, interrupt this process as Ctrl-C would (the CLI rolls back the
    batch in flight and says what was kept); if it has not exited ``grace_s`` later, end it."""
    def interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(grace_s)
        os._exit(130)
    return _watch(parent, interrupt, poll_s)


def from_env() -> threading.Thread | None:
    """``command_exits_with_parent`` for a command started with ``PARENT_ENV`` set to its parent's pid."""
    value = os.environ.pop(PARENT_ENV, None)
    if not value or not value.isdigit():
        return None
    return command_exits_with_parent(int(value))
