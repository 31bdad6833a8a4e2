"""Background jobs: a `python -m analysis run …` started from the dashboard, as its own process.

Each job is a folder under ``data/jobs/<id>/`` with ``job.json`` (the command, pid, start time) and ``log``
(the process's output: tqdm's progress bar, then the run's JSON summary). The dashboard only reads these
files and the store, so it stays usable while the job writes; the store's lock-retrying connections let
both work on one file. A job killed half-way resumes from the store when started again.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from analysis.backend.models import check_model
from analysis.core.errors import StoplineError
from analysis.core.lifeline import PARENT_ENV
from analysis.core.sharing import env_int, env_paths
from analysis.ingest.datasets import dataset_file, HF_OPTIONS, split_mapping

ROOT = Path(__file__).resolve().parents[2]
# what a job started from the dashboard may ask for (docs/security.md, "Limits"); each is an environment setting
LIMITS = {"jobs": ("STOPLINE_MAX_JOBS", 1), "queued": ("STOPLINE_MAX_QUEUED", 4),
          "questions": ("STOPLINE_MAX_QUESTIONS", 2000), "tokens": ("STOPLINE_MAX_NEW_TOKENS", 4096)}
# a job started here takes one of the slots before it runs: "<folder>|<n>" (read and removed by cli/main.py)
SLOTS_ENV = "STOPLINE_JOB_SLOTS"
QUEUED, STARTED = "queued: waiting for a free job slot", "started: loading the model and the questions"  # in the log
STOPPED = "stopped"            # a job's folder holds this file once someone asked it to stop
DATASET_DIRS_ENV = "STOPLINE_DATASET_DIRS"


def jobs_dir() -> Path:
    return Path(os.environ.get("STOPLINE_JOBS_DIR", "data/jobs"))


def limits() -> dict[str, int]:
    """The caps on jobs started from the dashboard: jobs running at once and waiting for a slot, questions and
    new tokens per job (``STOPLINE_MAX_JOBS``, default 1; ``STOPLINE_MAX_QUEUED``, 4;
    ``STOPLINE_MAX_QUESTIONS``, 2000; ``STOPLINE_MAX_NEW_TOKENS``, 4096)."""
    return {k: env_int(name, default, lo=0 if k == "queued" else 1) for k, (name, default) in LIMITS.items()}


_HELD: list[int] = []          # the slot lock this process holds, until it exits


def take_slot(folder: Path, n: int, on_wait=None, poll_s: float = 0.5) -> int:
    """Block until this process holds one of ``n`` slot locks in ``folder`` (``flock``: the kernel lets go when
    the process ends, even by ``kill -9``); ``on_wait`` is called once if it has to wait. Returns the slot.
    First come, first served: a waiter holds a ticket (``wait-<ns>-<pid>-<pid's start>``) and tries the locks
    only when no older live ticket is ahead of it."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    ticket = folder / f"wait-{time.time_ns():020d}-{os.getpid()}-{_pid_start(os.getpid()) or 0}"
    ticket.touch()
    fds = [os.open(folder / f"slot-{i}.lock", os.O_CREAT | os.O_RDWR, 0o600) for i in range(n)]
    waited = False
    try:
        while True:
            for i, fd in enumerate(fds if _first_in_line(folder, ticket) else []):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                for other in fds:
                    if other != fd:
                        os.close(other)
                _HELD.append(fd)
                return i
            if not waited and on_wait is not None:
                on_wait()
                waited = True
            time.sleep(poll_s)
    finally:
        ticket.unlink(missing_ok=True)


def _first_in_line(folder: Path, ticket: Path) -> bool:
    """Whether ``ticket`` is the oldest ticket of a live process (the tickets of dead ones are removed)."""
    for t in sorted(folder.glob("wait-*")):
        if t == ticket:
            return True
        _, _, pid, start = (t.name.split("-") + ["0"])[:4]
        if _running(int(pid), int(start)):
            return False
        t.unlink(missing_ok=True)
    return True


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process ``pid``, from /proc/PID/stat; None when there is
    no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_start(pid: int) -> int | None:
    """When process ``pid`` started (``_stat``), or None."""
    st = _stat(pid)
    return st[1] if st else None


def _running(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie, ended but not yet reaped, has) and, when
    ``start`` is known, is the process that started then (a pid given to another process since is not it)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z" and (not start or st[1] == start)


def slot_from_env() -> None:
    """In a job's process (cli/main.py, before the run): wait for a free slot when the dashboard asked for it
    (``SLOTS_ENV``); the log says "queued" while it waits."""
    spec = os.environ.pop(SLOTS_ENV, None)
    if not spec:
        return
    folder, n = spec.rsplit("|", 1)
    take_slot(Path(folder), int(n), on_wait=lambda: print(f"{QUEUED} ({n} at a time)", flush=True))
    print(STARTED, flush=True)


def dataset_dirs() -> list[Path]:
    """The folders a job's dataset file may come from: ``STOPLINE_DATASET_DIRS`` (``os.pathsep``-separated),
    default data/datasets."""
    return env_paths(DATASET_DIRS_ENV) or [ROOT / "data" / "datasets"]


def check_dataset(dataset: str) -> None:
    """A dataset read from a file (``jsonl:PATH``, ``csv:PATH``, …) must lie in a configured folder, checked
    before anything reads the path (the message is the same whether the file exists or not)."""
    arg = dataset_file(dataset)         # the path the run will read (a table's field mapping split off)
    if arg is None and dataset.startswith("hf:"):   # a hub id, unless it names a folder where the job runs (ROOT)
        name = split_mapping(dataset, HF_OPTIONS)[0].split(":", 1)[0]
        arg = name if (ROOT / name).exists() else None
    if arg is None:
        return
    path = Path(arg).expanduser()
    path = os.path.realpath(path if path.is_absolute() else ROOT / path)
    dirs = dataset_dirs()
    if not any(Path(path).is_relative_to(os.path.realpath(d)) for d in dirs):
        raise StoplineError(f"a dataset file for a run started here must be inside {' or '.join(map(str, dirs))}",
                            field="dataset", hint=f"put the file there, or list its folder in {DATASET_DIRS_ENV}")


ALIVE = ("running", "queued", "stopping")      # the states of a job whose process has not ended


def check_limits(limit: int | None, max_new_tokens: int, where: Path | None = None) -> None:
    """Refuse a job past the caps (``limits()``), saying which and how to raise it."""
    cap = limits()
    if not limit or limit > cap["questions"]:
        raise StoplineError(f"a run started here may have at most {cap['questions']} questions"
                            + (f", not {limit}" if limit else " (name how many)"), field="questions",
                            hint=f"{LIMITS['questions'][0]} raises the cap; `python -m analysis run` has none")
    if max_new_tokens > cap["tokens"]:
        raise StoplineError(f"a run started here may generate at most {cap['tokens']} new tokens per question, "
                            f"not {max_new_tokens}", field="max new tokens",
                            hint=f"{LIMITS['tokens'][0]} raises the cap; `python -m analysis run` has none")
    alive = [j for j in list_jobs(where) if j["state"] in ALIVE]
    if len(alive) >= cap["jobs"] + cap["queued"]:
        raise StoplineError(f"{len(alive)} job(s) running or queued: at most {cap['jobs']} run at once and "
                            f"{cap['queued']} wait", hint=f"wait for one to end (their progress shows below), or "
                            f"raise {LIMITS['jobs'][0]} or {LIMITS['queued'][0]}")


# the run's own bar only (its unit is q: "3/8 [00:04<00:07, 1.4s/q]", maybe with a postfix: ", tok_s=638]");
# other bars (transformers' "Loading weights 272/272 [... it/s]") are not questions
_BAR = re.compile(r"(\d+)/(\d+) \[[^\]]*(?:q/s|s/q)(?:, [^\]]*)?\]")
_RAISED = re.compile(r"^(?:\w+\.)*(\w+(?:Error|Exception)): (.*)$")   # a traceback's last line
_RUN_ID = re.compile(r"^run (\S+?):")       # the summary's first words: the run the job wrote


def start_run(model: str, dataset: str, db: str, limit: int | None = None, every: int = 32,
              max_new_tokens: int = 512, batch_size: int = 8, device: str = "auto", seed: int = 42,
              where: Path | None = None, engine: dict | None = None) -> str:
    """Start ``python -m analysis run`` in the background. ``engine`` (optional): ``{"base_urls": [...],
    "tokenizer": ..., "concurrency": n, "api_key": ...}`` runs it through OpenAI-compatible servers (the key
    travels in the job's environment, never on its command line or in job.json)."""
    if engine is None:
        check_model(model)      # a folder that holds no model, a name that is none: said on the page, not in a log
    elif not engine.get("base_urls"):
        raise StoplineError("the openai engine needs a server URL (its /v1 address)",
                            hint="e.g. http://127.0.0.1:8000/v1 (python -m analysis vllm-server starts one)")
    check_dataset(dataset)
    check_limits(limit, max_new_tokens, where)
    cmd = [sys.executable, "-m", "analysis", "run", "--model", model, "--dataset", dataset, "--every", str(every),
           "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size), "--device", device,
           "--seed", str(seed), "--db", db]
    if limit:
        cmd += ["--limit", str(limit)]
    extra_env = {}
    if engine is not None:
        cmd += ["--engine", "openai", "--base-url", ",".join(engine["base_urls"]),
                "--tokenizer", engine.get("tokenizer") or model, "--concurrency", str(engine.get("concurrency", 8))]
        if engine.get("api_key"):
            extra_env["OPENAI_API_KEY"] = engine["api_key"]
    same = [j["id"] for j in list_jobs(where) if j["state"] in ALIVE and _identity(j.get("cmd") or []) == _identity(cmd)]
    if same:              # the same run twice at once: two processes writing the same questions
        raise StoplineError(f"the same run is already running or queued, as job {same[0]}",
                            hint="its progress shows below; stop it first to start it again")
    jid = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    d = Path(where or jobs_dir()) / jid
    d.mkdir(parents=True)
    log = open(d / "log", "wb")
    # its own session: a page rerun or Ctrl-C in the dashboard's terminal does not reach it; PARENT_ENV: it
    # ends when the dashboard does (core/lifeline.py)
    # STOPLINE_PROGRESS: the run's progress bar is written to the log although it is no terminal
    # SLOTS_ENV: it runs once it holds one of the STOPLINE_MAX_JOBS slots, queued until then
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "1", "STOPLINE_PROGRESS": "1",
           PARENT_ENV: str(os.getpid()), SLOTS_ENV: f"{Path(where or jobs_dir()).resolve() / 'slots'}|"
           f"{limits()['jobs']}", **extra_env}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    (d / "job.json").write_text(json.dumps({"id": jid, "cmd": cmd, "pid": proc.pid, "pid_start": _pid_start(proc.pid),
                                            "started": time.time(),
                                            "model": model, "dataset": dataset, "db": db,
                                            "engine": "openai" if engine else "transformers"}))
    return jid


