"""Reports a stakeholder can read: headline numbers, the frontier, where the losses come from, and the
recommended operating point with its CIs — as one self-contained HTML file (charts inlined as SVG), PNG
and SVG charts (kaleido, on the system Chromium) and a Markdown summary."""
from __future__ import annotations

import base64
import html
import io
import re
import shlex
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis.core.errors import StoplineError
from analysis.core.palette import FAMILY_COLORS as COLORS, INCUMBENT_COLOR, INCUMBENT_EDGE
from analysis.core.store import portable_path
from analysis.evaluate.compare import default_slice
from analysis.evaluate.frontier import sweep
from analysis.evaluate.incumbent import beat, headline, incumbent_outcome, LABEL as INCUMBENT
from analysis.evaluate.optimize import evaluate, evaluate_outcome, operating_point
from analysis.evaluate.certify import preset_certificate_words
from analysis.evaluate.stats import N_BOOT
from analysis.presets.routing import preset_outcome
from analysis.presets.schema import Preset
from analysis.replay.engine import outcome_from_stops, RunTable, stop_index
from analysis.replay.policies.base import SCHEDULE_DEFAULTS, Setting, describe_schedule
from analysis.replay.slices import slice_labels, slice_order



def frontier_figure(t: RunTable, presets: list[tuple[Preset, dict]], pts=None, title: str = "",
                    incumbent: dict | None = None, recommended: tuple[str, dict] | None = None,
                    cost: str = "emitted") -> go.Figure:
    """``incumbent``: the incumbent's summary (Outcome.summary), drawn as its own point; ``recommended``: (label,
    summary on the same questions) of the recommendation, marked on the frontier. Presets and the recommendation
    are named in the legend, not beside their points (a label there overlapped the full-length star). ``cost``:
    the tokens on the x axis, emitted or computed (the probes' included), each with its own fronts."""
    pts = sweep(t) if pts is None else pts
    x, key = cost, f"tokens_{cost}"
    fig = go.Figure()
    for fam, g in pts[pts.family != "full"].groupby("family", sort=False):
        front = g[g["pareto_family" + ("" if cost == "emitted" else "_computed")]].sort_values(x)
        fig.add_scatter(x=front[x], y=front["em"], mode="lines+markers", name=fam,
                        line=dict(color=COLORS.get(fam)), marker=dict(size=6))
    full = pts[pts.family == "full"].iloc[0]
    fig.add_scatter(x=[full[x]], y=[full["em"]], mode="markers", name="full length",
                    marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)))
    if incumbent is not None:
        fig.add_scatter(x=[incumbent[key]], y=[incumbent["em"]], mode="markers+text", name=INCUMBENT,
                        text=[INCUMBENT], textposition="bottom center",
                        marker=dict(symbol="diamond", size=15, color=INCUMBENT_COLOR,
                                    line=dict(color=INCUMBENT_EDGE, width=1.5)))       # as on the Frontier
    for p, res in presets:
        fig.add_scatter(x=[res[key]], y=[res["em"]], mode="markers", name=p.name,
                        marker=dict(symbol="square", size=11, color="black"))
    if recommended is not None:
        fig.add_scatter(x=[recommended[1][key]], y=[recommended[1]["em"]], mode="markers",
                        name=f"recommended: {recommended[0]}",
                        marker=dict(symbol="circle-open", size=20, line=dict(width=3),    # its family's colour
                                    color=COLORS.get(recommended[0].split("(")[0], "black")))
    fig.update_layout(title=title or "Tokens vs exact match, every policy family's Pareto front", height=460,
                      width=900, xaxis_title="mean tokens emitted per question" if cost == "emitted" else
                      "mean tokens computed per question (probes included)", yaxis_title="exact match",
                      legend=dict(orientation="h", y=-0.22), margin=dict(t=50, l=60, r=20, b=40),
                      template="plotly_white")
    return fig


