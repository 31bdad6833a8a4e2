"""AppTest: The Presets page: save, load, delete, share, upload."""
from tests.helpers import open_app


def test_presets_page_saves_loads_and_rejects_bad_files(tmp_path, synthetic_db, monkeypatch):
    import shutil
    db, rid, _ = synthetic_db
    mine = tmp_path / "mine.duckdb"
    shutil.copy(db, mine)
    monkeypatch.setenv("STOPLINE_DB", str(mine))          # presets are kept in the user's store
    at = open_app(str(mine), rid, "views/presets.py")
    assert not at.exception
    assert "s=sl1." in at.code[0].value and f"run={rid}" in at.code[0].value
    assert "db=mine&" in at.code[0].value                # the link names the store by its key, not its path
    at.text_input(key="preset_name").input("careful").run()
    at.button(key="preset_save").click().run()
    assert not at.exception and "Saved 'careful'" in at.success[0].value
    from analysis.core.store import Store
    assert "careful" in Store(mine, read_only=True).presets()
    # it records the run it was made on
    assert Store(mine, read_only=True).presets()["careful"]["made_on"] == {"dataset": "synthetic",
                                                                          "answer_type": "number"}
    at.button(key="load_careful").click().run()
    assert not at.exception
    at.button(key="del_careful").click().run()
    assert "careful" not in Store(mine, read_only=True).presets()


def test_a_preset_made_on_another_dataset_is_offered_with_a_warning_everywhere(tmp_path, synthetic_db):
    """Questions, Compare, the Report and the Presets page offer a preset made on another dataset or answer type
    (its signals are the run's), and say so; one made on this run's dataset, or an old one that does not say,
    gets no warning."""
    import shutil

    from analysis.core.store import Store
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    db, rid, _ = synthetic_db
    mine = tmp_path / "mine.duckdb"
    shutil.copy(db, mine)
    base = from_setting(Setting.make("budget", B=64)).to_dict()
    s = Store(mine)
    s.save_preset("other", {**base, "name": "other", "made_on": {"dataset": "gsm8k", "answer_type": "text"}})
    s.save_preset("here", {**base, "name": "here", "made_on": {"dataset": "synthetic", "answer_type": "number"}})
    s.save_preset("old", {**base, "name": "old"})
    words = "Preset 'other' was made on dataset gsm8k (this run: synthetic) and answer type text (this run: number)"

    def warned(at):
        return [w.value for w in at.warning if "was made on" in w.value]

    at = open_app(str(mine), rid, "views/questions.py")
    assert "preset: other" in at.selectbox(key="q_against").options
    for name, expect in (("here", False), ("old", False), ("other", True)):
        at.selectbox(key="q_against").set_value(f"preset: {name}").run()
        assert not at.exception and bool(warned(at)) == expect, name
    assert warned(at)[0].startswith(words) and at.metric          # offered: the diff is drawn

    at.switch_page("views/compare.py").run()
    at.selectbox(key="cmp_A").set_value("preset: other").run()
    assert not at.exception and warned(at)[0].startswith(words)
    at.selectbox(key="cmp_A").set_value("preset: here").run()
    assert not warned(at)

    at.switch_page("views/report.py").run()
    at.multiselect(key="rep_presets").set_value(["the current setting", "other", "old"]).run()
    assert not at.exception and len(warned(at)) == 1 and warned(at)[0].startswith(words)

    at.switch_page("views/presets.py").run()
    assert not at.exception
    lines = [m.value for m in at.markdown if m.value.startswith("**")]
    assert any(v.startswith("**other**") and "made on dataset gsm8k" in v for v in lines)
    assert not any("made on" in v for v in lines if v.startswith(("**here**", "**old**")))


def test_the_permalink_says_which_page_it_opens(synthetic_db):
    """The permalink opens Tune (its path), and the words beside it say so rather than "this exact view"."""
    from urllib.parse import urlsplit
    db, rid, _ = synthetic_db
    at = open_app(db, rid, "views/presets.py")
    assert not at.exception
    link = next(c.value for c in at.code if "s=sl1." in c.value)
    assert urlsplit(link).path == "/tune"
    said = " ".join(c.value for c in at.caption)
    assert "opens the Tune page on this setting" in said and "this exact view" not in said


def test_saving_under_a_name_already_kept_asks_before_replacing_it(tmp_path, synthetic_db, monkeypatch):
    """Before, a second save under the same name replaced the first without a word (a fresh session's current
    setting is the defaults, so a tuned preset went easily)."""
    import shutil

    from analysis.core.store import Store
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    db, rid, _ = synthetic_db
    mine = tmp_path / "mine.duckdb"
    shutil.copy(db, mine)
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    kept = {**from_setting(Setting.make("consistency", k=4)).to_dict(), "name": "tuned", "notes": "beats prod"}
    Store(mine).save_preset("tuned", kept)
    at = open_app(str(mine), rid, "views/presets.py")
    at.text_input(key="preset_name").input("tuned").run()
    assert any("'tuned' is already saved, holding `consistency(k=4" in w.value for w in at.warning), at.warning
    assert at.button(key="preset_save").disabled
    at.checkbox(key="preset_replace.tuned").check().run()
    assert not at.button(key="preset_save").disabled and at.button(key="preset_save").label == "Replace preset"
    at.button(key="preset_save").click().run()
    now = Store(mine, read_only=True).presets()["tuned"]
    assert now["setting"]["family"] != "consistency" and now["notes"] == "beats prod"     # its notes kept
    assert any("Saved 'tuned'" in m.value for m in at.success) and not at.warning         # drawn again, saved
    at.text_input(key="preset_name").input("fresh").run()                  # a new name: saved at once
    assert not at.warning and at.button(key="preset_save").label == "Save preset"
    from urllib.parse import parse_qs, urlsplit                             # the same setting with a certificate
    from analysis.presets.schema import loads
    current = loads(parse_qs(urlsplit(at.code[0].value).query)["s"][0]).to_dict()
    Store(mine).save_preset("certified", {**current, "name": "certified", "certificate": {"epsilon": 0.01}})
    at.text_input(key="preset_name").input("certified").run()
    assert any("with its routing, slices or certificate" in w.value for w in at.warning), at.warning
    assert at.button(key="preset_save").disabled                              # (the box ticked for 'tuned' is not it)


def test_a_store_without_runs_still_lists_its_presets(tmp_path, monkeypatch):
    from analysis.core.store import Store
    from analysis.presets.schema import from_setting
    from analysis.replay.policies import Setting
    from streamlit.testing.v1 import AppTest
    from tests.helpers import ROOT
    mine = tmp_path / "mine.duckdb"
    Store(mine).save_preset("kept", {**from_setting(Setting.make("budget", B=64)).to_dict(), "name": "kept"})
    monkeypatch.setenv("STOPLINE_DB", str(mine))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["db"] = "mine"
    at.switch_page("views/presets.py").run()
    assert not at.exception
    assert any(m.value.startswith("**kept**") for m in at.markdown), [m.value for m in at.markdown]
    assert at.button(key="load_kept").disabled and not at.button(key="del_kept").disabled