# what a run's identity does not depend on: how many questions, how many at once, where the servers are
_NOT_IDENTITY = {"--limit", "--batch-size", "--base-url", "--concurrency", "--device"}


def _identity(cmd: list[str]) -> list[str]:
    """A job's command without the options that leave its run the same (the store's run id ignores them)."""
    out, skip = [], False
    for a in cmd:
        if skip:
            skip = False
        elif a in _NOT_IDENTITY:
            skip = True
        else:
            out.append(a)
    return out


def _alive(pid: int, start: int | None = None) -> bool:
    """Whether the job's process runs (``_running``), reaping it first when it is a finished child of this
    process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return _running(pid, start)


def status(jid: str, where: Path | None = None) -> dict:
    d = Path(where or jobs_dir()) / jid
    job = json.loads((d / "job.json").read_text())
    text = (d / "log").read_text(errors="replace") if (d / "log").exists() else ""
    done_n = total = None
    for m in _BAR.finditer(text):
        done_n, total = int(m.group(1)), int(m.group(2))
    alive = _alive(job["pid"], job.get("pid_start"))
    summary = None
    for line in reversed(text.strip().splitlines()):
        if line.startswith("run ") or line.startswith("{"):
            summary = line
            break
    err = None
    if not alive and "error:" in text:
        err = text[text.rindex("error:"):].strip()[:500]
    elif not alive and "Traceback (most recent call last)" in text:   # not our error: say what was raised
        raised = [m for line in text.splitlines() if (m := _RAISED.match(line.strip()))]
        err = (f"error: {raised[-1].group(1)}: {raised[-1].group(2)}" if raised
               else "error: the job stopped with a Python traceback")[:500] + " (the job's log has the traceback)"
    queued = alive and QUEUED in text and STARTED not in text
    state = "queued" if queued else "running" if alive else ("failed" if err or summary is None else "done")
    if (d / STOPPED).exists() and state != "done":     # asked to stop: what it finished is in the store
        state, err = ("stopping" if alive else "stopped"), None
    run_id = (m.group(1) if state == "done" and (m := _RUN_ID.match(summary or "")) else None)
    return {**job, "state": state, "done": done_n, "total": total, "summary": summary, "error": err,
            "run_id": run_id, "tail": text.replace("\r", "\n").strip().splitlines()[-1:] if text else []}


def stop(jid: str, where: Path | None = None, kill: bool = False) -> None:
    """Stop a running or queued job as Ctrl-C would (SIGINT to its process group: it keeps every question it
    committed, and a run started again resumes from them); ``kill`` (asked for once it is seen stopping):
    SIGKILL. A job whose process has ended, or whose pid now belongs to another process, is left alone."""
    import signal
    d = Path(where or jobs_dir()) / jid
    job = json.loads((d / "job.json").read_text())
    if not _alive(job["pid"], job.get("pid_start")):
        return
    (d / STOPPED).touch()
    try:
        os.killpg(job["pid"], signal.SIGKILL if kill else signal.SIGINT)     # its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def list_jobs(where: Path | None = None) -> list[dict]:
    d = Path(where or jobs_dir())
    if not d.exists():
        return []
    return [status(p.name, d) for p in sorted(d.iterdir(), reverse=True) if (p / "job.json").exists()]
