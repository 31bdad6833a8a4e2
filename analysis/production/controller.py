"""The live stopping controller: a preset, applied while a model generates, with the replay's own code.

Each request gets a ``Session`` (its route: arm and setting). At every checkpoint the session records the
probe's trial answer and signals; ``Controller.decide`` then builds a small RunTable from the sessions'
histories (checkpoints 0..j) and asks the family's vectorised ``fires`` — the very function the replay
calls — whether it fires at j. Because every family is causal, that equals the replay's stop.

Three ways to plug it in:

- ``controlled_generate(model, tok, questions, controller)``: a wrapper around Stopline's batched
  generation (KV-reusing probes at the checkpoints; stopped rows leave the batch's work).
- ``StreamSession``: for a server that runs elsewhere. Feed it text chunks with their token counts; when a
  checkpoint is due it asks for a probe; hand it the probe's answer and probabilities and it answers
  continue or stop-and-answer.
- ``Controller.open`` / ``Session.checkpoint`` / ``Controller.decide``: the bare decision step.

A request's setting carries a probe schedule (``Setting.schedule``): checkpoints it does not schedule get no
probe at all (no cue, no answer tokens) and no decision, as the replay's ``scheduled`` table leaves them out.
The stream path asks for a probe only where the schedule wants one; ``controlled_generate`` has the decode loop
place only the preset's scheduled checkpoints (every n x the interval, steps, transitions).

Every checkpoint and every request's end go to a decision log (JSON lines, flushed per line) that
``python -m analysis monitor`` reads.

About 400 lines: the decision step and its three callers share the session's history and the log's records,
so they are read together; what a family can do live comes from its declaration (``Policy.deploy_problem``; a learned
setting deploys with its exported model, which ``fires`` reads from the setting itself).
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from analysis.backend.decode import generate_batch
from analysis.backend.placement import is_transition_start
from analysis.backend.probe import Probe
from analysis.backend.prompts import build_prompt, GenConfig
from analysis.core.answers import extract, normalize, normalize_gold, score
from analysis.core.errors import PresetError
from analysis.core.progress import progress
from analysis.core.schema import SIGNAL_COLUMNS
from analysis.presets.routing import EXPLORE, request_fields, Route, route
from analysis.replay.engine import RunTable, schedule_keeps

LOG_VERSION = 1


def _unsupported(setting) -> str | None:
    """Why the controller cannot run this setting (the family's or a part's ``deploy_problem``), or None."""
    pol = setting.policy
    why = pol.deploy_problem(setting.params)
    if why:
        return f"the {pol.name} family ({why})"
    for part in pol.parts(setting.params):
        why = _unsupported(part)
        if why:
            return why
    return None


def check_deployable(preset) -> None:
    """Refuses presets the controller cannot reproduce live, naming the part."""
    for s in preset.settings():
        why = _unsupported(s)
        if why:
            raise PresetError(f"the live controller cannot run {why}", field="setting",
                              hint="choose another family for production; replay still evaluates it")
    if preset.slices_by and preset.slices and (preset.slices_by == "length" or not preset.slices_by.startswith("meta.")
                                              or any(("≤" in k or ">" in k) for k in preset.slices)):
        raise PresetError(f"slices by {preset.slices_by!r} are derived from the whole run (quantile bins) and "
                          "cannot be resolved for one request", field="slices.by",
                          hint="use routing rules with min/max on question_chars or a meta field")


# --- the decision log -------------------------------------------------------------------------------------
class DecisionLog:
    """Append-only JSON lines; each line is flushed, so a crash loses nothing already decided."""

    def __init__(self, path: str | Path, header: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        if new:
            self.write({"type": "header", "stopline_log": LOG_VERSION, **(header or {})})

    def write(self, rec: dict) -> None:
        rec.setdefault("t", time.time())
        line = json.dumps(rec, default=_jsonable, allow_nan=False) + "\n"
        with self._lock:                    # whole lines, from the event loop and a reload's worker thread alike
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return str(v)


def _clean(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


# --- sessions and decisions -------------------------------------------------------------------------------
@dataclass
class Decision:
    stop: bool
    answer: str | None = None       # the trial answer to return when stopping
    ck: int = -1
    pos: int = 0
    reason: str = ""


@dataclass
class Session:
    request_id: str
    route: Route
    question_chars: int = 0
    meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    gold: Any = None
    history: dict = field(default_factory=lambda: {c: [] for c in (
        "pos", "is_step", "is_transition", "answer_norm", "answer_raw", "answer_tokens", "probe_tokens",
        *SIGNAL_COLUMNS)})
    stopped: Decision | None = None
    shadow: Decision | None = None   # explore arm: where it would have stopped
    finished: bool = False
    placed: int = 0                  # where the last checkpoint was placed, probed or not

    @property
    def sched(self) -> dict:
        """Where this request probes: its setting's schedule as its rule probes it; an exploration request's as
        declared (its logged trial answers serve every family a recalibration certifies)."""
        s = self.route.setting
        return s.declared_sched if self.route.arm == EXPLORE else s.sched

    def due(self, pos: int, is_step: bool, is_transition: bool, interval: int) -> bool:
        """Whether this request's probe schedule probes at a checkpoint placed at ``pos`` (the replay's rule,
        ``schedule_keeps``); every placed checkpoint is noted, probed or not."""
        prev, self.placed = self.placed, int(pos)
        return bool(schedule_keeps(self.sched, interval, pos, prev, is_step, is_transition))

    @property
    def n(self) -> int:
        return len(self.history["pos"])

    @property
    def probing(self) -> bool:
        """Whether this request's checkpoints are probed: not a budget's (it reads positions only and probes once,
        at its stop, for the answer), except on an exploration request, whose logged trial answers are what a
        recalibration certifies other settings on."""
        setting = self.route.setting
        return self.route.arm == EXPLORE or bool(setting.policy.probes_needed(setting.params))

    def checkpoint(self, pos: int, answer_raw: str | None, signals: dict | None = None, *, answer_tokens: int = 0,
                   probe_tokens: int = 0, kind: str = "interval", answer_type: str = "number",
                   is_step: bool | None = None, is_transition: bool | None = None) -> None:
        """Record one checkpoint's probe result (signals: p_mean, p_geo, p_min, p_first, entropy). ``is_step``,
        ``is_transition``: the placement's flags (a checkpoint can be both; ``kind`` names one), else ``kind``'s."""
        h = self.history
        sig = signals or {}
        sched = self.sched                        # a kind the schedule does not probe at is not known live
        step = kind == "step" if is_step is None else bool(is_step)
        transition = kind == "transition" if is_transition is None else bool(is_transition)
        h["pos"].append(int(pos))
        h["is_step"].append(step and sched["at_steps"])
        h["is_transition"].append(transition and sched["at_transitions"])
        h["answer_raw"].append(answer_raw)
        h["answer_norm"].append(normalize(answer_raw, answer_type) if answer_raw else "")
        h["answer_tokens"].append(int(answer_tokens))
        h["probe_tokens"].append(int(probe_tokens))
        for s in SIGNAL_COLUMNS:
            v = sig.get(s)
            h[s].append(np.nan if v is None else float(v))
        self._kind, self._flags = kind, (step, transition)

    def answered(self, answer_raw: str | None, answer_tokens: int, answer_type: str = "number") -> None:
        """The answer of a request stopped without probes (a budget), from the one probe at its stop. It is
        charged as the replay charges a budget (domain.md: it needs no probes and is charged none): its tokens
        computed are what it emits, position plus answer (the gateway's metrics count the probe's cue too)."""
        h, j = self.history, self.stopped.ck
        h["answer_raw"][j], h["answer_norm"][j] = answer_raw, normalize(answer_raw, answer_type) if answer_raw else ""
        h["answer_tokens"][j] = h["probe_tokens"][j] = int(answer_tokens)
        self.stopped.answer = answer_raw

    def emitted(self, j: int) -> int:
        return self.history["pos"][j] + self.history["answer_tokens"][j]

    def computed(self, j: int) -> int:
        return self.history["pos"][j] + sum(self.history["probe_tokens"][: j + 1])


class Controller:
    """Decides continue / stop per checkpoint for many concurrent requests, with the replay's code."""

    def __init__(self, preset, answer_type: str = "number", log: DecisionLog | str | Path | None = None,
                 every: int = 32, steps: bool = True, transitions: bool = True, log_header: dict | None = None):
        check_deployable(preset)
        self.preset, self.answer_type = preset, answer_type
        self.every, self.steps, self.transitions = every, steps, transitions
        if log is not None and not isinstance(log, DecisionLog):
            log = DecisionLog(log, {"preset": preset.to_dict(), "answer_type": answer_type,
                                    "checkpoints": {"every": every, "steps": steps, "transitions": transitions},
                                    **(log_header or {})})
        self.log = log

    def open(self, request_id: str, question: str = "", meta: dict | None = None, tags: dict | None = None,
             gold: Any = None) -> Session:
        fields = request_fields(question, meta, tags)
        return Session(str(request_id), route(self.preset, str(request_id), fields), len(question or ""),
                       dict(meta or {}), dict(tags or {}), gold)

    def decide(self, sessions: list[Session]) -> list[Decision]:
        """For sessions that just recorded a checkpoint: stop here or continue (one vectorised call per
        distinct setting)."""
        out: list[Decision | None] = [None] * len(sessions)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(sessions):
            groups.setdefault(s.route.setting.key(), []).append(i)
        for idx in groups.values():
            setting = sessions[idx[0]].route.setting
            cols: dict[str, list] = {"question_id": []}
            for i in idx:
                h = sessions[i].history
                cols["question_id"] += [f"r{i}"] * len(h["pos"])
                for c, v in h.items():
                    if c != "answer_raw":
                        cols.setdefault(c, []).extend(v)
            cols["em"] = [0.0] * len(cols["question_id"])
            cols["f1"] = cols["em"]
            t = RunTable.from_arrow(pa.table(cols), "live", answer_type=self.answer_type)
            fires = setting.policy.fires(t, setting.params)
            last = t.lengths - 1
            hit = fires[t.rows, last]
            for k, i in enumerate(idx):
                s = sessions[i]
                j = s.n - 1
                out[i] = Decision(bool(hit[k]), s.history["answer_raw"][j] if hit[k] else None, j,
                                  s.history["pos"][j], setting.label())
        for s, d in zip(sessions, out):
            self._apply(s, d)
        return out  # type: ignore[return-value]

    def _apply(self, s: Session, d: Decision) -> None:
        j = d.ck
        verdict = "continue"
        if d.stop:
            if s.route.arm == EXPLORE:
                verdict = "shadow-stop" if s.shadow is None else "continue"
                if s.shadow is None:
                    s.shadow = d
                d.stop = False
            else:
                verdict = "stop"
                s.stopped = d
        if self.log:
            h = s.history
            self.log.write({"type": "checkpoint", "request": s.request_id, "arm": s.route.arm, "ck": j,
                            "pos": h["pos"][j], "kind": getattr(s, "_kind", "interval"),
                            **dict(zip(("is_step", "is_transition"), getattr(s, "_flags", (False, False)))),
                            "answer": h["answer_norm"][j], "answer_tokens": h["answer_tokens"][j],
                            "probe_tokens": h["probe_tokens"][j],
                            **{c: _clean(h[c][j]) for c in SIGNAL_COLUMNS}, "decision": verdict})

    def finish(self, s: Session, final_raw: str | None = None, n_tokens: int | None = None,
               em: float | None = None, cause: str | None = None) -> dict:
        """Close a request: a stopped one answers its trial answer; otherwise the model's own final answer
        (``final_raw``, after ``n_tokens`` generated tokens). Logs and returns the outcome. ``cause``: why a
        request ended when it was not the preset's decision (``upstream_error``: answered after the upstream
        failed; ``upstream_failed``: not answered, and then not a full-length trace either;
        ``client_disconnected``: its client left before the end, after ``n_tokens``)."""
        s.finished = True
        if s.stopped is not None:
            j = s.stopped.ck
            answer_raw, emitted, computed, full = s.history["answer_raw"][j], s.emitted(j), s.computed(j), False
            stop_pos = s.history["pos"][j]
        else:
            j = s.n - 1
            answer_raw, full = final_raw, cause is None
            emitted = n_tokens if n_tokens is not None else (s.history["pos"][j] if s.n else 0)
            # every probe it made counts, the last decided checkpoint's too (the end itself is never probed): the
            # replay's computed tokens at the end (engine.computed_tokens)
            computed = emitted + sum(s.history["probe_tokens"])
            stop_pos = emitted
        norm = normalize(answer_raw, self.answer_type) if answer_raw else ""
        rec = {"type": "final", "request": s.request_id, "arm": s.route.arm, "route": s.route.reason,
               "setting": s.route.setting.to_dict(), "question_chars": s.question_chars, "meta": s.meta,
               "tags": s.tags, "stopped": s.stopped is not None, "ck": j, "stop_pos": stop_pos,
               "tokens_emitted": emitted, "tokens_computed": computed, "answer": norm, "full_length": full,
               "n_checkpoints": s.n}
        if s.shadow is not None:
            rec["shadow_ck"], rec["shadow_pos"] = s.shadow.ck, s.shadow.pos
        if cause:
            rec["cause"] = cause
        if em is not None:
            rec["em"] = float(em)
        elif s.gold is not None:
            rec["em"] = score(norm, normalize_gold(s.gold if isinstance(s.gold, list) else [s.gold], self.answer_type), self.answer_type)[0]
        if self.log:
            self.log.write(rec)
        return rec


