"""AppTest: The Frontier page (the one the dashboard opens on)."""
import pytest

from tests.helpers import open_app


def test_frontier_draws_every_family(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    assert not at.exception
    assert at.header[0].value == "Frontier"
    assert any("full-length EM" in c.value for c in at.caption)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) > 3


def test_frontier_reads_the_sweep_its_writer_kept(tmp_path, monkeypatch):
    """A run's writer keeps the default sweep in the store, so the first load sweeps nothing; a store without
    it is swept once and the sweep kept on disk."""
    import shutil
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    monkeypatch.setenv("STOPLINE_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "kept.duckdb"
    rid = write_synthetic_run(Store(db), 40, 6, seed=11)
    bare = tmp_path / "bare.duckdb"
    shutil.copy(db, bare)
    with Store(bare).transaction() as con:
        con.execute("DELETE FROM sweeps")
    at = open_app(str(db), rid)
    assert not at.exception and len(at.dataframe[0].value) > 3
    assert not (tmp_path / "cache").exists()
    at = open_app(str(bare), rid)
    assert not at.exception and len(at.dataframe[0].value) > 3
    assert len(list((tmp_path / "cache").glob("sweep-*.parquet"))) == 1


@pytest.fixture(scope="module")
def incumbent_db(tmp_path_factory):
    """A synthetic run with an incumbent stopping at 62% of each trace (a budget-like production stopper)."""
    from tests.helpers import budget_like_run
    from analysis.core.store import Store
    p = str(tmp_path_factory.mktemp("inc") / "inc.duckdb")
    return p, budget_like_run(Store(p), 200, 12, seed=7)


def test_frontier_and_compare_offer_your_mechanism(incumbent_db, synthetic_db):
    db, rid = incumbent_db
    at = open_app(db, rid)
    assert not at.exception and any(c.value.startswith("Your mechanism") for c in at.caption)
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert "your mechanism" in at.selectbox(key="cmp_A").options
    at.selectbox(key="cmp_A").set_value("your mechanism").run()
    assert not at.exception
    assert any("A = your mechanism" in c.value for c in at.caption)
    vals = {m.label: m.value for m in at.metric}
    from analysis.evaluate.incumbent import incumbent_outcome
    from analysis.replay.engine import RunTable
    from analysis.core.store import Store
    em = incumbent_outcome(RunTable.from_store(Store(db, read_only=True), rid)).em.mean()
    assert vals["EM: A → B"].startswith(f"{em:.3f} →")
    sdb, srid, _ = synthetic_db                       # a run without one is not offered it
    at = open_app(sdb, srid, "views/compare.py")
    assert not at.exception and "your mechanism" not in at.selectbox(key="cmp_A").options


def test_frontier_filters_by_probe_schedule(synthetic_db):
    """The schedule picker keeps one schedule's points (with the full-length point), draws the fronts again
    among them, and is kept in the link: a link with it opens on that schedule."""
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    radio = at.radio(key="schedule_pick")
    assert radio.options[:2] == ["all schedules", "every checkpoint"] and "every 2x" in radio.options
    everything = at.dataframe[0].value
    radio.set_value("probes every 2x").run()
    assert not at.exception and at.query_params["schedule"] == "probes every 2x"
    sparse = at.dataframe[0].value
    assert len(sparse) and set(sparse["schedule"]) == {"every 2x"}         # the table's probes column
    at.radio(key="schedule_pick").set_value("every checkpoint").run()
    dense = at.dataframe[0].value
    assert len(dense) and set(dense["schedule"]) == {"all"}
    # fewer points, fronts drawn again: every dense setting on the whole front stays on the dense-only front
    assert set(everything.label[everything.schedule == "all"]) <= set(dense.label)
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT
    link = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    link.query_params.update({"db": db, "run": rid, "schedule": "probes every 2x"})
    link.run()
    assert not link.exception and link.radio(key="schedule_pick").value == "probes every 2x"
    assert set(link.dataframe[0].value["schedule"]) == {"every 2x"}


def test_on_schedules_names_an_unknown_schedule(synthetic_db):
    from analysis.core.errors import StoplineError
    from analysis.core.store import Store
    from analysis.evaluate.frontier import on_schedules, schedules_of, sweep
    from analysis.replay.engine import RunTable
    db, rid, _ = synthetic_db
    pts = sweep(RunTable.from_store(Store(db, read_only=True), rid), ["budget", "consistency"])
    assert schedules_of(pts) == ["every checkpoint", "probes every 2x", "probes every 4x"]
    two = on_schedules(pts, ["probes every 2x"])
    assert set(two.schedule) == {"probes every 2x", ""} and two["pareto"].any() and two["hull_computed"].any()
    with pytest.raises(StoplineError, match="every 16x"):
        on_schedules(pts, ["probes every 16x"])


def test_the_cost_axis_and_the_other_runs_are_kept_in_the_link(synthetic_db):
    """Every pick lives in the URL: the cost axis (`cost`) and the runs drawn beside (`also`); a link with them
    opens on them, and emptying the runs empties them in the link."""
    db, rid, other = synthetic_db
    at = open_app(db, rid)
    at.radio(key="axis").set_value("computed").run()
    at.multiselect(key="other_runs").select(other).run()
    assert not at.exception
    assert at.query_params["cost"] == "computed" and at.query_params["also"] == other
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT
    link = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    link.query_params.update({"db": db, "run": rid, "cost": "computed", "also": other})
    link.run()
    assert not link.exception and link.radio(key="axis").value == "computed"
    assert link.multiselect(key="other_runs").value == [other]
    link.multiselect(key="other_runs").unselect(other).run()
    assert not link.exception and link.query_params["also"] == ""


def test_the_frontier_sweeps_the_tune_half_for_an_out_of_sample_check(synthetic_db):
    """"The tune half" sweeps that half alone (its full-length row is the half's, as `optimize` reads it), the
    pick lives in the link (`fit=tune`), and Compare then checks on the held-out half by default."""
    from analysis.evaluate.frontier import sweep
    from analysis.evaluate.optimize import split_of
    from analysis.core.store import Store
    from analysis.replay.engine import RunTable
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    at.switch_page("views/compare.py").run()             # Compare seen first, on all questions
    assert at.radio(key="cmp_on").value == "all questions"
    at.switch_page("views/frontier.py").run()
    at.radio(key="fit_on").set_value("the tune half").run()
    assert not at.exception and at.query_params["fit"] == "tune"
    t = RunTable.from_store(Store(db, read_only=True), rid)
    half = split_of(t, "tune")
    em = sweep(half, ["budget"]).query("family == 'full'").iloc[0].em
    assert 0 < half.n < t.n and f"{em:.3f}" != f"{t.full_em.mean():.3f}"      # the half's own figure
    assert any(f"the tune half of its {t.n} questions" in c.value and f"full-length EM {em:.3f}" in c.value
               for c in at.caption)
    assert len(at.dataframe[0].value) > 3
    at.switch_page("views/compare.py").run()
    assert not at.exception and at.radio(key="cmp_on").value == "the held-out half"
    assert any("is partly in-sample here" in c.value for c in at.caption)   # no point picked there
    at.switch_page("views/frontier.py").run()
    at.radio(key="fit_on").set_value("all questions").run()
    at.switch_page("views/questions.py").run()
    assert not at.exception and at.radio(key="q_on").value == "all questions"
