"""AppTest: The Tune page: controls from the declared parameters, live numbers, operating-point jumps."""
from tests.helpers import open_app


def test_tune_recomputes_when_a_slider_moves(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    assert not at.exception
    before = {m.label: m.value for m in at.metric}
    at.slider[0].set_value(int(at.slider[0].max)).run()       # budget: to the longest trace = full length
    after = {m.label: m.value for m in at.metric}
    assert before["EM"] != after["EM"]
    assert after["Tokens saved (emitted)"] == "0.0%"


def test_tune_setting_carries_to_questions_and_into_the_link(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.slider[0].set_value(64).run()
    link = at.query_params["s"]
    assert link.startswith("sl1.")
    from analysis.presets.schema import loads
    assert loads(link).setting.params["B"] == 64
    at.switch_page("views/questions.py").run()
    assert not at.exception and any("B=64" in c.value for c in at.caption)


def test_a_family_picked_again_comes_back_as_it_was_tuned(synthetic_db):
    """Before, picking another family and then this one again gave its defaults (and the link lost it)."""
    from analysis.presets.schema import loads
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.sidebar.selectbox(key="family").set_value("consistency").run()
    slider = next(s for s in at.slider if s.key.endswith(".k"))
    tuned = int(slider.max) if slider.value != slider.max else int(slider.min)
    slider.set_value(tuned).run()
    assert loads(at.query_params["s"]).setting.params["k"] == tuned
    at.sidebar.selectbox(key="family").set_value("budget").run()
    assert loads(at.query_params["s"]).setting.family == "budget"
    at.sidebar.selectbox(key="family").set_value("consistency").run()
    assert not at.exception and loads(at.query_params["s"]).setting.params["k"] == tuned
    assert next(s for s in at.slider if s.key.endswith(".k")).value == tuned


def test_tune_jumps_to_an_operating_point_and_drives_a_hybrids_parts(synthetic_db):
    from analysis.evaluate.optimize import operating_point
    from analysis.replay.engine import RunTable
    from analysis.replay.policies import available_families
    from analysis.core.store import Store
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.radio(key="op_goal").set_value("drop").run()
    at.number_input(key="op_value_drop").set_value(0.01).run()
    at.radio(key="op_scope").set_value("all families").run()
    at.button(key="op_jump").click().run()
    assert not at.exception
    t = RunTable.from_store(Store(db, read_only=True), rid)
    fams = [f for f in available_families(t) if f != "learned"]       # 600 x 30 checkpoints: learned waits
    want = operating_point(t, "drop", 0.01, "emitted", fams, n_boot=0)        # chosen on the tune half
    assert any(want["label"] in c.value for c in at.caption)       # the page now shows that setting
    assert any("Jumped to" in m.value for m in [*at.info, *at.error]) and not at.warning
    # chosen on the tune half: Compare's held-out half says it is out of sample for it
    at.switch_page("views/compare.py").run()
    at.radio(key="cmp_on").set_value("the held-out half").run()
    assert any("so it is checked out of sample here" in c.value for c in at.caption)
    at.switch_page("views/tune.py").run()
    # a hybrid: its two parts get their own family pickers and controls
    at.sidebar.selectbox(key="family").set_value("hybrid").run()
    assert not at.exception
    assert at.selectbox(key="hybrid.a.family").value == "confidence"
    at.selectbox(key="hybrid.b.family").set_value("budget").run()
    at.slider(key="hybrid.b.budget.B").set_value(100).run()
    assert not at.exception and any("b=(budget(B=100))" in c.value for c in at.caption)


def test_tune_shows_the_probe_schedule_and_the_link_carries_it(synthetic_db):
    from analysis.presets.schema import loads
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.sidebar.selectbox(key="family").set_value("consistency").run()
    dense = {m.label: m.value for m in at.metric}
    at.selectbox(key="consistency.schedule.every").set_value(4).run()
    assert not at.exception
    sparse = {m.label: m.value for m in at.metric}
    assert any("every 4x" in c.value for c in at.caption)
    assert loads(at.query_params["s"]).setting.schedule == {"every": 4}
    assert sparse["Tokens saved (computed)"] != dense["Tokens saved (computed)"]
    # every control of the schedule comes from its declaration
    from analysis.replay.policies.base import SCHEDULE
    for p in SCHEDULE:
        assert any(w.key == f"consistency.schedule.{p.name}" for w in
                   [*at.selectbox, *at.checkbox, *at.slider])


def test_tune_shows_the_certified_setting_beside_the_jump(synthetic_db):
    """Issue 23: with the goal "EM drop δ", Tune says which setting is certified for that ε (δ = 0.05) and can
    make it current."""
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.radio(key="op_goal").set_value("drop").run()
    at.number_input(key="op_value_drop").set_value(0.05).run()
    assert not at.exception
    ok = [s.value for s in at.success if "Certified for ε=0.05, failure probability δ=0.05" in s.value]
    assert ok and "budget(" in ok[0]                          # the family picked (budget), this family's certificate
    assert "bound on " in ok[0] and "of its 600 calibration questions; the other " in ok[0]   # which questions
    at.button(key="cert_use").click().run()
    from analysis.presets.schema import loads
    label = ok[0].split("`")[1]
    assert not at.exception and loads(at.query_params["s"]).setting.label() == label


def test_a_jump_on_a_run_too_small_to_split_says_which_half_is_empty(tmp_path):
    """One question: the tune or the held-out half is empty, and the jump says so (it used to be a KeyError in
    place of the page)."""
    from analysis.core.store import Store
    from tests.helpers import budget_like_run
    db = str(tmp_path / "one.duckdb")
    rid = budget_like_run(Store(db), 1, 6, seed=3)
    at = open_app(db, rid, "views/tune.py")
    at.button(key="op_jump").click().run()
    assert not at.exception
    assert any(w.value.startswith("No jump: the ") and f"half of run {rid} has no questions" in w.value
               for w in at.warning), [w.value for w in at.warning]


def test_the_same_setting_shows_the_same_interval_on_every_page_and_in_the_cli(synthetic_db, cli):
    """A new user found one setting with two intervals: Tune and Compare bootstrapped 1,000 resamples, the Report
    and eval 2,000. Every one now draws evaluate.N_BOOT resamples from evaluate.SEED: Tune's ΔEM interval, Compare's
    (full length against the current setting), the Report's row and eval's are the same numbers."""
    import json

    from analysis.core.store import Store
    from analysis.evaluate import N_BOOT
    from analysis.evaluate.report import build
    from analysis.presets.schema import loads
    from analysis.replay.engine import RunTable
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/tune.py")
    at.slider[0].set_value(96).run()
    ci = {m.label: m.delta for m in at.metric}["ΔEM 95% CI"]               # "-0.050 to -0.020"
    assert any(f"{N_BOOT:,} resamples" in c.value for c in at.caption)
    link = at.query_params["s"]
    code, out, err = cli("eval", "--run", rid, "--preset", link, "--json", "--db", db)
    assert code == 0, err
    lo, hi = json.loads(out)["ci"]["delta_em"]
    assert ci == f"{lo:+.3f} to {hi:+.3f}" and lo < hi
    at.switch_page("views/compare.py").run()                # A: full length, B: the current setting
    assert not at.exception
    assert {m.label: m.delta for m in at.metric}["ΔEM 95% CI (B − A)"] == ci
    s = Store(db, read_only=True)
    rep = build([(s.run(rid), RunTable.from_store(s, rid))], [loads(link)], images=False)
    row = [r for r in rep["markdown"].splitlines() if r.startswith(f"| {loads(link).name} |")][0]   # the results table (the Reproduce table names it again)
    assert f"({lo:+.3f} … {hi:+.3f})" in row


def test_a_jump_that_meets_its_target_but_computes_more_is_a_warning_and_the_metric_is_red(demo):
    """On the demo's run the fewest emitted tokens within an EM drop of 0.02 (consistency) meets it on the
    held-out half but computes 60% more than full length with its probes: a warning naming that cost (red is
    for a miss), and the computed saving is coloured as a loss. Each control leads with its parameter's name, as
    the setting's label writes it."""
    from analysis.core.store import DEMO_DB
    at = open_app(DEMO_DB, "c7a2483a9092", "views/tune.py")
    at.sidebar.selectbox(key="family").set_value("consistency").run()
    at.radio(key="op_goal").set_value("drop").run()
    at.button(key="op_jump").click().run()
    assert not at.exception and not at.error
    warned = [w.value for w in at.warning if w.value.startswith("Jumped to")]
    assert warned and "more tokens than full length, counting its probes" in warned[0] and "misses" not in warned[0]
    computed = next(m for m in at.metric if m.label == "Tokens saved (computed)")
    from streamlit.proto.Metric_pb2 import Metric
    assert computed.value.startswith("-") and computed.proto.color == Metric.MetricColor.RED
    assert computed.proto.delta.startswith("computes ") and computed.proto.delta.endswith("% more")
    at.sidebar.selectbox(key="family").set_value("entropy").run()
    assert at.slider(key="entropy.min_steps").label == "min_steps — min checkpoints"
    assert at.select_slider(key="entropy.delta").label == "delta — variance threshold"


def test_the_learned_default_says_why_it_saves_next_to_nothing(demo):
    """At its default (τ = 0.8) the learned stopper seldom stops early on the demo's run (its answers are right
    60% of the time at best): the page says why, with what lower τs save, and says nothing where it saves."""
    from analysis.core.store import DEMO_DB
    at = open_app(DEMO_DB, "c7a2483a9092", "views/tune.py")
    at.sidebar.selectbox(key="family").set_value("learned").run()
    assert not at.exception
    note = [i.value for i in at.info if "Why this saves next to nothing" in i.value]
    assert note and "τ = 0.8" in note[0] and "τ = 0.6 saves" in note[0], [i.value for i in at.info]
    at.slider(key="learned.tau").set_value(0.5).run()
    assert not at.exception and not any("Why this saves" in i.value for i in at.info)


def test_tune_shows_the_declared_schedule_not_where_the_rule_narrows_its_probes(synthetic_db):
    """Confidence at transition words probes only there, but Tune's controls keep the schedule as declared: the
    setting comes back unchanged (unticking 'only at transition words' then probes every checkpoint again)."""
    from analysis.presets.schema import from_setting, loads
    from analysis.replay.policies import Setting
    db, rid, _ = synthetic_db
    s = Setting.make("confidence", tau=0.9, transition_only=True)
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT, offer_store
    offer_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)    # a fresh session seeded by the link
    at.query_params.update({"db": db, "run": rid, "family": "confidence", "s": from_setting(s, "x").to_url()})
    at.run()
    at.switch_page("views/tune.py").run()
    assert not at.exception
    back = loads(at.query_params["s"]).setting
    assert back.schedule == {} and back.params["transition_only"] is True
    # and says which of the schedule's controls do not apply to it
    assert any("do not apply" in w.value and "probe every" in w.value for w in at.warning)


def test_the_probe_schedule_says_how_the_runs_checkpoints_were_made(tmp_path, synthetic_db):
    """A generated run probed its checkpoints; an imported file of traces had them placed on its text, with
    nothing probed (the Tune page said "this run probed" of both)."""
    from analysis.core.store import Store
    from analysis.ingest.importer import ImportSpec, import_generations
    from tests.helpers import ROOT
    db = str(tmp_path / "imp.duckdb")
    imp = import_generations(Store(db), ImportSpec(path=str(ROOT / "tests" / "fixtures" / "solutions.jsonl"),
                                                   model="hand", dataset="hand-gsm", response_field="outputs.solution"),
                             show_progress=False)
    labels = [e.label for e in open_app(db, imp["run_id"], "views/tune.py").expander]
    assert any("placed on its traces' text" in x for x in labels) and not any("this run probed" in x for x in labels)
    db, rid, _ = synthetic_db
    assert any("this run probed every" in e.label for e in open_app(db, rid, "views/tune.py").expander)
