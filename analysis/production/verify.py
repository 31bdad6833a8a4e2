"""Fidelity of the live controller, as two separate claims.

1. **Decision exactness** (a property of our code; must be 1.0 on every CPU, GPU and engine): given the
   trial answers and signals a request actually produced, the controller decided exactly what the replay
   decides on those same values. ``check_decisions`` reads a decision log (which records every checkpoint's
   values and the decision taken), rebuilds a RunTable from it and replays each request's setting with the
   replay's own ``stop_index``: the live stop (or an exploration request's shadow stop) must be the
   replayed one.
2. **Numeric agreement** (a property of the hardware, its kernels and the batching; measured, never
   assumed): how often the live values equal those recorded in the calibration run for the same prefix,
   by how much they differ, and which end-to-end stops moved because of it. ``compare_values`` measures it;
   every moved stop must have a cause at or before the earlier of its two stops (a differing trial answer,
   signal, checkpoint placement, or a trace that took another token), else it is reported unexplained.

``verify_live`` runs the controller on a calibration run's questions and reports both, with the machine's
kernel facts (``backend.numerics``) and how sensitive the preset is to the noise observed
(``robustness.stop_sensitivity``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.core.aio import run_sync
from analysis.backend.models import load
from analysis.backend.numerics import batch_invariance, cpu_features, exact_replay, padding_invariance
from analysis.backend.prompts import chat_messages, GenConfig
from analysis.core.errors import PresetError
from analysis.core.schema import SIGNAL_COLUMNS
from analysis.evaluate.robustness import noise_from, stop_sensitivity
from analysis.ingest.datasets import load_dataset
from analysis.presets.routing import EXPLORE, preset_stops
from analysis.production.controller import controlled_generate, Controller
from analysis.production.monitor import cause_counts, ended_by_upstream, read_log, repeated_ids
from analysis.replay.engine import RunTable, stop_index
from analysis.replay.policies.base import Setting

MAX_LISTED = 10


# --- 1. decision exactness --------------------------------------------------------------------------------
def log_table(ck: pd.DataFrame, fin: pd.DataFrame, answer_type: str = "number"):
    """A RunTable of the values a decision log recorded: one row per request instance (each final record, in the
    log's order; ``monitor.read_log``'s ``key``), its checkpoints in order, then a final checkpoint (its end)."""
    reqs = fin["key"].tolist()
    order = {r: i for i, r in enumerate(reqs)}
    rows = ck.copy() if len(ck) else pd.DataFrame(columns=["key", "ck", "pos", "kind", "answer"])
    rows = rows[rows["key"].isin(order)]
    finals = pd.DataFrame({"key": reqs, "ck": 1 << 30, "pos": fin["stop_pos"].astype(float).to_numpy(),
                           "kind": "final", "answer": ""})
    rows = pd.concat([rows, finals], ignore_index=True)
    rows["_q"] = rows["key"].map(order)
    rows = rows.sort_values(["_q", "ck"], kind="stable")
    def flag(name: str, kind: str) -> np.ndarray:
        # the logged flag (a checkpoint can be a step and a transition), else (an older log) its kind's
        by_kind = (rows["kind"] == kind).to_numpy()
        if name not in rows:
            return by_kind
        logged = rows[name].to_numpy(dtype=object)
        return np.where(pd.isna(logged), by_kind, logged).astype(bool)
    cols = {"question_id": rows["key"].tolist(), "pos": rows["pos"].astype(float).to_numpy(),
            "is_step": flag("is_step", "step"), "is_transition": flag("is_transition", "transition"),
            "answer_norm": rows["answer"].fillna("").astype(str).tolist(), "em": np.zeros(len(rows)),
            "f1": np.zeros(len(rows))}
    for c in ("answer_tokens", "probe_tokens", *SIGNAL_COLUMNS):
        cols[c] = pd.to_numeric(rows[c], errors="coerce").to_numpy(float) if c in rows else np.full(len(rows), np.nan)
    return RunTable.from_arrow(pa.table(cols), "log", answer_type=answer_type)


def check_decisions(log, answer_type: str | None = None) -> dict:
    """Replay every request of a decision log on the values it logged: the share of requests whose live
    decision (stop, or an exploration request's shadow stop) equals the replay's, and the ones that differ.
    ``log``: a path (or paths), or ``(header, checkpoints, finals)`` as ``monitor.read_log`` returns."""
    header, ck, fin = read_log(log) if not isinstance(log, tuple) else log
    # a repeated request id (a client's retry) is a request of its own per final record, with the checkpoints
    # logged since the previous one (read_log's ``key``), as the monitor counts it
    rep = repeated_ids(fin)
    # a request a failure or a refusal ended (upstream_failed, upstream_rejected, gateway_failed) was not stopped
    # by the preset: it is left out and counted apart, by cause (one its client cut is replayed: its decisions
    # were the preset's)
    ended = ended_by_upstream(fin)
    causes, broken = cause_counts(fin, ended), ended.to_numpy()
    if broken.any():
        gone = set(fin.loc[broken, "key"])
        fin = fin[~broken].reset_index(drop=True)
        ck = ck[~ck["key"].isin(gone)].reset_index(drop=True) if len(ck) else ck
        if fin.empty:
            return {"agreement": float("nan"), "n": 0, "checkpoints": 0, "ended_by_upstream": int(broken.sum()),
                    "causes": causes, "repeated_ids": rep, "mismatches": []}
    t = log_table(ck, fin, answer_type or header.get("answer_type", "number"))
    # the controller's checkpoint interval: a schedule's `every` is a multiple of it (the log holds only the
    # checkpoints a request's schedule probed, so it cannot be inferred from them)
    t.interval = (header.get("checkpoints") or {}).get("every")
    want = np.full(t.n, -1)
    for i, rec in enumerate(fin.to_dict("records")):
        if rec.get("arm") == EXPLORE:
            shadow = rec.get("shadow_ck")
            want[i] = int(shadow) if shadow is not None and shadow == shadow else t.final_idx[i]
        else:
            want[i] = int(rec["ck"]) if rec["stopped"] else t.final_idx[i]
    got = np.full(t.n, -1)
    keys = fin["setting"].map(lambda s: Setting.from_dict(s).key())
    for key, idx in fin.groupby(keys).indices.items():
        setting = Setting.from_dict(fin["setting"].iloc[idx[0]])
        got[idx] = stop_index(t.subset(idx), setting)
    bad = np.flatnonzero(got != want)
    return {"agreement": float(1 - len(bad) / t.n) if t.n else float("nan"), "n": int(t.n),
            "checkpoints": int(len(ck)), "ended_by_upstream": int(broken.sum()), "causes": causes, "repeated_ids": rep,
            "mismatches": [{"request": str(t.question_ids[i]), "live_ck": int(want[i]), "replay_ck": int(got[i]),
                            "setting": fin["setting"].iloc[i]} for i in bad[:MAX_LISTED]]}


# --- 2. numeric agreement -----------------------------------------------------------------------------------
def compare_values(t, ck: pd.DataFrame, texts: dict[str, tuple[str, str, bool]] | None = None) -> tuple[dict, dict]:
    """Live checkpoint values (decision-log records) against the recorded run ``t``, checkpoint by checkpoint.

    Returns (summary, first): ``first[request]`` is (checkpoint index, kind, description) of the first
    difference: kind is "checkpoint placement", "trial answer", a signal's name, or "trace" (the live trace
    left the recorded one; index past every checkpoint, since where is not known).
    ``texts``: request -> (live text, recorded text, stopped early), to tell a trace that took another token."""
    idx = {str(q): i for i, q in enumerate(t.question_ids)}
    diffs = {s: [] for s in SIGNAL_COLUMNS}
    n_cmp = n_placed = n_ans = 0
    first: dict[str, tuple[int, str, str]] = {}

    def note(req, j, kind, what):
        if req not in first or j < first[req][0]:
            first[req] = (j, kind, what)

    for rec in ck.to_dict("records") if len(ck) else []:
        req = str(rec["request"])
        i = idx.get(req)
        if i is None:
            continue
        # the recorded checkpoint at the live one's position (a sparser schedule probes some of them only)
        at = np.flatnonzero(t.pos[i, :t.final_idx[i]] == int(rec["pos"]))
        if not len(at):
            n_placed += 1
            note(req, int(rec["ck"]), "checkpoint placement", placement_words(t, i, rec["pos"]))
            continue
        j = int(at[0])
        if not rec.get("probe_tokens") and not rec.get("answer"):
            continue                    # decided without a probe (a budget): no value to compare
        n_cmp += 1
        if (rec.get("answer") or "") != (t.answers[i, j] or ""):
            n_ans += 1
            note(req, j, "trial answer", f"trial answer {t.answers[i, j]!r} -> {rec.get('answer')!r}")
        for s in SIGNAL_COLUMNS:
            a, b = rec.get(s), float(t.cols[s][i, j])
            a = np.nan if a is None else float(a)
            if np.isnan(a) and np.isnan(b):
                continue
            d = abs(a - b) if not (np.isnan(a) or np.isnan(b)) else np.inf
            if d != 0:
                diffs[s].append(d)
                note(req, j, s, f"{s} {b:.6g} -> {a:.6g}")
    diverged = 0
    for req, (live, recorded, stopped) in (texts or {}).items():
        live = live.rstrip("\ufffd")         # a stop can cut a multi-byte character in two
        if not recorded.startswith(live) if stopped else live != recorded:
            diverged += 1
            note(req, 1 << 30, "trace", "the trace took another token")
    sig = {}
    for s, d in diffs.items():
        arr = np.asarray([x for x in d if np.isfinite(x)])
        sig[s] = {"differ": len(d) / n_cmp if n_cmp else 0.0, "n_differ": len(d),
                  "max_abs": float(arr.max()) if len(arr) else 0.0,
                  "median_abs": float(np.median(arr)) if len(arr) else 0.0,
                  # the differences' distribution (every 5th percentile), what robustness.noise_from samples
                  "quantiles": [float(x) for x in np.percentile(arr, np.arange(0, 101, 5))] if len(arr) else []}
    return ({"checkpoints_compared": n_cmp, "checkpoints_misplaced": n_placed,
             "answers_differ": n_ans / n_cmp if n_cmp else 0.0, "n_answers_differ": n_ans,
             "traces_diverged": diverged, "signals": sig}, first)


def placement_words(t, i: int, pos) -> str:
    """A live checkpoint at token ``pos`` that question ``i`` of the recorded run has no checkpoint at, in words:
    where the recording's checkpoints around it are."""
    row = t.pos[i, :t.lengths[i]]
    k = int(np.searchsorted(row, float(pos)))
    if k >= t.final_idx[i]:
        there = f"the recorded trace ended at token {int(row[-1])}"
    else:
        there = "the recording's checkpoints are at token" + (f"s {int(row[k - 1])} and {int(row[k])} around it" if k
                                                               else f" {int(row[k])} and later")
    return f"checkpoint placement: live checkpoint at token {int(pos)}, {there} (the trace took another path)"


