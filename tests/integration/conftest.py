"""Fixtures of the integration tests: a real vLLM server (vLLM's CPU build from PyPI, in .ci/vllm-venv), started
once for the session, or given by ``$STOPLINE_VLLM_URL``. The tests that use it fail, not skip, when it cannot
be started."""
import os
import subprocess
from pathlib import Path

import pytest

from analysis.backend import vllm_local
from tests.helpers import free_port

MODEL = "smollm2-135m-instruct"


def start_server(tmp: Path, extra=()) -> tuple[subprocess.Popen, str]:
    vllm_local.install()
    port = free_port()
    log = tmp / f"vllm-{port}.log"
    proc = vllm_local.start(MODEL, port, log, name=MODEL, extra=list(extra))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        vllm_local.wait_healthy(url, proc, log=log)
    except BaseException:
        vllm_local.stop(proc)
        raise
    return proc, url


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if os.environ.get("STOPLINE_VLLM_URL"):
        yield os.environ["STOPLINE_VLLM_URL"]
        return
    proc, url = start_server(tmp_path_factory.mktemp("vllm"))
    yield url
    vllm_local.stop(proc)


