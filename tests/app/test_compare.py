"""AppTest: The Compare page: two presets on the same questions."""
import pytest

from tests.helpers import open_app


def opened(db: str, rid: str, **link):
    """The Compare page opened from a link (a fresh session: a reload, or the link pasted)."""
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT, offer_store
    offer_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update({"db": db, "run": rid, **link})
    return at.switch_page("views/compare.py").run()


def test_compare_page_pairs_two_presets_with_slices(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/compare.py")
    assert not at.exception
    vals = {m.label: m.value for m in at.metric}
    assert "McNemar p" in vals and "→" in vals["EM: A → B"]
    assert at.selectbox(key="cmp_slice").value == "meta.difficulty"
    assert len(at.dataframe) == 2 and len(at.dataframe[1].value) == 3      # the 3 difficulty slices
    at.selectbox(key="cmp_B").set_value("a link or JSON…").run()
    at.text_input(key="cmp_B_text").input("sl1.garbage").run()
    assert not at.exception and "cannot be read" in at.error[0].value
    from analysis.presets.schema import from_setting               # the Presets page's shareable link, whole
    from analysis.replay.policies import Setting
    code = from_setting(Setting.make("budget", B=256), "b256").to_url()
    at.text_input(key="cmp_B_text").input(f"http://127.0.0.1:8611/tune?db=demo&run={rid}&s={code}").run()
    assert not at.exception and not at.error and "b256" in " ".join(c.value for c in at.caption)
    at.text_input(key="cmp_B_text").input(f"http://127.0.0.1:8611/tune?run={rid}").run()
    assert "has no setting in it" in at.error[0].value


@pytest.fixture(scope="module")
def with_incumbent(tmp_path_factory):
    """A store whose run has "your mechanism" (a budget-like production stopper), and its run id."""
    from analysis.core.store import Store
    from tests.helpers import budget_like_run
    path = str(tmp_path_factory.mktemp("cmp") / "inc.duckdb")
    return path, budget_like_run(Store(path), 200, 12, seed=3)


def test_the_sides_and_the_break_down_live_in_the_link(with_incumbent):
    """Every pick of the page is in the URL: a reload (a fresh session on the same link) reopens it, and a link
    naming a side the run does not offer says so."""
    db, rid = with_incumbent
    at = open_app(db, rid, "views/compare.py")
    at.selectbox(key="cmp_A").set_value("your mechanism").run()
    at.selectbox(key="cmp_B").set_value("a link or JSON…").run()
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    code = from_setting(Setting.make("budget", B=64), "b64").to_url()
    at.text_input(key="cmp_B_text").input(code).run()
    at.selectbox(key="cmp_slice").set_value("(none)").run()
    assert not at.exception
    link = {k: at.query_params[k] for k in ("a", "b", "b_preset", "by")}
    assert link == {"a": "mine", "b": "link", "b_preset": code, "by": "none"}, link
    again = opened(db, rid, **link)                             # the reload: the same link, a new session
    assert not again.exception
    assert again.selectbox(key="cmp_A").value == "your mechanism"
    assert again.selectbox(key="cmp_B").value == "a link or JSON…" and again.text_input(key="cmp_B_text").value == code
    assert again.selectbox(key="cmp_slice").value == "(none)"
    assert any("A = your mechanism; B = b64" in c.value for c in again.caption)
    odd = opened(db, rid, a="preset: gone")
    assert not odd.exception and odd.selectbox(key="cmp_A").value == "full length"
    assert any("'preset: gone', is not offered here; showing 'full length'" in w.value for w in odd.warning)


def test_held_out_half_compares_as_the_report_does_and_all_questions_says_why(with_incumbent):
    """On all questions the page says that a setting chosen there looks better than it is; on the held-out half
    it compares on the questions (and the table) optimize and the Report check on."""
    from analysis.core.store import Store
    from analysis.evaluate.compare import compare
    from analysis.evaluate.incumbent import incumbent_outcome
    from analysis.evaluate.optimize import split_of
    from analysis.presets.schema import from_setting
    from analysis.replay.engine import RunTable
    from analysis.replay.policies import Setting
    db, rid = with_incumbent
    setting = Setting.make("budget", B=40)
    at = opened(db, rid, a="mine", s=from_setting(setting).to_url())
    assert not at.exception and at.radio(key="cmp_on").value == "all questions"
    said = " ".join(c.value for c in at.caption)
    assert "On all 200 questions" in said and "looks better here than it will on new ones" in said
    assert "the held-out half" in said
    at.radio(key="cmp_on").set_value("the held-out half").run()
    assert not at.exception and at.query_params["on"] == "held-out"
    test = split_of(RunTable.from_store(Store(db, read_only=True), rid), "test")
    want = compare(test, incumbent_outcome(test), from_setting(setting), None)
    said = " ".join(c.value for c in at.caption)
    assert f"On the held-out half: {want['n']} of 200 questions" in said and "looks better" not in said
    vals = {m.label: m.value for m in at.metric}
    assert vals["EM: A → B"] == f"{want['em_a']:.3f} → {want['em_b']:.3f}"
    assert vals["McNemar p"] == f"{want['mcnemar']['p_value']:.3g}"


def test_tokens_computed_are_shown_beside_tokens_emitted(synthetic_db):
    """A stopper that probes computes more than it emits: the page shows both costs, with both CIs."""
    from analysis.core.store import Store
    from analysis.evaluate.compare import compare
    from analysis.presets.schema import from_setting
    from analysis.replay.engine import RunTable
    from analysis.replay.policies import Setting
    db, rid, _ = synthetic_db
    setting = Setting.make("consistency", k=2)
    at = opened(db, rid, a="full", b="current", s=from_setting(setting).to_url())
    assert not at.exception
    t = RunTable.from_store(Store(db, read_only=True), rid)
    want = compare(t, from_setting(Setting.make("budget", B=32768)), from_setting(setting), None)
    assert want["computed_b"] > want["tokens_b"] + 1                   # probes are paid for
    vals = {m.label: m.value for m in at.metric}
    assert vals["Tokens emitted: A → B"] == f"{want['tokens_a']:.0f} → {want['tokens_b']:.0f}"
    assert vals["Tokens computed: A → B"] == f"{want['computed_a']:.0f} → {want['computed_b']:.0f}"
    saves = f"{1 - want['tokens_b'] / want['tokens_a']:.0%} / {1 - want['computed_b'] / want['computed_a']:.0%}"
    assert vals["B saves, emitted / computed"] == saves
    lo, hi = want["delta_computed_ci"]
    assert any(f"tokens computed {lo:+.1f} … {hi:+.1f}" in c.value for c in at.caption)