def losses_figure(t: RunTable, stops: np.ndarray, by: str, name: str, questions: str = "") -> go.Figure:
    """Lost and gained answers of one setting (``name``), by slice; ``questions`` says which ones."""
    o = outcome_from_stops(t, stops, name)
    labels = slice_labels(t, by)
    cats = slice_order(labels)
    oc = o.outcome
    fig = go.Figure()
    most = 0
    for code, lab, color in ((2, "lost (right at full length, wrong when stopped)", "#dc2626"),
                             (3, "gained (wrong at full length, right when stopped)", "#16a34a")):
        counts = [int(((labels == c) & (oc == code)).sum()) for c in cats]
        most = max([most, *counts])
        fig.add_bar(x=[str(c) for c in cats], y=counts, name=lab, marker_color=color)
    # whole questions on the axis: a step of 1 for a few, else about five round steps
    fig.update_yaxes(dtick=max(1, int(np.ceil(most / 5))), rangemode="tozero", tickformat="d")
    fig.update_layout(title=f"Answers lost and gained by the recommendation, by {by}<br><sup>{name}"
                            f"{', ' + questions if questions else ''}</sup>", barmode="group", height=360,
                      width=900, xaxis_title=by, yaxis_title="questions", template="plotly_white", xaxis_type="category",
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=50, l=60, r=20, b=40))
    return fig


