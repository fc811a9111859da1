"""The `fakescope` command line: a thin layer over the Python API (see fakescope/__init__.py).
The subcommands live in ``fakescope.commands``, one module per group."""

from __future__ import annotations

import argparse
import sys

from .errors import FakescopeError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fakescope",
        description="Deepfake detection of face images with a fine-tuned CNN. "
        "Start with `fakescope train --help` or `fakescope predict --help`.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .commands import compare, export, predict, serve, tools, train

    for group in (train, predict, compare, export, serve, tools):
        group.add(sub)
    _no_abbreviations(p)
    return p


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Options must be spelt out, in every subcommand: with argparse's prefix matching,
    `predict --run RUN` (bench's spelling) was read as `--runtime RUN` and failed with a
    list of runtimes, and any new option could make an old prefix ambiguous."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def _version() -> str:
    from . import __version__

    return f"fakescope {__version__}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .messages import show_messages

    show_messages()
    try:
        return int(args.func(args) or 0)
    except FakescopeError as e:
        print(f"fakescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fakescope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
