"""The command line: --help everywhere, runs --json, show-run, eval, sweep, and errors without tracebacks."""
import json
import subprocess
import sys

import pytest

from analysis.cli.main import COMMANDS, build_parser
from tests.helpers import FIXTURES, ROOT


def test_help_on_every_command(cli):
    build_parser()
    assert {"datasets", "import", "runs", "show-run", "eval", "sweep", "families", "optimize"} <= set(COMMANDS)
    for name in COMMANDS:
        code, out, _ = cli(name, "--help")
        assert code == 0 and "usage:" in out


def test_help_shows_the_defaults(cli):
    """run --help did not say --every 32, --max-new-tokens 512, --batch-size 8, --seed 42 or what --limit
    defaults to. Every command's help now shows an option's default (none for options without one)."""
    import re
    code, out, _ = cli("run", "--help")
    text = re.sub(r"\s+", " ", out)
    for option, default in (("--every EVERY", "32"), ("--max-new-tokens MAX_NEW_TOKENS", "512"),
                            ("--batch-size BATCH_SIZE", "8"), ("--seed SEED", "42"), ("--limit LIMIT", "all"),
                            ("--device {auto,cpu,cuda}", "auto"), ("--probes {batched,immediate}", "batched")):
        assert re.search(re.escape(option) + r" (?:(?! --).)*?\(default: " + re.escape(default), text), option
    help_of = {name: re.sub(r"\s+", " ", cli(name, "--help")[1]) for name in COMMANDS}
    assert "(default: 32)" in help_of["probe"] and "(default: 20)" in help_of["probe"]
    assert "(default: 8000)" in help_of["vllm-server"] and "(default: smollm2-135m-instruct)" in help_of["vllm-server"]
    for name, text in help_of.items():
        assert not re.search(r"\(default: (None|False|\[\])\)", text), name


def test_module_and_console_entry_point():
    r = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "COMMAND" in r.stdout


def test_import_runs_show_eval_sweep(cli, tmp_path):
    db = tmp_path / "s.duckdb"
    code, out, err = cli("import", FIXTURES / "solutions.jsonl", "--response-field", "outputs.solution",
                         "--model", "hand", "--dataset", "hand-gsm", "--db", db)
    assert code == 0, err
    code, out, _ = cli("runs", "--json", "--db", db)
    (run,) = [json.loads(line) for line in out.splitlines()]
    assert {"id", "model", "dataset", "n_questions", "n_checkpoints", "em_full"} <= set(run)
    assert run["em_full"] == pytest.approx(0.75) and run["n_questions"] == 32
    code, out, _ = cli("show-run", run["id"], "--db", db)
    assert code == 0 and "none (text-derived checkpoints)" in out
    preset = json.dumps({"stopline_preset": 1, "name": "k2", "setting": {"family": "consistency", "params": {"k": 2}}})
    code, out, _ = cli("eval", "--run", run["id"], "--preset", preset, "--json", "--db", db)
    res = json.loads(out)
    from analysis.presets.schema import loads                  # the Presets page's shareable link, a full URL
    url = f"http://127.0.0.1:8611/tune?db=mine&run={run['id']}&s={loads(preset).to_url()}"
    code, out_url, err = cli("eval", "--run", run["id"], "--preset", url, "--json", "--db", db)
    assert code == 0, err
    assert json.loads(out_url)["em"] == res["em"] and json.loads(out_url)["preset"]["name"] == "k2"
    code, _, err = cli("eval", "--run", run["id"], "--preset", "http://127.0.0.1:8611/tune?run=x", "--db", db)
    assert code == 2 and "has no setting in it" in err and "Traceback" not in err
    assert {"em", "em_full", "delta_em", "ci", "tokens_emitted", "tokens_computed", "savings_emitted", "lost",
            "gained", "mcnemar"} <= set(res)
    code, out, _ = cli("sweep", "--run", run["id"], "--json", "--db", db)
    pts = [json.loads(line) for line in out.splitlines()]
    assert any(p["pareto"] for p in pts) and any(p["hull"] for p in pts) and {p["family"] for p in pts} >= {"budget"}


@pytest.mark.parametrize("args,match", [
    (["runs", "--db", "/nonexistent/x.duckdb"], "store not found"),
    (["datasets", "bogus:thing"], "unknown dataset prefix"),
    (["import", "/nonexistent.jsonl", "--model", "m", "--dataset", "d"], "file not found"),
])
def test_errors_are_messages_not_tracebacks(cli, args, match):
    code, out, err = cli(*args)
    assert code == 2 and match in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["rescore", "--all"], ["probe", "--run", "abc", "--model", "smollm2-135m-instruct"]])
