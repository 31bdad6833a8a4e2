"""Synthetic runs with realistic structure, for benchmarks and tests (never presented as model output).

Each question has a difficulty; its trial answers start empty or wrong, settle on an answer part-way
through, and sometimes drift away from a right answer late ("overthinking"), so early stopping can both
lose and gain. Answer probabilities rise and the after-cue entropy falls as the answer settles.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from analysis.core.store import config_hash
from analysis.evaluate.frontier import materialise
from analysis.ingest.datasets import Question


def synthetic_tables(n_questions: int = 1000, n_checkpoints: int = 50, seed: int = 0, every: int = 32,
                     run_id: str = "synthetic", signals: bool = True, vary_length: bool = True,
                     difficulty: tuple[float, float] = (0.0, 1.0),
                     settle: tuple[float, float] = (0.1, 0.8)) -> tuple[list[Question], pa.Table, pa.Table]:
    """``settle``: where (as a share of its length) a question's answer settles, drawn uniformly in this range
    (later settling: early stopping loses more)."""
    rng = np.random.default_rng(seed)
    n, m = n_questions, n_checkpoints
    diff = rng.uniform(difficulty[0], difficulty[1], n)
    lengths = (rng.integers(max(2, m // 3), m + 1, n) if vary_length else np.full(n, m)).astype(int)
    settle = (rng.uniform(settle[0], settle[1], n) * lengths).astype(int)       # checkpoint where the answer settles
    right_final = rng.uniform(0, 1, n) > diff * 0.8                     # the model's full-length correctness
    overthink = (~right_final) & (rng.uniform(0, 1, n) < 0.35)         # right mid-way, wrong at the end
    j = np.arange(m)[None, :]
    valid = j < lengths[:, None]
    # answer codes: 0 = gold, 1.. = wrong answers, -1 = none yet
    noise = rng.integers(1, 6, (n, m))
    early_empty = j < np.maximum(1, settle[:, None] // 3)
    settled = j >= settle[:, None]
    final_code = np.where(right_final, 0, 7)[:, None]
    flip_at = (settle + (lengths - settle) * 0.7).astype(int)[:, None]
    code = np.where(settled, final_code, noise)
    code = np.where(overthink[:, None] & settled & (j < flip_at), 0, code)
    code = np.where(early_empty, -1, code)
    last = lengths - 1
    code[np.arange(n), last] = final_code[:, 0]
    em = (code == 0).astype(np.float64)
    conf_base = np.clip(0.35 + 0.6 * settled + rng.normal(0, 0.12, (n, m)) - 0.25 * diff[:, None] * settled, 0.01, 0.9999)
    p_mean = np.where(code >= 0, conf_base, np.nan)
    p_min = np.where(code >= 0, np.clip(conf_base - rng.uniform(0, 0.3, (n, m)), 0.001, 1), np.nan)
    p_geo = np.where(code >= 0, (p_mean + p_min) / 2, np.nan)
    p_first = np.where(code >= 0, np.clip(conf_base + rng.normal(0, 0.05, (n, m)), 0.001, 1), np.nan)
    entropy = np.clip(2.5 * np.exp(-3 * j / np.maximum(settle[:, None] + 1, 1)) + rng.normal(0, 0.05, (n, m))
                      + 0.4 * diff[:, None], 0, None)
    pos = (j + 1) * every
    is_step = rng.uniform(0, 1, (n, m)) < 0.3
    is_trans = rng.uniform(0, 1, (n, m)) < 0.1
    kind = np.where(is_trans, "transition", np.where(is_step, "step", "interval")).astype(object)
    kind[np.arange(n), last] = "final"
    qids = np.array([f"s{i:06d}" for i in range(n)], dtype=object)
    mask = valid.ravel()
    names = np.array(["", "17", "23", "5", "99", "1", "2", "404"], dtype=object)  # code -> answer text
    gold = "42"
    ans = np.where(code == 0, gold, names[np.clip(code, 0, 7)])
    ans = np.where(code < 0, "", ans)

    def flat(a):
        return a.ravel()[mask]
    sig = (lambda a: pa.array(flat(a), pa.float64())) if signals else (lambda a: pa.nulls(int(mask.sum()), pa.float64()))
    ck = pa.table({
        "run_id": pa.array([run_id] * int(mask.sum())),
        "question_id": pa.array(flat(np.broadcast_to(qids[:, None], (n, m)))),
        "ck_idx": pa.array(flat(np.broadcast_to(j, (n, m))), pa.int16()),
        "pos": pa.array(flat(np.broadcast_to(pos, (n, m))), pa.int32()),
        "kind": pa.array(flat(kind)),
        "is_step": pa.array(flat(is_step)), "is_transition": pa.array(flat(is_trans)),
        "answer_raw": pa.array(flat(ans)), "answer_norm": pa.array(flat(ans)),
        "em": pa.array(flat(em)), "f1": pa.array(flat(em)),
        "p_mean": sig(p_mean), "p_geo": sig(p_geo), "p_min": sig(p_min), "p_first": sig(p_first),
        "entropy": sig(entropy),
        "answer_tokens": pa.array(np.full(int(mask.sum()), 2), pa.int32()),
        "probe_tokens": pa.array(np.full(int(mask.sum()), 12), pa.int32()),
    })
    final_em = em[np.arange(n), last]
    tr = pa.table({
        "run_id": pa.array([run_id] * n), "question_id": pa.array(qids),
        "text": pa.array([f"(synthetic trace of {int(lengths[i]) * every} tokens)" for i in range(n)]),
        "n_tokens": pa.array(lengths * every, pa.int32()),
        "final_raw": pa.array(ans[np.arange(n), last]), "final_norm": pa.array(ans[np.arange(n), last]),
        "em": pa.array(final_em), "f1": pa.array(final_em),
        "finish_reason": pa.array(["synthetic"] * n), "gen_s": pa.nulls(n, pa.float64()),
        "probe_s": pa.nulls(n, pa.float64()),
    })
    qs = [Question(str(qids[i]), f"Synthetic question {i} (difficulty {diff[i]:.2f})" + " x" * int(diff[i] * 20),
                   [gold], "number", {"difficulty": int(diff[i] * 3) + 1, "hardness": round(float(diff[i]), 4),
                                      "synthetic": True}) for i in range(n)]
    return qs, tr, ck


def write_synthetic_run(store, n_questions: int = 1000, n_checkpoints: int = 50, seed: int = 0,
                        model: str = "synthetic", dataset: str = "synthetic", signals: bool = True,
                        vary_length: bool = True, difficulty: tuple[float, float] = (0.0, 1.0),
                        settle: tuple[float, float] = (0.1, 0.8)) -> str:
    """Write a synthetic run into a store; returns its run id."""
    config = {"synthetic": True, "n": n_questions, "m": n_checkpoints, "seed": seed, "signals": signals,
              "vary_length": vary_length}
    if tuple(difficulty) != (0.0, 1.0):
        config["difficulty"] = list(difficulty)
    if tuple(settle) != (0.1, 0.8):
        config["settle"] = list(settle)
    run_id = config_hash(model, dataset, config)[:12]
    qs, tr, ck = synthetic_tables(n_questions, n_checkpoints, seed, run_id=run_id, signals=signals,
                                  vary_length=vary_length, difficulty=difficulty, settle=settle)
    with store.transaction() as con:
        rid, created = store.get_or_create_run(model=model, dataset=dataset, answer_type="number",
                                               source="synthetic", config=config, n_planned=n_questions, con=con)
        if created:
            store.put_questions(dataset, qs, con=con)
            store.put_results(tr, ck, con=con)
            con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", [rid])
    if created:
        materialise(store, rid)
    return rid
