"""Monitoring: is the deployed preset still delivering what the replay promised?

Reads the controller's decision logs (and, optionally, late labels), and compares the live traffic with
the calibration run the preset was tuned on, like with like: the calibration side is the preset replayed
on the stored run, and its signals are taken only at the checkpoints the controller would have seen (up
to each question's stop), as the live log has them.

Checks (each a test with its statistic, flagged when significant *and* larger than a tolerance):
- tokens per request (Mann-Whitney U) — are the promised savings delivered?
- share of requests stopped early (Fisher's exact test);
- EM on labelled requests (Fisher's exact test) — is the promised EM delivered?
- drift of the signals at the checkpoints (two-sample Kolmogorov-Smirnov on p_mean and entropy) and of
  where requests stop.
Recalibration: requests of the exploration share run to full length with every checkpoint logged; with
labels (the gold answer) they form a small run, on which the operating-point optimiser proposes a setting
that keeps the promised EM drop. An A/B split compares champion and challenger (unpaired: the arms see
different requests) with bootstrap CIs, Fisher's exact test for EM and Mann-Whitney for tokens.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import fisher_exact, ks_2samp, mannwhitneyu

from analysis.core.answers import normalize_gold, score
from analysis.core.errors import brief, json_problem, PresetError, StoplineError
from analysis.core.schema import SIGNAL_COLUMNS
from analysis.core.store import DEMO_DB, Store
from analysis.evaluate.optimize import evaluate, operating_point, split_mask
from analysis.evaluate.stats import N_BOOT, SEED, bootstrap_means, percentile_ci
from analysis.presets.routing import preset_stops
from analysis.presets.schema import from_dict, load
from analysis.replay.engine import RunTable
from analysis.replay.policies import deployable_families

ALPHA = 0.01
TOL_TOKENS = 0.10      # relative rise of mean tokens before it counts
TOL_EM = 0.05          # absolute EM drop before it counts
TOL_STOP = 0.10        # absolute drop of the early-stop share
TOL_KS = 0.10          # KS statistic before a signal counts as drifted
MIN_EXPLORE = 30       # labelled exploration requests before a recalibration is proposed (half of them check it)

# What the records of a decision log (controller.py writes them) and of a labels file hold: field -> the types
# its value may have (float: any finite number; None: null). Checked as each record is read, so a wrong value
# is named with its file, line and field rather than failing a test or a cast later on.
_NUM, _ANY_NUM, _NULL = (float,), (float, type(None)), (type(None),)
REQUIRED = {"final": ("request", "tokens_emitted", "stopped", "stop_pos"), "checkpoint": ("request", "ck", "pos"),
            "label": ("request",), "preset": ("preset",)}
FIELD_TYPES = {
    "header": {"stopline_log": (int,), "preset": (dict,), "calibration": (dict,), "answer_type": (str,),
               "checkpoints": (dict,)},
    "final": {"request": (str, int), "arm": (str,), "route": (str, *_NULL), "setting": (dict,), "stopped": (bool,),
              "ck": (int,), "stop_pos": _NUM, "tokens_emitted": _NUM, "tokens_computed": _NUM, "answer": (str, *_NULL),
              "em": _ANY_NUM, "cause": (str, *_NULL), "question_chars": (int,), "meta": (dict, *_NULL),
              "tags": (dict, *_NULL), "full_length": (bool,), "n_checkpoints": (int,), "shadow_ck": (int,),
              "shadow_pos": _NUM, "preset_version": (str,)},
    "checkpoint": {"request": (str, int), "arm": (str,), "ck": (int,), "pos": _NUM, "kind": (str,),
                   "answer": (str, *_NULL), "answer_tokens": _ANY_NUM, "probe_tokens": _ANY_NUM,
                   **{s: _ANY_NUM for s in SIGNAL_COLUMNS}, "decision": (str,), "preset_version": (str,)},
    "preset": {"preset_version": (str,), "preset": (dict,), "calibration": (dict, *_NULL)},
    "label": {"request": (str, int), "em": (float, bool, *_NULL), "gold": (str, float, list, *_NULL)},
}
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "an object",
               list: "a list", type(None): "null"}


def _fits(value, kinds: tuple) -> bool:
    if isinstance(value, bool):                         # (a bool is an int to Python, not to a log)
        return bool in kinds
    if isinstance(value, int) and int in kinds:
        return True
    if isinstance(value, (int, float)) and float in kinds:
        try:
            return math.isfinite(float(value))          # not NaN or Infinity (json reads both), nor 1e400
        except OverflowError:
            return False
    return isinstance(value, tuple(k for k in kinds if k not in (int, float, bool)))


def check_record(rec: dict, kind: str, path, line: int) -> None:
    """A record of a decision log or labels file with its required fields, each field of a type it may have;
    else StoplineError naming the file, line and field."""
    for k in REQUIRED.get(kind, ()):
        if k not in rec:
            raise StoplineError("missing", file=str(path), line=line, field=k)
    for k, kinds in FIELD_TYPES[kind].items():
        if k in rec and not _fits(rec[k], kinds):
            words = " or ".join(_TYPE_WORDS[t] for t in kinds)
            v = rec[k]
            shown = "null" if v is None else str(v).lower() if isinstance(v, bool) else brief(v)
            raise StoplineError(f"must be {words}, not {shown}", file=str(path), line=line, field=k)


def _json_lines(path, what: str):
    """(line number, object) for each non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise StoplineError(f"no such {what}", file=str(path))
    with open(path, "rb") as f:
        for ln, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise StoplineError(json_problem(e), file=str(path), line=ln) from None
            except UnicodeDecodeError as e:
                raise StoplineError(f"not valid UTF-8 (byte {e.start} of the line)", file=str(path), line=ln) from None
            except (ValueError, RecursionError) as e:     # a number past Python's digit limit; nested too deeply
                raise StoplineError(f"invalid JSON ({str(e).split(';')[0][:80]})", file=str(path), line=ln) from None
            if not isinstance(rec, dict):
                raise StoplineError("each line must be a JSON object", file=str(path), line=ln)
            yield ln, rec


