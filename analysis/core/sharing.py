"""What a shared dashboard may do and touch (issue 21, docs/security.md): viewer mode, the stores a link may
name, whether a login is configured, and whether the dashboard listens beyond this machine. Read by the
dashboard (views/data.py) and by ``python -m analysis dashboard`` (its start-up check); no Streamlit here.

Settings come from the environment, so ``python -m analysis dashboard`` and ``streamlit run app.py`` read the
same ones:
- ``STOPLINE_VIEWER=1`` (or ``dashboard --viewer``): viewer mode, read-only: no runs, imports, uploads or writes;
- ``STOPLINE_STORES``: stores a link may name besides the demo store and the user's, as files or folders (their
  ``*.duckdb`` files), separated by ``os.pathsep`` (``:``); a link names each by a short key (its file stem).
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path

from analysis.core.errors import StoplineError

VIEWER_ENV = "STOPLINE_VIEWER"
STORES_ENV = "STOPLINE_STORES"
_TRUE = {"1", "true", "yes", "on"}
LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def flag(name: str) -> bool:
    """An on/off setting from the environment: 1, true, yes or on (any case) is on."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def viewer_mode() -> bool:
    """Viewer mode asked for (``STOPLINE_VIEWER``; ``dashboard --viewer`` sets it)."""
    return flag(VIEWER_ENV)


