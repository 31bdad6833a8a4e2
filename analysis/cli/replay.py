"""CLI commands over the replay engine: eval, sweep, families, optimize."""
from __future__ import annotations

import json
import sys

from analysis.cli.common import _db, _preset, _print_json, _store, command
from analysis.evaluate import N_BOOT            # (the package alone: no numpy or scipy for --help)


def _table(args):
    from analysis.replay.engine import RunTable
    store = _store(args, read_only=True)
    return RunTable.from_store(store, args.run)


def _made_on(args) -> dict:
    """What a preset made on ``args.run`` records of it (its dataset and answer type)."""
    from analysis.presets.schema import made_on
    return made_on(_store(args, read_only=True).run(args.run))


def _eval_setup(p):
    p.add_argument("--run", required=True)
    p.add_argument("--preset", required=True, help="a preset file, JSON text, a link (sl1.…, or the dashboard URL "
                   "with s=sl1.…), or the name it was saved under (the Presets page keeps it in your store)")
    p.add_argument("--split", default="all", choices=["tune", "test", "all"],
                   help="evaluate on the tune or the held-out test half of the questions (stable by id)")
    p.add_argument("--boot", type=int, default=N_BOOT, help="bootstrap resamples for the CIs (the pages' and the "
                   "report's number: another gives other intervals)")
    p.add_argument("--json", action="store_true")
    _db(p)


@command("eval", "replay a preset on a run: EM, ΔEM with CI, tokens emitted/computed, savings, lost/gained",
         _eval_setup)
def _eval(args):
    from analysis.evaluate.optimize import evaluate_outcome, split_of
    from analysis.presets.schema import made_for
    from analysis.presets.routing import preset_outcome
    preset = _preset(args, args.preset)
    t = split_of(_table(args), args.split)
    res = evaluate_outcome(preset_outcome(t, preset), args.boot)     # each setting's own probes counted
    res.update({"run": t.run_id, "split": args.split, "preset": preset.to_dict()})
    if (words := made_for(preset, _store(args, read_only=True).run(t.run_id))):     # as the pages warn
        print(f"note: preset '{preset.name}' was {words}: its thresholds were chosen on other questions",
              file=sys.stderr)
    if args.json:
        return _print_json(res)
    ci = res["ci"]
    print(f"{preset.name} on run {t.run_id} ({args.split}, {res['n']} questions)")
    print(f"  EM {res['em']:.3f} vs full {res['em_full']:.3f}:  ΔEM {res['delta_em']:+.3f} "
          f"[{ci['delta_em'][0]:+.3f}, {ci['delta_em'][1]:+.3f}]  McNemar p={res['mcnemar']['p_value']:.3g}")
    print(f"  tokens emitted {res['tokens_emitted']:.1f} (saves {res['savings_emitted']:.1%}), computed "
          f"{res['tokens_computed']:.1f} (saves {res['savings_computed']:.1%}), full {res['tokens_full']:.1f}")
    print(f"  lost {res['lost']}  gained {res['gained']}  kept right {res['kept_right']}  kept wrong {res['kept_wrong']}")


def _sweep_setup(p):
    p.add_argument("--run", required=True)
    p.add_argument("--family", action="append", help="family to sweep (repeatable; default: all the run supports)")
    p.add_argument("--split", default="all", choices=["tune", "test", "all"])
    p.add_argument("--json", action="store_true", help="one JSON object per point")
    _db(p)


@command("sweep", "sweep every family's declared grid: points with Pareto and hull flags", _sweep_setup)
def _sweep(args):
    from analysis.evaluate.frontier import sweep
    from analysis.evaluate.optimize import split_of
    from analysis.replay.policies.base import get_family
    for f in args.family or []:
        get_family(f)                     # an unknown name: the registry's error, which lists the families
    t = split_of(_table(args), args.split)
    df = sweep(t, args.family, skip_missing=not args.family)
    if args.json:
        for rec in df.to_dict(orient="records"):
            rec["setting"] = json.loads(rec["setting"]) if rec["setting"] else None
            _print_json(rec)
        return
    # the label last: a long one (a hybrid's) pushes no column aside
    rows = df[["em", "delta_em", "emitted", "computed", "savings_emitted", "pareto", "hull"]].to_string(
        index=False, float_format=lambda x: f"{x:.3f}").splitlines()
    print("\n".join(f"{row}  {label}" for row, label in zip(rows, ["label", *df["label"]])))