def build(tables: list[tuple[dict, RunTable]], presets: list[Preset], drop: float = 0.01, slice_by: str | None = None,
          images: bool = True, n_boot: int = N_BOOT, store: str | None = None, cost: str = "emitted") -> dict:
    """The report for one or more runs: {"html", "markdown", "figures": {name: Figure}, "images": {file: bytes}}.
    It ends with how to reproduce it: the runs, ``store`` (the store's path, or the name to show for it), each
    setting's label and ``sl1.…`` code, and the commands that rebuild the report and replay the recommendation.

    A run with an incumbent (the user's own stopper, analysis/incumbent.py) opens the report with the answer
    to its question (``incumbent.headline``, on the held-out split) and is drawn on the frontier.

    ``cost``: the tokens the recommendation saves, 'emitted' (what the model writes) or 'computed' (the probes'
    tokens included); on the emitted basis a recommendation that computes more than full length says so in its
    own sentence."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figs: dict[str, go.Figure] = {}
    md = [f"# Early stopping: what it saves and what it costs", "", f"_Stopline report, {now}._", ""]
    sections = []
    recommended: list[tuple[str, Preset]] = []      # (run id, the recommendation as a preset), for Reproduce
    answers: list[str] = []                 # the user's question answered first, for runs with an incumbent
    for k, (run, t) in enumerate(tables):
        pts = sweep(t)
        full = pts[pts.family == "full"].iloc[0]
        rows = []
        for p in presets:
            try:
                rows.append((p, evaluate_outcome(preset_outcome(t, p), n_boot)))
            except Exception as e:        # noqa: BLE001 - a preset this run cannot replay (no signals)
                rows.append((p, {"error": str(e)}))
        head = f"{run['model']} on {run['dataset']}"
        inc = whole = None
        if t.incumbent is not None:
            inc = incumbent_outcome(t).summary()
            try:
                res = beat(t, drop, cost, n_boot=n_boot)       # its within-drop choice is the recommendation below
            except StoplineError as e:                   # a run too small to split
                answers += ([f"**{head}**:"] if len(tables) > 1 else []) + [f"No comparison: {e}", ""]
                op = {"error": str(e)}
                whole = evaluate_outcome(incumbent_outcome(t), n_boot)     # its own figures need no split
            else:
                answers += ([f"**{head}**:"] if len(tables) > 1 else []) + [*headline(res), ""]
                whole = res["incumbent"]["all"]           # a row of the table on all questions, beside the presets
                op = res["within_drop"] or {"error": f"no setting meets drop = {drop:g} on the tune split"}
        else:
            try:
                op = operating_point(t, "drop", drop, cost, n_boot=n_boot)
            except Exception as e:            # noqa: BLE001
                op = {"error": str(e)}
        by = slice_by or default_slice(t)
        every = f"all {t.n} questions"
        rec = rec_stops = None
        if "error" not in op:       # the recommendation on the same (all) questions as the presets' rows
            rec_setting = Setting.from_dict(op["setting"])
            rec_stops = stop_index(t, rec_setting)
            rec = evaluate(t, rec_stops, op["label"], n_boot, rec_setting)
            rows.append((Preset(f"recommended: {op['label']}", Setting.from_dict(op["setting"])), rec))
        fig = frontier_figure(t, [(p, r) for p, r in rows if "error" not in r and r is not rec], pts,
                              f"{head}<br><sup>tokens vs exact match, every family's Pareto front; {every}</sup>",
                              inc, (op["label"], rec) if rec is not None else None, cost)
        figs[f"frontier_{k}"] = fig
        if rec is not None:
            figs[f"losses_{k}"] = losses_figure(t, rec_stops, by, op["label"], every)
        md += [f"## {head}", "", f"{t.n} questions; at full length EM **{full['em']:.3f}** with "
               f"**{full['emitted']:.0f}** tokens per question.", ""]
        if "error" not in op:
            te = op["test"]
            ci = te["ci"]
            sav, more = f"savings_{cost}", -te["savings_computed"]
            basis = "tokens" if cost == "emitted" else "tokens computed (probes included)"
            saved = f"saving **{te[sav]:.0%}** of {'emitted tokens' if more > 0 else basis} (95% CI {ci[sav][0]:.0%} … {ci[sav][1]:.0%})"
            if cost == "emitted":       # what its probes cost said in the same sentence, in red when more than full length
                saved += (", " + red_md(f"but computing {more:.0%} more than full length counting its probes")
                          if more > 0 else f"; {te['savings_computed']:.0%} counting the probes")
            else:
                saved += f"; {te['savings_emitted']:.0%} of the tokens emitted"
            md += [f"**Recommendation**: `{op['label']}` — the fewest {basis} that keep EM within {drop * 100:.3g} "
                   f"points of full length on the tune half; on the held-out half ({te['n']} questions) EM "
                   f"{te['em']:.3f} vs {te['em_full']:.3f} at full length (ΔEM {te['delta_em']:+.3f}, 95% CI "
                   f"{ci['delta_em'][0]:+.3f} … {ci['delta_em'][1]:+.3f}; McNemar p = {te['mcnemar']['p_value']:.2g}), "
                   f"{saved}."
                   + (" " + red_md(f"It {op['missed']}.") if op.get("missed") else "")
                   + (" " + red_md(f"Counting its probes it computes {more:.0%} more tokens than full length.")
                      if cost == "computed" and more > 0 else ""), "", _probing(op), ""]
        else:
            md += [f"No recommendation: {op['error']}", ""]
        if rows or whole:
            md += [f"{'Your mechanism, the presets' if whole else 'Presets'} and the recommendation on {every} (the "
                   "recommendation's held-out numbers are above):",
                   "", "| preset | EM | ΔEM (95% CI) | tokens | saved | saved incl. probes | lost | gained |",
                   "|---|---|---|---|---|---|---|---|"]
            for name, r in ([("your mechanism", whole)] if whole else []) + [(p.name, r) for p, r in rows]:
                if "error" in r:
                    md.append(f"| {name} | – | cannot replay: {r['error'][:80]} | | | | | |")
                    continue
                c = r["ci"]
                md.append(f"| {name} | {r['em']:.3f} | {r['delta_em']:+.3f} ({c['delta_em'][0]:+.3f} … "
                          f"{c['delta_em'][1]:+.3f}) | {r['tokens_emitted']:.0f} | {r['savings_emitted']:.0%} | "
                          f"{r['savings_computed']:.0%} | {r['lost']} | {r['gained']} |")
            md.append("")
            for p, _ in rows:
                if p.certificate:
                    md += [f"**Certificate of {p.name}**: {preset_certificate_words(p.certificate, t.run_id)}", ""]
        md += [f"![frontier](figures/frontier_{k}.png)", ""]
        if f"losses_{k}" in figs:
            md += [f"![losses](figures/losses_{k}.png)", ""]
        sections.append((head, t, full, op, rows, k))
        if "error" not in op:
            recommended.append((t.run_id, Preset(f"recommended on {t.run_id}", Setting.from_dict(op["setting"]))))
    md += ["## How to read this", "",
           "Every number comes from replaying the stopping rules on stored checkpoints of real runs: at each "
           "checkpoint the model was asked for its answer so far, so a rule's stop and the answer it would give "
           "there are known for every question without re-running the model. Settings are chosen on one half "
           "of the questions (a fixed hash of their ids) and reported on the other; confidence intervals "
           "resample questions (paired bootstrap); McNemar's test compares the same questions stopped and run "
           "to the end. 'Tokens' counts what the model writes; 'incl. probes' adds the tokens spent asking for "
           "interim answers.", ""]
    md += _reproduce([run for run, _ in tables], presets, recommended, store, drop, slice_by, cost)
    md[4:4] = answers
    drawn = "\n".join(md)          # every chart named: the HTML draws each (an image, else interactive)
    imgs: dict[str, bytes] = {}
    if images:
        import plotly.io as pio
        names = list(figs)
        for fmt in ("png", "svg"):
            import tempfile
            with tempfile.TemporaryDirectory() as d:
                paths = [Path(d) / f"{n}.{fmt}" for n in names]
                pio.write_images([figs[n] for n in names], paths, format=fmt, scale=2 if fmt == "png" else 1)
                for n, p in zip(names, paths):
                    imgs[f"figures/{n}.{fmt}"] = p.read_bytes()
    page = _html(drawn, figs, imgs, now)
    return {"html": page, "markdown": _charts_md(drawn, imgs), "figures": figs, "images": imgs}


def _reproduce(runs: list[dict], presets: list[Preset], recommended: list[tuple[str, Preset]], store: str | None,
               drop: float, slice_by: str | None, cost: str = "emitted") -> list[str]:
    """The report's last section: what it was made from (runs, store, each setting's label and its ``sl1.…``
    code, a preset link the Compare page and ``eval --preset`` take) and the commands that make it again."""
    db = portable_path(store) if store and Path(store).exists() else store
    where = [] if db is None else ["--db", db]
    again = ["python", "-m", "analysis", "report", *where, *[a for r in runs for a in ("--run", r["id"])],
             *[a for p in presets for a in ("--preset", p.to_url())], "--drop", f"{drop:g}",
             *(["--slice-by", slice_by] if slice_by else []), *(["--cost", cost] if cost != "emitted" else [])]
    md = ["## Reproduce", "",
          "; ".join(f"Run `{r['id']}` ({r['model']} on {r['dataset']})" for r in runs)
          + (f", in the store `{db}`." if db else "."), "",
          f"This report again: `{shlex.join(again)}`", ""]
    if presets or recommended:
        md += ["Each setting's code is its preset link: paste it into Compare or Questions, or replay it with "
               "`python -m analysis eval --preset CODE`.", "", "| setting | rule | code |", "|---|---|---|"]
        md += [f"| {_cell(p.name)} | `{p.setting.label()}` | `{p.to_url()}` |" for p in presets]
        md += [f"| {_cell(p.name)} | `{p.setting.label()}` | `{p.to_url()}` |" for _, p in recommended]
        md.append("")
    for rid, p in recommended:
        check = ["python", "-m", "analysis", "eval", *where, "--run", rid, "--preset", p.to_url()]
        md += [f"The recommendation on run `{rid}`, on all its questions: `{shlex.join(check)}`; on the held-out "
               f"half it was checked on: `{shlex.join([*check, '--split', 'test'])}`", ""]
    return md


def _cell(text: str) -> str:
    """Text for a Markdown table cell: no pipe or line break to break the table."""
    return text.replace("|", "/").replace("\n", " ")


def _probing(op: dict) -> str:
    """The recommended setting's probe schedule and what its probes cost (on the held-out half)."""
    pr = op.get("probes") or {}
    if not pr.get("per_question"):
        return "**Probe schedule**: none needed (the rule reads no trial answer): no probe tokens."
    d = describe_schedule({k: v for k, v in (op.get("schedule") or {}).items() if v != SCHEDULE_DEFAULTS.get(k)})
    return (f"**Probe schedule**: {d or 'every checkpoint the run recorded'}; {pr['per_question']:.1f} probes and "
            f"{pr['tokens']:.0f} probe tokens per question on the held-out half.")