# --- plugging into generation -----------------------------------------------------------------------------
def controlled_generate(model, tok, questions: list, controller: Controller, cfg=None, batch_size: int = 8,
                        tags: dict | None = None, show_progress: bool = False, order: str = "length",
                        kind: str = "instruct", stats: dict | None = None,
                        probe_unscheduled: bool = False) -> list[dict]:
    """Generate answers for questions (``datasets.Question``) with the controller deciding at every checkpoint.

    Batches are formed as the runner forms them (prompts sorted by length) and every checkpoint is probed
    when it comes, so a run recorded with the same batch size and ``probes='immediate'`` computes the same
    numbers and the controller's stops equal the replay's, where the kernels are batch-invariant. (A run with
    batched probes computes them over masked key columns, which attention rounds differently: with bf16
    weights a few percent of trial answers differ.)

    A row is probed only where its request's schedule is due (``Session.due``): the decode loop places the
    union of the preset's schedules, and a request with a sparser schedule than another in its batch, or
    before its ``min_tokens``, computes no probe there; nor does a row's end (the model's own answer is read
    from its text). ``stats``, when given, collects the decode loop's probe counters (``probes`` computed,
    ``repeated`` entries among them) over all batches. ``probe_unscheduled`` probes every placed checkpoint
    and lets the sessions ignore the unscheduled ones (as before this hook; what a run recorded with
    ``probes='immediate'`` computes): the same decisions at a higher cost, for comparison.
    """
    cfg = probe_config(cfg or GenConfig(every=controller.every, steps=controller.steps,
                                        transitions=controller.transitions), controller
                       ).resolved(controller.answer_type, kind)
    prompts = {q.id: build_prompt(tok, q.text, cfg) for q in questions}
    todo = list(questions)
    if order == "length":
        todo.sort(key=lambda q: len(prompts[q.id]))
    out: dict[str, dict] = {}
    bar = progress(total=len(todo), desc="controller", unit="q", disable=not show_progress)
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        sessions = [controller.open(q.id, q.text, q.meta, (tags or {}).get(q.id, q.meta), q.gold or None)
                    for q in batch]

        def due(rows, results, kinds, sessions=sessions):
            # a row's end needs no probe; a checkpoint placed for another request's schedule (or before this
            # one's min_tokens) gets none (each placed checkpoint is noted once by its session). A request that
            # reads no trial answer (a budget) is decided here, on its position, and probed only where it stops
            ask, unprobed = [], []
            for r in rows:
                k = kinds[r]
                if k["kind"] == "final" or not sessions[r].due(len(results[r].token_ids), k["is_step"],
                                                                k["is_transition"], controller.every):
                    continue
                if sessions[r].probing:
                    ask.append(r)
                    continue
                sessions[r].checkpoint(len(results[r].token_ids), None, kind=k["kind"], is_step=k["is_step"],
                                       is_transition=k["is_transition"], answer_type=controller.answer_type)
                unprobed.append(r)
            if unprobed:
                stops = controller.decide([sessions[r] for r in unprobed])
                answering[:] = [r for r, d in zip(unprobed, stops) if d.stop]
            if probe_unscheduled:
                noted[:] = ask
                return rows
            return sorted(ask + answering)

        noted: list[int] = []              # probe_unscheduled: the rows whose session is due
        answering: list[int] = []          # rows stopped without probes (a budget): probed for their answer

        def hook(rows, results, sessions=sessions):
            ask, stopped = [], []
            for r in rows:                 # the rows probed: due on their schedule
                c = results[r].checkpoints[-1]
                pr = c["probe"]
                if r in answering:         # a budget's stop, decided already: its answer
                    sessions[r].answered(pr.raw if pr else None, len(pr.tokens) if pr else 0,
                                         controller.answer_type)
                    stopped.append(r)
                    continue
                if probe_unscheduled and r not in noted:
                    continue
                sessions[r].checkpoint(c["pos"], pr.raw if pr else None, pr.signals() if pr else None,
                                       answer_tokens=len(pr.tokens) if pr else 0,
                                       probe_tokens=pr.probe_tokens if pr else 0, kind=c["kind"],
                                       is_step=c["is_step"], is_transition=c["is_transition"],
                                       answer_type=controller.answer_type)
                ask.append(r)
            answering.clear()
            if not ask:
                return stopped
            decisions = controller.decide([sessions[r] for r in ask])
            return stopped + [r for r, d in zip(ask, decisions) if d.stop]

        results = generate_batch(model, tok, [prompts[q.id] for q in batch], cfg, on_checkpoint=hook,
                                 probe_due=due, stats=stats)
        for q, s, r in zip(batch, sessions, results):
            text = tok.decode(r.token_ids, skip_special_tokens=True)
            final_raw = extract(text, controller.answer_type) if s.stopped is None else None
            rec = controller.finish(s, final_raw, len(r.token_ids))
            rec["generated_tokens"] = len(r.token_ids)
            rec["text"] = text                # returned, not logged
            out[q.id] = rec
        bar.update(len(batch))
    bar.close()
    return [out[q.id] for q in questions]


