"""The bundled demo store: schema, runs, counts, EM bounds, read-only, and a budget frontier that rises."""
from pathlib import Path

import pytest

from analysis.core.errors import StoplineError
from tests.helpers import ROOT
from analysis.evaluate.frontier import sweep
from analysis.replay.engine import RunTable
from analysis.core.store import DEMO_DB, SCHEMA_VERSION


def test_schema_runs_and_counts(demo):
    assert demo.schema_version() == SCHEMA_VERSION
    runs = demo.runs()
    assert {r["model"] for r in runs} >= {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"}
    from analysis.ingest.demo import SPEC
    assert {(r["model"], r["dataset"]) for r in runs} <= set(SPEC["runs"]), "only runs of the pinned spec ship"
    datasets = {}
    for r in runs:
        assert r["source"] == "generated" and r["status"] == "complete"
        assert r["n_questions"] >= 200 and r["n_checkpoints"] >= 2 * r["n_questions"]
        assert r["config"]["gen"]["every"] == SPEC["gen"]["every"] and r["config"]["dataset"]["seed"] == SPEC["seed"]
        datasets.setdefault(r["dataset"], set()).add(r["model"])
        assert 0.0 <= r["em_full"] <= 1.0
        assert all(demo.signals_present(r["id"]).values())
    assert any(0.25 <= r["em_full"] <= 0.85 for r in runs), "a run where the trade-off is visible"
    two_models = [d for d, m in datasets.items() if len(m) >= 2]
    assert len(two_models) >= 2, "2 models x 2 datasets"
    assert "rg:gsm_symbolic" in two_models
    attr = demo.attributions()
    assert all("reasoning-gym" in attr[d] and "Apache-2.0" in attr[d] for d in datasets)
    assert Path(DEMO_DB).stat().st_size < 20 * 2**20


def test_every_demo_run_keeps_a_sweep(demo):
    """The rebuild keeps each run's sweep in the store (keyed to the code of its day: a later change to the
    replay makes it a miss, never a wrong answer; `demo --refresh-sweeps` re-keys it)."""
    with demo.connect() as con:
        kept = {r for (r,) in con.execute("SELECT DISTINCT run_id FROM sweeps").fetchall()}
    assert kept == {r["id"] for r in demo.runs()}


def test_the_kept_sweeps_match_the_current_code(demo):
    """A newcomer's first load reads the kept sweep; one keyed to older replay, front or policy code is
    skipped and the sweep recomputed (slower, never wrong). This test says when to re-key them."""
    from analysis.evaluate.frontier import default_families, stored_sweep
    stale = [r["id"] for r in demo.runs() if stored_sweep(demo, r, default_families(r["n_checkpoints"])) is None]
    assert not stale, (f"the demo store's kept sweeps of {stale} are keyed to older code: run "
                       "`python -m analysis demo --refresh-sweeps` and commit data/demo.duckdb")


def test_demo_store_is_read_only(demo):
    with pytest.raises(StoplineError, match="read-only"):
        demo.save_preset("x", {})


def test_budget_frontier_rises_with_the_budget(demo):
    run = max(demo.runs(), key=lambda r: r["em_full"])
    t = RunTable.from_store(demo, run["id"])
    b = sweep(t, ["budget"]).query("family == 'budget'").sort_values("emitted")
    assert b.em.iloc[-1] > b.em.iloc[0]
    assert b.em.iloc[-1] == pytest.approx(run["em_full"])


def test_bundled_serve_demo_log_opens_against_the_demo_store():
    """The Monitor page's sample: a real serve-demo log (Qwen2.5-Coder-0.5B under the controller)."""
    from analysis.production.monitor import monitor_inputs
    from analysis.production.monitor import monitor
    log = ROOT / "data" / "demo-logs" / "serve-demo.jsonl"
    t, preset = monitor_inputs([log])
    res = monitor([log], t, preset, [log.with_suffix(".labels.jsonl")])
    assert res["n_requests"] == 40 and res["labelled"] == 40 and res["promised"]["n"] == t.n
    assert res["arms"]["explore"] > 0 and res["proposal"] is not None


def test_the_demo_run_carries_an_example_of_your_mechanism(demo):
    """The default run's example incumbent (SPEC['incumbent']): it saves tokens and loses EM, like the user's
    production stopper, and a setting on the held-out half does better."""
    from analysis.ingest.demo import SPEC
    from analysis.evaluate.incumbent import beat, incumbent_outcome
    from analysis.replay.engine import RunTable, replay
    default = demo.run(demo.default_run())
    assert default["n_incumbent"] == default["n_questions"]
    t = RunTable.from_store(demo, default["id"])
    mine = incumbent_outcome(t)
    assert list(mine.stop_pos) == list(replay(t, SPEC["incumbent"]).stop_pos)
    s = mine.summary()
    assert s["savings_emitted"] > 0.3 and s["delta_em"] < -0.1
    res = beat(t)
    assert res is not None


def test_demo_checkpoints_know_where_they_cut_the_text_where_that_is_provable(demo):
    """`demo --refresh-sweeps` fills checkpoints.char_pos from the traces re-tokenised by the packaged SmolLM2's
    tokenizer, for the questions whose re-tokenisation places exactly the stored checkpoints (most); the
    Qwen runs keep NULL (their tokenizer is not converted here), so the Questions page cuts in proportion."""
    with demo.connect() as con:
        rows = con.execute("""SELECT r.model, COUNT(DISTINCT c.question_id) FILTER (WHERE c.char_pos IS NOT NULL),
                                     COUNT(DISTINCT c.question_id)
                              FROM checkpoints c JOIN runs r USING (run_id) GROUP BY r.model""").fetchall()
        bad = con.execute("""SELECT COUNT(*) FROM checkpoints c JOIN traces t USING (run_id, question_id)
                             WHERE c.char_pos IS NOT NULL AND (c.char_pos > length(t.text) OR
                                   (c.kind = 'final' AND c.char_pos <> length(t.text)))""").fetchone()[0]
    got = {m: (k, n) for m, k, n in rows}
    k, n = got["smollm2-135m-instruct"]
    assert k >= 0.8 * n
    assert bad == 0
