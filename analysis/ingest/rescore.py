"""Re-score stored runs from their raw answers, without a model: after a change to the exact-match rules
(``answers.py``), or to give a run another answer type (a MATH run imported as ``number``).

Every checkpoint's trial answer (``answer_raw``) and every trace's final answer are normalised and scored
again against the questions' gold; with a new answer type the final answer is first extracted again from the
trace's text by that type's rule. The answers a run's incumbent gave (analysis/incumbent.py) are scored
again too. All runs named are written in one transaction, together with the removal
of their kept sweeps (whose keys do not see EM, so a kept one would be stale); the sweeps are then computed
again. An interruption leaves the store as it was, or rescored with its sweeps to be recomputed (a miss).
"""
from __future__ import annotations

import json

import pandas as pd

from analysis.core.answers import check_answer_type, extract, normalize, normalize_gold, score
from analysis.evaluate.frontier import materialise


def _rescore_frame(raw: pd.Series, qid: pd.Series, golds: dict[str, list[str]], answer_type: str) -> pd.DataFrame:
    """answer_norm, em, f1 for raw answers of questions: normalised once per distinct answer, scored once
    per distinct (question, answer)."""
    norm_of = {r: normalize(r, answer_type) if r else "" for r in pd.unique(raw.fillna(""))}
    norm = raw.fillna("").map(norm_of)
    pairs = {}
    for q, n in set(zip(qid, norm)):
        pairs[(q, n)] = score(n, golds.get(q, []), answer_type)
    ef = [pairs[(q, n)] for q, n in zip(qid, norm)]
    return pd.DataFrame({"answer_norm": norm, "em": [e for e, _ in ef], "f1": [f for _, f in ef]})


def rescore(store, run_ids: list[str] | None = None, answer_type: str | None = None,
            refresh_sweeps: bool = True) -> list[dict]:
    """Re-score the named runs (all when None); returns, per run, EM before and after (full length, and the
    share of checkpoints scored right) and how many answers changed."""
    if answer_type is not None:
        check_answer_type(answer_type)
    runs = [store.run(r) for r in run_ids] if run_ids else store.runs()
    report, updates = [], []
    for run in runs:
        atype = answer_type or run["answer_type"]
        check_answer_type(atype)
        tr = store.traces(run["id"], with_text=answer_type is not None and answer_type != run["answer_type"]
                          ).to_pandas()
        ck = store.checkpoints(run["id"], ["question_id", "ck_idx", "answer_raw", "answer_norm", "em", "f1"]).to_pandas()
        golds = {q: normalize_gold(json.loads(g) if isinstance(g, str) else list(g or []), atype)
                 for q, g in zip(tr["question_id"], tr["gold"])}
        if "text" in tr:
            tr["final_raw"] = [extract(t, atype) for t in tr["text"]]
        new_ck = _rescore_frame(ck["answer_raw"], ck["question_id"], golds, atype)
        new_tr = _rescore_frame(tr["final_raw"], tr["question_id"], golds, atype)
        # the incumbent's own answers (as given: a response, so extracted first); the others follow checkpoints
        inc = store.incumbent(run["id"]).to_pandas()
        inc = inc[inc["answer_raw"].notna()].reset_index(drop=True)
        new_inc = _rescore_frame(inc["answer_raw"].map(lambda a: extract(a, atype)), inc["question_id"], golds, atype)
        changed = int((new_ck["em"].to_numpy() != ck["em"].to_numpy()).sum())
        report.append({
            "run": run["id"], "model": run["model"], "dataset": run["dataset"], "answer_type": atype,
            "previous_answer_type": run["answer_type"], "n_questions": len(tr), "n_checkpoints": len(ck),
            "em_full_before": float(tr["em"].mean()) if len(tr) else None,
            "em_full_after": float(new_tr["em"].mean()) if len(tr) else None,
            "checkpoint_em_before": float(ck["em"].mean()) if len(ck) else None,
            "checkpoint_em_after": float(new_ck["em"].mean()) if len(ck) else None,
            "checkpoints_changed": changed,
            "traces_changed": int((new_tr["em"].to_numpy() != tr["em"].to_numpy()).sum()),
        })
        updates.append((run, atype,
                        pd.DataFrame({"run_id": run["id"], "question_id": ck["question_id"], "ck_idx": ck["ck_idx"],
                                      **{c: new_ck[c] for c in new_ck}}),
                        pd.DataFrame({"run_id": run["id"], "question_id": tr["question_id"],
                                      "final_raw": tr["final_raw"], "final_norm": new_tr["answer_norm"],
                                      "em": new_tr["em"], "f1": new_tr["f1"]}),
                        pd.DataFrame({"run_id": run["id"], "question_id": inc["question_id"], **new_inc})))
    with store.transaction() as con:
        for run, atype, cks, trs, incs in updates:
            con.register("new_ck", cks)
            con.execute("""UPDATE checkpoints SET answer_norm = n.answer_norm, em = n.em, f1 = n.f1 FROM new_ck n
                           WHERE checkpoints.run_id = n.run_id AND checkpoints.question_id = n.question_id
                             AND checkpoints.ck_idx = n.ck_idx""")
            con.unregister("new_ck")
            con.register("new_tr", trs)
            con.execute("""UPDATE traces SET final_raw = n.final_raw, final_norm = n.final_norm, em = n.em, f1 = n.f1
                           FROM new_tr n WHERE traces.run_id = n.run_id AND traces.question_id = n.question_id""")
            con.unregister("new_tr")
            con.register("new_inc", incs)
            con.execute("""UPDATE incumbent SET answer_norm = n.answer_norm, em = n.em, f1 = n.f1 FROM new_inc n
                           WHERE incumbent.run_id = n.run_id AND incumbent.question_id = n.question_id""")
            con.unregister("new_inc")
            con.execute("DELETE FROM sweeps WHERE run_id = ?", [run["id"]])
            if atype != run["answer_type"]:
                con.execute("UPDATE runs SET answer_type = ? WHERE run_id = ?", [atype, run["id"]])
                con.execute("UPDATE questions SET answer_type = ? WHERE dataset = ?", [atype, run["dataset"]])
    if refresh_sweeps:
        for run, *_ in updates:
            materialise(store, run["id"])
    return report
