"""What every command module shares: the registry (``@command``) and the --db option, the store, JSON output.

Command modules import what a command runs inside its function: ``stopline --help`` and each command then load
only the libraries they need (duckdb, pandas, scipy, plotly, torch), a start-up choice, not a cycle."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Callable

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
    """The store a command works on. A read command given no --db whose default store (the user's) does not
    exist yet reads the bundled demo store instead, and says so on stderr. ``create=False``: a command that
    writes into runs already stored (probe, rescore) refuses a store that does not exist instead of making an
    empty one."""
    import sys
    from pathlib import Path

    from analysis.core.store import DEMO_DB, Store, resolve_db_path
    if read_only and not args.db and not Path(resolve_db_path()).exists() and Path(DEMO_DB).exists():
        print(f"note: your store {resolve_db_path()} does not exist yet; reading the demo store {DEMO_DB} "
              "(--db PATH for another)", file=sys.stderr)
        return Store(DEMO_DB, read_only=True)
    return Store(args.db, read_only=read_only, create=create and not read_only)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=str))
