"""How far a setting's stops depend on the exact values of its signals.

Live values agree with a calibration run only up to the hardware's and the batching's rounding (see
``analysis.production.verify``). A setting whose thresholds sit far from the values it reads keeps its stops under that
noise; one whose threshold sits where many checkpoints' values cluster moves some of them. ``stop_sensitivity``
measures it on a stored run: perturb every checkpoint's values by a noise model (by default the one
``verify-controller`` observed), replay, and count the questions whose stop moved.

A noise model (``noise_from``) is, per signal, the share of checkpoints whose value differed and the
distribution of the absolute differences (every 5th percentile), plus the share of trial answers that
differed. Perturbed values are clipped to their range (probabilities to [0, 1], entropy to >= 0); a differing
trial answer becomes a new answer that equals no other (the worst case for consistency rules).
"""
from __future__ import annotations

import numpy as np

from analysis.core.schema import SIGNAL_COLUMNS
from analysis.presets.routing import preset_stops
from analysis.replay.engine import RunTable


def noise_from(numeric: dict) -> dict:
    """The noise model from ``verify.compare_values``'s summary (or a hand-written dict of the same shape:
    ``{"answers_differ": 0.02, "signals": {"p_mean": {"differ": 0.1, "quantiles": [...]}}}``; a signal may give
    ``median_abs`` alone, taken as a fixed size)."""
    sig = {}
    for s, d in (numeric.get("signals") or {}).items():
        if s not in SIGNAL_COLUMNS:
            continue
        q = [float(x) for x in d.get("quantiles") or []] or ([float(d["median_abs"])] if d.get("median_abs") else [])
        q = [x for x in q if np.isfinite(x)]
        if float(d.get("differ", 0)) > 0 and q:
            sig[s] = {"differ": float(d["differ"]), "quantiles": q}
    return {"answers_differ": float(numeric.get("answers_differ", 0.0)), "signals": sig}


def perturb(t, noise: dict, rng: np.random.Generator, scale: float = 1.0):
    """A copy of RunTable ``t`` with its checkpoints' values perturbed by ``noise`` (``scale`` multiplies
    the differences' sizes; the final checkpoints, the model's own answers, are left alone)."""
    cols = dict(t.cols)
    live = t.valid & ~t.is_final
    for s, d in noise["signals"].items():
        if s not in cols:
            continue
        hit = live & (rng.random(live.shape) < d["differ"])
        q = np.asarray(d["quantiles"])
        size = np.interp(rng.random(live.shape), np.linspace(0, 1, len(q)), q) * scale
        sign = np.where(rng.random(live.shape) < 0.5, -1.0, 1.0)
        v = np.where(hit, cols[s] + sign * size, cols[s])
        cols[s] = np.clip(v, 0.0, None if s == "entropy" else 1.0)
    if noise["answers_differ"] > 0:
        hit = live & (rng.random(live.shape) < min(1.0, noise["answers_differ"] * scale))
        fresh = int(cols["ans"].max()) + 1 + np.arange(hit.size).reshape(hit.shape)
        cols["ans"] = np.where(hit, fresh, cols["ans"])
    return RunTable(t.run_id, t.question_ids, t.lengths, cols, t.answers, t.meta, t.answer_type, interval=t.interval)


def stop_sensitivity(t, preset, noise: dict, draws: int = 20, scale: float = 1.0, seed: int = 0) -> dict:
    """Replay ``preset`` on ``draws`` perturbed copies of ``t``: the share of questions whose stop moved
    (mean and range over draws), and the EM and emitted tokens at the moved stops against the unperturbed
    replay (EM as recorded at the new stop: the perturbed answer's own correctness is unknown)."""
    base = preset_stops(t, preset)
    r = t.rows
    em0, tok0 = t.em[r, base].mean(), t.emitted[r, base].mean()
    rng = np.random.default_rng(seed)
    moved, dem, dtok = [], [], []
    for _ in range(draws):
        stop = preset_stops(perturb(t, noise, rng, scale), preset)
        moved.append(float((stop != base).mean()))
        dem.append(float(t.em[r, stop].mean() - em0))
        dtok.append(float(t.emitted[r, stop].mean() - tok0))
    return {"moved_share": float(np.mean(moved)) if moved else 0.0,
            "moved_range": [float(min(moved)), float(max(moved))] if moved else [0.0, 0.0],
            "delta_em": float(np.mean(dem)) if dem else 0.0, "delta_tokens": float(np.mean(dtok)) if dtok else 0.0,
            "draws": draws, "scale": scale, "n": int(t.n)}