def _families_setup(p):
    p.add_argument("--json", action="store_true")


@command("families", "the policy families and their declared parameters", _families_setup)
def _families(args):
    from analysis.replay.policies.base import families, get_family
    out = []
    for f in families():
        c = get_family(f)
        out.append({"name": f, "label": c.label, "description": c.description, "source": c.source,
                    "requires": list(c.requires),
                    "params": [{"name": p.name, "kind": p.kind, "default": p.default, "low": p.low, "high": p.high,
                                "log": p.log, "choices": list(p.choices), "help": p.help} for p in c.params]})
    if args.json:
        return _print_json(out)
    for f in out:
        print(f"{f['name']}: {f['description']}  [{f['source']}]")
        for p in f["params"]:
            rng = f" in [{p['low']:g}, {p['high']:g}]" if p["low"] is not None else (
                f" one of {p['choices']}" if p["choices"] else "")
            print(f"    {p['name']} ({p['kind']}, default {p['default']!r}{rng}): {p['help']}")


def _op_setup(p):
    p.add_argument("--run", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, help="max EM with mean tokens <= BUDGET")
    g.add_argument("--max-drop", type=float, help="fewest tokens with EM >= full EM - MAX_DROP (with "
                   "--beat-incumbent: the EM drop the second setting keeps within, default 0.02)")
    p.add_argument("--beat-incumbent", action="store_true",
                   help="compare the run's incumbent (your production stopper, imported with --stop-field) with "
                        "the setting of the best EM at its tokens and the fewest tokens within --max-drop")
    p.add_argument("--cost", default="emitted", choices=["emitted", "computed"])
    p.add_argument("--slice-by", help="choose one setting per slice ('length' or a question field such as "
                   "meta.difficulty) under the global --budget")
    p.add_argument("--family", action="append")
    p.add_argument("--save", help="write the chosen preset to this JSON file")
    p.add_argument("--json", action="store_true")
    _db(p)


@command("optimize", "pick an operating point on the tune split and report it on the test split", _op_setup)
def _optimize(args):
    from analysis.core.errors import StoplineError
    from analysis.evaluate.optimize import operating_point, optimize_slices, split_of
    from analysis.replay.policies.base import Setting
    from analysis.presets.schema import Preset
    if args.beat_incumbent:
        return _beat_incumbent(args)
    if args.budget is None and args.max_drop is None:
        raise StoplineError("optimize needs --budget, --max-drop or --beat-incumbent")
    t = _table(args)
    if args.slice_by:
        if args.budget is None:
            raise StoplineError("--slice-by needs --budget")
        from analysis.evaluate.optimize import split_mask
        from analysis.replay.slices import slice_labels
        labels = slice_labels(t, args.slice_by)     # the whole run's bins (quantiles): one slicing for both halves
        tune_mask = split_mask(t.question_ids, "tune")
        res = optimize_slices(split_of(t, "tune"), args.slice_by, args.budget, args.cost, args.family,
                              labels=labels[tune_mask])
        default = Setting.from_dict({"family": "budget", "params": {"B": 32768}})
        preset = Preset(f"per-slice, budget {args.budget:g}", default, args.slice_by,
                        {k: Setting.from_dict(v["setting"]) for k, v in res["slices"].items() if v["setting"]})
        # chosen on the tune half, reported on the held-out one (as a single setting is)
        from analysis.evaluate.optimize import evaluate_outcome, missed_target
        from analysis.presets.routing import preset_outcome
        res["test"] = evaluate_outcome(preset_outcome(t, preset).subset(~tune_mask))   # sliced as it was chosen
        res["missed"] = missed_target("budget", args.budget, args.cost, res["test"])
    else:
        goal, value = ("budget", args.budget) if args.budget is not None else ("drop", args.max_drop)
        res = operating_point(t, goal, value, args.cost, args.family)
        preset = Preset(res["label"], Setting.from_dict(res["setting"]))
    preset.made_on = _made_on(args)
    res["preset"] = preset.to_dict()
    res["link"] = preset.to_url()
    if args.save:
        with open(args.save, "w") as fh:
            fh.write(preset.to_json())
    if args.json:
        return _print_json(res)
    if args.slice_by:
        return _print_slices(res, preset)
    _print_operating_point(res, t.run_id, preset)


