"""The `akfc` command line: one subcommand per pipeline entry point.

Library code logs through `logging`; only this module prints and sets the
verbosity. Each subcommand lives in its own module under `akfc.commands` and
exposes `register(subparsers)`, which adds its parser and sets `func`, and
optionally `interrupted(args, command)`, which returns what to tell the user
after Ctrl-C or SIGTERM (e.g. how to resume).

While a command runs, SIGTERM raises an exception like Ctrl-C does, so that
`finally` blocks and atomic writes clean up before the process exits with
128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from akfc import __version__
from akfc.errors import AkfcError

__all__ = ["main", "build_parser"]

# Modules under akfc.commands, in the order `akfc --help` lists them.
_COMMAND_MODULES: tuple[str, ...] = ("compile", "inspect", "run", "eval", "ops")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="akfc",
        description=(
            "Fuse trained single-task ONNX models into one multi-task ONNX graph "
            "with an Adaptive Knowledge Fusion Transformer."
        ),
    )
    parser.add_argument("--version", action="version", version=f"akfc {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"akfc.commands.{name}").register(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # The torch exporter logs every rewrite at INFO and warns that torchvision is missing, which akfc does
    # not need; show its errors only unless debugging.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR if level > logging.DEBUG else level)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `_Terminated` for the duration of a command; Python's default ends the process without cleanup."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        yield  # not the main thread, where only signal handlers can be set: SIGTERM keeps its default
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _sigterm_raises():
            return int(args.func(args) or 0)
    except AkfcError as error:
        print(f"akfc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signum = signal.SIGTERM if isinstance(interrupt, _Terminated) else signal.SIGINT
        message = f"akfc {args.command}: interrupted by {signum.name}"
        hint = getattr(args, "interrupted", None)
        if hint is not None:
            message += f"; {hint(args, ['akfc', *argv])}"
        print(message, file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        # The reader (e.g. `head`) closed the pipe; point stdout at /dev/null so the exit flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
