"""AppTest: The Questions page: the per-question diff and one trace."""
from tests.helpers import open_app


def test_questions_page_diffs_and_opens_a_trace(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    at.query_params["s"] = "sl1.broken"              # a tampered link: a warning, then the defaults
    at.switch_page("views/questions.py").run()
    assert not at.exception
    said = [w.value for w in at.warning if "could not be used" in w.value]
    assert len(said) == 1 and ". Showing the defaults instead." in said[0], said     # once, in one sentence
    labels = {m.label: int(m.value) for m in at.metric}
    assert labels["Lost"] + labels["Gained"] + labels["Kept right"] + labels["Kept wrong"] == 600
    assert at.subheader[0].value.startswith("Trace of ")
    assert len(at.dataframe) == 2                         # the diff table and the trace's checkpoints
    tab = at.dataframe[0].value                           # against full length: tokens computed too
    assert {"tokens saved", "computed saved"} <= set(tab.columns) and (tab["computed saved"] <= tab["tokens saved"]).all()
    at.multiselect(key="q_filter").set_value(["kept wrong"]).run()
    assert not at.exception and len(at.dataframe[0].value) == labels["Kept wrong"]
    assert at.query_params["show"] == "kept wrong"                # in the link: a fresh session reopens it
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    again.query_params.update({"db": db, "run": rid, "show": "kept wrong,gained,bogus"})
    again.switch_page("views/questions.py").run()
    assert not again.exception and again.multiselect(key="q_filter").value == ["kept wrong", "gained"]


def _greyed(at) -> tuple[str, str, str]:
    """(the expander's label, the trace's text before the grey part, the grey part), as drawn."""
    import html
    import re
    exp = next(e for e in at.expander if e.label.startswith("The trace's text"))
    body = next(h.proto.body for h in at.get("html"))
    m = re.search(r"monospace[^>]*>(.*)<span style='color:#9ca3af'>(.*)</span></div>", body, re.S)
    return exp.label, html.unescape(m.group(1)), html.unescape(m.group(2))


def test_the_trace_greys_exactly_after_the_stops_checkpoint(tmp_path):
    """A run whose checkpoints know where they cut the text (here an import: the prefix each trial answer was
    read from) greys from exactly there; a store without those positions keeps the proportional cut and says
    it is approximate."""
    from analysis.core.store import Store
    from analysis.ingest.importer import import_generations, ImportSpec
    from analysis.replay.engine import RunTable, stop_index
    from analysis.replay.policies import Setting
    from tests.helpers import ROOT
    db = str(tmp_path / "imp.duckdb")
    res = import_generations(db, ImportSpec(path=str(ROOT / "tests" / "fixtures" / "solutions.jsonl"), model="hand",
                                            dataset="hand-gsm", response_field="outputs.solution", every=4),
                             show_progress=False)
    s, rid = Store(db), res["run_id"]
    t = RunTable.from_store(s, rid)
    from analysis.presets.schema import from_setting
    setting = Setting.make("budget", B=12)
    stops = stop_index(t, setting)
    i = int(next(k for k in range(t.n) if stops[k] < t.lengths[k] - 1))     # a question stopped before its end
    q = str(t.question_ids[i])
    at = open_app(db, rid)
    at.query_params["s"] = from_setting(setting).to_url()
    at.query_params["q"] = q
    at.switch_page("views/questions.py").run()
    assert not at.exception
    assert at.subheader[0].value == f"Trace of {q}"
    label, before, grey = _greyed(at)
    tr = s.trace(rid, q)
    cut = tr["char_pos"][int(stops[i])]
    assert "where the stop's checkpoint ends the text" in label and "approximate" not in label
    assert before == tr["text"][:cut] and grey == tr["text"][cut:] and 0 < cut < len(tr["text"])


def test_a_store_without_cut_positions_greys_in_proportion_and_says_so(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/questions.py")
    assert not at.exception
    label, before, grey = _greyed(at)
    assert "in proportion to tokens, so approximate" in label


def test_questions_compare_against_your_mechanism_when_the_run_has_its_stops(tmp_path, synthetic_db):
    """A run with the user's own stopper's stops offers it as the other side: lost / gained against it, and its
    stop on the trace; a run without them does not offer it."""
    from analysis.core.store import Store
    from analysis.evaluate.incumbent import incumbent_outcome
    from analysis.replay.engine import RunTable, outcome_from_stops, stop_index
    from analysis.replay.policies import Setting, get_family
    from tests.helpers import budget_like_run
    db = str(tmp_path / "inc.duckdb")
    rid = budget_like_run(Store(db), 120, 10, seed=5)
    at = open_app(db, rid, "views/questions.py")
    assert "your mechanism" in at.selectbox(key="q_against").options
    at.selectbox(key="q_against").set_value("your mechanism").run()
    assert not at.exception
    t = RunTable.from_store(Store(db, read_only=True), rid)
    fam = at.sidebar.selectbox(key="family").value
    setting = Setting(fam, get_family(fam).defaults_for(t))
    a, b = outcome_from_stops(t, stop_index(t, setting), "", setting), incumbent_outcome(t)
    ra, rb = a.em > 0.5, b.em > 0.5
    labels = {m.label: int(m.value) for m in at.metric}
    assert (labels["Lost"], labels["Gained"]) == (int((rb & ~ra).sum()), int((ra & ~rb).sum()))
    assert "your mechanism at" in at.dataframe[0].value.columns
    sdb, srid, _ = synthetic_db
    at = open_app(sdb, srid, "views/questions.py")
    assert not at.exception and "your mechanism" not in at.selectbox(key="q_against").options


def test_the_other_side_lives_in_the_link(tmp_path):
    """"Compare against" is in the URL: a fresh session on the link reopens it."""
    from streamlit.testing.v1 import AppTest
    from analysis.core.store import Store
    from tests.helpers import ROOT, budget_like_run, offer_store
    db = str(tmp_path / "inc.duckdb")
    rid = budget_like_run(Store(db), 60, 8, seed=2)
    at = open_app(db, rid, "views/questions.py")
    at.selectbox(key="q_against").set_value("your mechanism").run()
    assert not at.exception and at.query_params["vs"] == "mine"
    offer_store(db)
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    again.query_params.update({"db": db, "run": rid, "vs": "mine"})
    again.switch_page("views/questions.py").run()
    assert not again.exception and again.selectbox(key="q_against").value == "your mechanism"


def test_the_held_out_half_shows_its_questions_alone(synthetic_db):
    """"The held-out half" diffs that half's questions only (the split Compare and the Report check on), kept in
    the link as `on`; a link naming a question of the other half says where it is."""
    from analysis.core.store import Store
    from analysis.evaluate.optimize import split_of
    from analysis.replay.engine import RunTable
    db, rid, _ = synthetic_db
    t = RunTable.from_store(Store(db, read_only=True), rid)
    held, tune = set(split_of(t, "test").question_ids), split_of(t, "tune").question_ids
    at = open_app(db, rid, "views/questions.py")
    at.radio(key="q_on").set_value("the held-out half").run()
    at.multiselect(key="q_filter").set_value(["lost", "gained", "kept right", "kept wrong"]).run()
    assert not at.exception and at.query_params["on"] == "held-out"
    assert sum(int(m.value) for m in at.metric) == len(held) < t.n
    assert set(at.dataframe[0].value["question"]) == held
    at.query_params["q"] = str(tune[0])
    at.run()
    assert any(f"'{tune[0]}', is in the tune half, not this one" in w.value for w in at.warning)
    assert at.subheader[0].value != f"Trace of {tune[0]}"
