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


def test_report_names_the_recommended_schedule_and_its_probe_cost():
    from analysis.evaluate.report import _probing
    op = {"schedule": {"every": 2, "at_steps": True, "at_transitions": True, "min_tokens": 0},
          "probes": {"per_question": 4.25, "tokens": 51.0}}
    assert _probing(op) == ("**Probe schedule**: probes every 2x; 4.2 probes and 51 probe tokens per question on "
                            "the held-out half.")
    assert "none needed" in _probing({"schedule": {}, "probes": {"per_question": 0.0, "tokens": 0.0}})
