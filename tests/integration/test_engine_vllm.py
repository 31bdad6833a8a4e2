"""The openai engine against a real vLLM server (vLLM's CPU build from PyPI, in .ci/vllm-venv): a run's traces,
checkpoints, trial answers and signals; probes equal from-scratch completions; a killed run resumes; two
replicas, one of which dies mid-run; and bad input (an unreachable URL, a wrong model name, a tokenizer that
does not match, a server that will not give the log-probabilities asked for) refused before anything is written.

The server is started here (minutes on a fresh machine: the environment is installed if missing), or given by
``$STOPLINE_VLLM_URL``. These tests fail, not skip, when it cannot be started."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from analysis.core.aio import run_sync
from analysis.backend import vllm_local
from analysis.backend.engine_openai import PROBE_STOPS, OpenAIEngine
from analysis.backend.models import load_tokenizer
from analysis.backend.prompts import GenConfig, build_prompt
from analysis.core.errors import StoplineError
from analysis.core.store import Store
from analysis.ingest.pipeline import run_openai
from tests.helpers import ROOT
from tests.integration.conftest import MODEL, free_port, start_server

pytestmark = pytest.mark.vllm
DATASET = "rg:basic_arithmetic"



@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    """A second replica that lists only 5 log-probabilities per token (``--max-logprobs 5``): it refuses the
    engine's default 20, and serves a run that asks for 5 until the test kills it."""
    proc, url = start_server(tmp_path_factory.mktemp("vllm2"), ["--max-logprobs", "5"])
    yield proc, url
    vllm_local.stop(proc)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


def runs(db) -> list:
    return Store(db, read_only=True).runs() if Path(db).exists() else []


def check_complete(db: Path, run_id: str, n: int):
    """Every question exactly once, each with its checkpoints once, trial answers and signals stored."""
    import duckdb
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT question_id) FROM traces WHERE run_id = ?",
                           [run_id]).fetchone() == (n, n)
        dup = con.execute("SELECT question_id, ck_idx, count(*) FROM checkpoints WHERE run_id = ? GROUP BY 1, 2 "
                          "HAVING count(*) > 1", [run_id]).fetchall()
        assert dup == []
        rows = con.execute("SELECT kind, answer_raw, p_mean, p_geo, p_min, p_first, entropy, pos, probe_tokens "
                           "FROM checkpoints WHERE run_id = ?", [run_id]).fetchall()
        texts = con.execute("SELECT text, n_tokens FROM traces WHERE run_id = ?", [run_id]).fetchall()
    finally:
        con.close()
    assert all(t and k > 0 for t, k in texts)
    kinds = {r[0] for r in rows}
    assert {"interval", "final"} <= kinds
    assert all(r[6] is not None and r[6] >= 0 for r in rows)            # entropy after the cue: every probe
    answered = [r for r in rows if r[1]]
    assert len(answered) >= 0.8 * len(rows)
    assert all(None not in r[2:6] and 0 < r[4] <= r[2] <= 1 for r in answered if r[0] != "final")
    assert all(r[8] > 0 for r in rows)
    return rows


def test_a_run_through_vllm_stores_traces_checkpoints_answers_and_signals(server, tmp_path):
    db = tmp_path / "s.duckdb"
    cfg = GenConfig(every=32, max_new_tokens=160)
    res = run_openai(Store(db), [server], MODEL, MODEL, DATASET, limit=6, cfg=cfg, concurrency=3,
                     show_progress=False)
    assert res["n_questions"] == 6 and res["generated_now"] == 6
    check_complete(db, res["run_id"], 6)
    run = Store(db, read_only=True).run(res["run_id"])
    eng = run["config"]["engine"]
    assert eng["name"] == "openai" and eng["server"] == "vllm" and eng["server_version"] == "0.32.0"
    ex = run["config"]["execution"]
    assert ex["token_ids"] == "server" and ex["probes"] > 6 and ex["block_size"] == 32
    assert ex["probe_cached_tokens"] > 0 and 0 < ex["cacheable_share"] <= 1
    # resuming finds the run (the URL is not part of its identity): nothing is generated again
    again = run_openai(Store(db), [server.rstrip("/") + "/"], MODEL, MODEL, DATASET, limit=6, cfg=cfg,
                       show_progress=False)
    assert again["run_id"] == res["run_id"] and not again["created"] and again["generated_now"] == 0


