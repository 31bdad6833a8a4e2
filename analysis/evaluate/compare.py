"""Paired comparison of two presets replayed on the same questions: McNemar, paired bootstrap CIs of ΔEM
and Δtokens, and the same per slice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats as sps

from analysis.replay.slices import slice_labels, slice_order
from analysis.presets.schema import Preset
from analysis.presets.routing import preset_outcome
from analysis.replay.engine import Outcome, RunTable
from analysis.evaluate.stats import N_BOOT, SEED, bootstrap_means, mcnemar, percentile_ci


def slice_fields(t: RunTable) -> list[str]:
    """The question fields a break-down by them can say something about: not an id (whole numbers, a value per
    question: ``meta.rg_index``), not free text (``meta.expression``, more than 20 values or one per two
    questions); other numbers with many values (a difficulty score) are binned (``slice_labels``)."""
    out = []
    for c in (c for c in t.meta.columns if c.startswith("meta.")):
        col = t.meta[c]
        k, numeric = col.nunique(), pd.api.types.is_numeric_dtype(col)
        an_id = k == t.n and (not numeric or bool((col.dropna() % 1 == 0).all()))
        if 1 < k and not an_id and (numeric or k <= min(20, t.n / 2)):
            out.append(c)
    return out


def default_slice(t: RunTable) -> str:
    """The breakdown worth showing first: a metadata field with 2-12 values and 5 questions a value or more on
    average (one question a slice tells nothing), else trace length."""
    meta = [c for c in t.meta.columns if c.startswith("meta.") and 1 < t.meta[c].nunique() <= min(12, t.n / 5)]
    return meta[0] if meta else "length"


def paired_ci(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of mean(b) - mean(a), resampling questions (pairs) together; ``n_boot=0``: the normal
    approximation of the paired differences (instant, as ``evaluate`` gives with ``n_boot=0``)."""
    if len(a) == 0:
        return (float("nan"), float("nan"))
    d = np.asarray(b, float) - np.asarray(a, float)
    if n_boot <= 0:
        z = float(sps.norm.ppf((1 + level) / 2))
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        return float(d.mean() - z * se), float(d.mean() + z * se)
    return percentile_ci(bootstrap_means({"d": d}, n_boot, seed, batch=None)["d"], level)


def paired(oa: Outcome, ob: Outcome, n_boot: int = N_BOOT) -> dict:
    """B − A on the same questions: EM, tokens emitted and computed, paired CIs, the 2x2 table and McNemar."""
    ra, rb = oa.em > 0.5, ob.em > 0.5
    return {"n": int(len(ra)), "em_a": float(oa.em.mean()), "em_b": float(ob.em.mean()),
            "tokens_a": float(oa.emitted.mean()), "tokens_b": float(ob.emitted.mean()),
            "computed_a": float(oa.computed.mean()), "computed_b": float(ob.computed.mean()),
            "delta_em": float(ob.em.mean() - oa.em.mean()), "delta_em_ci": paired_ci(oa.em, ob.em, n_boot),
            "delta_tokens": float(ob.emitted.mean() - oa.emitted.mean()),
            "delta_tokens_ci": paired_ci(oa.emitted, ob.emitted, n_boot),
            "delta_computed": float(ob.computed.mean() - oa.computed.mean()),
            "delta_computed_ci": paired_ci(oa.computed, ob.computed, n_boot),
            "both_right": int((ra & rb).sum()), "a_only": int((ra & ~rb).sum()), "b_only": int((~ra & rb).sum()),
            "both_wrong": int((~ra & ~rb).sum()), "mcnemar": mcnemar(ra, rb)}


def side_outcome(t: RunTable, side: Preset | Outcome) -> Outcome:
    """A side of a comparison: a preset, replayed; or an Outcome as it is (the incumbent, say)."""
    return side if isinstance(side, Outcome) else preset_outcome(t, side)


def compare(t: RunTable, a: Preset | Outcome, b: Preset | Outcome, slice_by: str | None = None,
            n_boot: int = N_BOOT) -> dict:
    """A vs B on the same questions (B − A throughout); a side is a preset or an Outcome of ``t``."""
    oa, ob = side_outcome(t, a), side_outcome(t, b)
    out = {"a": oa.label, "b": ob.label, "run": t.run_id, **paired(oa, ob, n_boot)}
    if slice_by:
        labels = slice_labels(t, slice_by)
        rows = []
        for lab in slice_order(labels):
            m = labels == lab
            p = paired(oa.subset(m), ob.subset(m), max(200, n_boot // 4) if n_boot > 0 else 0)
            rows.append({"slice": str(lab), **{k: v for k, v in p.items() if k != "mcnemar"},
                         "mcnemar_p": p["mcnemar"]["p_value"]})
        out["slices"] = pd.DataFrame(rows)
        out["slice_by"] = slice_by
    return out
