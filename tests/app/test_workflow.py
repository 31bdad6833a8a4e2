"""AppTest: the workflow between pages (issue 22): one current setting everywhere, the URL keeps every pick,
the user's presets on every store they apply to."""
from tests.helpers import open_app


def browse(at, page: str):
    """Go to ``page`` as the browser's navigation does: Streamlit's frontend drops the query string on a page
    change, so only what the session keeps can survive it."""
    at.query_params.clear()
    return at.switch_page(page).run()


def _tune_confidence(at, tau=0.92):
    at.sidebar.selectbox(key="family").set_value("confidence").run()
    at.slider(key="confidence.tau").set_value(tau).run()
    assert not at.exception
    return at


def test_a_tuned_setting_is_the_current_one_on_every_page(synthetic_db):
    db, rid, _ = synthetic_db
    at = _tune_confidence(open_app(db, rid, "views/tune.py"))
    for page in ("views/questions.py", "views/compare.py", "views/presets.py", "views/report.py"):
        browse(at, page)
        assert not at.exception, page
        assert at.sidebar.selectbox(key="family").value == "confidence", page
        shown = " ".join(c.value for c in at.caption) + " ".join(m.value for m in at.markdown)
        assert "tau=0.92" in shown or page == "views/report.py", page
    browse(at, "views/tune.py")
    assert at.sidebar.selectbox(key="family").value == "confidence"       # not the picker's first entry
    assert at.slider(key="confidence.tau").value == 0.92
    assert any("tau=0.92" in c.value for c in at.caption)


def test_the_url_keeps_the_setting_and_family_on_every_page(synthetic_db):
    db, rid, _ = synthetic_db
    at = _tune_confidence(open_app(db, rid, "views/tune.py"))
    link = at.query_params["s"]
    for page in ("views/frontier.py", "views/questions.py", "views/runs.py", "views/tune.py"):
        browse(at, page)
        assert at.query_params.get("family") in ("confidence", ["confidence"]), page
        assert at.query_params.get("s") in (link, [link]), page


def test_a_link_with_a_setting_opened_fresh_is_the_setting_on_tune(synthetic_db):
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT
    db, rid, _ = synthetic_db
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update({"db": db, "run": rid, "s": from_setting(Setting.make("budget", B=30)).to_url()})
    at.run()                                              # the Frontier, with s= only (no family=)
    assert not at.exception
    browse(at, "views/tune.py")
    assert at.slider(key="budget.B").value == 30
    assert any("budget(B=30)" in c.value for c in at.caption)


def test_a_jump_draws_the_family_and_controls_without_streamlits_duplicate_value_warning(synthetic_db, monkeypatch):
    """After Jump the server log printed "The widget with key 'family' was created with a default value but also
    had its value set via the Session State API" with a stack trace. Streamlit checks that only under a real
    runtime and once a process, so the check is switched on here."""
    from streamlit.elements.lib import policies
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    warned = []
    monkeypatch.setattr(policies.runtime, "exists", lambda: True)
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *a, **k: warned.append(msg % a))
    at.radio(key="op_goal").set_value("drop").run()
    at.radio(key="op_scope").set_value("all families").run()
    at.button(key="op_jump").click().run()
    assert not at.exception and any("Jumped to" in i.value for i in at.info)
    assert not warned, warned
    browse(at, "views/questions.py")
    browse(at, "views/tune.py")
    assert not at.exception and not warned, warned


def test_a_preset_saved_on_the_demo_store_is_offered_wherever_it_applies(demo, tmp_path, monkeypatch):
    """Presets belong to the user: saved with the (read-only) demo store picked, they go to the user's store,
    and Questions, Compare and the Report offer them on the demo's runs; a run without the signals a preset reads
    does not."""
    from analysis.core.store import DEMO_DB
    monkeypatch.setenv("STOPLINE_DB", str(tmp_path / "mine.duckdb"))
    rid = demo.default_run()
    at = _tune_confidence(open_app(DEMO_DB, rid, "views/tune.py"), 0.9)
    browse(at, "views/presets.py")
    at.text_input(key="preset_name").input("careful").run()
    at.button(key="preset_save").click().run()
    assert not at.exception and "Saved 'careful'" in at.success[0].value
    assert at.button(key="load_careful")                       # listed on the Presets page of the demo store
    browse(at, "views/questions.py")
    assert "preset: careful" in at.selectbox(key="q_against").options
    browse(at, "views/compare.py")
    assert "preset: careful" in at.selectbox(key="cmp_A").options
    at.selectbox(key="cmp_A").set_value("preset: careful").run()
    assert not at.exception and any("tau=0.9" in c.value for c in at.caption)
    browse(at, "views/report.py")
    assert "careful" in at.multiselect(key="rep_presets").options


