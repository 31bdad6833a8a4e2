"""AppTest: The Compare page: two presets on the same questions."""
from tests.helpers import open_app


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