def _red(text: str) -> str:
    """``text`` in red on a terminal (plain when piped)."""
    import sys
    return f"\033[31m{text}\033[0m" if sys.stdout.isatty() else text


SMALL_HALF = 30          # fewer questions than this in a half: the printout says the choice is rough


def _print_operating_point(res: dict, run_id: str, preset) -> None:
    """``optimize``'s result as a readable table: chosen on the tune split, checked on the held-out test split."""
    goal = (f"fewest tokens {res['cost']} within an EM drop of {res['value']:g}" if res["goal"] == "drop"
            else f"max EM with mean tokens {res['cost']} <= {res['value']:g}")
    te, tu = res["test"], res["tune"]
    ci = te["ci"]["delta_em"]
    print(f"run {run_id}: {goal}")
    print(f"  chosen on the tune half ({tu['n']} questions): {res['label']}")
    rows = [("", "tune", "test (held out)"),
            ("questions", f"{tu['n']}", f"{te['n']}"),
            ("EM", f"{tu['em']:.3f}", f"{te['em']:.3f} (full {te['em_full']:.3f})"),
            ("ΔEM vs full", "", f"{te['delta_em']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"),
            ("tokens emitted", f"{tu['emitted']:.1f}", f"{te['tokens_emitted']:.1f} (saves {te['savings_emitted']:.1%})"),
            ("tokens computed", f"{tu['computed']:.1f}",
             f"{te['tokens_computed']:.1f} (saves {te['savings_computed']:.1%})"),
            ("full length", "", f"{te['tokens_full']:.1f}"),
            ("lost / gained", "", f"{te['lost']} / {te['gained']}  (McNemar p={te['mcnemar']['p_value']:.3g})")]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>{w1}}  {c}")
    if res.get("missed"):
        print("  " + _red(res["missed"][0].upper() + res["missed"][1:]))
    if min(tu["n"], te["n"]) < SMALL_HALF:
        k = min(tu["n"], te["n"])
        print(f"  note: {k} question{'' if k == 1 else 's'} in a half: a choice made and checked on so few is "
              "rough, its CIs included; more questions make it firm")
    if te["tokens_computed"] > te["tokens_full"]:
        print(f"  note: with its probes it computes {te['tokens_computed'] / te['tokens_full'] - 1:.0%} more tokens "
              "than full length" + ("; --cost computed chooses on that basis" if res["cost"] == "emitted" else ""))
    print(f"  preset link: {res['link']}")


def _print_slices(res: dict, preset) -> None:
    te, cost = res["test"], res["cost"]
    print(f"one setting per {res['by']} slice, chosen on the tune half for mean tokens {cost} <= {res['budget']:g}:")
    for lab, v in res["slices"].items():
        print(f"  {lab:<16} {v['n']:>5} q  EM {v['em']:.3f}  {v[cost]:>8.1f} tokens  {v['label']}")
    print(f"  tune half:          EM {res['em']:.3f} at {res[cost]:.1f} tokens {cost}")
    if te.get("n"):
        lo, hi = te["ci"]["delta_em"]
        print(f"  test (held out, {te['n']} q): EM {te['em']:.3f} (ΔEM vs full {te['delta_em']:+.3f} [{lo:+.3f}, "
              f"{hi:+.3f}]) at {te['tokens_' + cost]:.1f} tokens {cost}")
    if res.get("missed"):
        print(f"  note: it {res['missed']}")
    print(f"  preset link: {res['link']}")