def test_a_probe_answers_as_a_from_scratch_greedy_completion_of_its_prefix(server, tok):
    tk, kind, eos = tok
    cfg = GenConfig(every=16, max_new_tokens=96).resolved("number", kind)
    qs = ["What is 17 + 25?", "Calculate 9 * -8.", "Compute 3 - 11 + 5."]
    prompts = [tk(build_prompt(tk, q, cfg), add_special_tokens=False)["input_ids"] for q in qs]
    cue = tk(cfg.cue, add_special_tokens=False)["input_ids"]

    async def go():
        async with OpenAIEngine([server], MODEL, tk, eos=eos, concurrency=3) as eng:
            await eng.check()
            res = await asyncio.gather(*(eng.question(p, cfg) for p in prompts))
            pairs = []
            for p, r in zip(prompts, res):
                for ck in r.checkpoints:
                    out = await eng._post(eng.replicas[0], "/completions", {
                        "model": MODEL, "prompt": p + r.token_ids[:ck["pos"]] + cue, "max_tokens": 20,
                        "temperature": 0, "stop": PROBE_STOPS, "return_token_ids": True})
                    pairs.append(([t for t in out["choices"][0]["token_ids"] if t not in eos], ck["probe"].tokens))
            return pairs
    pairs = run_sync(go())
    assert len(pairs) >= 6
    assert [a for a, _ in pairs] == [b for _, b in pairs]


def test_a_trial_answer_with_braces_inside_its_box_is_the_greedy_answer_up_to_the_box_closing(server, tok):
    """The server stops at each closing brace; an answer whose brace closed one inside it (2\\sqrt{2}) goes on
    until the cue's box closes: its tokens are a from-scratch greedy completion's, up to that point."""
    tk, kind, eos = tok
    cfg = GenConfig(every=32).resolved("math", kind)
    ids = tk(build_prompt(tk, "Simplify sqrt(8).", cfg) + "sqrt(8) = 2\\sqrt{2}. The answer is 2\\sqrt{2}.",
             add_special_tokens=False)["input_ids"]
    cue = tk(cfg.cue, add_special_tokens=False)["input_ids"]

    async def go():
        async with OpenAIEngine([server], MODEL, tk, eos=eos) as eng:
            await eng.check()
            pr = await eng.probe_on(ids, cue, cfg)
            whole = await eng._post(eng.replicas[0], "/completions", {
                "model": MODEL, "prompt": ids + cue, "max_tokens": 20, "temperature": 0, "stop": ["\n"],
                "return_token_ids": True})
        async with OpenAIEngine([server], MODEL, tk, eos=eos, token_ids=False) as eng:     # as SGLang, llama.cpp
            text_only = await eng.probe_on(ids, cue, cfg)
        return pr, whole["choices"][0]["token_ids"], text_only
    pr, whole, text_only = run_sync(go())
    assert pr.raw == "2\\sqrt{2}"
    assert pr.tokens == whole[:len(pr.tokens)]                 # the greedy answer, cut where the box closed
    assert tk.decode(pr.tokens).count("}") == 2                # past the brace inside the box, to the box's own
    # a server that returns text only leaves the brace it stopped at out of it: the reply's stop_reason puts it
    # back (before, such an answer ended at the inner brace: "2\\sqrt{2")
    assert text_only.raw == pr.raw and tk.decode(text_only.tokens) == tk.decode(pr.tokens)