def test_a_preset_is_not_offered_on_a_run_without_its_signals(synthetic_db, tmp_path, monkeypatch):
    from analysis.core.store import Store
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    db, rid, rid_text = synthetic_db
    monkeypatch.setenv("STOPLINE_DB", str(tmp_path / "mine.duckdb"))
    Store(tmp_path / "mine.duckdb").save_preset("sure", from_setting(Setting.make("confidence", tau=0.9), "sure").to_dict())
    at = open_app(db, rid, "views/compare.py")
    assert "preset: sure" in at.selectbox(key="cmp_A").options
    at = open_app(db, rid_text, "views/compare.py")
    assert not at.exception and "preset: sure" not in at.selectbox(key="cmp_A").options


def test_jump_chooses_on_the_cost_asked_for_and_says_in_red_what_the_pick_costs(demo):
    """Jump on tokens emitted may pick a setting whose probes compute more than full length: it says so (in red
    where it also misses its target held out),
    with the number; on tokens computed it picks on that basis."""
    from analysis.core.store import DEMO_DB
    from analysis.evaluate.optimize import operating_point
    from analysis.replay.engine import RunTable
    rid = "c7a2483a9092"
    t = RunTable.from_store(demo, rid)
    at = open_app(DEMO_DB, rid, "views/tune.py")
    at.radio(key="op_goal").set_value("drop").run()
    at.radio(key="op_scope").set_value("all families").run()
    at.button(key="op_jump").click().run()
    assert not at.exception
    fams = ["budget", "consistency", "confidence", "entropy", "learned", "hybrid"]
    emitted = operating_point(t, "drop", 0.02, "emitted", fams, n_boot=0)
    assert emitted["test"]["tokens_computed"] > emitted["test"]["tokens_full"]      # the demo's trap
    # red where it misses its target held out, else a warning: either way it names what its probes cost
    (msg,) = [e.value for e in [*at.error, *at.warning] if "more tokens than full length" in e.value]
    assert emitted["label"] in msg
    assert f"{emitted['test']['tokens_computed'] / emitted['test']['tokens_full'] - 1:.0%}" in msg
    at.radio(key="op_cost").set_value("computed").run()
    at.button(key="op_jump").click().run()
    computed = operating_point(t, "drop", 0.02, "computed", fams, n_boot=0)
    assert any(computed["label"] in c.value for c in at.caption)
    assert any("by tokens computed" in m.value for m in [*at.info, *at.error])


def test_runs_have_short_labels_that_tell_them_apart_and_the_runs_table_leads_with_what_is_compared(demo):
    """The sidebar cut 'qwen2.5-coder-0.5b-instruct · rg:basic…' so two runs looked identical; the Runs table hid
    em_full and mean_tokens beyond the right edge."""
    from analysis.core.store import DEMO_DB
    at = open_app(DEMO_DB, None, "views/runs.py")
    pick = at.sidebar.selectbox(key="run_pick")
    labels = list(pick.options)                  # AppTest gives the labels the picker shows
    assert len(set(labels)) == len(labels)
    assert "qwen2.5-coder-0.5b · basic_arithmetic terms≤3 digits≤2 · 200 q" in labels
    assert all(len(lab) <= 64 for lab in labels)
    cols = list(at.dataframe[0].value.columns)
    assert cols[:3] == ["run", "em_full", "mean_tokens"]


def test_the_pareto_table_reads_in_labels_and_percentages(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    grid = at.dataframe[-1]
    import json
    config = json.dumps(json.loads(grid.proto.columns), ensure_ascii=False)
    for label in ("setting", "probes", "ΔEM", "emitted", "computed", "saved", "net saved", "lost", "gained"):
        assert f'"{label}"' in config
    assert '"EM minus full length\'s EM"' in config             # short headers, explained on hover
    assert config.count('"small"') == 8 and '"width": 265' in config   # ten columns fit without scrolling sideways
    assert set(grid.value["schedule"]) <= {"all", "every 2x", "every 4x"} and not grid.value["label"].str.contains("[", regex=False).any()
    assert '"%.1f%%"' in config and '"%.3f"' in config
    assert grid.value["savings_emitted"].max() > 1          # percentages, not fractions


def test_compare_gives_its_ci_with_three_decimals_like_the_rest(synthetic_db):
    import re
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/compare.py")
    (ci,) = [m for m in at.metric if m.label.startswith("ΔEM 95% CI")]
    assert re.fullmatch(r"±\d\.\d{3}", ci.value), ci.value           # the half-width, as on Tune
    assert re.fullmatch(r"[+-]\d\.\d{3} to [+-]\d\.\d{3}", ci.delta), ci.delta


def test_the_learned_stopper_on_a_tiny_import_comes_with_a_caveat(tmp_path):
    from analysis.core.store import Store
    from analysis.ingest.synthetic import write_synthetic_run
    db = tmp_path / "tiny.duckdb"
    rid = write_synthetic_run(Store(db), 5, 10, seed=3)
    at = open_app(str(db), rid, "views/tune.py")
    at.sidebar.selectbox(key="family").set_value("learned").run()
    assert not at.exception
    assert any("with 5 questions" in w.value for w in at.warning)
    browse(at, "views/questions.py")
    assert any("with 5 questions" in w.value for w in at.warning)
