"""The Frontier chart as an ECharts option (``st.echarts_chart``), built from a sweep's points.

Why ECharts here while the other pages draw with Plotly: the Frontier is the page the dashboard opens on, and
Streamlit's Plotly element makes a fresh browser fetch and evaluate a 4.7 MB chunk before anything is drawn;
its ECharts element is 1.2 MB. On the 2-core benchmark machine that is about 0.9 s of a first load
(docs/benchmarks.md). The other pages load Plotly when they are opened.

``frontier_option`` is plain Python (no Streamlit), so it is tested on its own: it returns the option and,
for each series, the setting JSON of each of its points (None where a series is not clickable), which is how
a click reported as (series index, data index) becomes a setting again."""
from __future__ import annotations

import pandas as pd

from analysis.evaluate.incumbent import LABEL as INCUMBENT
from analysis.core.palette import FAMILY_COLORS as COLORS, INCUMBENT_COLOR, INCUMBENT_EDGE

# other runs' fronts: each its own colour (none a family's), marker and dash, so that their legend entries differ
OTHER_LOOKS = (("#0f172a", "rect", [8, 4]), ("#0891b2", "triangle", [8, 3, 2, 3]), ("#a16207", "circle", [14, 4]),
               ("#be123c", "pin", [4, 3]), ("#4d7c0f", "roundRect", [2, 2]), ("#6d28d9", "arrow", [10, 2, 2, 2]))
LEGEND_WIDTH = 640     # px the legend may count on per line (the chart's width on a narrow window)


def legend_rows(names: list[str], width: int = LEGEND_WIDTH) -> int:
    """How many lines ECharts' legend takes for these entries (its 12 px font: about 7 px a character, plus the
    icon and the gaps), so that the grid leaves room for them below the x-axis title."""
    rows, used = 1, 0
    for n in names:
        w = 7 * len(n) + 45
        if used and used + w > width:
            rows, used = rows + 1, 0
        used += w
    return rows


STAR = ("path://M50 0L61.8 35.1L100 35.1L69.1 56.7L80.9 91.9L50 70.2L19.1 91.9L30.9 56.7L0 35.1L38.2 35.1Z")


def _points(df: pd.DataFrame, x: str) -> list[dict]:
    """Each point: its setting's label as its name, and the rounded numbers the tooltip shows as two more
    dimensions (ECharts escapes what a template inserts, so the line breaks live in the template)."""
    return [{"value": [float(a), float(b), f"{a:.0f}", f"{b:.3f}"], "name": str(lab)}
            for a, b, lab in zip(df[x], df["em"], df["label"])]


TIP = "{b}<br/>{@[2]} tokens, EM {@[3]}"
CLICK_TIP = {"formatter": TIP + "<br/><i>click to make it current</i>"}


