"""Sharing the dashboard (issue 21, analysis/core/sharing.py): the command line refuses to expose the full
workbench without a login; the stores a link may name; the limits of jobs started from the dashboard."""
import json
import os
import subprocess
import sys

import pytest

from analysis.core import sharing
from analysis.core.errors import StoplineError
from tests.helpers import ROOT

AUTH = ('[auth]\nredirect_uri = "https://stopline.example/oauth2callback"\ncookie_secret = "s3cret-s3cret"\n'
        'client_id = "id"\nclient_secret = "x"\n'
        'server_metadata_url = "https://idp.example/.well-known/openid-configuration"\n')


def test_an_exposed_dashboard_without_viewer_mode_or_a_login_does_not_start(tmp_path):
    """In a process of its own: were the check missing, the dashboard would start and listen (and the timeout
    would fail the test) instead of exiting with our error."""
    env = {**os.environ, "HOME": str(tmp_path)}                      # no ~/.streamlit/secrets.toml
    env.pop("STOPLINE_VIEWER", None)
    out = subprocess.run([sys.executable, "-m", "analysis", "dashboard", "--server.address", "0.0.0.0",
                          "--server.port", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "on 0.0.0.0, beyond this machine" in out.stderr and "--viewer" in out.stderr
    assert "[auth]" in out.stderr and "secrets.toml" in out.stderr


@pytest.mark.parametrize("args", [["--server.address", "0.0.0.0"], ["--server.address=192.168.1.5"], []])
def test_exposure_needs_viewer_mode_or_a_configured_login(tmp_path, monkeypatch, args):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("STOPLINE_VIEWER", raising=False)
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    root = tmp_path / "app"                  # where the dashboard starts: Streamlit reads its .streamlit/
    (root / ".streamlit").mkdir(parents=True)
    monkeypatch.chdir(root)
    if not args:                     # no --server.address and no config file: Streamlit listens everywhere
        with pytest.raises(StoplineError, match="on every interface"):
            sharing.check_exposure(args)
        (root / ".streamlit" / "config.toml").write_text('[server]\naddress = "127.0.0.1"\n')
        sharing.check_exposure(args)                                        # local by the config file
        return
    with pytest.raises(StoplineError, match="beyond this machine"):
        sharing.check_exposure(args)
    monkeypatch.setenv("STOPLINE_VIEWER", "1")
    sharing.check_exposure(args)                                      # viewer mode: allowed
    monkeypatch.delenv("STOPLINE_VIEWER")
    (root / ".streamlit" / "secrets.toml").write_text(AUTH.replace('client_id = "id"\n', ""))
    with pytest.raises(StoplineError):                                      # half a login is none
        sharing.check_exposure(args)
    (root / ".streamlit" / "secrets.toml").write_text(AUTH)
    sharing.check_exposure(args)                                      # a login: allowed


def test_local_addresses_need_nothing():
    for a in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert sharing.is_local(a)
    for a in ("", "0.0.0.0", "::", "10.0.0.1", "example.com"):
        assert not sharing.is_local(a)


def test_the_last_server_address_given_is_the_one_streamlit_listens_on():
    assert sharing.listen_address(["--server.address", "127.0.0.1", "--server.address", "0.0.0.0"]) == "0.0.0.0"
    assert sharing.listen_address(["--server.address=0.0.0.0", "--server.address=127.0.0.1"]) == "127.0.0.1"


def test_a_local_dashboard_answers_to_this_machines_names_only(monkeypatch):
    """DNS rebinding: a web site whose name resolves to 127.0.0.1 reaches a local dashboard with its own name as
    Host; only this machine's names pass, unless listed, and an exposed dashboard leaves names to its proxy."""
    monkeypatch.delenv(sharing.HOSTS_ENV, raising=False)
    for host in ("localhost:8501", "127.0.0.1:8501", "127.0.0.5", "[::1]:8501", "app.localhost:8501", None):
        assert sharing.host_allowed(host, "127.0.0.1"), host
    for host in ("evil.example:8501", "127.evil.example:8501", "10.0.0.1:8501", "[::2]:8501", "localhost.evil"):
        assert not sharing.host_allowed(host, "127.0.0.1"), host
    assert sharing.host_allowed("evil.example:8501", "0.0.0.0")             # exposed: the login or viewer mode
    monkeypatch.setenv(sharing.HOSTS_ENV, "box.lan, Dev.Example")
    assert sharing.host_allowed("dev.example:8501", "127.0.0.1") and sharing.host_allowed("box.lan", "localhost")


def test_streamlits_upload_endpoint_takes_no_more_than_the_pages_and_next_to_nothing_in_viewer_mode(monkeypatch):
    monkeypatch.delenv(sharing.VIEWER_ENV, raising=False)
    monkeypatch.delenv(sharing.UPLOAD_ENV, raising=False)
    assert sharing.with_upload_cap(["--server.port", "1"]) == ["--server.port", "1", "--server.maxUploadSize=25"]
    monkeypatch.setenv(sharing.UPLOAD_ENV, "60")
    assert sharing.with_upload_cap([])[-1] == "--server.maxUploadSize=60"
    assert sharing.with_upload_cap(["--server.maxUploadSize=5"]) == ["--server.maxUploadSize=5"]   # given: kept
    monkeypatch.setenv(sharing.VIEWER_ENV, "1")
    assert sharing.with_upload_cap([])[-1] == "--server.maxUploadSize=1"


def test_the_allow_list_keys_stores_by_file_stem(tmp_path, monkeypatch):
    (tmp_path / "team").mkdir()
    for name in ("a.duckdb", "b.duckdb", "notes.txt"):
        (tmp_path / "team" / name).write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.duckdb").write_bytes(b"")
    monkeypatch.setenv("STOPLINE_STORES", os.pathsep.join([str(tmp_path / "team"), str(tmp_path / "other" / "a.duckdb")]))
    allowed = sharing.store_allow_list("/x/demo.duckdb", "/x/mine.duckdb")
    assert list(allowed) == ["demo", "mine", "a", "b", "a-2"]
    assert sharing.store_key("b", allowed) == "b"
    assert sharing.store_key(str(tmp_path / "team" / ".." / "team" / "b.duckdb"), allowed) == "b"
    assert sharing.store_key("/etc/passwd", allowed) is None and sharing.store_key("", allowed) is None


# -- jobs started from the dashboard -----------------------------------------------------------------------------
def test_jobs_from_the_dashboard_keep_to_their_limits(tmp_path, monkeypatch):
    from analysis.production import jobs
    monkeypatch.setenv("STOPLINE_MAX_QUESTIONS", "100")
    monkeypatch.setenv("STOPLINE_MAX_NEW_TOKENS", "1024")
    where = tmp_path / "jobs"
    db = str(tmp_path / "s.duckdb")
    with pytest.raises(StoplineError, match="at most 100 questions, not 101"):
        jobs.start_run("smollm2-135m-instruct", "rg:basic_arithmetic", db, limit=101, where=where)
    with pytest.raises(StoplineError, match="at most 100 questions"):
        jobs.start_run("smollm2-135m-instruct", "rg:basic_arithmetic", db, limit=None, where=where)
    with pytest.raises(StoplineError, match="at most 1024 new tokens"):
        jobs.start_run("smollm2-135m-instruct", "rg:basic_arithmetic", db, limit=10, max_new_tokens=2048, where=where)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])     # a running job
    try:
        d = where / "20261205-000000-abcdef"
        d.mkdir(parents=True)
        (d / "job.json").write_text(json.dumps({"id": d.name, "cmd": [], "pid": sleeper.pid, "started": 0,
                                                "model": "m", "dataset": "rg:x", "db": db}))
        monkeypatch.setenv("STOPLINE_MAX_QUEUED", "0")
        with pytest.raises(StoplineError, match=r"1 job\(s\) running or queued: at most 1 run at once and 0 wait"):
            jobs.start_run("smollm2-135m-instruct", "rg:basic_arithmetic", db, limit=10, where=where)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [p.name for p in where.iterdir()] == ["20261205-000000-abcdef"]       # no job folder was made
    monkeypatch.setenv("STOPLINE_MAX_JOBS", "zero")
    with pytest.raises(StoplineError, match="STOPLINE_MAX_JOBS='zero' is not a whole number"):
        jobs.limits()