def test_a_server_that_returns_no_token_ids_has_its_traces_retokenised_and_says_so(server, tok):
    tk, kind, eos = tok
    cfg = GenConfig(every=16, max_new_tokens=64).resolved("number", kind)
    p = tk(build_prompt(tk, "What is 17 + 25?", cfg), add_special_tokens=False)["input_ids"]

    async def go(token_ids):
        async with OpenAIEngine([server], MODEL, tk, eos=eos, token_ids=token_ids) as eng:
            await eng.check()
            return await eng.question(p, cfg), eng.stats.ids_from
    (with_ids, src1), (without, src2) = run_sync(go(True)), run_sync(go(False))
    assert (src1, src2) == ("server", "tokenizer")
    assert tk.decode(without.token_ids) == tk.decode(with_ids.token_ids)      # the same text, greedy
    assert [c["pos"] for c in without.checkpoints] and without.checkpoints[-1]["kind"] == "final"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_run_resumes_with_every_question_once(server, tmp_path, sig):
    """Killed (SIGKILL) or interrupted (Ctrl-C, SIGINT), a run keeps what it committed and the same command resumes
    it. An interrupted session records its figures too, and the resumed run's execution info adds them up: before,
    it held the last session's alone (tokens generated 348 where the run held 593).

    The kill lands as soon as the run's progress bar (on stderr, STOPLINE_PROGRESS) counts two committed
    questions: the bar is updated right after each commit. Watching the store instead (a look waits while the
    run writes, here 0.2-0.8 s a look) twice saw fewer than two on CI until the run had committed all it had,
    and the kill landed on a finished run (`assert 16 < 16`, and with eight questions `8 < 8`)."""
    N = 16
    db = tmp_path / "k.duckdb"
    cmd = [sys.executable, "-m", "analysis", "run", "--engine", "openai", "--base-url", server, "--model", MODEL,
           "--tokenizer", MODEL, "--dataset", DATASET, "--limit", str(N), "--max-new-tokens", "128", "--concurrency", "2",
           "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "STOPLINE_PROGRESS": "1"})
    seen, err = [0], bytearray()

    def read_bar():                            # tqdm redraws its line with \r: "... | 3/16 [00:09<...]"
        while chunk := proc.stderr.read1(4096):
            err.extend(chunk)
            counts = re.findall(rb"\| *(\d+)/%d \[" % N, bytes(err[-4096:]))
            if counts:
                seen[0] = max(seen[0], int(counts[-1]))
    reader = threading.Thread(target=read_bar, daemon=True)
    reader.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600 and proc.poll() is None and seen[0] < 2:
        time.sleep(0.05)
    assert proc.poll() is None, err.decode(errors="replace")[-2000:]
    assert 2 <= seen[0] < N
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    cmd.append("--json")
    kept = runs(db)[0]["n_questions"]          # what was committed before the kill
    assert 2 <= kept < N
    first = runs(db)[0]["config"].get("execution") or {}
    status_after_stop = runs(db)[0]["status"]         # interrupted (Ctrl-C); a SIGKILL leaves it running
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)   # the same command
    assert again.returncode == 0, again.stderr[-2000:]
    res = json.loads(again.stdout.strip().splitlines()[-1])
    assert not res["created"] and res["generated_now"] == N - kept
    check_complete(db, res["run_id"], N)
    ex = runs(db)[0]["config"]["execution"]
    with Store(db, read_only=True).connect() as con:
        stored = con.execute("SELECT sum(n_tokens) FROM traces").fetchone()[0]
    if sig == signal.SIGINT:                   # both sessions counted: at least every stored token
        assert first["sessions"] == 1 and first["gen_tokens"] > 0, first
        assert status_after_stop == "interrupted" and runs(db)[0]["status"] == "complete"
        assert ex["sessions"] == 2 and ex["gen_tokens"] >= stored, (ex, stored)
        assert ex["gen_tokens"] > first["gen_tokens"] and ex["probes"] > first["probes"] and ex["seconds"] > first["seconds"]
    else:                                      # a SIGKILL leaves no figures: the resumed session's alone
        assert "gen_tokens" not in first and ex["sessions"] == 1 and 0 < ex["gen_tokens"] < stored, (ex, stored)


def test_an_imported_run_is_reprobed_through_the_server(server, tmp_path, tok):
    """Text-only traces (an import) get trial answers and signals from the server, the final answers stay the
    trace's own, and asking again finds the same run."""
    from analysis.ingest.importer import ImportSpec, import_generations
    from analysis.ingest.reprobe import reprobe_openai
    from analysis.replay.engine import RunTable
    st = Store(tmp_path / "p.duckdb")
    imp = import_generations(st, ImportSpec(path=str(ROOT / "tests" / "fixtures" / "solutions.jsonl"), model="hand",
                                            dataset="hand-gsm", response_field="outputs.solution"),
                             show_progress=False)
    res = reprobe_openai(st, imp["run_id"], [server], MODEL, MODEL, every=8, concurrency=4, show_progress=False)
    assert res["n_questions"] == 32 and res["em_full"] == imp["em_full"]
    t = RunTable.from_store(st, res["run_id"])
    assert t.has_signal("p_mean") and t.has_signal("entropy")
    run = st.run(res["run_id"])
    assert run["config"]["engine"]["name"] == "openai" and run["config"]["execution"]["probes"] >= 32
    again = reprobe_openai(st, imp["run_id"], [server], MODEL, MODEL, every=8, show_progress=False)
    assert again["run_id"] == res["run_id"] and not again["created"]


