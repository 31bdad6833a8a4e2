"""A link's setting (`s=sl1.…`) that does not read shows a warning and the defaults, never an exception box
(issue 21). The codec itself is fuzzed in test_fuzz_presets.py; these are the pages, on links that raised
OverflowError and RecursionError before, and a few random mutations (Streamlit AppTest, about 1 s each). A
link's damaged store (`db=`) is named in the sidebar, not an exception box."""
import random

import pytest
from streamlit.testing.v1 import AppTest

from analysis.core.errors import PresetError
from analysis.presets.schema import encode, loads
from tests.helpers import ROOT


def _hybrid(depth: int) -> dict:
    d = {"family": "budget", "params": {"B": 64}}
    for _ in range(depth):
        d = {"family": "hybrid", "params": {"a": d}}
    return d


GOOD = encode({"stopline_preset": 1, "setting": {"family": "consistency", "params": {"k": 2}}})
_r = random.Random(7)
MUTATED = ["".join(_r.choice("AbZ09-_") if i > 4 and _r.random() < 0.05 else c for i, c in enumerate(GOOD))
           for _ in range(4)]
LINKS = {
    "huge-integer": encode({"stopline_preset": 1, "setting": {"family": "budget", "params": {"B": 10 ** 400}}}),
    "hybrid-400-deep": encode({"stopline_preset": 1, "setting": _hybrid(400)}),
    "not-json": "sl1." + GOOD[4:][::-1],
    **{f"mutated-{i}": m for i, m in enumerate(MUTATED)},
}


@pytest.mark.parametrize("link", list(LINKS.values()), ids=list(LINKS))
@pytest.mark.parametrize("page", ["views/frontier.py", "views/tune.py"])
def test_a_bad_link_setting_warns_and_keeps_the_page(synthetic_db, link, page):
    db, rid, _ = synthetic_db
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update({"db": db, "run": rid, "s": link})
    at.run()
    if page != "views/frontier.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    try:
        loads(link)
    except PresetError:
        assert sum("could not be used" in w.value for w in at.warning) == 1, [w.value for w in at.warning]


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "dev-null"])
def test_a_damaged_store_in_a_link_is_named_not_an_exception_box(tmp_path, kind, monkeypatch):
    """A configured store (``$STOPLINE_STORES``) that is damaged; a store off the list is refused unread
    (tests/app/test_viewer.py)."""
    from analysis.core.store import Store
    path = {"zero-byte": tmp_path / "zero.duckdb", "truncated": tmp_path / "trunc.duckdb",
            "dev-null": "/dev/null"}[kind]
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        Store(path).save_preset("x", {})
        path.write_bytes(path.read_bytes()[:5000])
    monkeypatch.setenv("STOPLINE_STORES", str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["db"] = str(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(str(path) in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]


def _open(db, page: str, **params) -> AppTest:
    """The app on ``page`` opened from a link with ``params`` (the store ``db`` offered to visitors)."""
    from tests.helpers import offer_store
    offer_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update({"db": db, **params})
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_link_naming_an_unknown_run_or_family_says_what_it_shows_instead(synthetic_db):
    db, rid, _ = synthetic_db
    at = _open(db, "views/tune.py", run="nosuchrun", family="nosuchfamily")
    said = [w.value for w in at.main.warning]                  # above the page, naming both runs
    assert any(w.startswith("The run this link names, 'nosuchrun', is not in ") and f"instead: synthetic" in w
               and f"(`{rid}`)" in w for w in said), said
    assert any(w.startswith("The policy family this link names, 'nosuchfamily', does not exist; showing ")
               for w in said), said                             # above the page too, its name escaped
    assert at.query_params["family"] != "nosuchfamily" and at.query_params["run"] == rid
    at.run()                                                    # the next rerun: nothing more to say
    assert not at.warning, [w.value for w in at.warning]


def test_a_link_whose_family_needs_signals_the_run_lacks_says_what_it_shows(synthetic_db):
    """The family is kept (the next run with signals shows it again) and the page says why it shows another."""
    db, rid, rid_text = synthetic_db
    at = _open(db, "views/tune.py", run=rid_text, family="confidence")
    said = [i.value for i in at.main.info]
    assert any(i.startswith("Answer confidence needs probe signals this run does not have; showing") for i in said), said
    assert at.query_params["family"] == "confidence"
    with_signals = _open(db, "views/tune.py", run=rid, family="confidence")
    assert not with_signals.main.info and with_signals.sidebar.selectbox(key="family").value == "confidence"


def test_a_link_naming_an_unknown_question_says_which_it_shows_instead(synthetic_db):
    db, rid, _ = synthetic_db
    at = _open(db, "views/questions.py", run=rid, q="qNOPE[x](http://a.b)")
    shown = at.subheader[0].value.removeprefix("Trace of ")
    (w,) = [w.value for w in at.main.warning]
    assert w == (f"The question this link names, 'qNOPE?x?(http:??a.b)', is not in this run; showing {shown} "
                 "instead (the first in the table below)."), w
    assert at.query_params["q"] == shown


def test_a_value_from_a_link_is_named_without_its_markdown():
    """A link is anyone's text: emphasis, links and HTML in it are not drawn where a message names it."""
    from views.data import link_text
    shown = link_text("__x__ *y* [a](http://x) <b>")
    assert "__" not in shown.replace("\\_", "") and "*" not in shown and "](" not in shown and "<" not in shown
    assert link_text("q_12") == "q\\_12"                      # an id's underscore stays readable