def _html(markdown: str, figs: dict, imgs: dict, now: str) -> str:
    """Self-contained HTML: the Markdown rendered simply, charts inlined (SVG, else interactive plotly)."""
    out = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("!["):
            name = line.split("figures/")[1].split(".png")[0]
            svg = imgs.get(f"figures/{name}.svg")
            if svg is not None:
                out.append(f"<div class='fig'><img alt='{name}' src='data:image/svg+xml;base64,"
                           f"{base64.b64encode(svg).decode()}'/></div>")
            else:
                out.append(figs[name].to_html(full_html=False, include_plotlyjs="inline"))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    css = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#1f2937;line-height:1.5}"
           "table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #d1d5db;padding:4px 8px;"
           "text-align:right}th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}"
           "code{background:#f3f4f6;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}.fig img{max-width:100%}"
           ".miss{color:#dc2626;font-weight:600}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Stopline report {html.escape(now)}</title>"
            f"<style>{css}</style></head><body>{''.join(out)}</body></html>")


WARNING = "⚠"
_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|$~]")
_RED_MD = re.compile(r"\*\*" + WARNING + r" ((?:[^*\\]|\\.)+?)\*\*")     # red_md's, once HTML-escaped


def red_md(text: str) -> str:
    """``text`` as a warning in plain Markdown: bold, after a warning sign (``**⚠ …**``), which every Markdown
    viewer shows (LaTeX colour, ``$\\color{red}…$``, showed as its source in most); what Markdown would read in
    it (``*``, ``_``, a backtick, ``$`` …) is escaped. The HTML report draws it as a red span (``_inline``)."""
    return f"**{WARNING} {_MD_SPECIAL.sub(lambda m: chr(92) + m.group(), text)}**"