def read_log(paths) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(header, checkpoint records, final records) from one or more decision logs.

    The header is the first log's; its ``preset_records`` lists the logs' ``preset`` records in order (the
    gateway writes one at start and one per reload: version, preset, calibration, where), read by
    ``log_preset``. A request id that comes again after its final record (a client's retry reusing its
    ``stopline.request_id``) is another instance of the request: each final record is a request of its own, with
    the checkpoints logged since the previous final record of that id (``instance`` 0, 1, ...; ``key``: the id,
    then ``ID#2``, ``ID#3``, ... for the later instances). An id whose checkpoints start again before its final
    record is a request that never ended (the gateway stopped mid-request and the client retried): its
    checkpoints are dropped, and the header's ``unfinished_requests`` counts them by id."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    header, cks, fins, presets = {}, [], [], []
    done: dict[str, int] = {}            # request id -> its final records so far
    last_ck: dict[str, int] = {}         # request id -> the open instance's latest checkpoint index
    unfinished: dict[str, int] = {}      # request id -> its instances that never ended (their checkpoints dropped)
    restarted: dict = {}                 # request id -> (file, line) where its checkpoints started again
    closed: dict = {}                    # ... and its final came: a second final straight after is two at once
    for path in paths:
        for ln, rec in _json_lines(path, "decision log"):
            if "type" not in rec:
                raise StoplineError("a log record is a JSON object with a 'type'", file=str(path), line=ln, field="type")
            typ = rec["type"]
            if typ in ("header", "checkpoint", "final", "preset"):     # (other types: written by a newer Stopline)
                check_record(rec, typ, path, ln)
            if typ in ("header", "preset"):
                for k in ("db", "run"):
                    if not isinstance((rec.get("calibration") or {}).get(k, ""), (str, type(None))):
                        raise StoplineError(f"must be a string, not {brief(rec['calibration'][k])}", file=str(path),
                                            line=ln, field=f"calibration.{k}")
            if typ == "header":
                if rec.get("stopline_log", 0) > 1:
                    raise StoplineError(f"log version {rec.get('stopline_log')!r} is not one this Stopline reads",
                                        file=str(path), line=ln, field="stopline_log")
                header = header or dict(rec)
            elif typ == "preset":
                presets.append({"version": rec.get("preset_version"), "preset": rec["preset"],
                                "calibration": rec.get("calibration"), "no_calibration": "calibration" in rec
                                and rec["calibration"] is None, "file": str(path), "line": ln})
            elif typ == "checkpoint":
                rid = str(rec["request"])
                if rec["ck"] <= last_ck.get(rid, -1):
                    # the id starts again before its final record: the earlier request never ended (the gateway
                    # stopped mid-request, and the client retried with the same id; or two requests shared an id
                    # at once, which cannot be told apart). Its checkpoints belong to no finished request: dropped
                    n = done.get(rid, 0)
                    cks = [c for c in cks if not (str(c["request"]) == rid and c["instance"] == n)]
                    unfinished[rid] = unfinished.get(rid, 0) + 1
                    restarted[rid] = (path, ln)
                closed.pop(rid, None)
                last_ck[rid] = rec["ck"]
                cks.append({**rec, "instance": done.get(rid, 0)})
            elif typ == "final":
                rid = str(rec["request"])
                if rid in closed:           # a second final with no checkpoint since the restart's: two at once
                    where = closed.pop(rid)
                    raise StoplineError(
                        f"request {rid!r} logs checkpoint again before its final record, and then two final "
                        "records: two requests with this id were in flight at once (a retry reusing "
                        "stopline.request_id before the first ended), and their checkpoints cannot be told apart",
                        file=str(where[0]), line=where[1], field="ck",
                        hint="give each request its own id (a retry may reuse it once the first has ended)")
                if rid in restarted:
                    closed[rid] = restarted.pop(rid)
                fins.append({**rec, "instance": done.get(rid, 0)})
                done[rid] = done.get(rid, 0) + 1
                last_ck.pop(rid, None)
    if not fins:
        raise StoplineError("the log holds no finished request", file=str(paths[0]))
    if presets:
        header["preset_records"] = presets
    if unfinished:
        header["unfinished_requests"] = unfinished
    header["finished_versions"] = list(dict.fromkeys(str(f["preset_version"]) for f in fins
                                                     if f.get("preset_version") is not None))
    ck = pd.DataFrame(cks)
    fin = pd.DataFrame(fins).reset_index(drop=True)
    fin["order"] = np.arange(len(fin))
    ids = {str(r["request"]) for r in (*cks, *fins)}
    for df in (ck, fin):
        if len(df):
            df["key"] = instance_keys(df, ids)
    return header, ck, fin


def instance_keys(df: pd.DataFrame, ids: set[str]) -> list[str]:
    """Each record's request instance: its id, or ``ID#2``, ``ID#3``, ... for the later instances of a repeated id
    (with more ``#`` where that is another request's id: ``ids``, every id of the log)."""
    out = []
    for r, i in zip(df["request"].astype(str), df["instance"]):
        key = r if i == 0 else f"{r}#{i + 1}"
        while i and key in ids:
            key += "#"
        out.append(key)
    return out


def repeated_ids(fin: pd.DataFrame) -> dict:
    """Request ids with more than one final record (clients' retries): how many ids, how many extra requests,
    and the first few ids."""
    counts = fin["request"].astype(str).value_counts()
    rep = counts[counts > 1]
    return {"ids": int(len(rep)), "extra_requests": int((rep - 1).sum()), "examples": list(rep.index[:5])}


def log_preset(header: dict, version: str | None = None) -> dict:
    """What a log says was deployed: the preset and calibration of its latest ``preset`` record (of ``version``
    when given), each falling back to the header's; with where each came from (``preset_from``,
    ``calibration_from``), the version, and every version in the order first seen (``versions``)."""
    recs = header.get("preset_records") or []
    versions = list(dict.fromkeys(r["version"] for r in recs if r["version"] is not None))
    if version is not None and version not in versions:
        raise StoplineError(f"the log holds no preset version {version!r}", field="preset_version",
                            hint="its versions: " + (", ".join(versions) or "none"))
    pick = [r for r in recs if version is None or r["version"] == version]
    # by default the latest version that has finished requests (right after a reload, the one before it); the
    # newer ones are ``not_yet``
    finished, not_yet = set(header.get("finished_versions") or []), []
    if version is None and any(r["version"] in finished for r in pick):
        last = max(i for i, r in enumerate(pick) if r["version"] in finished)
        not_yet = list(dict.fromkeys(r["version"] for r in pick[last + 1:] if r["version"] is not None))
        pick = pick[:last + 1]
    rec = pick[-1] if pick else None
    out = {"preset": None, "preset_from": None, "preset_at": None, "calibration": {}, "calibration_from": None,
           "version": rec["version"] if rec else None, "versions": versions, "not_yet": not_yet}
    if rec:
        out["preset"], out["preset_from"] = rec["preset"], f"{rec['file']}, line {rec['line']} (a preset record)"
        out["preset_at"] = {"file": rec["file"], "line": rec["line"]}
        if rec.get("calibration"):
            out["calibration"], out["calibration_from"] = rec["calibration"], out["preset_from"]
    if out["preset"] is None and "preset" in header:
        out["preset"], out["preset_from"] = header["preset"], "the log's header"
    if not out["calibration"] and header.get("calibration") and not (rec or {}).get("no_calibration"):
        out["calibration"], out["calibration_from"] = header["calibration"], "the log's header"
    return out


def read_labels(paths) -> pd.DataFrame:
    """Late labels: JSON lines with 'request' and 'em' (0/1) or 'gold' (the right answer)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = []
    for path in paths:
        for ln, rec in _json_lines(path, "labels file"):
            check_record(rec, "label", path, ln)
            if "em" not in rec and "gold" not in rec:
                raise StoplineError("a label needs 'em' or 'gold'", file=str(path), line=ln, field="em")
            rows.append({"request": str(rec["request"]), "label_em": rec.get("em"), "gold": rec.get("gold")})
    return pd.DataFrame(rows, columns=["request", "label_em", "gold"])


def _champion_only(preset):
    r = dict(preset.routing or {})
    r.pop("ab", None)
    r.pop("explore", None)
    return replace(preset, routing=r or None)


def calibration(t, preset) -> dict:
    """What the preset promises on its calibration run (replay), with per-question arrays for the tests."""
    stop = preset_stops(t, _champion_only(preset))
    r = t.rows
    seen = (np.arange(t.m)[None, :] <= stop[:, None]) & (np.arange(t.m)[None, :] < t.final_idx[:, None])
    out = {"emitted": t.emitted[r, stop], "em": t.em[r, stop], "stopped": stop < t.final_idx,
           "stop_pos": t.pos[r, stop], "full_tokens": t.full_tokens, "full_em": t.full_em,
           "p_mean": t.p_mean[seen], "entropy": t.entropy[seen]}
    for s in ("p_mean", "entropy"):
        v = np.where(seen, t.cols[s], np.nan)
        with warnings.catch_warnings():            # a question with no signal at all gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out[f"{s}_per_q"] = np.nanmean(v, axis=1)
    return out


def _labelled(fin: pd.DataFrame, labels: pd.DataFrame | None, answer_type: str) -> pd.DataFrame:
    fin = fin.copy()
    if "em" not in fin:
        fin["em"] = np.nan
    fin["em"] = pd.to_numeric(fin["em"], errors="coerce")
    fin["gold"] = None
    if labels is not None and len(labels):
        # a request the labels leave out keeps what its final record says (usually nothing: unlabelled); one
        # labelled by its id (every instance of a repeated id) gets the label's em, else its answer scored
        lab = labels.drop_duplicates("request", keep="last").set_index("request")
        got = lab.reindex(fin["request"].astype(str))
        # (reindex gives NaN where no label is, and a column of numbers NaN where a label has no gold)
        gold = [None if g is None or (isinstance(g, float) and math.isnan(g)) else g for g in got["gold"]]
        em_from_gold = [score(a or "", normalize_gold(_golds(g), answer_type), answer_type)[0] if g is not None
                        else np.nan for a, g in zip(fin["answer"], gold)]
        em = pd.to_numeric(got["label_em"], errors="coerce").to_numpy(dtype=float)
        em = np.where(np.isnan(em), np.asarray(em_from_gold, dtype=float), em)
        fin["em"] = np.where(np.isnan(em), fin["em"].to_numpy(), em)
        fin["gold"] = pd.Series(gold, index=fin.index, dtype=object)
    fin.loc[cut_by_client(fin), "em"] = np.nan          # a request its client cut has no whole answer to score
    return fin


def _golds(g) -> list[str]:
    return [str(x) for x in g] if isinstance(g, (list, tuple, np.ndarray)) else [str(g)]


def _boot_diff(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> list[float]:
    """95% bootstrap CI of mean(a) - mean(b) for two independent samples (each resampled on its own)."""
    if len(a) == 0 or len(b) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    da = bootstrap_means({"a": a}, n_boot, batch=None, rng=rng)["a"]
    db = bootstrap_means({"b": b}, n_boot, batch=None, rng=rng)["b"]
    return list(percentile_ci(da - db))


def _fisher(k1: int, n1: int, k2: int, n2: int, alternative: str = "two-sided") -> float:
    if n1 == 0 or n2 == 0:
        return float("nan")
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative=alternative)[1])


def deployed_preset(header: dict, version: str | None = None):
    """The preset a log says was deployed (``log_preset``: its latest preset record, else its header), or None;
    a preset that does not load is named by the record's file and line."""
    dep = log_preset(header, version)
    if dep["preset"] is None:
        return None
    try:
        return from_dict(dep["preset"])
    except PresetError as e:
        at = dep["preset_at"] or {}
        raise PresetError(e.message, file=at.get("file", "the log's header"), line=at.get("line"),
                          field="preset" + (f".{e.field}" if e.field else ""), hint=e.hint) from None


def no_preset(logs) -> StoplineError:
    first = logs if isinstance(logs, (str, Path)) else list(logs)[0]
    return StoplineError("the log names no preset: no preset record (the gateway's) and none in its header",
                         file=str(first), hint="pass --preset P.json (the preset that served it)")


def one_version(ck: pd.DataFrame, fin: pd.DataFrame, version: str | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The records of one preset version (the gateway stamps each record with ``preset_version``): ``version``,
    else the latest (the last preset record's, else the last final record's). A log without versions is kept
    whole. Returns (checkpoints, finals, what was kept and left out)."""
    if "preset_version" not in fin:
        return ck, fin, {"version": version, "versions": {}, "left_out": 0}
    seen = fin["preset_version"].dropna()
    if version is None and len(seen):
        version = str(seen.iloc[-1])
    counts = {str(v): int(n) for v, n in fin["preset_version"].fillna("(none)").value_counts(sort=False).items()}
    keep = (fin["preset_version"] == version).to_numpy()
    out_fin = fin[keep].reset_index(drop=True)
    out_ck = ck[ck["preset_version"] == version].reset_index(drop=True) if len(ck) and "preset_version" in ck else ck
    return out_ck, out_fin, {"version": version, "versions": counts, "left_out": int((~keep).sum())}


def monitor(log_paths, t=None, preset=None, labels=None, window: int | None = None, alpha: float = ALPHA,
            propose: bool = True, version: str | None = None) -> dict:
    """The monitoring report: promised vs observed, drift tests, flags, a recalibration proposal, A/B.

    A log of several preset versions (a gateway's hot reloads) is read for one: ``version``, by default the
    latest; the other versions' requests are counted (``versions``), not mixed in: each version promised
    something else. ``preset`` defaults to the version's preset record, else the log's header."""
    header, ck, fin = read_log(log_paths)
    not_yet = []
    if version is None:
        dep = log_preset(header)
        version, not_yet = dep["version"], dep["not_yet"]
    if preset is None:
        preset = deployed_preset(header, version)
        if preset is None:
            raise no_preset(log_paths)
    ck, fin, versions = one_version(ck, fin, version)
    if fin.empty:
        by = ", ".join(f"{k} {v}" for k, v in versions["versions"].items())
        raise StoplineError(f"no request of preset version {versions['version']!r} has finished in the log",
                            file=str(log_paths if isinstance(log_paths, (str, Path)) else list(log_paths)[0]),
                            hint=f"read another version (--preset-version); requests by version: {by}")
    answer_type = header.get("answer_type", t.answer_type if t is not None else "number")
    fin = _labelled(fin, read_labels(labels) if isinstance(labels, (str, Path, list)) else labels, answer_type)
    champ = fin[fin["arm"] == "champion"] if "arm" in fin else fin
    broken, cut = ended_by_upstream(champ), cut_by_client(fin)
    causes = cause_counts(champ, broken)
    champ = champ[~broken & ~cut_by_client(champ)]
    out: dict = {"n_requests": int(len(fin)), "ended_by_upstream": int(broken.sum()), "cut_by_client": int(cut.sum()),
                 "ended_causes": causes,
                 "arms": fin["arm"].value_counts().to_dict() if "arm" in fin else {},
                 "preset": preset.name, "labelled": int(fin["em"].notna().sum()), "flags": [], "checks": {},
                 "preset_version": versions["version"], "versions": versions, "repeated_ids": repeated_ids(fin),
                 "not_yet": not_yet}
    live_tok = champ["tokens_emitted"].to_numpy(dtype=float)
    live_stop = champ["stopped"].to_numpy(dtype=bool)
    live_em = champ["em"].dropna().to_numpy(dtype=float)
    out["observed"] = {"n": int(len(champ)), "tokens_emitted": float(live_tok.mean()) if len(live_tok) else None,
                       "stop_rate": float(live_stop.mean()) if len(live_stop) else None,
                       "em": float(live_em.mean()) if len(live_em) else None, "n_labelled": int(len(live_em))}
    # windows over time (the champion's requests in arrival order), for the charts
    window = window or max(5, min(50, len(champ) // 8))
    w = champ.assign(window=np.arange(len(champ)) // window).groupby("window")
    out["window"] = window
    out["windows"] = pd.DataFrame({"requests": w.size(), "tokens_emitted": w["tokens_emitted"].mean(),
                                   "stop_rate": w["stopped"].mean(), "em": w["em"].mean()}).reset_index()
    if t is None:
        out["promised"] = None
        return out
    cal = calibration(t, preset)
    out["promised"] = {"n": int(t.n), "tokens_emitted": float(cal["emitted"].mean()),
                       "stop_rate": float(cal["stopped"].mean()), "em": float(cal["em"].mean()),
                       "em_full": float(cal["full_em"].mean()), "tokens_full": float(cal["full_tokens"].mean()),
                       "savings": float(1 - cal["emitted"].mean() / cal["full_tokens"].mean())}
    out["observed"]["savings_vs_calibration_full"] = (float(1 - live_tok.mean() / cal["full_tokens"].mean())
                                                      if len(live_tok) else None)
    checks = out["checks"]
    if len(live_tok) >= 5:
        p = float(mannwhitneyu(live_tok, cal["emitted"], alternative="greater").pvalue)
        rise = live_tok.mean() / cal["emitted"].mean() - 1
        checks["tokens"] = {"observed": float(live_tok.mean()), "promised": float(cal["emitted"].mean()),
                            "relative_change": float(rise), "p_value": p, "test": "Mann-Whitney U (greater)"}
        if p < alpha and rise > TOL_TOKENS:
            out["flags"].append({"check": "tokens", "message": (
                f"requests use {live_tok.mean():.0f} tokens against {cal['emitted'].mean():.0f} promised "
                f"({rise:+.0%}, p={p:.2g}): the promised savings of {out['promised']['savings']:.0%} are not delivered")})
        k1, n1, k2, n2 = int(live_stop.sum()), len(live_stop), int(cal["stopped"].sum()), len(cal["stopped"])
        p = _fisher(k1, n1, k2, n2, "less")
        checks["stop_rate"] = {"observed": k1 / n1, "promised": k2 / n2, "p_value": p, "test": "Fisher exact (less)"}
        if p < alpha and k2 / n2 - k1 / n1 > TOL_STOP:
            out["flags"].append({"check": "stop_rate", "message": (
                f"{k1 / n1:.0%} of requests stop early against {k2 / n2:.0%} in calibration (p={p:.2g})")})
        stop_pos_live = champ["stop_pos"].to_numpy(dtype=float)
        ks = ks_2samp(stop_pos_live, cal["stop_pos"])
        checks["stop_pos"] = {"ks": float(ks.statistic), "p_value": float(ks.pvalue), "test": "Kolmogorov-Smirnov"}
        if ks.pvalue < alpha and ks.statistic > TOL_KS:
            out["flags"].append({"check": "stop_pos", "message": (
                f"where requests stop has shifted (KS={ks.statistic:.2f}, p={ks.pvalue:.2g}; median "
                f"{np.median(stop_pos_live):.0f} vs {np.median(cal['stop_pos']):.0f} tokens)")})
    if len(live_em) >= 10:
        k1, n1 = int((live_em > 0.5).sum()), len(live_em)
        k2, n2 = int((cal["em"] > 0.5).sum()), len(cal["em"])
        p = _fisher(k1, n1, k2, n2, "less")
        checks["em"] = {"observed": k1 / n1, "promised": k2 / n2, "n_labelled": n1, "p_value": p,
                        "test": "Fisher exact (less)"}
        if p < alpha and k2 / n2 - k1 / n1 > TOL_EM:
            out["flags"].append({"check": "em", "message": (
                f"EM on {n1} labelled requests is {k1 / n1:.1%} against {k2 / n2:.1%} promised (p={p:.2g})")})
    if len(ck) and "arm" in ck:
        # One value per request (its mean over the checkpoints seen): checkpoints of one request are
        # correlated, and a test over pooled checkpoints would overstate the evidence.
        cck = ck[ck["arm"] == "champion"]
        for s in ("p_mean", "entropy"):
            if s not in cck:
                continue
            a = pd.to_numeric(cck[s], errors="coerce").groupby(cck["key"]).mean().dropna().to_numpy()
            b = cal[f"{s}_per_q"]
            b = b[np.isfinite(b)]
            if len(a) >= 10 and len(b) >= 10:
                ks = ks_2samp(a, b)
                checks[f"drift_{s}"] = {"ks": float(ks.statistic), "p_value": float(ks.pvalue),
                                        "live_mean": float(a.mean()), "calibration_mean": float(b.mean()),
                                        "test": "Kolmogorov-Smirnov (per-request means)"}
                if ks.pvalue < alpha and ks.statistic > TOL_KS:
                    out["flags"].append({"check": f"drift_{s}", "message": (
                        f"the {s} signal has drifted: per-request mean {a.mean():.3f} live vs {b.mean():.3f} in "
                        f"calibration (KS={ks.statistic:.2f}, p={ks.pvalue:.2g})")})
    out["calibration_arrays"] = {k: cal[k] for k in ("emitted", "stop_pos", "p_mean", "entropy")}
    out["ab"] = ab_compare(fin[~cut]) if "arm" in fin and (fin["arm"] == "challenger").any() else None
    out["proposal"] = propose_setting(ck, fin, preset, cal, answer_type) if propose else None
    out["status"] = "recalibrate" if out["flags"] else "ok"
    return out


def ab_compare(fin: pd.DataFrame) -> dict:
    a = fin[fin["arm"] == "champion"]
    b = fin[fin["arm"] == "challenger"]
    ta, tb = a["tokens_emitted"].to_numpy(float), b["tokens_emitted"].to_numpy(float)
    ea, eb = a["em"].dropna().to_numpy(float), b["em"].dropna().to_numpy(float)
    res = {"champion": {"n": len(a), "tokens_emitted": float(ta.mean()) if len(ta) else None,
                        "em": float(ea.mean()) if len(ea) else None, "n_labelled": len(ea)},
           "challenger": {"n": len(b), "tokens_emitted": float(tb.mean()) if len(tb) else None,
                          "em": float(eb.mean()) if len(eb) else None, "n_labelled": len(eb)},
           "delta_tokens": float(tb.mean() - ta.mean()) if len(ta) and len(tb) else None,
           "delta_tokens_ci": _boot_diff(tb, ta),
           "tokens_p_value": float(mannwhitneyu(tb, ta).pvalue) if len(ta) >= 2 and len(tb) >= 2 else None}
    if len(ea) and len(eb):
        res["delta_em"] = float(eb.mean() - ea.mean())
        res["delta_em_ci"] = _boot_diff(eb, ea)
        res["em_p_value"] = _fisher(int((eb > .5).sum()), len(eb), int((ea > .5).sum()), len(ea))
    return res


def left_out_words(res: dict) -> str:
    """What the monitor's figures leave out: requests a failure or a refusal ended, by cause; those cut by their
    clients."""
    out = []
    if res.get("ended_by_upstream"):
        by = ", ".join(f"{n} {c}" for c, n in res.get("ended_causes", {}).items())
        out.append(f"{res['ended_by_upstream']} ended by a failure or a refusal ({by})")
    if res.get("cut_by_client"):
        out.append(f"{res['cut_by_client']} cut by their clients")
    return f" · {' · '.join(out)} (left out of the figures)" if out else ""


def ended_by_upstream(fin: pd.DataFrame) -> pd.Series:
    """Which final records are of requests something other than the preset ended: an upstream failure (the
    gateway's --on-upstream-error answer, ``upstream_failed``), the upstream's refusal of the request
    (``upstream_rejected``) or the gateway's own failure (``gateway_failed``); any ``cause`` but a client's leaving.
    Not the preset's decisions, nor full-length traces."""
    return fin["cause"].notna() & ~cut_by_client(fin) if "cause" in fin else pd.Series(False, index=fin.index)


def cause_counts(fin: pd.DataFrame, which: pd.Series) -> dict:
    """How many of the final records ``which`` picks ended by each cause."""
    return {str(k): int(v) for k, v in fin.loc[which, "cause"].value_counts().items()} if which.any() else {}


def cut_by_client(fin: pd.DataFrame) -> pd.Series:
    """Which final records are of requests whose client left before the end (the gateway's ``cause:
    client_disconnected``): neither the preset's stops nor full-length answers, and their answers incomplete.
    The decisions they logged up to then are the preset's."""
    return fin["cause"].eq("client_disconnected") if "cause" in fin else pd.Series(False, index=fin.index)


def explore_rows(fin: pd.DataFrame) -> pd.DataFrame:
    """The final records of exploration requests (full length, every checkpoint logged) that have a gold label and
    ended as the preset let them; one per request id (a retried id's latest instance: one sample per question)."""
    ex = fin[(fin.get("arm") == "explore") & fin["gold"].notna()] if "arm" in fin else fin.iloc[0:0]
    ex = ex[~ended_by_upstream(ex) & ~cut_by_client(ex)]
    return ex[~ex["request"].astype(str).duplicated(keep="last")]


def explore_table(ck: pd.DataFrame, fin: pd.DataFrame, answer_type: str):
    """A RunTable from exploration requests (``explore_rows``) and their checkpoints."""
    ex = explore_rows(fin)
    if ex.empty or ck.empty:
        return None
    rows = []
    cks = ck[ck["key"].isin(set(ex["key"]))].sort_values(["key", "ck"])
    by_req = {r: g for r, g in cks.groupby("key", sort=False)}
    for _, f in ex.iterrows():
        gold = normalize_gold(_golds(f["gold"]), answer_type)
        g = by_req.get(f["key"])
        recs = [] if g is None else g.to_dict("records")
        recs.append({"pos": f["tokens_emitted"], "answer": f["answer"], "kind": "final", "answer_tokens": 0,
                     "probe_tokens": 0})
        for c in recs:
            em, f1 = score(c.get("answer") or "", gold, answer_type)
            rows.append({"question_id": str(f["request"]), "pos": float(c["pos"]), "answer_norm": c.get("answer") or "",
                         "em": em, "f1": f1, "answer_tokens": float(c.get("answer_tokens") or 0),
                         "probe_tokens": float(c.get("probe_tokens") or 0),
                         "is_step": c.get("kind") == "step", "is_transition": c.get("kind") == "transition",
                         **{s: (np.nan if c.get(s) is None or pd.isna(c.get(s)) else float(c[s]))
                            for s in ("p_mean", "p_geo", "p_min", "p_first", "entropy")}})
    t = RunTable.from_arrow(pa.Table.from_pylist(rows), "explore", answer_type=answer_type)
    t.meta = pd.DataFrame({"question_id": t.question_ids,
                           "question_chars": ex.set_index(ex["request"].astype(str)).reindex(t.question_ids)[
                               "question_chars"].to_numpy()})
    return t


def propose_setting(ck, fin, preset, cal, answer_type) -> dict:
    """A recalibrated setting from recent labelled full-length (exploration) requests: the fewest tokens
    that keep the EM drop the calibration promised. Below ``MIN_EXPLORE`` labelled requests it says how many
    more it needs; a proposal no better than the champion on either axis (EM and tokens, on the same held-out
    requests) is never offered."""
    t = explore_table(ck, fin, answer_type)
    n = 0 if t is None else t.n
    if n < MIN_EXPLORE:
        return {"ok": False, "n": n, "needed": MIN_EXPLORE - n, "reason": (
            f"A recalibration needs at least {MIN_EXPLORE} labelled exploration requests (full length, with a gold "
            f"answer); the log has {n}: {MIN_EXPLORE - n} more. Raise routing.explore or add labels.")}
    drop = max(0.0, float(cal["full_em"].mean() - cal["em"].mean()))
    fams = deployable_families()          # a proposal the controller can run
    try:
        op = operating_point(t, "drop", drop, families=fams, n_boot=500)
    except StoplineError as e:
        return {"ok": False, "n": n, "reason": str(e)}
    test = t.subset(split_mask(t.question_ids, "test"), fitted=False)
    champ = evaluate(test, preset_stops(test, _champion_only(preset)), "champion", 0)
    te = op["test"]
    out = {"ok": True, "n": n, "goal": f"min tokens with EM >= full - {drop:.3f}", **op,
           "champion": {"em": champ.get("em"), "tokens_emitted": champ.get("tokens_emitted"), "n": champ["n"]}}
    if champ["n"] and te["em"] <= champ["em"] and te["tokens_emitted"] >= champ["tokens_emitted"]:
        return {"ok": False, "n": n, "proposal": op["label"], "champion": out["champion"], "reason": (
            f"No recalibration offered: the best candidate, {op['label']}, is no better than the deployed preset on "
            f"either axis on the same {te['n']} held-out exploration requests (EM {te['em']:.3f} against "
            f"{champ['em']:.3f}, {te['tokens_emitted']:.0f} tokens against {champ['tokens_emitted']:.0f}). "
            "Keep the champion.")}
    return out


def resolve_db(db: str, logs=(), named_by: str = "--db") -> str:
    """The path of a calibration store as a log (or ``--db``) names it: an absolute path as it is; a relative one
    from the current folder, then from each log's folder (a log kept beside its store); the bundled demo store
    for a log made elsewhere against it. Else StoplineError naming the path, who named it and where it looked."""
    p = Path(db)
    tried = [p] if p.is_absolute() else [Path.cwd() / p, *(Path(log).resolve().parent / p for log in logs)]
    for c in tried:
        if c.exists():
            return str(c if p.is_absolute() or c != tried[0] else p)
    if p.name == Path(DEMO_DB).name:          # a log made elsewhere against the bundled store
        return DEMO_DB
    looked = ", ".join(dict.fromkeys(str(c) for c in tried))
    raise StoplineError(f"the calibration store {db!r} named by {named_by} is not here (looked at {looked})",
                        hint="pass --db PATH, the store that holds the calibration run")


def calibration_inputs(logs, preset_arg=None, run_arg=None, db_arg=None, version: str | None = None) -> dict:
    """What a log is monitored against: the preset (``--preset``, else the log's latest preset record, else its
    header) and the calibration table (``--run``/``--db``, else the preset record's ``calibration``, else the
    header's), with where each came from. ``t`` is None when no calibration run is known (the live figures
    alone can be shown); ``preset`` None when the log names none."""
    header, _, _ = read_log(logs)
    logs = [logs] if isinstance(logs, (str, Path)) else list(logs)
    dep = log_preset(header, version)
    preset = load(preset_arg) if preset_arg else deployed_preset(header, dep["version"])
    cal = dep["calibration"] or {}
    run_id, db = run_arg or cal.get("run"), db_arg or cal.get("db")
    t = None
    if run_id:
        if not db:
            raise StoplineError(f"the calibration run {run_id!r} is named, but not the store that holds it",
                                hint="pass --db PATH")
        db = resolve_db(db, [] if db_arg else logs, "--db" if db_arg else dep["calibration_from"])
        t = RunTable.from_store(Store(db, read_only=True), run_id)
    return {"t": t, "preset": preset, "run": run_id, "db": db, "version": dep["version"], "versions": dep["versions"],
            "not_yet": dep["not_yet"],
            "preset_from": "--preset" if preset_arg else dep["preset_from"],
            "calibration_from": "--run" if run_arg else dep["calibration_from"] if run_id else None}


def monitor_inputs(logs, preset_arg=None, run_arg=None, db_arg=None, version: str | None = None):
    """(table, preset) for a log (``calibration_inputs``); the table is None without a calibration run."""
    got = calibration_inputs(logs, preset_arg, run_arg, db_arg, version)
    return got["t"], got["preset"]


HOW_TO_CALIBRATE = ("name the calibration run with `monitor --run RUN --db PATH`, or start the gateway with "
                    "`serve --calibration-run RUN --db PATH` so that its log names it")
NO_CALIBRATION = "no calibration run is known for this log, so there is no promise to compare with: " + HOW_TO_CALIBRATE
