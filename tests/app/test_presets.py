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
    at.button(key="load_careful").click().run()
    assert not at.exception
    at.button(key="del_careful").click().run()
    assert "careful" not in Store(mine, read_only=True).presets()