def test_the_runs_page_starts_a_run_through_the_server_and_shows_its_figures(server, tmp_path, monkeypatch):
    """The Runs page's engine choice: a background run through the server, its engine figures on the page."""
    from tests.helpers import open_app, the_job_when_it_ends
    mine = tmp_path / "mine.duckdb"
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    monkeypatch.setenv("STOPLINE_JOBS_DIR", str(tmp_path / "jobs"))
    at = open_app(None, None, "views/runs.py")
    at.radio(key="run_engine").set_value("A server (OpenAI-compatible: vLLM, SGLang, …)").run()
    at.text_input(key="run_url").input(server)
    at.text_input(key="run_served").input(MODEL)
    at.text_input(key="run_tokenizer").input(MODEL)
    at.number_input(key="run_limit").set_value(3)
    at.number_input(key="run_max_new").set_value(64)
    at.button[0].click().run()
    assert not at.exception and "Started job" in at.success[0].value
    job = the_job_when_it_ends(600)
    assert job["state"] == "done", job
    (run,) = Store(mine, read_only=True).runs()
    assert run["n_questions"] == 3 and run["config"]["engine"]["name"] == "openai"
    at = open_app(str(mine), run["id"], "views/runs.py")
    assert not at.exception
    figures = at.dataframe[1].value
    assert figures["server"][0] == "vllm 0.32.0" and figures["probes"][0] >= 3
    assert figures["probe prefix-cache hits"][0].endswith("%") and figures["probes past the context"][0] == 0


def test_bad_input_gets_one_clear_message_and_writes_no_run(server, second_server, tmp_path):
    _, url2 = second_server
    db = tmp_path / "bad.duckdb"
    tiny = tmp_path / "tiny-tok"
    from analysis.backend.tiny import build_tokenizer
    build_tokenizer().save_pretrained(tiny)
    cases = [
        (dict(base_urls=[f"http://127.0.0.1:{free_port()}/v1"], model=MODEL, tokenizer=MODEL), "cannot connect"),
        (dict(base_urls=[server], model="no-such-model", tokenizer=MODEL), "does not serve a model named 'no-such-model'"),
        (dict(base_urls=[server], model=MODEL, tokenizer=str(tiny)), "tokenizer does not match"),
        (dict(base_urls=[url2], model=MODEL, tokenizer=MODEL), "does not return 20 log-probabilities"),
    ]
    for kw, msg in cases:
        with pytest.raises(StoplineError, match=msg):
            run_openai(Store(db), dataset_id=DATASET, limit=2, show_progress=False, **kw)
        assert runs(db) == []


def test_two_replicas_one_dies_mid_run_and_its_questions_finish_on_the_other(server, second_server, tmp_path):
    proc, url2 = second_server
    db = tmp_path / "r.duckdb"
    out: dict = {}

    def work():
        try:
            out["res"] = run_openai(Store(db), [server, url2], MODEL, MODEL, DATASET, limit=8,
                                    cfg=GenConfig(max_new_tokens=160), concurrency=4, top_k=5, show_progress=False,
                                    retry_base_s=0.2)
        except BaseException as e:         # noqa: BLE001 (reported by the assertion below)
            out["error"] = e

    th = threading.Thread(target=work)
    th.start()
    root2 = url2.removesuffix("/v1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300 and th.is_alive():
        try:
            m = httpx.get(root2 + "/metrics", timeout=5).text
        except httpx.HTTPError:
            m = ""
        running = [float(l.rsplit(" ", 1)[1]) for l in m.splitlines() if l.startswith("vllm:num_requests_running")]
        if running and running[0] > 0:
            break
        time.sleep(0.2)
    vllm_local.kill(proc)                 # as a crash would: its streams break mid-question
    th.join(900)
    assert "error" not in out, out.get("error")
    res = out["res"]
    ex = res["execution"]
    assert ex["retries"] >= 1 and ex["replica_failures"].get(url2, 0) >= 1, ex
    check_complete(db, res["run_id"], 8)