def env_int(name: str, default: int, lo: int = 1) -> int:
    """A whole-number setting from the environment, at least ``lo``; a bad value is our error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StoplineError(f"{name}={raw!r} is not a whole number", hint=f"unset it for the default ({default})") \
            from None
    if value < lo:
        raise StoplineError(f"{name}={value} is below {lo}", hint=f"unset it for the default ({default})")
    return value


def env_paths(name: str) -> list[Path]:
    """The folders or files listed in an environment variable (``os.pathsep``-separated; ``~`` expanded)."""
    return [Path(p.strip()).expanduser() for p in os.environ.get(name, "").split(os.pathsep) if p.strip()]


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def store_allow_list(demo: str, mine: str) -> dict[str, str]:
    """The stores a link may name, by key: ``demo``, ``mine`` (the user's store) and those of ``STOPLINE_STORES``
    (a file, or each ``*.duckdb`` of a folder, keyed by its file stem; a repeated stem gets ``-2``, ``-3``)."""
    out = {"demo": str(demo), "mine": str(mine)}
    for entry in env_paths(STORES_ENV):
        files = sorted(entry.glob("*.duckdb")) if entry.is_dir() else [entry]
        for f in files:
            if any(_same(f, v) for v in out.values()):
                continue
            base = re.sub(r"[^A-Za-z0-9_.-]+", "-", f.stem).strip("-") or "store"
            key, i = base, 2
            while key in out:
                key, i = f"{base}-{i}", i + 1
            out[key] = str(f)
    return out


def store_key(ref: str | None, allowed: dict[str, str]) -> str | None:
    """The key of the allowed store a link's ``db=`` names (by key, or by the path of an allowed store), else None.
    Nothing is read from the disk for a name outside the list, so a refusal tells nothing about the server's files."""
    if not ref:
        return None
    if ref in allowed:
        return ref
    return next((k for k, v in allowed.items() if _same(ref, v)), None)


# -- who can reach the dashboard ------------------------------------------------------------------------------
def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def _streamlit_files(name: str) -> list[Path]:
    """Where Streamlit looks for ``.streamlit/<name>``: the user's home, then the folder it starts in (not the
    app's folder: started elsewhere, the repo's config.toml is not read)."""
    return list(dict.fromkeys([Path.home() / ".streamlit" / name, Path.cwd() / ".streamlit" / name]))


def auth_configured() -> bool:
    """Whether a login is configured for ``st.login``: an ``[auth]`` section in a ``.streamlit/secrets.toml``
    with ``redirect_uri``, ``cookie_secret`` and a provider's ``client_id`` (directly or in a provider's table)."""
    for f in _streamlit_files("secrets.toml"):
        auth = _toml(f).get("auth")
        if not isinstance(auth, dict) or not auth.get("redirect_uri") or not auth.get("cookie_secret"):
            continue
        if auth.get("client_id") or any(isinstance(v, dict) and v.get("client_id") for v in auth.values()):
            return True
    return False


def listen_address(args: list[str]) -> str:
    """The address the dashboard will listen on: ``--server.address`` among ``args``, else
    ``$STREAMLIT_SERVER_ADDRESS``, else the ``.streamlit/config.toml`` files; "" (every interface) when none."""
    given = None
    for i, a in enumerate(args):          # the last one counts, as in Streamlit's parser
        if a == "--server.address" and i + 1 < len(args):
            given = args[i + 1]
        elif a.startswith("--server.address="):
            given = a.split("=", 1)[1]
    if given is not None:
        return given
    if os.environ.get("STREAMLIT_SERVER_ADDRESS"):
        return os.environ["STREAMLIT_SERVER_ADDRESS"]
    address = ""
    for f in _streamlit_files("config.toml"):      # later files win, as in Streamlit
        server = _toml(f).get("server")
        if isinstance(server, dict) and server.get("address") is not None:
            address = str(server["address"])
    return address


def is_local(address: str | None) -> bool:
    """Whether an address reaches this machine only (loopback)."""
    a = (address or "").strip()
    return a in LOCAL_ADDRESSES or a.startswith("127.")


HOSTS_ENV = "STOPLINE_ALLOWED_HOSTS"
UPLOAD_ENV, UPLOAD_DEFAULT_MB = "STOPLINE_MAX_UPLOAD_MB", 25


def with_upload_cap(args: list[str]) -> list[str]:
    """Streamlit's options with its own cap on what its upload endpoint takes, unless given: the pages' cap
    (``STOPLINE_MAX_UPLOAD_MB``), or in viewer mode, which offers no upload, the least Streamlit allows (1 MB;
    the endpoint takes files whether or not a page shows an uploader)."""
    if any(a.startswith("--server.maxUploadSize") for a in args):
        return list(args)
    mb = 1 if viewer_mode() else env_int(UPLOAD_ENV, UPLOAD_DEFAULT_MB)
    return [*args, f"--server.maxUploadSize={mb}"]


def host_allowed(host: str | None, listen: str | None) -> bool:
    """Whether a request's ``Host`` may see a dashboard listening on ``listen``. On this machine only (loopback),
    the name must be one of this machine's (localhost, 127.x, ::1) or listed in ``STOPLINE_ALLOWED_HOSTS``
    (comma-separated): a web page elsewhere whose name is made to resolve to 127.0.0.1 (DNS rebinding) is
    refused. Exposed (listening beyond), the login or viewer mode guard it, and proxies name it as they like."""
    if not is_local(listen) or not host:
        return True
    name = host.strip().lower()
    name = name[1:].split("]", 1)[0] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 \
        else name
    extra = {h.strip().lower() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()}
    if name in {"localhost", *extra} or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback          # 127.x, ::1 (a name like 127.evil.example is not)
    except ValueError:
        return False


def check_exposure(args: list[str]) -> None:
    """Refuse to expose the full workbench without a login: listening beyond this machine needs viewer mode or a
    login configured for ``st.login``."""
    address = listen_address(args)
    if is_local(address) or viewer_mode() or auth_configured():
        return
    where = f"on {address}" if address else "on every interface"
    raise StoplineError(
        f"the dashboard would listen {where}, beyond this machine, as the full workbench (runs, imports, uploads, "
        "writes) with no login",
        hint="add --viewer for a read-only dashboard (or STOPLINE_VIEWER=1), or configure a login: an [auth] "
             "section in .streamlit/secrets.toml (docs/security.md), or keep --server.address 127.0.0.1")
