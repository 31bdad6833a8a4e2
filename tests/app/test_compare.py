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
    from analysis.presets.schema import from_setting               # the Presets page's shareable link, whole
    from analysis.replay.policies import Setting
    code = from_setting(Setting.make("budget", B=256), "b256").to_url()
    at.text_input(key="cmp_B_text").input(f"http://127.0.0.1:8611/tune?db=demo&run={rid}&s={code}").run()
    assert not at.exception and not at.error and "b256" in " ".join(c.value for c in at.caption)
    at.text_input(key="cmp_B_text").input(f"http://127.0.0.1:8611/tune?run={rid}").run()
    assert "has no setting in it" in at.error[0].value