def test_commands_on_stored_runs_make_no_store(cli, tmp_path, args):
    """rescore and probe work on runs already stored: a missing store made an empty one (rescore: and said
    nothing)."""
    code, _, err = cli(*args, "--db", tmp_path / "new" / "s.duckdb")
    assert code == 2 and "store not found" in err and not (tmp_path / "new").exists()


def test_job_progress_reads_the_runs_own_bar_not_the_weights_loading_bar(tmp_path):
    """A 2-question run showed "272 of 272 questions": the progress read transformers' "Loading weights" bar."""
    import json
    import os
    from analysis.production import jobs
    d = tmp_path / "j1"
    d.mkdir()
    (d / "job.json").write_text(json.dumps({"id": "j1", "cmd": [], "pid": os.getpid(), "started": 0,
                                            "model": "m", "dataset": "rg:x", "db": "x"}))
    (d / "log").write_text("Loading weights: 100%|██████████| 272/272 [00:00<00:00, 2875.31it/s]\n"
                           "m on rg:x:   0%|          | 0/2 [00:00<?, ?q/s]\r"
                           "m on rg:x:  50%|█████     | 1/2 [00:03<00:03, 3.12s/q]\r")
    j = jobs.status("j1", tmp_path)
    assert (j["done"], j["total"]) == (1, 2)
    (d / "log").write_text("Loading weights: 100%|██████████| 272/272 [00:00<00:00, 2875.31it/s]\n")
    assert jobs.status("j1", tmp_path)["total"] is None


def test_a_jobs_run_writes_its_progress_bar_to_the_log(monkeypatch):
    """A job's log is no terminal: without $STOPLINE_PROGRESS (which jobs set) its run's bar was switched off."""
    from analysis.core.progress import progress
    monkeypatch.delenv("STOPLINE_PROGRESS", raising=False)
    assert progress(total=2, unit="q", file=open("/dev/null", "w")).disable
    monkeypatch.setenv("STOPLINE_PROGRESS", "1")
    assert not progress(total=2, unit="q", file=open("/dev/null", "w")).disable


def test_read_commands_fall_back_to_the_demo_store_saying_so(cli, tmp_path, monkeypatch):
    """On a fresh install `runs` said "store not found" and `optimize --run <a demo run>` "no run"."""
    from analysis.core.store import DEMO_DB
    monkeypatch.setenv("STOPLINE_DB", str(tmp_path / "not-yet.duckdb"))
    code, out, err = cli("runs")
    assert code == 0 and "c7a2483a9092" in out and "reading the demo store" in err and DEMO_DB in err
    code, out, err = cli("optimize", "--run", "c7a2483a9092", "--budget", "100")
    assert code == 0 and "test (held out)" in out and "reading the demo store" in err
    code, out, err = cli("runs", "--db", str(tmp_path / "named.duckdb"))      # a store named: no fallback
    assert code != 0 and "demo" not in err
    assert not (tmp_path / "not-yet.duckdb").exists()


def test_a_store_with_presets_alone_reads_the_demo_and_a_preset_is_named_as_saved(cli, tmp_path, monkeypatch):
    """The dashboard makes the user's store on the first saved preset and still shows the demo until it has
    runs; the commands read the demo then too (they said "no run" once the store existed), say so once (it
    came twice from eval), and take a preset by the name it was saved under on the Presets page (only a
    file, JSON or a link was read)."""
    from analysis.core.store import Store
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    mine = tmp_path / "mine.duckdb"
    Store(mine).save_preset("tuned", {**from_setting(Setting.make("budget", B=64)).to_dict(), "name": "tuned"})
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    code, out, err = cli("eval", "--run", "c7a2483a9092", "--preset", "tuned")
    assert code == 0 and out.startswith("tuned on run c7a2483a9092"), err
    assert err.count("has no runs yet; reading the demo store") == 1, err
    code, out, err = cli("eval", "--run", "c7a2483a9092", "--preset", "untuned")
    assert code != 0 and "no preset saved by that name in" in err and "(saved: tuned)" in err, err
    code, out, err = cli("report", "--run", "c7a2483a9092", "--preset", "tuned", "--no-images",
                         "--out", tmp_path / "r")
    assert code == 0 and "| tuned |" in (tmp_path / "r" / "report.md").read_text(), err
