"""Where the library's progress messages go. The library logs to the ``fakescope`` logger and
shows nothing unless asked; the command line asks (``show_messages``), and so can a notebook."""

from __future__ import annotations

import logging
import sys


def show_messages() -> None:
    """fakescope's progress messages on stdout (the CLI's choice; the API stays quiet)."""
    logger = logging.getLogger("fakescope")
    if not any(getattr(h, "fakescope_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.fakescope_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def one_line(text: str) -> str:
    """``text`` safe for one row of a printed table: control characters in a file name (a
    newline, a carriage return, an escape sequence) are shown escaped instead of acted on."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text
    )
