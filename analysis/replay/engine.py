"""Replay: evaluate a stopping rule from stored checkpoints, for all questions at once.

A run is loaded once into a RunTable: 2-D arrays of questions x checkpoints (padded past each question's
last checkpoint). A setting's rule gives a boolean array "fires here"; the stop of each question is the
first checkpoint where it fires, or its last checkpoint (the full-length answer) when it never does. Since
the last checkpoint always counts as a stop, the first stop is one ``argmax`` over the row. Everything a
rule reads at checkpoint j comes from checkpoints 0..j, so replay equals running the rule online.

Costs (domain.md): tokens emitted = the stop's position + the trial answer's tokens; tokens computed =
emitted-side position + every probe's tokens up to and including the stop (the last checkpoint needs no
probe: the model's own answer is there).

Probe schedules (``Setting.schedule``): a setting probes only at some of the recorded checkpoints (every n-th
multiple of the run's interval, steps, transitions, none before a floor). ``scheduled`` masks the others out
and packs each question's kept checkpoints to the left, vectorised: the family's ``fires`` and its cached
history features (answer run lengths, votes, the entropy EMA) then run over the probed sequence only, and
stops are mapped back to the run's checkpoint indices. Tokens computed count the scheduled probes only, and
none at all for a setting that reads no trial answer (``Policy.probes_needed``: a budget).

About 450 lines: ``RunTable`` (the padded arrays), the schedule's packing and ``replay`` are the hot path and
share its array layout; splitting them would spread one layout's invariants over several files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.replay.policies.base import SCHEDULE_DEFAULTS, Setting, check_signals, json_key
from analysis.core.schema import SIGNAL_COLUMNS

KEPT_RIGHT, KEPT_WRONG, LOST, GAINED = 0, 1, 2, 3
REPLAY_COLUMNS = ["question_id", "pos", "is_step", "is_transition", "answer_norm", "em", "f1", *SIGNAL_COLUMNS,
                  "answer_tokens", "probe_tokens"]      # what a RunTable reads (not the raw answers or kinds)
OUTCOME_NAMES = {KEPT_RIGHT: "kept right", KEPT_WRONG: "kept wrong", LOST: "lost", GAINED: "gained"}


class RunTable:
    """One run's checkpoints as padded 2-D numpy arrays, plus cached derived features."""

    def __init__(self, run_id: str, question_ids: np.ndarray, lengths: np.ndarray, cols: dict[str, np.ndarray],
                 answers: np.ndarray, meta: pd.DataFrame | None = None, answer_type: str = "number",
                 incumbent: dict[str, np.ndarray] | None = None, interval: int | None = None):
        self.run_id = run_id
        # the run's checkpoint interval in tokens (a schedule's `every` is a multiple of it); None: inferred
        self._interval = interval
        self.question_ids = np.asarray(question_ids)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.n, self.m = cols["pos"].shape
        self.answer_type = answer_type
        self.cols = cols
        self.answers = answers                          # (n, m) object: normalised trial answers
        self.meta = meta if meta is not None else pd.DataFrame(index=range(self.n))
        self.rows = np.arange(self.n)
        j = np.arange(self.m)
        self.valid = j[None, :] < self.lengths[:, None]
        self.final_idx = self.lengths - 1
        self.is_final = j[None, :] >= self.final_idx[:, None]  # padded cells count as "ended" too
        probe = np.where(self.is_final, 0, cols["probe_tokens"])
        self.emitted = cols["pos"] + np.where(self.is_final, 0, cols["answer_tokens"])
        self.computed = cols["pos"] + np.cumsum(probe, axis=1)
        self.full_em = cols["em"][self.rows, self.final_idx]
        self.full_f1 = cols["f1"][self.rows, self.final_idx]
        self.full_tokens = cols["pos"][self.rows, self.final_idx].astype(np.float64)
        self._signals = {s: bool(np.isfinite(cols[s][self.valid]).any()) for s in SIGNAL_COLUMNS if s in cols}
        self.cache: dict[Any, Any] = {}
        # the production stopper's stops, per question (analysis/incumbent.py: pos, em, f1, answer), or None
        self.incumbent = incumbent

    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("cols")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    @property
    def has_answer(self) -> np.ndarray:
        """Checkpoints whose trial answer is non-empty."""
        if "has_answer" not in self.cache:
            self.cache["has_answer"] = self.ans >= 0
        return self.cache["has_answer"]

    def has_signal(self, name: str) -> bool:
        return self._signals.get(name, False)

    @property
    def interval(self) -> int:
        """Tokens between the run's interval checkpoints: the run's config says, else inferred from the
        checkpoints that are neither steps nor transitions nor ends (their positions' gcd, or their median gap)."""
        if self._interval is None:
            plain = self.valid & ~self.is_final & ~self.is_step & ~self.is_transition
            p = self.pos[plain].astype(np.int64)
            g = int(np.gcd.reduce(p)) if len(p) else 0
            if g < 2 and len(p):
                gaps = np.diff(self.pos, axis=1)[plain[:, 1:] & plain[:, :-1]]
                g = int(np.median(gaps)) if len(gaps) else 0
            self._interval = max(1, g or 32)
        return self._interval

    @interval.setter
    def interval(self, value: int | None) -> None:
        self._interval = None if value is None else max(1, int(value))

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_arrow(cls, tbl: pa.Table, run_id: str = "", meta: pd.DataFrame | None = None,
                   answer_type: str = "number") -> "RunTable":
        """From checkpoint rows ordered by question, then checkpoint index (as Store.checkpoints gives)."""
        import pyarrow.compute as pc
        N = tbl.num_rows
        if N == 0:
            raise ValueError("run has no checkpoints")
        # strings are dictionary-encoded in Arrow (C++), never turned into a million Python objects
        qd = pc.dictionary_encode(tbl.column("question_id").combine_chunks())
        qcodes = qd.indices.to_numpy(zero_copy_only=False)
        qvals = np.asarray(qd.dictionary.to_pylist(), dtype=object)
        brk = np.flatnonzero(qcodes[1:] != qcodes[:-1]) + 1
        starts = np.r_[0, brk]
        lengths = np.diff(np.r_[starts, N])
        qi = np.repeat(np.arange(len(starts)), lengths)
        ji = np.arange(N) - np.repeat(starts, lengths)
        n, m = len(starts), int(lengths.max())

        def grid(values: np.ndarray, fill: Any, dtype) -> np.ndarray:
            g = np.full((n, m), fill, dtype=dtype)
            g[qi, ji] = values
            return g

        def col(name: str, dtype=np.float64) -> np.ndarray:
            if name not in tbl.column_names:
                return np.full(N, np.nan)
            return tbl.column(name).to_numpy(zero_copy_only=False).astype(dtype)

        pos = col("pos", np.float64)
        cols = {
            "pos": _pad_forward(grid(pos, np.nan, np.float64), lengths),
            "em": grid(col("em"), 0.0, np.float64),
            "f1": grid(col("f1"), 0.0, np.float64),
            "answer_tokens": grid(np.nan_to_num(col("answer_tokens")), 0.0, np.float64),
            "probe_tokens": grid(np.nan_to_num(col("probe_tokens")), 0.0, np.float64),
            "is_step": grid(col("is_step", bool) if "is_step" in tbl.column_names else np.zeros(N, bool), False, bool),
            "is_transition": grid(col("is_transition", bool) if "is_transition" in tbl.column_names
                                  else np.zeros(N, bool), False, bool),
        }
        for s in SIGNAL_COLUMNS:
            cols[s] = grid(col(s), np.nan, np.float64)
        if "answer_norm" in tbl.column_names:
            nd = pc.dictionary_encode(pc.fill_null(tbl.column("answer_norm").combine_chunks(), ""))
            codes = nd.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            uniq = np.asarray(nd.dictionary.to_pylist(), dtype=object)
        else:
            codes, uniq = np.zeros(N, np.int64), np.array([""], dtype=object)
        empty = uniq == ""
        codes = np.where(empty[codes], -1, codes)
        cols["ans"] = grid(codes, -2, np.int64)          # -1: no answer; -2: padding
        answers = np.append(uniq, "").astype(object)[np.where(cols["ans"] < 0, len(uniq), cols["ans"])]
        return cls(run_id, qvals[qcodes[starts]], lengths, cols, answers, meta, answer_type)

    @classmethod
    def from_store(cls, store, run_id: str) -> "RunTable":
        run = store.run(run_id)
        tbl = store.checkpoints(run["id"], REPLAY_COLUMNS)
        tr = store.traces(run["id"])
        meta = _meta_frame(tr)
        t = cls.from_arrow(tbl, run["id"], None, run["answer_type"])
        t.interval = run_interval(run.get("config"))
        meta = meta.set_index("question_id").reindex(t.question_ids).reset_index()
        t.meta = meta
        if run.get("n_incumbent"):
            t.incumbent = align(store.incumbent(run["id"]), t.question_ids)
        return t

    # -- subsets ------------------------------------------------------------------------------------------
    def subset(self, idx: np.ndarray, fitted: bool = True) -> "RunTable":
        """A table of some questions (a slice or a split); shares nothing mutable with this one. ``fitted``:
        whether the cross-fitted probabilities (models trained on the run's labels) follow their questions; a
        tune/held-out split passes False, so that what is chosen on the tune half never rests on models that saw
        the held-out half's labels (and the choice is the same whatever ran on the whole table before)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        cols = {k: v[idx] for k, v in self.cols.items()}
        sub = RunTable(self.run_id, self.question_ids[idx], self.lengths[idx], cols, self.answers[idx],
                       self.meta.iloc[idx].reset_index(drop=True), self.answer_type,
                       None if self.incumbent is None else {k: v[idx] for k, v in self.incumbent.items()},
                       self._interval)
        sub._signals = self._signals
        # Cached per-question arrays follow their questions; the cross-fitted probabilities too unless ``fitted``
        # is False, so a slice is decided by the same out-of-fold models as the whole run.
        for k, v in self.cache.items():
            if not fitted and isinstance(k, tuple) and k and k[0] == "learned":
                continue
            if isinstance(v, np.ndarray) and v.shape[:1] == (self.n,):
                sub.cache[k] = v[idx]
            elif isinstance(v, tuple) and all(isinstance(x, np.ndarray) and x.shape[:1] == (self.n,) for x in v):
                sub.cache[k] = tuple(x[idx] for x in v)
        return sub

    # -- derived features (cached; each is causal: column j uses columns 0..j only) ------------------------
    def run_length(self) -> np.ndarray:
        """How many consecutive checkpoints, ending here, gave this same non-empty trial answer."""
        if "run_length" not in self.cache:
            a = self.ans
            r = np.zeros(a.shape, dtype=np.int64)
            r[:, 0] = (a[:, 0] >= 0)
            for j in range(1, self.m):
                same = (a[:, j] == a[:, j - 1]) & (a[:, j] >= 0)
                r[:, j] = np.where(same, r[:, j - 1] + 1, (a[:, j] >= 0).astype(np.int64))
            self.cache["run_length"] = r
        return self.cache["run_length"]

    def votes(self) -> np.ndarray:
        """How many checkpoints so far (this one included) gave this same non-empty trial answer."""
        if "votes" not in self.cache:
            a = self.ans
            flat = pd.DataFrame({"q": np.repeat(self.rows, self.m), "a": a.ravel()})
            v = flat.groupby(["q", "a"], sort=False).cumcount().to_numpy() + 1
            v = v.reshape(a.shape)
            self.cache["votes"] = np.where(a >= 0, v, 0)
        return self.cache["votes"]

    def ema_var(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """EAT's exponential moving average of the after-cue entropy and its moving variance, over the entropies
        recorded so far. A missing entropy (NaN) is no observation: both carry over unchanged (it was read as 0,
        a jump that a run of missing ones then "settled"). The mean is NaN before the first entropy and the
        variance until the second: one entropy has not varied yet, and its variance of 0 by construction is no
        evidence of settling."""
        key = ("ema", round(float(alpha), 12))
        if key not in self.cache:
            h = self.entropy
            mean = np.full(h.shape, np.nan)
            var = np.full(h.shape, np.nan)
            mu, v, seen = np.full(self.n, np.nan), np.zeros(self.n), np.zeros(self.n, np.int64)
            for j in range(self.m):
                x = h[:, j]
                ok = ~np.isnan(x)
                later = ok & (seen > 0)
                d = np.where(later, x - mu, 0.0)
                v = np.where(later, (1 - alpha) * (v + alpha * d * d), v)
                mu = np.where(later, mu + alpha * d, np.where(ok, x, mu))
                seen += ok
                mean[:, j] = mu
                var[:, j] = np.where(seen >= 2, v, np.nan)
            self.cache[key] = (mean, var)
        return self.cache[key]


def run_interval(config: dict | None) -> int | None:
    """The interval a run's config records (a generated run's ``gen.every``, a text import's
    ``checkpoints.every``), or None: then inferred from the checkpoints. An import of checkpoints made elsewhere
    (``format: checkpoints``) probed where its file says, whatever ``every`` its config holds (unused there)."""
    if (config or {}).get("format") == "checkpoints":
        return None
    for k in ("gen", "checkpoints"):
        v = ((config or {}).get(k) or {}).get("every")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return None


# --- probe schedules --------------------------------------------------------------------------------------
def schedule_keeps(s: dict, interval: int, pos, prev, is_step, is_transition):
    """Whether a full schedule ``s`` probes at a checkpoint placed at ``pos`` (the previous one placed at
    ``prev``, 0 for the first): the rule, for arrays (the replay) or single checkpoints (the live controller)."""
    keep = np.zeros(np.shape(pos), bool)
    if s["every"]:
        e = float(s["every"] * interval)
        keep = keep | (np.floor(np.asarray(pos) / e) > np.floor(np.asarray(prev) / e))
    if s["at_steps"]:
        keep = keep | np.asarray(is_step, bool)
    if s["at_transitions"]:
        keep = keep | np.asarray(is_transition, bool)
    if s["min_tokens"]:
        keep = keep & (np.asarray(pos) >= s["min_tokens"])
    return keep


def schedule_mask(t: RunTable, schedule: dict) -> np.ndarray:
    """(n, m) bool: the checkpoints a schedule probes at, plus each question's end (always kept).

    ``every`` e keeps the first checkpoint at or past each multiple of e x the run's interval (in a run recorded
    every N tokens, exactly the checkpoints at multiples of e N, whatever else they are); steps and
    transitions are kept when asked; nothing before ``min_tokens``. Padding is never kept."""
    s = {**SCHEDULE_DEFAULTS, **schedule}
    key = ("keep", json_key(s))
    if key in t.cache:
        return t.cache[key]
    prev = np.concatenate([np.zeros((t.n, 1)), t.pos[:, :-1]], axis=1)
    keep = schedule_keeps(s, t.interval, t.pos, prev, t.is_step, t.is_transition) & t.valid
    keep[t.rows, t.final_idx] = True
    _remember(t, key, keep)
    return keep


def scheduled(t: RunTable, schedule: dict) -> tuple[RunTable, np.ndarray | None]:
    """The table a schedule sees, and where its columns come from in ``t`` (None: the schedule keeps every
    checkpoint and the table is ``t``). Each question's kept checkpoints are packed to the left in order; a
    step or transition flag the schedule does not probe at is cleared (the rule never learns of it live).
    Cached on ``t`` per schedule, so a sweep packs once per schedule and reuses the features built on it."""
    s = {**SCHEDULE_DEFAULTS, **schedule}
    if s == SCHEDULE_DEFAULTS:
        return t, None
    key = ("seen", json_key(s))
    if key in t.cache:
        return t.cache[key]
    keep = schedule_mask(t, s)
    lengths = keep.sum(axis=1)
    m = int(lengths.max())
    qi, ji = np.nonzero(keep)
    rank = np.cumsum(keep, axis=1)[qi, ji] - 1
    src = np.repeat(t.final_idx[:, None], m, axis=1)       # padding repeats the end (never read by a rule)
    src[qi, rank] = ji
    pad = np.arange(m)[None, :] >= lengths[:, None]
    cols = {k: np.take_along_axis(v, src, axis=1) for k, v in t.cols.items()}
    cols["ans"] = np.where(pad, -2, cols["ans"])
    cols["is_step"] &= bool(s["at_steps"])
    cols["is_transition"] &= bool(s["at_transitions"])
    seen = RunTable(t.run_id, t.question_ids, lengths, cols, np.take_along_axis(t.answers, src, axis=1), t.meta,
                    t.answer_type, t.incumbent, t.interval)
    seen._signals = t._signals
    _remember(t, key, (seen, src))
    return seen, src


def computed_tokens(t: RunTable, stop: np.ndarray, setting: Setting, probed: bool = False) -> np.ndarray:
    """Per question, the tokens computed up to ``stop`` (indices of ``t``) under ``setting``: the position plus
    the probes its schedule made up to the stop (the end needs none); a setting that reads no trial answer
    (a budget) made none, so it computes what it emits, unless ``probed`` (an exploration request probes on its
    setting's schedule all the same: its trial answers are logged)."""
    r = t.rows
    if not probed and not setting.policy.probes_needed(setting.params):
        return t.emitted[r, stop]
    s = setting.declared_sched if probed else setting.sched     # an exploration request probes as declared
    if s == SCHEDULE_DEFAULTS:
        return t.computed[r, stop]
    key = ("probes", json_key(s))
    if key not in t.cache:
        keep = schedule_mask(t, s) & ~t.is_final
        _remember(t, key, np.cumsum(np.where(keep, t.probe_tokens, 0.0), axis=1))
    return t.pos[r, stop] + t.cache[key][r, stop]


MAX_SCHEDULES = 6      # schedules whose packed tables a run's table keeps (Tune's sliders try many)


def _remember(t: RunTable, key: tuple, value) -> None:
    """Cache a schedule's array or table on ``t``, forgetting the least recently added schedule's beyond
    MAX_SCHEDULES (a packed table is about as large as the run's)."""
    order = t.cache.setdefault("_schedules", [])
    if key[1] in order:
        order.remove(key[1])
    order.append(key[1])
    while len(order) > MAX_SCHEDULES:
        old = order.pop(0)
        for k in [k for k in t.cache if isinstance(k, tuple) and len(k) == 2 and k[1] == old
                  and k[0] in ("keep", "seen", "probes")]:
            del t.cache[k]
    t.cache[key] = value


def _pad_forward(g: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Fill the padding past each row's end with its last value."""
    n, m = g.shape
    last = g[np.arange(n), lengths - 1]
    j = np.arange(m)
    return np.where(j[None, :] < lengths[:, None], g, last[:, None])


def align(rows: pa.Table, question_ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """The stored rows (Store.incumbent) as arrays in the table's question order: pos (NaN: no row), em and
    f1 (NaN: no answer given), answer (None: no answer given). None when there are no rows."""
    if rows.num_rows == 0:
        return None
    df = rows.to_pandas().set_index("question_id").reindex(pd.Index(question_ids, dtype=object))
    ans = df["answer_norm"].to_numpy(dtype=object)
    given = df["em"].notna().to_numpy()
    return {"pos": df["pos"].to_numpy(dtype=np.float64), "em": df["em"].to_numpy(dtype=np.float64),
            "f1": df["f1"].to_numpy(dtype=np.float64), "answer": np.where(given, ans, None)}


def _meta_frame(traces: pa.Table) -> pd.DataFrame:
    """Per-question slicing metadata: the dataset's meta fields plus the question's length."""
    qid = traces.column("question_id").to_pylist()
    metas = traces.column("meta").to_pylist() if "meta" in traces.column_names else [None] * len(qid)
    qtext = traces.column("question").to_pylist() if "question" in traces.column_names else [""] * len(qid)
    rows = []
    for q, m, text in zip(qid, metas, qtext):
        d = json.loads(m) if isinstance(m, str) and m else {}
        row = {"question_id": q, "question_chars": len(text or "")}
        row.update({f"meta.{k}": v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None})
        rows.append(row)
    return pd.DataFrame(rows)


# --- replay -----------------------------------------------------------------------------------------------
def stop_index(t: RunTable, setting: Setting) -> np.ndarray:
    """Per question, the checkpoint index (of ``t``) where the setting stops, seeing only its schedule's
    checkpoints."""
    check_signals(t, setting)
    seen, src = scheduled(t, setting.schedule)
    fires = setting.policy.fires(seen, setting.params)
    first = fires.argmax(axis=1)                 # numpy stops at the first True of each row
    hit = fires[seen.rows, first] & (first <= seen.final_idx)
    stop = np.where(hit, first, seen.final_idx)
    return stop if src is None else src[seen.rows, stop]


@dataclass
class Outcome:
    """Per-question result of replaying one setting (or a preset) on a table."""
    label: str
    question_ids: np.ndarray
    stop: np.ndarray
    stop_pos: np.ndarray
    em: np.ndarray
    f1: np.ndarray
    emitted: np.ndarray
    computed: np.ndarray
    full_em: np.ndarray
    full_tokens: np.ndarray
    answers: np.ndarray = field(repr=False, default=None)

    @property
    def outcome(self) -> np.ndarray:
        right, full_right = self.em > 0.5, self.full_em > 0.5
        return np.select([right & full_right, ~right & ~full_right, full_right & ~right],
                         [KEPT_RIGHT, KEPT_WRONG, LOST], GAINED)

    def subset(self, idx: np.ndarray) -> "Outcome":
        """The same outcome on some questions (a slice or a split)."""
        return Outcome(self.label, *(None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                                     for f in fields(self) if f.name != "label"))

    def summary(self) -> dict:
        n = len(self.em)
        if n == 0:
            return {"n": 0}
        oc = self.outcome
        full = float(self.full_tokens.mean()) or 1.0
        return {
            "n": n, "label": self.label,
            "em": float(self.em.mean()), "em_full": float(self.full_em.mean()),
            "delta_em": float(self.em.mean() - self.full_em.mean()),
            "f1": float(self.f1.mean()),
            "tokens_emitted": float(self.emitted.mean()), "tokens_computed": float(self.computed.mean()),
            "tokens_full": float(self.full_tokens.mean()),
            "savings_emitted": 1 - float(self.emitted.mean()) / full,
            "savings_computed": 1 - float(self.computed.mean()) / full,
            "kept_right": int((oc == KEPT_RIGHT).sum()), "kept_wrong": int((oc == KEPT_WRONG).sum()),
            "lost": int((oc == LOST).sum()), "gained": int((oc == GAINED).sum()),
            "stopped_early": int((self.stop_pos < self.full_tokens).sum()),
        }


def outcome_from_stops(t: RunTable, stop: np.ndarray, label: str = "", setting: Setting | None = None,
                       computed: np.ndarray | None = None) -> Outcome:
    """The outcome of stops (indices of ``t``). Tokens computed: ``computed`` when given, else those of the
    ``setting`` that made the stops (its schedule's probes; none for a budget), else every probe up to the
    stop."""
    r = t.rows
    if computed is None:
        computed = computed_tokens(t, stop, setting) if setting is not None else t.computed[r, stop]
    return Outcome(label, t.question_ids, stop, t.pos[r, stop], t.em[r, stop], t.f1[r, stop],
                   t.emitted[r, stop], computed, t.full_em, t.full_tokens, t.answers[r, stop])


def replay(t: RunTable, setting: Setting | dict) -> Outcome:
    setting = Setting.from_dict(setting) if not isinstance(setting, Setting) else setting
    return outcome_from_stops(t, stop_index(t, setting), setting.label(), setting)


def full_length(t: RunTable) -> Outcome:
    """The baseline: every question runs to its end, with no probes (computed = emitted)."""
    o = outcome_from_stops(t, t.final_idx, "full length")
    o.computed = o.emitted.copy()
    return o

