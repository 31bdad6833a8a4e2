"""The layers are a checked contract (pyproject.toml [tool.importlinter]): views and cli > production > ingest >
evaluate > presets > replay and backend > core; analysis imports no Streamlit and no views."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def test_import_contracts_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed (pip install -r requirements.txt)")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