def _beat_incumbent(args):
    from analysis.core.errors import StoplineError
    from analysis.evaluate.incumbent import beat, headline
    if args.budget is not None or args.slice_by or args.save:
        raise StoplineError("--beat-incumbent chooses its own budget (the incumbent's tokens); it takes "
                            "--max-drop, --cost and --family, not --budget, --slice-by or --save")
    t = _table(args)
    res = beat(t, 0.02 if args.max_drop is None else args.max_drop, args.cost, args.family)
    if args.json:
        return _print_json(res)
    print(f"run {t.run_id}: settings chosen on the tune half ({res['n_tune']} questions) and checked on the held-out "
          f"half ({res['n_test']}); your mechanism, tuned on none of them, on all {t.n} too")
    for line in headline(res, code=""):
        print("  " + line)


def _report_setup(p):
    p.add_argument("--run", required=True, action="append", help="a run to report (repeatable)")
    p.add_argument("--preset", action="append", default=[],
                   help="a preset to report (file, JSON, link or saved name; repeatable)")
    p.add_argument("--drop", type=float, default=0.02, help="recommend the fewest tokens within this EM drop")
    p.add_argument("--slice-by", help="break the losses down by this (default: a metadata field, else length)")
    p.add_argument("--cost", default="emitted", choices=["emitted", "computed"],
                   help="the tokens the recommendation saves: emitted, or computed (the probes' tokens included)")
    p.add_argument("--out", default="report", help="folder for report.html, report.md and figures/")
    p.add_argument("--no-images", action="store_true", help="skip the PNG/SVG charts (no Chromium needed)")
    _db(p)


@command("report", "a self-contained HTML report, a Markdown summary and PNG/SVG charts", _report_setup)
def _report(args):
    from pathlib import Path
    from analysis.replay.engine import RunTable
    from analysis.evaluate.report import build
    store = _store(args, read_only=True)
    tables = [(store.run(r), RunTable.from_store(store, r)) for r in args.run]
    rep = build(tables, [_preset(args, p) for p in args.preset], drop=args.drop, slice_by=args.slice_by,
                images=not args.no_images, store=store.path, cost=args.cost)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if rep["images"]:
        (out / "figures").mkdir(exist_ok=True)
    (out / "report.html").write_text(rep["html"], encoding="utf-8")
    (out / "report.md").write_text(rep["markdown"], encoding="utf-8")
    for name, data in rep["images"].items():
        (out / name).write_bytes(data)
    print(f"report written to {out}/report.html ({len(rep['images'])} chart files, report.md)")


def _certify_setup(p):
    p.add_argument("--run", required=True)
    p.add_argument("--epsilon", type=float, default=0.01, help="the largest EM drop allowed (default 0.01)")
    p.add_argument("--delta", type=float, default=0.05, help="the chance the guarantee may fail (default 0.05)")
    p.add_argument("--risk", default="drop", choices=["drop", "lost"],
                   help="drop: EM drop (lost − gained, default); lost: the share of questions lost (stricter)")
    p.add_argument("--family", action="append", help="family to certify (repeatable; default: every one the run "
                   "can replay, except learned)")
    p.add_argument("--cost", default="emitted", choices=["emitted", "computed"], help="tokens to save")
    p.add_argument("--slice-by", help="certify one setting per slice ('length' or a question field such as "
                   "meta.difficulty), δ split across the slices")
    p.add_argument("--order-share", type=float, default=0.3,
                   help="share of the questions that orders the settings (the rest are tested)")
    p.add_argument("--save", help="write the certified preset (with its certificate) to this JSON file")
    p.add_argument("--json", action="store_true")
    _db(p)


@command("certify", "Learn-then-Test: the setting saving the most tokens whose EM drop is ≤ ε with probability "
         "≥ 1 − δ on new questions drawn like the run's", _certify_setup)
