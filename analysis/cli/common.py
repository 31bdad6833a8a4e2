"""What every command module shares: the registry (``@command``) and the --db option, the store, JSON output.

Command modules import what a command runs inside its function: ``stopline --help`` and each command then load
only the libraries they need (duckdb, pandas, scipy, plotly, torch), a start-up choice, not a cycle."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Callable

from analysis.core.errors import StoplineError
from analysis.core.registry import Registry


@dataclass(frozen=True)
class Command:
    name: str
    about: str                                            # the --help line
    setup: Callable[[argparse.ArgumentParser], None]      # adds its arguments
    run: Callable                                         # runs it; may return an exit code


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Register a sub-command: ``setup(parser)`` adds its arguments, the decorated function runs it."""
    def deco(run):
        COMMANDS.add(name, Command(name, help, setup, run))
        return run
    return deco


def _db(p: argparse.ArgumentParser):
    p.add_argument("--db", help="store file (default: $STOPLINE_DB or data/stopline.duckdb)")


def _mapping_args(p: argparse.ArgumentParser):
    """A table dataset's field mapping (jsonl:, csv:, parquet:): the options ``import`` names the same way."""
    from analysis.core.answers import ANSWER_TYPES
    g = p.add_argument_group("field mapping (jsonl:, csv:, parquet:, hf: datasets; part of the dataset's id)")
    g.add_argument("--question-field", help="dotted path to the question (default: question)")
    g.add_argument("--gold-field", help="dotted path to the gold answer or list of aliases (default: answer)")
    g.add_argument("--id-field", help="dotted path to a question id (default: derived from the question text)")
    g.add_argument("--answer-type", choices=ANSWER_TYPES,
                   help="how answers are matched: number (GSM8K), math (LaTeX, MATH/AIME), text (NQ), choice "
                        "(letters) (default: number)")


def _mapping(args) -> dict:
    """The field mapping given on the command line (only what was given)."""
    return {k: getattr(args, k) for k in ("question_field", "gold_field", "id_field", "answer_type")
            if getattr(args, k) is not None}


def _store(args, read_only: bool = False, create: bool = True):
    """The store a command works on. A read command given no --db whose default store (the user's) has no runs
    (it does not exist yet, or holds presets alone, saved on the dashboard) reads the bundled demo store
    instead, as the dashboard does, and says so on stderr once. ``create=False``: a command that writes into
    runs already stored (probe, rescore) refuses a store that does not exist instead of making an empty one."""
    import sys
    from pathlib import Path

    from analysis.core.store import DEMO_DB, Store, resolve_db_path
    if read_only and not args.db and Path(DEMO_DB).exists() and not _has_runs(resolve_db_path()):
        if getattr(args, "_demo_store", None) is None:
            mine = resolve_db_path()
            print(f"note: your store {mine} {'has no runs yet' if Path(mine).exists() else 'does not exist yet'}; "
                  f"reading the demo store {DEMO_DB} (--db PATH for another)", file=sys.stderr)
            args._demo_store = Store(DEMO_DB, read_only=True)
        return args._demo_store
    return Store(args.db, read_only=read_only, create=create and not read_only)


def _has_runs(path: str) -> bool:
    from pathlib import Path

    from analysis.core.store import Store
    if not Path(path).exists():
        return False
    try:
        return Store(path, read_only=True).has_runs()
    except StoplineError:           # unreadable: the command's own open says what is wrong
        return True


def _preset(args, arg: str):
    """A preset given on the command line: a file, JSON text, a link, or the name of a preset saved in the
    store (--db) or in the user's own store (the dashboard's Presets page keeps them there)."""
    from pathlib import Path

    from analysis.core.errors import PresetError
    from analysis.core.store import Store, resolve_db_path
    from analysis.presets.schema import from_dict, load
    try:
        return load(arg)
    except PresetError as e:
        if not e.message.startswith("no such preset file"):
            raise
        given = [x for x in (getattr(args, "db", None), resolve_db_path()) if x]
        stores = [p for p in dict.fromkeys(given) if Path(p).exists()]
        names: list[str] = []
        for path in stores:
            kept = Store(path, read_only=True).presets()
            if arg in kept:
                try:
                    return from_dict(kept[arg])
                except PresetError as bad:
                    raise PresetError(f"the preset saved as '{arg}' cannot be read: {bad.message}", file=path,
                                      field=bad.field) from None
            names += kept
        raise PresetError("no such preset file, not preset JSON or a link, and no preset saved by that name"
                          + (f" in {' or '.join(stores)}" if stores else "")
                          + (f" (saved: {', '.join(sorted(set(names))[:12])})" if names else ""), file=arg) from None


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=str))
