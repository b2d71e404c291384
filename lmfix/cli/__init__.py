"""The ``lmfix`` command line: the only place that parses flags, prints and exits.

One module per command group; each has ``register(subparsers)``, which
declares its commands' flags, and ``cmd_NAME(args)`` functions that call the
library and print. Library failures arrive as :class:`LmfixError` and leave as
one line on stderr with exit code 2. Library imports happen inside the
commands, so ``lmfix --help`` and ``lmfix prepare`` start without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from lmfix import __version__
from lmfix.cli import analysis, bench, data, embeddings, recipes, train
from lmfix.cli.common import USAGE, HelpFormatter, checked_path_names, checked_stdout
from lmfix.errors import LmfixError
from lmfix.heap import retain_freed_memory

# Order is the order of `lmfix --help`.
COMMAND_GROUPS = (data, embeddings, train, analysis, recipes, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfix", epilog=USAGE, formatter_class=HelpFormatter,
        description="Language models with fixed embedding/classifier matrices.\n\n"
                    "lmfix COMMAND --help says what the command does.",
    )
    parser.add_argument("--version", action="version", version=f"lmfix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lmfix: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _warning_line
    retain_freed_memory()
    try:
        with checked_stdout(), checked_path_names():
            args.func(args)
    except LmfixError as exc:
        print(f"lmfix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmfix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmfix ... | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
