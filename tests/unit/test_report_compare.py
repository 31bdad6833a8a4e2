"""Paired comparison of presets, and the report built from them."""
import numpy as np

from analysis.evaluate.compare import compare
from analysis.presets.schema import from_dict
from analysis.replay.engine import RunTable
from analysis.core.store import Store


def _p(name, fam, **params):
    return from_dict({"stopline_preset": 1, "name": name, "setting": {"family": fam, "params": params}})


def test_compare_is_paired_and_consistent(synthetic_db):
    db, rid, _ = synthetic_db
    t = RunTable.from_store(Store(db, read_only=True), rid)
    a, b = _p("k2", "consistency", k=2), _p("k5", "consistency", k=5)
    r = compare(t, a, b, "meta.difficulty")
    assert r["both_right"] + r["a_only"] + r["b_only"] + r["both_wrong"] == t.n
    assert np.isclose(r["delta_em"], (r["b_only"] - r["a_only"]) / t.n)
    assert r["delta_em_ci"][0] <= r["delta_em"] <= r["delta_em_ci"][1]
    assert r["delta_tokens"] > 0 and r["delta_tokens_ci"][0] > 0          # waiting for 5 agreeing answers costs tokens
    assert r["mcnemar"]["b"] == r["a_only"] and r["mcnemar"]["c"] == r["b_only"]
    assert r["slices"]["n"].sum() == t.n
    same = compare(t, a, a)
    assert same["delta_em"] == 0 and same["delta_em_ci"] == (0.0, 0.0) and same["mcnemar"]["p_value"] == 1.0
    quick = compare(t, a, b, "meta.difficulty", n_boot=0)      # the normal approximation, slices too
    assert quick["delta_em_ci"][0] <= quick["delta_em"] <= quick["delta_em_ci"][1]
    assert quick["slices"]["delta_em_ci"].notna().all()