def _red_html(m: "re.Match") -> str:
    text = re.sub(r"\\(.)", r"\1", m.group(1))
    return f"<span class='miss'>{text.replace('_', '&#95;').replace('*', '&#42;').replace('`', '&#96;')}</span>"


def _inline(s: str) -> str:
    import re
    s = _RED_MD.sub(_red_html, html.escape(s))
    # code first, its _ and * kept from the bold and italics below (a sl1.… code holds both)
    s = re.sub(r"`(.+?)`", lambda m: f"<code>{m.group(1).replace('_', '&#95;').replace('*', '&#42;')}</code>", s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"<i>\1</i>", s)
    return s


_CHART_MD = re.compile(r"!\[([^\]]*)\]\(figures/([\w-]+)\.png\)")


def _charts_md(markdown: str, images: dict, inline: bool = False) -> str:
    """The Markdown's charts: a link to each PNG written (``inline``: the PNG itself, as a data URI); a chart
    whose image was not written (``--no-images``, no Chromium for kaleido) is named instead, never linked."""
    def chart(m):
        png = images.get(f"figures/{m.group(2)}.png")
        if png is None:
            return f"_(chart {m.group(2)}: in the HTML report)_"
        if not inline:
            return m.group()
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(png).decode()})"
    return _CHART_MD.sub(chart, markdown)


def self_contained_markdown(rep: dict) -> str:
    """The Markdown summary with its charts inlined (PNG data URIs), so the one file is the whole summary; a chart
    without an image (no Chromium for kaleido) is named instead."""
    return _charts_md(rep["markdown"], rep["images"], inline=True)


def zip_bundle(rep: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.html", rep["html"])
        z.writestr("report.md", rep["markdown"])
        for name, data in rep["images"].items():
            z.writestr(name, data)
    return buf.getvalue()
