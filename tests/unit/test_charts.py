"""The Frontier chart's ECharts option, built from a real sweep (no browser: tests/browser/test_dashboard.py clicks it)."""
import json

from analysis.evaluate.frontier import sweep
from analysis.replay.policies import Setting
from analysis.replay.engine import RunTable
from analysis.core.store import Store
from views.charts import frontier_option, picked_setting


def _sweep(synthetic_db):
    db, rid, _ = synthetic_db
    return sweep(RunTable.from_store(Store(db, read_only=True), rid), ["budget", "consistency", "confidence"])


def test_every_setting_is_a_clickable_point_and_a_click_maps_back_to_it(synthetic_db):
    pts = _sweep(synthetic_db)
    option, picks = frontier_option(pts, "emitted", "mean tokens emitted")
    json.dumps(option)                                        # what Streamlit sends must be plain JSON
    assert len(picks) == len(option["series"])
    clickable = [s for p in picks if p for s in p]
    assert sorted(clickable) == sorted(pts[pts.family != "full"].setting)      # each setting once
    # a click on the third point of the first clickable series, as st.echarts_chart reports it
    i = next(k for k, p in enumerate(picks) if p and len(p) > 2)
    event = {"selection": {"selected": [{"series_index": i, "data_indices": [2], "data_type": "main"}], "areas": []}}
    got = picked_setting(event, picks)
    s = option["series"][i]
    assert got == picks[i][2] and Setting.from_dict(json.loads(got)).family == s["name"]
    row = pts[pts.setting == got].iloc[0]
    assert s["data"][2]["value"][:2] == [row.emitted, row.em] and s["data"][2]["name"] == row.label
    # nothing picked, a series that is not clickable, an index out of range
    assert picked_setting(None, picks) is None
    assert picked_setting({"selection": {"selected": []}}, picks) is None
    hull = next(k for k, s in enumerate(option["series"]) if s["name"].startswith("convex hull"))
    assert picked_setting({"selection": {"selected": [{"series_index": hull, "data_indices": [0]}]}}, picks) is None
    assert picked_setting({"selection": {"selected": [{"series_index": i, "data_indices": [10**6]}]}}, picks) is None


def test_cost_axis_other_runs_and_the_current_setting(synthetic_db):
    pts = _sweep(synthetic_db)
    option, _ = frontier_option(pts, "computed", "mean tokens computed", others=[("other model", pts)],
                                current=(50.0, 0.5, "budget(B=50)"))
    names = [s["name"] for s in option["series"]]
    assert {"full length", "convex hull (mixing settings)", "other model (front)", "current setting"} <= set(names)
    assert option["legend"]["data"] == list(dict.fromkeys(names))            # one legend entry per name
    full = next(s for s in option["series"] if s["name"] == "full length")["data"][0]["value"]
    row = pts[pts.family == "full"].iloc[0]
    assert full[:2] == [row.computed, row.em]                                # x follows the cost axis
    hull = next(s for s in option["series"] if s["name"].startswith("convex hull"))["data"]
    assert [p[0] for p in hull] == sorted(p[0] for p in hull) and len(hull) == int(pts.hull_computed.sum())
    cur = next(s for s in option["series"] if s["name"] == "current setting")["data"][0]
    assert cur["value"][:2] == [50.0, 0.5] and cur["name"] == "current: budget(B=50)"


def test_the_incumbent_is_its_own_labelled_point(synthetic_db):
    pts = _sweep(synthetic_db)
    option, picks = frontier_option(pts, "emitted", "mean tokens emitted", incumbent=(120.5, 0.41))
    json.dumps(option)
    i, s = next((k, s) for k, s in enumerate(option["series"]) if s["name"] == "your mechanism")
    assert s["data"] == [{"value": [120.5, 0.41, "120", "0.410"], "name": "your mechanism"}]
    assert s["symbol"] == "diamond" and s["label"]["show"] and s["label"]["formatter"] == "your mechanism"
    others = {x.get("itemStyle", {}).get("color") for x in option["series"] if x is not s}
    assert s["itemStyle"]["color"] not in others and s["symbol"] not in {x.get("symbol") for x in option["series"]
                                                                         if x is not s}
    assert "your mechanism" in option["legend"]["data"] and picks[i] is None     # drawn, not a setting to pick
    plain, _ = frontier_option(pts, "emitted", "mean tokens emitted")
    assert "your mechanism" not in plain["legend"]["data"]


def test_other_runs_fronts_look_apart_and_the_legend_keeps_clear_of_the_axis_title(synthetic_db):
    """Each other run's front has its own colour and marker (its legend entry tells it apart), and a legend of
    several lines pushes the grid's bottom (where the x-axis title sits) up above it."""
    pts = _sweep(synthetic_db)
    alone, _ = frontier_option(pts, "emitted", "mean tokens emitted")
    names = [f"a model with a rather long name · dataset {i}" for i in range(3)]
    option, _ = frontier_option(pts, "emitted", "mean tokens emitted", others=[(n, pts) for n in names])
    fronts = [s for s in option["series"] if s["name"].endswith("(front)") and s["type"] == "line"]
    assert len(fronts) == 3
    looks = {(s["itemStyle"]["color"], s["symbol"]) for s in fronts}
    assert len({c for c, _ in looks}) == 3 and len({m for _, m in looks}) == 3
    assert option["grid"]["bottom"] > alone["grid"]["bottom"]
    from views.charts import legend_rows
    assert legend_rows(option["legend"]["data"]) >= 3 and legend_rows(["budget"]) == 1