def test_report_cli_writes_html_markdown_and_charts(synthetic_db, cli, tmp_path):
    db, rid, _ = synthetic_db
    code, out, err = cli("report", "--run", rid, "--db", db, "--out", tmp_path / "r", "--preset",
                         '{"stopline_preset": 1, "name": "k3", "setting": {"family": "consistency", "params": {"k": 3}}}')
    assert code == 0, err
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Recommendation" in page and "k3" in page and "data:image/svg+xml" in page
    assert (tmp_path / "r" / "figures" / "frontier_0.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| k3 |" in md and "figures/frontier_0.png" in md
    assert "**Probe schedule**:" in md         # the recommendation's schedule and its probe cost


def test_report_without_images_links_no_image_it_did_not_write(synthetic_db, cli, tmp_path):
    """report --no-images wrote Markdown image links to figures/frontier_0.png and losses_0.png, files it did not
    write. Now each chart is named there instead (the HTML report draws it), and no figures/ folder is made."""
    db, rid, _ = synthetic_db
    code, out, err = cli("report", "--run", rid, "--db", db, "--out", tmp_path / "r", "--no-images")
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "figures/" not in md and "![" not in md
    assert "_(chart frontier_0: in the HTML report)_" in md and "_(chart losses_0: in the HTML report)_" in md
    assert not (tmp_path / "r" / "figures").exists()
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("class=\"plotly-graph-div\"") == 2         # both charts, interactive


def test_the_report_says_how_to_reproduce_it_and_its_commands_do(synthetic_db, cli, tmp_path):
    """The report named no run, no setting code and no command: it could not be traced back to its setting. Its
    Reproduce section names the run, the store, each setting's label and sl1.… code; its report command rebuilds
    the same report and its eval command gives the recommendation's row."""
    import json
    import re
    import shlex

    from analysis.evaluate.report import build
    from analysis.presets.schema import loads
    db, rid, _ = synthetic_db
    s = Store(db, read_only=True)
    k3 = _p("k3", "consistency", k=3)
    rep = build([(s.run(rid), RunTable.from_store(s, rid))], [k3], drop=0.02, images=False, store=db)
    md = rep["markdown"]
    repro = md[md.index("## Reproduce"):]
    assert f"Run `{rid}`" in repro and f"in the store `{db}`" in repro
    assert f"| k3 | `{k3.setting.label()}` | `{k3.to_url()}` |" in repro
    (rec,) = re.findall(r"\| recommended on \S+ \| `[^`]+` \| `(sl1\.[\w.-]+)` \|", repro)
    (row,) = [line for line in md.splitlines() if line.startswith("| recommended: ")]
    assert loads(rec).setting.label() in row
    assert "<h2>Reproduce</h2>" in rep["html"] and f"<code>{rid}</code>" in rep["html"]
    again = shlex.split(re.search(r"This report again: `([^`]+)`", repro).group(1))
    assert again[:4] == ["python", "-m", "analysis", "report"]
    code, _, err = cli(*again[3:], "--no-images", "--out", tmp_path / "again")
    assert code == 0, err
    stamp = re.compile(r"_Stopline report, .*?_")
    assert stamp.sub("", (tmp_path / "again" / "report.md").read_text()) == stamp.sub("", md)
    check = shlex.split(re.search(r"on all its questions: `([^`]+)`", repro).group(1))
    assert check[:4] == ["python", "-m", "analysis", "eval"]
    code, out, err = cli(*check[3:], "--json")
    assert code == 0, err
    res = json.loads(out)
    lo, hi = res["ci"]["delta_em"]
    want = f"| {res['em']:.3f} | {res['delta_em']:+.3f} ({lo:+.3f} … {hi:+.3f}) | {res['tokens_emitted']:.0f} |"
    assert want in row
    held = shlex.split(re.search(r"the held-out half it was checked on: `([^`]+)`", repro).group(1))
    code, out, err = cli(*held[3:], "--json")                 # the recommendation's held-out figures, again
    assert code == 0, err
    res = json.loads(out)
    assert f"({res['n']} questions) EM {res['em']:.3f}" in md, (res["n"], res["em"])


def test_report_names_the_recommended_schedule_and_its_probe_cost():
    from analysis.evaluate.report import _probing
    op = {"schedule": {"every": 2, "at_steps": True, "at_transitions": True, "min_tokens": 0},
          "probes": {"per_question": 4.25, "tokens": 51.0}}
    assert _probing(op) == ("**Probe schedule**: probes every 2x; 4.2 probes and 51 probe tokens per question on "
                            "the held-out half.")
    assert "none needed" in _probing({"schedule": {}, "probes": {"per_question": 0.0, "tokens": 0.0}})


def test_the_reports_numbers_line_up_and_each_figure_says_what_it_is_about(synthetic_db):
    """The table showed a preset on all questions, the bar chart the recommendation: 7 lost / 3 gained against
    10 / 5. Now the recommendation has its row on the same questions as its bars, it is marked on its frontier,
    presets are named in the legend (a label beside the point overlapped the full-length star), and every figure
    says which questions and which setting."""
    from analysis.evaluate.report import build
    db, rid, _ = synthetic_db
    s = Store(db, read_only=True)
    t = RunTable.from_store(s, rid)
    rep = build([(s.run(rid), t)], [_p("k3", "consistency", k=3)], drop=0.02, images=False, n_boot=200)
    md = rep["markdown"]
    (row,) = [line for line in md.splitlines() if line.startswith("| recommended: ")]
    lost, gained = (int(c) for c in row.strip("|").split("|")[-2:])
    bars = rep["figures"]["losses_0"].data
    assert (sum(bars[0].y), sum(bars[1].y)) == (lost, gained)
    assert f"all {t.n} questions" in rep["figures"]["losses_0"].layout.title.text
    front = rep["figures"]["frontier_0"]
    assert f"all {t.n} questions" in front.layout.title.text
    names = [d.name for d in front.data]
    assert any(n.startswith("recommended: ") for n in names) and "k3" in names
    assert all("text" not in (d.mode or "") for d in front.data if d.name in ("k3",) or d.name.startswith("recommended"))
    assert f"on all {t.n} questions" in md


def test_the_markdown_download_is_self_contained():
    from analysis.evaluate.report import self_contained_markdown
    rep = {"markdown": "# r\n\n![frontier](figures/frontier_0.png)\n\n![losses](figures/losses_0.png)\n",
           "images": {"figures/frontier_0.png": b"\x89PNGdata"}}
    md = self_contained_markdown(rep)
    assert "figures/" not in md and "data:image/png;base64," in md and "losses_0: in the HTML report" in md


def test_a_recommendation_that_misses_its_target_held_out_says_so_in_the_report(synthetic_db, monkeypatch):
    from analysis.evaluate import optimize
    from analysis.evaluate.report import build
    db, rid, _ = synthetic_db
    s = Store(db, read_only=True)
    monkeypatch.setattr(optimize, "missed_target", lambda goal, value, cost, test: (
        f"misses its target on the held-out questions: ΔEM {test['delta_em']:+.3f} there, beyond the allowed drop "
        f"of {value:g}"))
    rep = build([(s.run(rid), RunTable.from_store(s, rid))], [], drop=0.02, images=False, n_boot=100)
    # plain Markdown (bold after a warning sign: no LaTeX, which most viewers show as source), a red span in the HTML
    assert "**⚠ It misses its target on the held-out questions: ΔEM" in rep["markdown"]
    assert "\\color" not in rep["markdown"] and "\\textbf" not in rep["markdown"]
    assert "<span class='miss'>It misses its target on the held-out questions: ΔEM" in rep["html"]
    assert ".miss{color:#dc2626" in rep["html"] and "\\color" not in rep["html"] and "⚠" not in rep["html"]


def test_red_markdown_is_plain_markdown_escaped_and_the_html_gets_the_sentence_back():
    from analysis.evaluate.report import _inline, red_md
    text = "It misses: 5% of $x_y {z} a\\b & c #1 *not bold* `code` <i>[link](x)."
    md = red_md(text)
    assert md.startswith("**⚠ It misses") and md.endswith("**") and "\\textbf" not in md and "$\\color" not in md
    assert "\\$x\\_y" in md and "a\\\\b" in md and "\\*not bold\\*" in md and "\\`code\\`" in md
    assert "\\<i\\>\\[link\\](x)" in md
    import html
    out = _inline(f"before {md} after **b**")
    assert out.startswith("before <span class='miss'>") and out.endswith("</span> after <b>b</b>")
    assert html.unescape(out.split("'miss'>")[1].split("</span>")[0]) == text


def test_slices_come_in_their_natural_order():
    from analysis.replay.slices import slice_order
    assert slice_order(["long", "short", "medium", "short"]) == ["short", "medium", "long"]
    assert slice_order(["difficulty>3", "difficulty≤1", "difficulty≤3"]) == ["difficulty≤1", "difficulty≤3",
                                                                                "difficulty>3"]
    assert slice_order(["10", "9", "2"]) == ["2", "9", "10"] and slice_order(["bin10", "bin2"]) == ["bin2", "bin10"]
    assert slice_order(["b", "(none)", "a"]) == ["a", "b", "(none)"]            # no value: last


def test_a_recommendation_that_computes_more_than_full_length_says_so_where_it_says_what_it_saves(demo):
    """On the demo's incumbent run the fewest emitted tokens within a 2-point drop is a consistency rule whose
    probes compute more than full length: the headline and the recommendation say so in the sentence that gives
    its saving; on the computed basis the recommendation saves computed tokens, and Reproduce says so."""
    from analysis.evaluate.report import build
    t = RunTable.from_store(demo, "c7a2483a9092")
    rep = emitted = build([(demo.run(t.run_id), t)], [], drop=0.02, images=False, n_boot=200)
    md = rep["markdown"]
    head = md.split("## ")[0]
    assert "of emitted tokens (95% CI" in head and "more counting its probes; held out" in head, head
    rec = next(ln for ln in md.splitlines() if ln.startswith("**Recommendation**"))
    assert "of emitted tokens (95% CI" in rec and "but computing" in rec and "more than full length counting its probes" in rec
    rep = build([(demo.run(t.run_id), t)], [], drop=0.02, images=False, n_boot=200, cost="computed")
    md = rep["markdown"]
    rec = next(ln for ln in md.splitlines() if ln.startswith("**Recommendation**"))
    assert "the fewest tokens computed (probes included)" in rec and "but computing" not in rec
    assert "Your mechanism saves 4% of tokens computed" in md
    assert "--drop 0.02 --cost computed`" in md
    # the frontier is drawn on the basis chosen: the recommendation's ring at its computed tokens
    fig = rep["figures"]["frontier_0"]
    assert fig.layout.xaxis.title.text == "mean tokens computed per question (probes included)"
    line = {d.name: list(d.x) for d in fig.data}
    before = {d.name: list(d.x) for d in emitted["figures"]["frontier_0"].data}
    assert line["full length"] == before["full length"]           # full length probes nothing
    assert min(line["consistency"]) > min(before["consistency"])   # a probing family costs more computed


def test_the_break_downs_offered_leave_out_ids_and_free_text(demo):
    """A field with a value per question (an index) or free text (the expression itself) makes a slice per
    question: Compare and the Report offer only fields a break-down says something about."""
    from analysis.evaluate.compare import slice_fields
    t = RunTable.from_store(demo, "c7a2483a9092")
    meta = {c for c in t.meta.columns if c.startswith("meta.")}
    assert {"meta.rg_index", "meta.source_index", "meta.expression"} <= meta
    assert slice_fields(t) == ["meta.num_terms", "meta.num_digits"]
    import numpy as np
    t.meta["meta.score"] = np.random.default_rng(0).random(t.n)        # a score per question: binned, offered
    assert slice_fields(t)[-1] == "meta.score"
