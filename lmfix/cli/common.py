"""Flag types, flags shared by several commands, and the shape of every command's --help."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from lmfix import atomic
from lmfix.errors import LmfixError

USAGE = "Examples of every command: README.md, section Usage."


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own, so a command's one-line summary stays its first line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(part, width, indent) for part in text.split("\n\n"))


def command(sub: argparse._SubParsersAction, name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
    """A subcommand whose --help opens with ``summary`` (also its line in the parent's list), then ``details``,
    and ends by pointing to the README's usage."""
    description = summary[0].upper() + summary[1:] + "." + (f"\n\n{details}" if details else "")
    return sub.add_parser(name, help=summary, description=description, epilog=USAGE, formatter_class=HelpFormatter)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``--lr 0`` would otherwise mean "the optimizer's default")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def count(text: str) -> int:
    """Token counts: 500000, 500k, 2M, 1.5e6."""
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 500000, 500k or 2M") from None
    if not math.isfinite(value) or value < 0:  # nan, inf, 1e999: int() would raise OverflowError
        raise argparse.ArgumentTypeError(f"{text} must be a finite count >= 0")
    return int(value)


def duration(text: str) -> float:
    """Durations in seconds: 90, 90s, 10m, 1.5h."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower())
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 2h") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite duration >= 0")
    return value


def add_corpus_flags(p: argparse.ArgumentParser) -> None:
    """Flags that select a prepared corpus; shared by every command that reads one (help from ``TrainConfig``'s)."""
    from lmfix.training.config import HELP

    p.add_argument("--data-dir", help=HELP["data_dir"])
    p.add_argument("--tokenizer", default="word", help=HELP["tokenizer"] + " (default: word)")
    p.add_argument("--vocab-size", type=positive_int, help=HELP["vocab_size"])
    p.add_argument("--spm-type", default="unigram", help=HELP["spm_type"] + " (default: unigram)")
    p.add_argument("--no-verify", action="store_true", help="accept a checksum mismatch (warns)")


def corpus_from_args(args: argparse.Namespace, corpus: str, force: bool = False):
    """Load the prepared corpus the flags describe (preparing it if needed)."""
    from lmfix.data.corpus import prepare
    from lmfix.data.tokenizers import TokenizerConfig

    tok = TokenizerConfig(args.tokenizer, args.vocab_size, args.spm_type)
    return prepare(corpus, data_dir=args.data_dir, tokenizer=tok, verify=not args.no_verify, force=force)


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """--device and --precision for commands that load a trained run (default precision: the run's)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help="fp32, bf16 or auto (default: the precision the run was trained in)")


class _CheckedStdout:
    """sys.stdout whose failed writes raise a one-line error (``checked_stdout``); all else is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with self._checked():
            return self.stream.write(text)

    def flush(self) -> None:
        with self._checked():
            self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)

    @contextlib.contextmanager
    def _checked(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:  # the reader left (`| head`): main() ends quietly
            raise
        except OSError as exc:
            # what stays unwritten in the buffer goes to /dev/null at exit, instead of a second failure there
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            raise LmfixError(f"cannot write to standard output: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def checked_stdout() -> Iterator[None]:
    """Run a command with stdout checked, as Unix tools do: a closed stdout (``>&-``) or a failed write (a full
    disk, ``> /dev/full``) is a one-line error, never a traceback or an exit 0 with nothing written."""
    if sys.stdout is None:  # started with stdout closed: what it prints would vanish
        raise LmfixError("standard output is closed: nothing lmfix prints can arrive; redirect it instead "
                         "(> FILE, or > /dev/null to discard it)")
    stream = sys.stdout
    sys.stdout = _CheckedStdout(stream)
    try:
        yield
        sys.stdout.flush()  # a full device fails here, not silently at exit
    finally:
        sys.stdout = stream


@contextlib.contextmanager
def checked_path_names() -> Iterator[None]:
    """A path argument with a name longer than the file system allows is a one-line error wherever lmfix first
    touches it (pathlib's ``exists`` and ``is_file`` raise ENAMETOOLONG rather than answer False)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        path = Path(os.fsdecode(exc.filename or ""))
        raise LmfixError(f"no such path can exist: {atomic.path_problem(path) or path}; shorten it") from exc
