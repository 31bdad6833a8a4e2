"""``python -m analysis`` / ``stopline``: the parser over the command modules (each registers its commands
with ``@command`` on import; their order here is the order of ``--help``)."""
from __future__ import annotations

import argparse
import copy
import os
import sys

from analysis.cli import data, replay, backend, production  # noqa: F401 (they register their commands, in --help order)
from analysis.cli.common import COMMANDS
from analysis.cli.data import _dashboard
from analysis.core import lifeline
from analysis.core.errors import StoplineError


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's --help shows an option's default where it has one worth saying (not None, off or an
    empty list) and its help does not already say it; an option without help shows its default alone."""

    @staticmethod
    def _shows_default(action) -> bool:
        d = action.default
        return not (d is None or d is False or d == [] or d is argparse.SUPPRESS
                    or "default" in (action.help or "").lower())

    def _get_help_string(self, action):
        return super()._get_help_string(action) if self._shows_default(action) else action.help

    def _format_action(self, action):
        if action.help is None and action.option_strings and self._shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stopline", description="Stopline: early stopping of LLM reasoning, "
                                     "replayed from stored checkpoints. Every command has --help.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS.values():
        c.setup(sub.add_parser(c.name, help=c.about, description=c.about, formatter_class=DefaultsHelp))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lifeline.from_env()             # a job of the dashboard's ends when the dashboard does
    if argv[:1] == ["dashboard"] and not {"-h", "--help"} & set(argv):
        try:
            return _dashboard(argparse.Namespace(streamlit_args=argv[1:]))    # options go to streamlit as they are
        except StoplineError as e:          # e.g. exposed beyond this machine without viewer mode or a login
            print(f"error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        code = COMMANDS[args.command].run(args)   # a command may return an exit code (a failed check)
    except StoplineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept (run the same command again to resume a run)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout.flush()
        except BrokenPipeError:     # our output's reader left (`| head`): nothing more to say, and no traceback
            sys.stdout = open(os.devnull, "w")      # (Python would report the pipe again while flushing at exit)
            return 0
        raise                       # another pipe (a socket, a subprocess's): a failure like any other
    return code if isinstance(code, int) else 0


def entry() -> None:
    """Console script ``stopline``."""
    sys.exit(main())
