"""The dashboard listens on this machine only unless told otherwise (issue 21, "local by default")."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port``, from the kernel's tables (no traffic sent)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, p = fields[1].rsplit(":", 1)
            if int(p, 16) == port and fields[3] == "0A":          # 0A: LISTEN
                out.add(addr)
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's socket tables (Linux)")
def test_the_readmes_dashboard_command_listens_on_loopback_only():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "analysis", "dashboard", "--server.port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.25)
        # 0100007F is 127.0.0.1 (little-endian hex); every interface would be 00000000 or the IPv6 ::
        assert listening_addresses(port) == {"0100007F"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
