"""The incumbent: the user's own (production) early-stopping mechanism, shown against every replayed setting.

An imported run may say, per question, where the production stopper stopped (a token position of the trace)
and, optionally, what it answered there. ``attach`` validates and stores that in the ``incumbent`` table
(schema v4); ``RunTable.from_store`` loads it with the run (``RunTable.incumbent``, carried by ``subset``),
and ``incumbent_outcome`` turns it into a replay ``Outcome`` labelled "your mechanism", so that lost/gained,
summaries, bootstrap CIs and paired comparisons treat it like any replayed setting. ``beat`` answers the
user's question on the held-out split: what the incumbent saves and costs, and which setting (chosen on the
tune split) does better.

Semantics of the Outcome, per question:
- stop index: the last checkpoint at or before the incumbent's position (checkpoint 0 when it stopped before
  the first checkpoint); a position at or past the trace's end counts as the trace's end;
- EM / F1: from the incumbent's own answer when it gave one (scored when attached); otherwise the trial
  answer at the stop index, as replay would answer there (no answer, EM 0, before the first checkpoint);
- tokens emitted: the incumbent's position plus, when it stopped before the end, the answer's tokens (those of
  the trial answer at the stop index: a replayed stop is charged its answer the same way, so neither side of a
  comparison is tilted); tokens computed: the position plus every probe's tokens up to the stop (the answer's
  among them), since a production stopper probes;
- a question without an incumbent row runs to full length (the full-length answer and tokens), charged the
  probes up to its end like a stopper that never fired.

The answer of a question attached without one is looked up when the run is loaded, not stored: it then
follows the stored checkpoints (a ``rescore`` of the run, say) and needs no copy of them. Answers given are
scored against the questions' gold when attached.

The kept sweeps (``frontier.sweep_key``) do not contain the incumbent: its point is computed from the run's
table whenever it is drawn, so attaching or replacing an incumbent can never leave a stale sweep.
"""
from __future__ import annotations

import json
import numbers
from typing import Sequence

import numpy as np
import pyarrow as pa

from analysis.core.answers import extract, normalize, normalize_gold, score
from analysis.core.errors import StoplineError
from analysis.evaluate.compare import paired
from analysis.evaluate.frontier import sweep
from analysis.evaluate.optimize import evaluate_outcome, halves, operating_point
from analysis.evaluate.stats import N_BOOT
from analysis.replay.engine import Outcome, replay, RunTable
from analysis.replay.policies.base import Setting

LABEL = "your mechanism"


# --- writing --------------------------------------------------------------------------------------------
def check_stops(question_ids: Sequence[str], positions: Sequence, answers_raw: Sequence | None = None, *,
                file: str | None = None, lines: Sequence[int] | None = None, pos_field: str = "pos",
                answer_field: str = "answer") -> np.ndarray:
    """The stop positions as integers, once checked the way ``attach`` checks them before it writes (an
    import checks them with the rest of its file, before it opens the store): one per question, each question
    once, non-negative whole numbers, answers text or absent. Errors name the question, and ``file`` /
    ``lines`` / the fields when given."""
    qids = [str(q) for q in question_ids]
    n = len(qids)

    def where(i: int) -> dict:
        return {"file": file, "line": lines[i] if lines is not None else None}
    if len(positions) != n:
        raise StoplineError(f"{len(positions)} positions for {n} questions", file=file, field=pos_field)
    if answers_raw is not None and len(answers_raw) != n:
        raise StoplineError(f"{len(answers_raw)} answers for {n} questions", file=file, field=answer_field)
    seen: set[str] = set()
    pos = np.zeros(n, dtype=np.int64)
    for i, (q, p) in enumerate(zip(qids, positions)):
        if q in seen:
            raise StoplineError(f"question {q!r} is given twice", field="question_id", **where(i))
        seen.add(q)
        ok = isinstance(p, numbers.Integral) and not isinstance(p, bool)
        if not ok and isinstance(p, numbers.Real) and not isinstance(p, bool) and float(p).is_integer():
            ok = True                    # 512.0 from a JSON or Parquet float column
        if not ok or p < 0:
            raise StoplineError(f"question {q!r}: the stop position must be a non-negative integer "
                                f"(a token count), not {p!r}", field=pos_field, **where(i))
        pos[i] = int(p)
    if answers_raw is not None:
        for i, a in enumerate(answers_raw):
            if a is not None and not isinstance(a, str):
                raise StoplineError(f"question {qids[i]!r}: the answer must be text or absent, not {a!r}",
                                    field=answer_field, **where(i))
    return pos


