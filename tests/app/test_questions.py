"""AppTest: The Questions page: the per-question diff and one trace."""
from tests.helpers import open_app


def test_questions_page_diffs_and_opens_a_trace(synthetic_db):
    db, rid, _ = synthetic_db
    at = open_app(db, rid)
    at.query_params["s"] = "sl1.broken"              # a tampered link: a warning, then the defaults
    at.switch_page("views/questions.py").run()
    assert not at.exception
    assert any("could not be read" in w.value for w in at.warning)
    labels = {m.label: int(m.value) for m in at.metric}
    assert labels["Lost"] + labels["Gained"] + labels["Kept right"] + labels["Kept wrong"] == 600
    assert at.subheader[0].value.startswith("Trace of ")
    assert len(at.dataframe) == 2                         # the diff table and the trace's checkpoints
    at.multiselect(key="q_filter").set_value(["kept wrong"]).run()
    assert not at.exception and len(at.dataframe[0].value) == labels["Kept wrong"]
