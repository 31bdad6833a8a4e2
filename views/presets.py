"""Presets: save and load named settings (kept in a store), share a permalink, download and upload JSON."""
import json
from urllib.parse import urlencode, urlsplit

import streamlit as st

from analysis.core.errors import PresetError, StoplineError
from analysis.presets.schema import from_dict, from_setting, loads, made_for, made_on
from views import common, data


def use(setting) -> None:
    """Button callback (runs before the page): make a preset's setting the current one, family included."""
    data.make_current(setting)


def saved_presets(t, run, target_path: str, viewer: bool) -> None:
    """The user's saved presets; ``t`` None (a store without runs picked): listed, kept or deleted, not loaded."""
    st.subheader("Saved presets")
    st.caption("Your presets, whichever store is picked: those kept in your store and in the picked one. Questions, "
               "Compare and the Report offer each one on every run whose signals it reads; one made on another "
               "dataset or answer type is offered with a warning.")
    try:
        saved = data.user_presets()
    except StoplineError as e:
        st.error(str(e))
        saved = {}
    if not saved:
        st.info("No presets saved yet.")
    for pname, (where, body) in saved.items():
        with st.container(border=True):
            try:
                p = from_dict(body)
            except PresetError as e:
                st.error(f"'{pname}' cannot be read: {e}")
                continue
            a, b, c = st.columns([5, 1, 1])
            fits = "" if t is None or data.applies(body, t) else " · *not for this run: it reads signals the run lacks*"
            other = (made_for(p, run) or "").replace("_", "\\_").replace("*", "\\*") if run else ""
            a.markdown(f"**{pname}** · `{p.setting.label()}`{fits}"
                       + (f" · :orange[{other}, not this run's: its thresholds were chosen on other questions]"
                          if other and not fits else "") + (f"  \n{p.notes}" if p.notes else ""))
            b.button("Load", key=f"load_{pname}", on_click=use, args=(p.setting,), disabled=bool(fits) or t is None,
                     help=None if t is not None else "pick a store with runs to load a preset onto one")
            if not viewer and c.button("Delete", key=f"del_{pname}", disabled=where != target_path):
                data.delete_preset(where, pname)
                st.rerun()
            with st.expander("JSON"):
                st.code(json.dumps(body, indent=2), language="json")


# where presets are kept: the user's own store (made on the first save, not on a visit); picked stores are
# opened read-only; in viewer mode nothing is saved
viewer = data.viewer()
target_path = data.my_db()
if not data.picked_run():                 # a store without runs: its presets, still
    st.header("Presets")
    common.current_run()
    saved_presets(None, None, target_path, viewer)
    st.stop()
run, t, fam, setting = common.page_start("Presets")
preset = from_setting(setting)
if viewer:
    st.caption("Viewer mode: presets can be read, loaded and downloaded here, not saved, uploaded or deleted.")

st.subheader("The current setting")
st.markdown(f"`{setting.label()}` (set it on the Tune page)")
params = {"db": data.store_key(data.picked_db()) or "demo", "run": run["id"], "family": fam, "s": preset.to_url()}
base = ""
try:
    u = urlsplit(st.context.url or "")
    base = f"{u.scheme}://{u.netloc}" if u.netloc else ""
except Exception:          # noqa: BLE001 - no browser context (AppTest)
    base = ""
link = f"{base}/tune?{urlencode(params)}"
st.code(link, language=None)
st.caption("The permalink opens the Tune page on this setting (with its store, run and family), in any browser, "
           "where its controls can be adjusted; any page's own address opens that page as it is. The copy button is "
           "at the code block's right.")

c1, c2 = st.columns(2)
stamped = from_dict({**preset.to_dict(), "made_on": made_on(run)})        # the run it was made on
if not viewer:
    with c1:
        name = st.text_input("Save as", value="", placeholder="a name, e.g. prod-2026-11", key="preset_name")
        notes = st.text_area("Notes (optional)", key="preset_notes", height=80)
        try:
            kept = data.presets(target_path).get(name.strip()) if name.strip() else None
        except StoplineError as e:
            st.error(str(e))
            kept = None
        replace = True
        aside = ("name", "made_on", "notes")       # what a save under the same name may change without asking
        mine = {k: v for k, v in stamped.to_dict().items() if k not in aside}
        theirs = {k: v for k, v in (kept or {}).items() if k not in aside}
        differs = kept is not None and theirs != mine
        if differs:
            try:
                was = f"`{from_dict(kept).setting.label()}`"
            except PresetError:
                was = "a preset that cannot be read"
            st.warning(f"'{name.strip()}' is already saved, holding {was}"
                       + (" with its routing, slices or certificate" if set(theirs) - set(mine) else "") + "."
                       + (" Its notes are kept unless you write new ones." if kept.get("notes") else ""),
                       icon=":material/warning:")
            replace = st.checkbox("Replace it with the current setting", key=f"preset_replace.{name.strip()}")
        if st.button("Replace preset" if differs else "Save preset", type="primary",
                     disabled=not name.strip() or not replace, key="preset_save"):
            try:
                keep_notes = notes.strip() or (kept or {}).get("notes") or ""       # a replaced preset's notes stay
                body = from_dict({**stamped.to_dict(), "name": name.strip(), "notes": keep_notes}).to_dict()
                data.save_preset(target_path, name.strip(), body)
                st.session_state["preset_saved"] = f"Saved '{name.strip()}' in {target_path}."
                st.rerun()                  # drawn again: the warning and its box are about the preset saved before
            except (PresetError, StoplineError) as e:
                st.error(str(e))
        if (said := st.session_state.pop("preset_saved", None)):
            st.success(said)
with c2 if not viewer else c1:
    st.download_button("Download this preset (JSON)", stamped.to_json(),
                       f"{fam}.json", "application/json",
                       key="preset_dl")
    up = None if viewer else st.file_uploader("Upload a preset (JSON)", type=["json"], key="preset_up",
                                              max_upload_size=1)
    if up is not None:
        try:
            p = loads(up.getvalue().decode("utf-8", "replace"))
            if not t.has_signal("p_mean") and p.setting.policy.required_signals(p.setting.params):
                st.warning("This run has no probe signals; the preset's family cannot be replayed here.")
            st.success(f"Read '{p.name}': `{p.setting.label()}`.")
            if (w := data.made_elsewhere(p, run)):
                st.warning(w)
            st.button("Make it the current setting", key="preset_use_up", on_click=use, args=(p.setting,))
        except PresetError as e:
            st.error(f"This file is not a valid preset: {e}")


saved_presets(t, run, target_path, viewer)
