"""Fault injection for the crash-consistency test: ``FAKESCOPE_CRASH_AT=POINT:N`` makes the
process kill itself (SIGKILL, as the OOM killer or a pre-empted node would) the N-th time it
reaches ``crash_point(POINT)``; ``POINT:N@R`` only the training process of rank R. Unset, each
point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("FAKESCOPE_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    nth, _, rank = nth.partition("@")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def injected(name: str) -> bool:
    """Whether ``FAKESCOPE_FAULT`` (a comma-separated list) names this fault: a deliberately
    wrong result the tests need to see refused (e.g. ``export``: a damaged exported model)."""
    return name in os.environ.get("FAKESCOPE_FAULT", "").split(",")