def mismatch_words(m: dict) -> str:
    """A moved stop (``verify_live``'s ``mismatches``) in one line: where the replay and the live run stopped, by
    token and checkpoint, and the first difference at or before it."""
    def at(side):
        where = f"checkpoint {side['ck']}" if side["stopped"] and side["ck"] is not None else "the end"
        return f"token {side['pos']} ({where})"
    return f"{m['question']}: replay stops at {at(m['replay'])}, live at {at(m['live'])}: {m['cause']}"


# --- the live run -------------------------------------------------------------------------------------------
def verify_live(store, run_id: str, preset, *, batch_size: int | None = None, device: str = "auto",
                limit: int | None = None, loaded=None, log: str | Path | None = None,
                show_progress: bool = False, sensitivity_draws: int = 20) -> dict:
    """Run the controller live on a run's questions (same model, prompts, config and batching) and report
    decision exactness (must be 1.0), end-to-end agreement with the replay of the recorded run, the
    numeric differences behind any moved stop, the machine's kernel facts, and the preset's sensitivity to
    the observed noise. ``batch_size``: by default the one the run was generated with (8 if unrecorded)."""
    t0 = time.perf_counter()
    run = store.run(run_id)
    cfgd = run["config"]
    if cfgd.get("source") != "generate":
        raise PresetError(f"run {run['id']} was not generated by Stopline's backend, so it cannot be re-run live",
                          hint="verify-controller needs a run made by `python -m analysis run`")
    t = RunTable.from_store(store, run["id"])
    want = preset_stops(t, preset)
    cfg = GenConfig(**cfgd["gen"])
    ds = load_dataset(run["dataset"], run["n_planned"] or t.n,
                      **({"seed": cfgd["dataset"]["seed"]} if run["dataset"].startswith("rg:") else {}))
    have = {str(q): i for i, q in enumerate(t.question_ids)}
    questions = [q for q in ds.questions if q.id in have][:limit or None]
    if loaded is None:
        dt = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(cfgd["model"].get("dtype"), "auto")
        loaded = load(cfgd["model"]["name"], device, dtype=dt)
    model, tok, _ = loaded
    run_batch = (cfgd.get("execution") or {}).get("batch_size")
    batch_size = batch_size or run_batch or 8
    tmp = Path(tempfile.mkdtemp(prefix="stopline-verify-"))
    try:
        ctl = Controller(preset, run["answer_type"], tmp / "live.jsonl", every=cfg.every, steps=cfg.steps,
                         transitions=cfg.transitions,
                         log_header={"calibration": {"db": str(store.path), "run": run["id"]}, "model": run["model"]})
        # every placed checkpoint probed, as the recording was: its probes run in the same batch shapes, so the
        # values are the recorded ones wherever the kernels are batch-invariant; the requests read (and are
        # charged for) the probes their schedule makes only, a budget's none but its stop's
        recs = controlled_generate(model, tok, questions, ctl, cfg, batch_size, show_progress=show_progress,
                                   probe_unscheduled=True)
        ctl.log.close()
        header, ck, fin, decisions = _live_log(tmp, log, run["answer_type"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stored = {r["question_id"]: r["text"] for r in store.traces(run["id"], with_text=True).to_pylist()}
    ck, at_run = run_indices(t, ck)
    numeric, first = compare_values(t, ck, {q.id: (r["text"], stored.get(q.id, ""), r["stopped"])
                                                for q, r in zip(questions, recs)})

    rows, mism, causes = [], [], {"unexplained": 0}
    for q, rec in zip(questions, recs):
        i, j = have[q.id], int(want[have[q.id]])
        pred = {"ck": j, "pos": int(t.pos[i, j]), "answer": t.answers[i, j], "em": float(t.em[i, j]),
                "emitted": float(t.emitted[i, j]), "stopped": bool(j < t.final_idx[i])}
        live = {"ck": at_run.get((q.id, int(rec["ck"])), int(rec["ck"])) if rec["stopped"] else None, "pos": int(rec["stop_pos"]), "answer": rec["answer"],
                "em": float(rec.get("em", float("nan"))), "emitted": float(rec["tokens_emitted"]),
                "stopped": bool(rec["stopped"])}
        same = pred["stopped"] == live["stopped"] and pred["pos"] == live["pos"] and pred["answer"] == live["answer"]
        rows.append((same, pred["emitted"] == live["emitted"], pred["em"] == live["em"], pred, live))
        if not same:
            # the earlier of the two stops bounds where a differing value must have been seen
            bound = min(j if pred["stopped"] else 1 << 30, live["ck"] if live["stopped"] else 1 << 30)
            found = first.get(q.id)
            _, kind, what = found if found is not None and found[0] <= bound else (0, "unexplained", "unexplained")
            causes[kind] = causes.get(kind, 0) + 1
            if len(mism) < MAX_LISTED:
                mism.append({"question": q.id, "replay": pred, "live": live, "cause": what})
    n = len(rows)
    agree = sum(r[0] for r in rows)
    moved = n - agree
    unexplained = causes.pop("unexplained")
    schedule = (cfgd.get("execution") or {}).get("probes", "immediate")   # runs before 'execution' probed at once
    dtype = cfgd["model"].get("dtype")
    dtype = dtype if dtype in ("bfloat16", "float32", "float16") else "bfloat16"
    inv, exact = batch_invariance(dtype), exact_replay(dtype, schedule)
    notes = []
    if decisions["agreement"] < 1:
        notes.append("the controller decided differently from the replay on the values it saw: a bug in Stopline, "
                     "please report it with the decision log")
    if moved:
        notes.append(f"{moved} of {n} stops moved because the live values differed from the recorded ones "
                     "(see numeric); decisions on the live values were exact")
        if schedule == "batched":
            notes.append("the run's probes were batched, the live controller probes each checkpoint at once: they "
                         "attend over masked key columns (a deferred probe masks what its row wrote since; rejected guesses stay "
                         "masked in the cache), which rounds differently; record with `run --probes immediate`")
        if run_batch and batch_size != run_batch:
            notes.append(f"the run was generated in batches of {run_batch}, this check ran batches of {batch_size}")
        if not inv["invariant"]:
            notes.append(f"on this machine a row's numbers depend on its batch-mates ({inv['why']}): stopped rows "
                         "leave the batch, so the rows left compute in other shapes than when recorded")
    noise = noise_from(numeric)
    sens = stop_sensitivity(t, preset, noise, draws=sensitivity_draws) if sensitivity_draws else None
    return {"agreement": agree / n if n else float("nan"), "n": n, "run": run["id"], "preset": preset.name,
            "decision_agreement": decisions["agreement"], "decisions": decisions,
            "moved": {"n": moved, "explained": moved - unexplained, "unexplained": unexplained, "causes": causes},
            "numeric": numeric, "sensitivity": sens,
            "platform": {**cpu_features(), "batch_invariant": inv, "padding_invariant": padding_invariance(dtype)},
            "exact_expected": exact if batch_size == run_batch else {
                "expected": False, "why": f"the run was generated in batches of {run_batch}, this check ran {batch_size}"},
            "run_probes": schedule, "note": "; ".join(notes) or None, "batch_size": batch_size,
            "run_batch_size": run_batch,
            "tokens_agreement": sum(r[1] for r in rows) / n if n else None,
            "em_agreement": sum(r[2] for r in rows) / n if n else None,
            "replay": {"em": float(np.mean([r[3]["em"] for r in rows])),
                       "tokens_emitted": float(np.mean([r[3]["emitted"] for r in rows])),
                       "stopped_early": int(sum(r[3]["stopped"] for r in rows))},
            "live": {"em": float(np.mean([r[4]["em"] for r in rows])),
                     "tokens_emitted": float(np.mean([r[4]["emitted"] for r in rows])),
                     "stopped_early": int(sum(r[4]["stopped"] for r in rows)),
                     "generated_tokens": int(sum(r["generated_tokens"] for r in recs))},
            "mismatches": mism, "seconds": round(time.perf_counter() - t0, 2)}


def run_indices(t, ck: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A log's checkpoint indices (each request's probed checkpoints, in order) as indices of the recorded run
    ``t``, matched by position: a sparse probe schedule logs only the checkpoints it probed. Returns the
    records with ``ck`` replaced (unmatched positions keep theirs, and read as misplaced) and the map
    (request, logged index) -> run index."""
    if not len(ck):
        return ck, {}
    idx = {str(q): i for i, q in enumerate(t.question_ids)}
    at: dict[tuple[str, int], int] = {}
    for req, pos, j in zip(ck["request"].astype(str), ck["pos"], ck["ck"]):
        i = idx.get(req)
        if i is None:
            continue
        row = t.pos[i, :t.lengths[i]]
        k = int(np.searchsorted(row, float(pos)))
        if k < len(row) and row[k] == float(pos):
            at[(req, int(j))] = k
    out = ck.copy()
    out["ck"] = [at.get((str(r), int(j)), int(j)) for r, j in zip(ck["request"], ck["ck"])]
    return out, at


def _live_log(tmp: Path, log, answer_type: str):
    """The live run's decision log (tmp/live.jsonl): read, appended to ``log`` when given, and its decisions
    checked against the replay."""
    header, ck, fin = read_log(tmp / "live.jsonl")
    if log:
        _append_log(tmp / "live.jsonl", Path(log))
    return header, ck, fin, check_decisions((header, ck, fin), answer_type)


def _append_log(src: Path, dst: Path) -> None:
    """Copy a finished log to the user's path; appended (without its header) when that file has one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    if dst.exists() and dst.stat().st_size > 0:
        lines = lines[1:]
    with open(dst, "a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def verify_gateway(store, run_id: str, preset, base_urls: list[str], tokenizer: str, *, limit: int | None = None,
                   concurrency: int = 8, log: str | Path | None = None) -> dict:
    """``verify-controller --engine openai``: send a run's questions (recorded through the same server) through the
    gateway's request path (``gateway.Gateway``, in process, against ``base_urls``) with ``preset``, and report
    whether its live decisions equal the replay on the values it saw (must be 1.0) and how often its stops equal
    the replay of the recorded run (the server's numbers decide that: batch composition changes them unless the
    server runs batch-invariant kernels)."""
    import asyncio

    from analysis.backend.models import load_tokenizer
    from analysis.production.gateway import Gateway, Options
    t0 = time.perf_counter()
    run = store.run(run_id)
    cfgd = run["config"]
    if (cfgd.get("engine") or {}).get("name") != "openai":
        raise PresetError(f"run {run['id']} was not recorded through a server",
                          hint="record the calibration run with `run --engine openai` on the same server")
    t = RunTable.from_store(store, run["id"])
    want = preset_stops(t, preset)
    cfg = GenConfig(**cfgd["gen"])
    model = cfgd["engine"]["server_model"]
    ds = load_dataset(run["dataset"], run["n_planned"] or t.n,
                      **({"seed": cfgd["dataset"]["seed"]} if run["dataset"].startswith("rg:") else {}))
    have = {str(q): i for i, q in enumerate(t.question_ids)}
    questions = [q for q in ds.questions if q.id in have][:limit or None]
    tok, kind, eos = load_tokenizer(tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix="stopline-verify-"))
    try:
        (tmp / "preset.json").write_text(preset.to_json())
        gw = Gateway(base_urls, str(tmp / "preset.json"), tok, eos, kind, log_path=str(tmp / "live.jsonl"),
                     model=model, concurrency=concurrency,
                     options=Options(answer_type=run["answer_type"], every=cfg.every, steps=cfg.steps,
                                     transitions=cfg.transitions, cue=cfg.cue, max_answer_tokens=cfg.max_answer_tokens))

        async def go():
            sem = asyncio.Semaphore(concurrency)
            async with gw.engine:
                await gw.engine.check()

                async def one(q):
                    async with sem:
                        msgs = chat_messages(q.text, cfg)
                        req = gw.parse({"model": model, "messages": msgs, "max_tokens": cfg.max_new_tokens,
                                        "stopline": {"request_id": q.id, "meta": q.meta}}, chat=True)
                        req["question"] = q.text            # routing reads the question, as the replay does
                        return [v async for k, v in gw.events(req) if k == "end"][0]
                return await asyncio.gather(*(one(q) for q in questions))
        infos = run_sync(go())
        gw.log.close()
        decisions = _live_log(tmp, log, run["answer_type"])[3]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = [int(t.pos[have[q.id], int(want[have[q.id]])]) == info["position"] for q, info in zip(questions, infos)]
    return {"run": run["id"], "engine": "openai", "n": len(questions), "decisions": decisions,
            "decision_agreement": decisions["agreement"], "agreement": float(np.mean(same)) if same else float("nan"),
            "stopped": int(sum(i["stopped"] for i in infos)), "seconds": round(time.perf_counter() - t0, 1),
            "note": "stops differ where the server's numbers for a prefix differ from the recording's (batch "
                    "composition changes them unless the server's kernels are batch-invariant)"}