def probe_config(cfg: GenConfig, controller: Controller) -> GenConfig:
    """The placement the decode loop probes at: the union of the preset's schedules (every gcd(n) x the
    interval, steps if any schedule wants them, transitions likewise), so an unscheduled checkpoint gets no
    probe. A schedule's ``min_tokens``, or a request whose schedule is sparser than another's, still meets
    checkpoints it does not want; the loop probes only the rows whose session is due (``Session.due``)."""
    import dataclasses
    scheds = [s.declared_sched for s in controller.preset.settings()]     # exploration requests probe as declared
    every = int(np.gcd.reduce([s["every"] for s in scheds]))
    return dataclasses.replace(cfg, every=controller.every * every,
                               steps=cfg.steps and any(s["at_steps"] for s in scheds),
                               transitions=cfg.transitions and any(s["at_transitions"] for s in scheds))


class StreamSession:
    """The controller for a token stream produced elsewhere (a server you run).

        s = StreamSession(controller, "req-1", question)
        for chunk, n_tok in stream:                 # text pieces and how many tokens each holds
            if s.feed(chunk, n_tok):                # a checkpoint is due before `chunk` is kept
                ans, probs, entropy = my_probe(prefix=s.text)   # cue + short greedy answer, on your server
                d = s.probe_result(ans, probs, entropy, probe_tokens=len(cue_ids) + len(probs))
                if d.stop:
                    return d.answer
        s.end()

    ``feed`` returns True when a checkpoint falls before this chunk (a transition word starts it, or the
    previous text ended a step or filled an interval); after ``probe_result`` call ``feed`` again with the
    same chunk (``resume=True``) to keep it.
    """

    def __init__(self, controller: Controller, request_id: str, question: str = "", meta: dict | None = None,
                 tags: dict | None = None, gold: Any = None):
        self.c = controller
        self.s = controller.open(request_id, question, meta, tags, gold)
        self.text, self.n_tokens = "", 0
        self._due: tuple | None = None     # (kind, is_step, is_transition) of the checkpoint waiting for its probe
        self._last_ck_tokens = -1

    def feed(self, chunk: str, n_tokens: int = 1, resume: bool = False) -> bool:
        """Keep ``chunk``, or return True when a checkpoint before it waits for its probe. A request that reads no
        trial answer (a budget) is decided on its position without one, and asks for a probe only where it
        stops: its answer."""
        if self.s.stopped is not None:
            return False
        if not resume and self._last_ck_tokens != self.n_tokens:
            step = bool(self.c.steps and self.text.endswith("\n\n") and not self.text.endswith("\n\n\n"))
            transition = bool(self.c.transitions and self.n_tokens > 0 and is_transition_start(chunk)
                              and self.text.endswith((" ", "\n", ".", ",")))
            interval = bool(self.c.every and self.n_tokens > 0 and self.n_tokens % self.c.every == 0)
            kind = "transition" if transition else "step" if step else "interval" if interval else None
            if kind:
                self._last_ck_tokens = self.n_tokens
                if self.s.due(self.n_tokens, step, transition, self.c.every):
                    if self.s.probing:
                        self._due = (kind, step, transition)
                        return True
                    self.s.checkpoint(self.n_tokens, None, kind=kind, is_step=step, is_transition=transition,
                                      answer_type=self.c.answer_type)
                    if self.c.decide([self.s])[0].stop:
                        return True            # stopped here: its answer's probe (``probe_result``)
        self.text += chunk
        self.n_tokens += n_tokens
        return False

    def probe_result(self, answer_raw: str | None, probs: list[float] | None = None, entropy: float | None = None,
                     probe_tokens: int = 0) -> Decision:
        if self.s.stopped is not None:         # a budget's stop: the probe gave its answer
            self.s.answered(answer_raw, len(probs or []), self.c.answer_type)
            return self.s.stopped
        p = Probe(answer_raw or "", [], list(probs or []), float("nan") if entropy is None else float(entropy), 0)
        kind, step, transition = self._due or ("interval", False, False)
        self.s.checkpoint(self.n_tokens, answer_raw, p.signals(), answer_tokens=len(probs or []),
                          probe_tokens=probe_tokens, kind=kind, is_step=step, is_transition=transition,
                          answer_type=self.c.answer_type)
        self._last_ck_tokens = self.n_tokens
        self._due = None
        return self.c.decide([self.s])[0]

    def end(self, final_raw: str | None = None) -> dict:
        if final_raw is None and self.s.stopped is None:
            final_raw = extract(self.text, self.c.answer_type)
        return self.c.finish(self.s, final_raw, self.n_tokens)


