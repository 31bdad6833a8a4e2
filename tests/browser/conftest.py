"""The browser tests' fixtures: the dashboard served on a scratch store, and pytest-playwright's ``browser``
launched from Debian's Chromium (never `playwright install`)."""
import pytest

from analysis.cli.appserver import dashboard
from tests.helpers import CHROMIUM


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at /usr/bin/chromium."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]}


class Served(tuple):
    """(url, store path, run id); ``mine``: the server's user store, where its presets are saved."""
    mine: str


@pytest.fixture(scope="module")
def server(synthetic_db, tmp_path_factory):
    """The dashboard on the session's synthetic store: (url, store path, run id). New runs, jobs, presets and
    logs go to a scratch folder."""
    db, rid, _ = synthetic_db
    scratch = tmp_path_factory.mktemp("browser")
    env = {"STOPLINE_DB": str(scratch / "mine.duckdb"), "STOPLINE_JOBS_DIR": str(scratch / "jobs"),
           "STOPLINE_LOG_DIR": str(scratch / "logs"), "STOPLINE_STORES": db}      # links may name the store
    with dashboard(env) as url:
        served = Served((url, db, rid))
        served.mine = env["STOPLINE_DB"]
        yield served