def _certify(args):
    from analysis.core.errors import StoplineError
    from analysis.evaluate.certify import certify, certify_slices, slice_preset
    from analysis.presets.schema import Preset
    from analysis.replay.policies.base import Setting
    if not 0 < args.order_share < 1:
        raise StoplineError("--order-share must be in (0, 1)")
    t = _table(args)
    if args.slice_by:
        res = certify_slices(t, args.slice_by, args.epsilon, args.delta, args.family, args.risk, args.cost,
                             args.order_share)
        preset = slice_preset(res) if res["certified"] else None
    else:
        res = certify(t, args.epsilon, args.delta, args.family, args.risk, args.cost, args.order_share)
        preset = None
        if res["certified"]:
            cert = {k: v for k, v in res.items() if k != "families"}
            preset = Preset(f"certified ε={args.epsilon:g} δ={args.delta:g}: {res['label']}"[:200],
                            Setting.from_dict(res["setting"]), certificate=cert)
    if preset is not None:
        preset.made_on = _made_on(args)
        res["preset"] = preset.to_dict()
        if args.save:
            with open(args.save, "w") as fh:
                fh.write(preset.to_json())
    if args.json:
        _print_json(res)
    elif args.slice_by:
        print(f"run {t.run_id}, one setting per {args.slice_by} slice, ε={args.epsilon:g}, δ={args.delta:g} "
              f"(split across {len(res['slices'])} slices), risk {args.risk}:")
        for lab, c in res["slices"].items():
            print(f"  {lab}: " + (f"{c['label']} (drop ≤ {c['epsilon']:g}; observed {c['risk_hat']:+.3f}, bound "
                                  f"{c['risk_ucb']:.3f}; saves {c['savings']:.0%} on {c['n_calibration']} questions)"
                                  if c["certified"] else "full length (nothing certified)"))
        print(f"  together: {res['tokens']:.0f} tokens against {res['tokens_full']:.0f} (saves {res['savings']:.0%})")
    else:
        print(res["message"])
        print(f"  families (δ each {args.delta / len(res['families']):.3g}):")
        for f, v in res["families"].items():
            print(f"    {f}: {v['certified']} of {v['in_order']} certified in order"
                  + (f", best {v['best']}" if v["best"] else "")
                  + (f"; stopped at {v['stopped_at']}" if v["stopped_at"] else ""))
    if args.save and preset is None:
        print("nothing certified: no preset written")
    if args.save and preset is not None and not args.json:
        print(f"preset written to {args.save}")
    return 0 if res["certified"] else 1


def _export_learned_setup(p):
    p.add_argument("--run", required=True, help="the run whose questions train the model (all of them)")
    p.add_argument("--tau", type=float, required=True, help="the threshold: stop when P(trial answer right) ≥ tau")
    p.add_argument("--features", default="auto", choices=["auto", "all", "signals", "text"])
    p.add_argument("--save", required=True, help="write the preset (the learned setting with its exported model)")
    p.add_argument("--name", default="", help="the preset's name")
    _db(p)


@command("export-learned", "fit the learned family's logistic model on a run and save it inside a preset as plain "
         "JSON (features, means, scales, coefficients, intercept), so the live controller runs it", _export_learned_setup)
def _export_learned(args):
    from pathlib import Path

    from analysis.presets.schema import Preset, from_dict
    from analysis.replay.policies.base import Setting
    from analysis.replay.policies.learned import export_model
    t = _table(args)
    ex = export_model(t, args.features)
    s = Setting.make("learned", tau=args.tau, export=ex)
    preset = Preset(args.name or f"learned tau={args.tau:g}, exported from run {t.run_id}"[:200], s)
    from_dict(preset.to_dict())                      # what is written must load
    Path(args.save).write_text(preset.to_json(), encoding="utf-8")
    print(f"exported {ex['label']} ({len(ex['features'])} features, {ex['trained_on']['rows']} checkpoints of "
          f"{t.n} questions; scikit-learn {ex['sklearn']}) with tau={args.tau:g} to {args.save}")
    print("  replay it on other runs (python -m analysis eval --preset ...): on this run it is in-sample")
    return 0
