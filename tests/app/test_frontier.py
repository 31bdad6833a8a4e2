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