def attach(store, run_id: str, question_ids: Sequence[str], positions: Sequence[int],
           answers_raw: Sequence[str | None] | None = None, con=None, *, file: str | None = None,
           lines: Sequence[int] | None = None, pos_field: str = "pos", answer_field: str = "answer") -> int:
    """Store where the production stopper stopped on each question of a run (and what it answered).

    ``positions``: non-negative integer token positions; ``answers_raw``: the stopper's answer text per
    question (None for a question: the trial answer at the stop, looked up at load time). Replaces the run's
    incumbent, if it had one. Errors name the question, and ``file`` / ``lines`` / ``pos_field`` /
    ``answer_field`` when the caller (an import) passes them. Written in ``con``'s transaction when given,
    else in a transaction of its own. Returns the number of rows written."""
    qids = [str(q) for q in question_ids]
    n = len(qids)
    pos = check_stops(qids, positions, answers_raw, file=file, lines=lines, pos_field=pos_field,
                      answer_field=answer_field)

    def where(i: int) -> dict:
        return {"file": file, "line": lines[i] if lines is not None else None}

    def go(c) -> int:
        row = c.execute("SELECT answer_type FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise StoplineError(f"no run {run_id!r} to attach an incumbent to", file=file)
        atype = row[0]
        golds = dict(c.execute("""SELECT t.question_id, q.gold FROM traces t JOIN runs r ON r.run_id = t.run_id
                                  LEFT JOIN questions q ON q.dataset = r.dataset AND q.question_id = t.question_id
                                  WHERE t.run_id = ?""", [run_id]).fetchall())
        for i, q in enumerate(qids):
            if q not in golds:
                raise StoplineError(f"question {q!r} is not in run {run_id}", field="question_id", **where(i))
        raw = list(answers_raw) if answers_raw is not None else [None] * n
        norm, em, f1 = [None] * n, [None] * n, [None] * n
        gold_norm: dict[str, list[str]] = {}
        for i, (q, a) in enumerate(zip(qids, raw)):
            if a is None:
                continue
            if q not in gold_norm:
                g = golds[q]
                gold_norm[q] = normalize_gold(json.loads(g) if isinstance(g, str) else list(g or []), atype)
            norm[i] = normalize(extract(a, atype), atype)
            em[i], f1[i] = score(norm[i], gold_norm[q], atype)
        tbl = pa.table({"run_id": pa.array([run_id] * n, pa.string()), "question_id": pa.array(qids, pa.string()),
                        "pos": pa.array(pos, pa.int32()), "answer_raw": pa.array(raw, pa.string()),
                        "answer_norm": pa.array(norm, pa.string()), "em": pa.array(em, pa.float64()),
                        "f1": pa.array(f1, pa.float64())})
        c.execute("DELETE FROM incumbent WHERE run_id = ?", [run_id])
        c.register("_inc", tbl)
        c.execute("INSERT INTO incumbent SELECT * FROM _inc")
        c.unregister("_inc")
        return n
    if con is not None:
        return go(con)
    with store.transaction() as c:
        return go(c)


# --- reading --------------------------------------------------------------------------------------------
def incumbent_outcome(t: RunTable) -> Outcome:
    """The incumbent as a replay Outcome (semantics in the module docstring); vectorised over questions."""
    inc = t.incumbent
    if inc is None:
        raise StoplineError(f"run {t.run_id} has no incumbent (no production stop positions)",
                            hint="import the run with --stop-field (the token position where your stopper "
                                 "stopped), or attach one with analysis.evaluate.incumbent.attach")
    r = t.rows
    has = np.isfinite(inc["pos"])
    pos = np.where(has, np.minimum(np.nan_to_num(inc["pos"]), t.full_tokens), t.full_tokens)
    k = ((t.pos <= pos[:, None]) & t.valid).sum(axis=1)      # checkpoints at or before the stop
    stop = np.maximum(k - 1, 0)
    before = k > 0
    given = has & np.isfinite(inc["em"])
    em = np.where(given, inc["em"], np.where(before, t.em[r, stop], 0.0))
    f1 = np.where(given, inc["f1"], np.where(before, t.f1[r, stop], 0.0))
    answers = np.where(given, inc["answer"], np.where(before, t.answers[r, stop], ""))
    probes = np.where(before, t.computed[r, stop] - t.pos[r, stop], 0.0)
    # a stop before the end writes an answer after it, as a replayed stop does: its tokens are the trial
    # answer's at the stop's checkpoint (the incumbent's own answer is not tokenised: about as long)
    answer = np.where(before & (pos < t.full_tokens), t.emitted[r, stop] - t.pos[r, stop], 0.0)
    return Outcome(LABEL, t.question_ids, stop, pos, em, f1, pos + answer, pos + probes, t.full_em, t.full_tokens,
                   answers)


def has_incumbent(t: RunTable) -> bool:
    return getattr(t, "incumbent", None) is not None


# --- the user's question: what does it cost, and what does better ---------------------------------------
def beat(t: RunTable, drop: float = 0.02, cost: str = "emitted", families: list[str] | None = None,
         n_boot: int = N_BOOT) -> dict:
    """The incumbent against the replayed settings, chosen on the tune split and reported on the test split.

    - ``incumbent``: the incumbent on the test split (``evaluate``: EM, ΔEM, savings with CIs, McNemar);
    - ``same_cost``: the setting with the best tune EM at no more mean ``cost`` tokens than the incumbent's on
      the tune split (None with ``same_cost_error`` when none);
    - ``within_drop``: the fewest ``cost`` tokens keeping tune EM within ``drop`` of full length;
    each chosen setting (``operating_point``'s dict) also gets ``vs_incumbent``: B = setting, A = incumbent,
    paired on the test questions."""
    whole = incumbent_outcome(t)                           # (the clear error, before any sweep)
    tune, test = halves(t)
    inc_tune, inc_test = incumbent_outcome(tune), incumbent_outcome(test)
    pts = sweep(tune, families)
    budget = float(getattr(inc_tune, cost).mean())
    # the incumbent was tuned on none of these questions: every one is evidence about it ("all"); the settings
    # are compared with it on the held-out half only ("test")
    res = {"run": t.run_id, "cost": cost, "drop": drop, "n_tune": tune.n, "n_test": test.n,
           "incumbent": {"all": evaluate_outcome(whole, n_boot), "tune": inc_tune.summary(),
                         "test": evaluate_outcome(inc_test, n_boot)}}
    for name, goal, value in (("same_cost", "budget", budget), ("within_drop", "drop", drop)):
        try:
            op = operating_point(t, goal, value, cost, families, n_boot, pts=pts)
        except StoplineError as e:
            res[name], res[name + "_error"] = None, e.message
            continue
        s = Setting.from_dict(op["setting"])
        op["vs_incumbent"] = paired(inc_test, replay(test, s), n_boot)
        res[name] = op
    return res


def _signed(x: float, fmt: str = ".3f") -> str:
    return format(x, "+" + fmt).replace("-", "−")


def _ci(c: tuple[float, float], fmt: str = ".3f", signed: bool = True) -> str:
    f = (lambda v: _signed(v, fmt)) if signed else (lambda v: format(v, fmt))
    return f"95% CI {f(c[0])} … {f(c[1])}"


def headline(res: dict, code: str = "`") -> list[str]:
    """The answer to "my mechanism saves X% of tokens but lowers EM: what does better?", as sentences
    (``code`` wraps setting names: a backtick for Markdown, '' for a terminal)."""
    inc, whole = res["incumbent"]["test"], res["incumbent"]["all"]
    sav = f"savings_{res['cost']}"
    tokens = "emitted tokens" if res["cost"] == "emitted" else "tokens computed (probes included)"
    also = (f" ({whole['savings_computed']:.0%} of tokens computed, its probes included)"
            if res["cost"] == "emitted" and whole.get("savings_computed") is not None else "")
    # nothing was tuned on it: all its questions are evidence about it; the held-out ones are where it is compared
    out = [f"Your mechanism saves {whole[sav]:.0%} of {tokens}{also} at EM {_signed(whole['delta_em'])} "
           f"({_ci(whole['ci']['delta_em'])}) against full length on all {whole['n']} questions "
           f"({whole['lost']} answers lost, {whole['gained']} gained); on the {inc['n']} held-out questions the "
           f"settings below are checked on, it saves {inc[sav]:.0%} at EM {_signed(inc['delta_em'])}."]
    same, within = res.get("same_cost"), res.get("within_drop")

    def probes_cost(te: dict) -> tuple[str, str]:
        """On the emitted basis, where the probes make a chosen setting compute more than full length, that is
        said in the same sentence as its saving (a saving of emitted tokens alone misleads): the words after its
        saving's figure, and those at the end of the clause."""
        if res["cost"] != "emitted" or te["savings_computed"] >= 0:
            return "", ""
        return " of emitted tokens", f", but computing {-te['savings_computed']:.0%} more counting its probes"

    if same is not None:
        te, vs = same["test"], same["vs_incumbent"]
        lo, hi = vs["delta_em_ci"]
        verdict = ("better than yours" if lo > 0 else "worse than yours: nothing chosen at your token cost beat "
                   "your mechanism" if hi < 0 else "not clearly different from yours at this sample size")
        unit, more = probes_cost(te)
        out.append(f"Setting {code}{same['label']}{code}, chosen on the tune half at no more {tokens} than yours, "
                   f"saves {te[sav]:.0%}{unit}{more}{',' if more else ''} at EM {_signed(te['delta_em'])} "
                   f"({_ci(te['ci']['delta_em'])}): "
                   f"EM {_signed(vs['delta_em'])} against yours ({_ci(vs['delta_em_ci'])}; "
                   f"McNemar p = {vs['mcnemar']['p_value']:.2g}), {verdict}.")
    else:
        out.append(f"No setting matches your mechanism's tokens on the tune half ({res.get('same_cost_error')}).")
    if within is not None:
        te = within["test"]
        unit, more = probes_cost(te)
        miss = f", beyond the {res['drop']:g} it was chosen for" if within.get("missed") else ""     # as the Report
        out.append(f"Or {code}{within['label']}{code}, the fewest {tokens} within an EM drop of {res['drop']:g} on "
                   f"the tune half, saves {te[sav]:.0%}{unit} ({_ci(te['ci'][sav], '.0%', False)})"
                   f"{more}; held out, EM {_signed(te['delta_em'])} ({_ci(te['ci']['delta_em'])}){miss}.")
    else:
        out.append(f"No setting keeps EM within {res['drop']:g} of full length on the tune half.")
    return out