def frontier_option(pts: pd.DataFrame, x: str, axis_title: str, others: list[tuple[str, pd.DataFrame]] = (),
                    current: tuple[float, float, str] | None = None,
                    incumbent: tuple[float, float] | None = None) -> tuple[dict, list[list[str] | None]]:
    """``pts``: a sweep (frontier.sweep's columns); ``x``: 'emitted' or 'computed'; ``others``: (name, sweep)
    of other runs, drawn as their Pareto fronts; ``current``: (x, EM, label) of the current setting;
    ``incumbent``: (x, EM) of the user's own stopper (analysis/incumbent.py), a labelled point of its own."""
    suffix = "" if x == "emitted" else "_computed"
    series: list[dict] = []
    picks: list[list[str] | None] = []

    def add(s: dict, settings: list[str] | None = None):
        series.append(s)
        picks.append(settings)

    for fam, g in pts[pts.family != "full"].groupby("family", sort=False):
        color = COLORS.get(fam, "#475569")
        front = g[g["pareto_family" + suffix]].sort_values(x)
        rest = g[~g["pareto_family" + suffix]]
        # the front first: a legend entry takes its look from the first series of its name
        add({"type": "line", "name": fam, "data": [p["value"] for p in _points(front, x)], "silent": True,
             "showSymbol": False, "z": 2, "lineStyle": {"color": color, "width": 2}, "itemStyle": {"color": color},
             "tooltip": {"show": False}})
        add({"type": "scatter", "name": fam, "data": _points(front, x), "symbolSize": 9, "selectedMode": "single",
             "z": 3, "tooltip": CLICK_TIP,
             "itemStyle": {"color": color, "opacity": 0.9}}, list(front.setting))
        add({"type": "scatter", "name": fam, "data": _points(rest, x), "symbolSize": 7, "selectedMode": "single",
             "z": 1, "tooltip": CLICK_TIP,
             "itemStyle": {"color": color, "opacity": 0.25}}, list(rest.setting))
    hull = pts[pts["hull" + suffix]].sort_values(x)
    add({"type": "line", "name": "convex hull (mixing settings)", "silent": True, "showSymbol": False,
         "data": [[float(a), float(b)] for a, b in zip(hull[x], hull["em"])], "tooltip": {"show": False},
         "lineStyle": {"color": "#111827", "type": "dotted", "width": 2}, "itemStyle": {"color": "#111827"}})
    add({"type": "scatter", "name": "full length", "symbol": STAR, "symbolSize": 18, "z": 4,
         "data": _points(pts[pts.family == "full"].assign(label="full length"), x),
         "itemStyle": {"color": "gold", "borderColor": "#111827", "borderWidth": 1}})
    for i, (name, op) in enumerate(others):
        front = op[op["pareto" + suffix]].sort_values(x)
        color, symbol, dash = OTHER_LOOKS[i % len(OTHER_LOOKS)]
        add({"type": "line", "name": f"{name} (front)", "data": _points(front, x), "symbol": symbol,
             "symbolSize": 7, "lineStyle": {"color": color, "width": 1.5, "type": dash},
             "itemStyle": {"color": color}})
        add({"type": "scatter", "name": f"{name} (front)", "symbol": STAR, "symbolSize": 15,
             "data": _points(op[op.family == "full"].assign(label=f"{name}: full length"), x),
             "itemStyle": {"color": "white", "borderColor": color, "borderWidth": 1.5}})
    if incumbent is not None:
        ix, iy = incumbent
        add({"type": "scatter", "name": INCUMBENT, "symbol": "diamond", "symbolSize": 17, "z": 6,
             "data": [{"value": [float(ix), float(iy), f"{ix:.0f}", f"{iy:.3f}"], "name": INCUMBENT}],
             "label": {"show": True, "position": "bottom", "formatter": INCUMBENT, "color": "#7c2d12",
                       "fontWeight": "bold"},
             "itemStyle": {"color": INCUMBENT_COLOR, "borderColor": INCUMBENT_EDGE, "borderWidth": 1.5}})
    if current is not None:
        cx, cy, label = current
        add({"type": "scatter", "name": "current setting", "symbol": "circle", "symbolSize": 24, "z": 5,
             "data": [{"value": [float(cx), float(cy), f"{cx:.0f}", f"{cy:.3f}"], "name": f"current: {label}"}],
             "itemStyle": {"color": "rgba(0,0,0,0)", "borderColor": "#dc2626", "borderWidth": 3}})
    legend = list(dict.fromkeys(s["name"] for s in series))
    extra = 22 * (legend_rows(legend) - 1)           # a legend of several lines pushes the axis title up above it
    option = {
        "animation": False,
        "grid": {"left": 24, "right": 16, "top": 24, "bottom": 56 + extra},
        "tooltip": {"trigger": "item", "formatter": TIP},
        "legend": {"data": legend, "bottom": 0, "itemGap": 12},
        "xAxis": {"type": "value", "scale": True, "name": axis_title, "nameLocation": "middle", "nameGap": 32},
        "yAxis": {"type": "value", "scale": True, "name": "exact match", "nameLocation": "middle", "nameGap": 44},
        "series": series,
    }
    return option, picks


def picked_setting(event, picks: list[list[str] | None]) -> str | None:
    """The setting JSON of the point a click selected, from ``st.echarts_chart``'s event (None: nothing)."""
    sel = (event or {}).get("selection") or {}
    for group in sel.get("selected") or ():
        settings = picks[group["series_index"]] if group.get("series_index", -1) < len(picks) else None
        idx = group.get("data_indices") or ()
        if settings and idx and 0 <= idx[0] < len(settings):
            return settings[idx[0]]
    return None