# --- replaying the controller over stored checkpoints (the stream path, without a model) -------------------
def simulate(t, controller: Controller, with_em: bool = True) -> list[dict]:
    """Feed a run's stored checkpoints through the controller, as live streams would: every question is a
    request, all of them in flight together, and at each checkpoint index the requests due there are decided
    in one ``decide`` call (as a server decides its concurrent requests; a request's decision reads only its
    own history). Returns the final records, in the run's order (and writes the log). Used to check the stream
    path against the replay and to make logs for monitoring tests from stored runs."""
    meta_cols = [c for c in t.meta.columns if c.startswith("meta.")]
    sessions = []
    for i in range(t.n):
        meta = {c[5:]: _clean(t.meta[c].iloc[i]) for c in meta_cols}
        meta = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in meta.items() if v is not None}
        q = "x" * int(t.meta["question_chars"].iloc[i]) if "question_chars" in t.meta else ""
        sessions.append(controller.open(str(t.question_ids[i]), q, meta, meta))
    last = t.lengths - 1                                # the end is the request's own, never probed
    seen: list[list[int]] = [[] for _ in sessions]      # per request, the run's checkpoint of each it recorded
    for j in range(int(last.max()) if t.n else 0):
        batch, unprobed = [], []
        for i in np.flatnonzero(last > j):
            s = sessions[i]
            if s.stopped is not None:
                continue
            step, transition = bool(t.is_step[i, j]), bool(t.is_transition[i, j])
            if not s.due(int(t.pos[i, j]), step, transition, controller.every):
                continue                               # not on this request's schedule: no probe
            kind = "transition" if transition else "step" if step else "interval"
            seen[i].append(j)
            if not s.probing:                          # a budget: decided on its position, probed where it stops
                s.checkpoint(int(t.pos[i, j]), None, kind=kind, is_step=step, is_transition=transition,
                             answer_type=controller.answer_type)
                unprobed.append(i)
                continue
            sig = {c: _clean(float(t.cols[c][i, j])) for c in SIGNAL_COLUMNS}
            s.checkpoint(int(t.pos[i, j]), t.answers[i, j] or None, sig, answer_tokens=int(t.answer_tokens[i, j]),
                         probe_tokens=int(t.probe_tokens[i, j]), kind=kind, is_step=step, is_transition=transition,
                         answer_type=controller.answer_type)
            batch.append(s)
        if batch:
            controller.decide(batch)
        if unprobed:
            for i, d in zip(unprobed, controller.decide([sessions[i] for i in unprobed])):
                if d.stop:
                    sessions[i].answered(t.answers[i, j] or None, int(t.answer_tokens[i, j]), controller.answer_type)
    out = []
    for i, s in enumerate(sessions):
        stop = seen[i][s.stopped.ck] if s.stopped is not None else None     # the run's checkpoint it stopped at
        em = float(t.em[i, stop] if stop is not None else t.full_em[i]) if with_em else None
        out.append(controller.finish(s, t.answers[i, t.final_idx[i]] or None, int(t.pos[i, t.final_idx[i]]), em))
    return out