def test_a_jobs_dataset_file_must_be_in_a_configured_folder(tmp_path, monkeypatch):
    from analysis.production import jobs
    ok = tmp_path / "datasets"
    ok.mkdir()
    monkeypatch.setenv("STOPLINE_DATASET_DIRS", str(ok))
    monkeypatch.chdir(tmp_path)                 # the dashboard may run elsewhere than its jobs (ROOT)
    for ds in ("jsonl:/etc/passwd", f"csv:{ok}/../secret.csv", "gsm8k:/no/such.jsonl", "parquet:rel/x.parquet",
               "hf:/etc?split=train", "hf:~/.cache/huggingface",       # hf: reads a local folder too
               "hf:docs", "hf:data/demo-logs:cfg"):                     # (relative to where the job runs)
        with pytest.raises(StoplineError, match="must be inside") as e:
            jobs.check_dataset(ds)
        assert "exist" not in str(e.value)                    # the same words whether the file is there or not
    for ds in (f"jsonl:{ok}/q.jsonl", f"nq-open:{ok}/sub/x.jsonl", "rg:basic_arithmetic", "hf:gsm8k", f"hf:{ok}/d"):
        jobs.check_dataset(ds)


def test_a_job_over_the_limit_waits_for_a_slot_and_runs_when_one_is_free(tmp_path):
    """Jobs take one of STOPLINE_MAX_JOBS slot locks before they run (production/jobs.py): the second waits,
    queued, until the first ends (here killed with SIGKILL: the kernel releases its lock)."""
    code = ("import sys; from pathlib import Path; from analysis.production import jobs; "
            f"jobs.take_slot(Path({str(tmp_path)!r}), 1, on_wait=lambda: print('waiting', flush=True)); "
            "print('holding', flush=True); sys.stdin.read()")
    first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    second = None
    try:
        assert first.stdout.readline().strip() == "holding"
        second = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert second.stdout.readline().strip() == "waiting"          # queued behind the first
        first.kill()
        first.wait()
        assert second.stdout.readline().strip() == "holding"          # its turn once the first is gone
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
                p.wait()


def test_a_queued_job_reads_as_queued(tmp_path):
    from analysis.production import jobs
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        d = tmp_path / "j1"
        d.mkdir()
        (d / "job.json").write_text(json.dumps({"id": "j1", "cmd": [], "pid": sleeper.pid, "started": 0}))
        (d / "log").write_text(f"{jobs.QUEUED} (1 at a time)\n")
        assert jobs.status("j1", tmp_path)["state"] == "queued"
        (d / "log").write_text(f"{jobs.QUEUED} (1 at a time)\n{jobs.STARTED}\n")
        assert jobs.status("j1", tmp_path)["state"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
