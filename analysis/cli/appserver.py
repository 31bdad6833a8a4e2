"""Start the dashboard (`streamlit run app.py`) on a free local port and wait until it answers: for the
browser tests, the UI benchmark and screenshots. Imports no Streamlit; the app runs in its own process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def dashboard(env: dict | None = None, wait_s: float = 60.0, preload: bool = True,
              app: str | None = None) -> Iterator[str]:
    """Yields the app's URL once its health check answers; stops the server on exit. ``preload`` starts it as
    ``python -m analysis dashboard`` does (views/launch.py: the pages' modules imported before it listens);
    False, as plain ``streamlit run app.py``. ``app``: another script to serve with ``streamlit run`` (the
    benchmarks' one-chart pages)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = (["-m", "streamlit", "run", app] if app else [str(ROOT / "views" / "launch.py")] if preload
             else ["-m", "streamlit", "run", str(ROOT / "app.py")])
    proc = subprocess.Popen([sys.executable, *start, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard did not start on {url}") from None
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
