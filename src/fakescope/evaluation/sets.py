"""What cross-set evaluation and robustness curves share: choosing a data set's samples for a
split, capping them for quick runs, scoring them as ``evaluate`` does, and small writers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..data.dataset import make_loader
from ..data.folders import all_as, read_splits
from ..errors import FakescopeError
from ..runs import Run
from .evaluator import same_data, scoring_dataset, split_samples


def resolve_split(run: Run, data: Path, split: str) -> tuple[list, str]:
    """(samples, split actually used). A folder with no split defined for it (no splits.csv and
    not the run's own data) is scored whole, as split "all", rather than refused: a cross-set
    cell is still meaningful on an unsplit foreign folder, since the run never saw any of it."""
    try:
        samples, used = split_samples(run, data, split)
    except FakescopeError:
        if (data / "splits.csv").exists() or same_data(run, data):
            raise
        samples, used = split_samples(run, data, "all")
    if not samples or len({s.label for s in samples}) < 2:
        raise FakescopeError(f"{data}: split {used!r} needs images of both classes")
    return samples, used


def held_out(run: Run, data: Path, split: str) -> list:
    """Fakes of the generators the run was trained without (``--exclude``), on its own data.
    ``split_samples`` drops them so in-domain numbers match training; leave-one-out evaluation
    wants exactly them back. With a splits.csv they come from the same split; a split the run
    drew itself never lists them, and as no split saw them, all of them are taken."""
    exclude = {e.lower() for e in run.meta.config.exclude}
    if not exclude or not same_data(run, data):
        return []
    if split != "all" and (data / "splits.csv").exists():
        pool = [s for s in read_splits(data / "splits.csv") if s.split == split]
    else:
        pool = all_as(data)
    return [s for s in pool if s.label == 1 and s.source.lower() in exclude]


def cap_per_class(samples: list, limit: int) -> list:
    """At most ``limit`` samples per label (0: all), taken round-robin over generators so that a
    small cap still shows every generator; order within a generator is kept (deterministic)."""
    if limit < 0:
        raise FakescopeError(f"the per-class limit must be >= 0, got {limit}")
    if limit == 0:
        return list(samples)
    out = []
    for label in (0, 1):
        by_source: dict[str, list] = {}
        for s in samples:
            if s.label == label:
                by_source.setdefault(s.source, []).append(s)
        queues = [by_source[k] for k in sorted(by_source)]
        picked, i = [], 0
        while len(picked) < limit and any(i < len(q) for q in queues):
            picked += [q[i] for q in queues if i < len(q)][: limit - len(picked)]
            i += 1
        out += picked
    return out


def score(
    scorer,
    run: Run,
    data: Path,
    samples,
    batch_size: int,
    augment=None,
    prepare=None,
    desc: str = "scoring",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of ``samples`` through the same dataset path ``evaluate`` uses."""
    ds = scoring_dataset(run, data, samples, augment, prepare, scorer.pixels_in)
    s, y, _ = scorer.score_loader(make_loader(ds, batch_size), desc, progress)
    return s, y


def unique_names(paths: list[Path], names: list[str] | None, what: str) -> list[str]:
    """Labels for table rows/columns: the given ones, else folder names, made unique by their
    parent folder when two runs share a name (runs/a/best and runs/b/best)."""
    if names is not None:
        if len(names) != len(paths):
            raise FakescopeError(f"{len(names)} name(s) given for {len(paths)} {what}(s)")
        if len(set(names)) != len(names):
            raise FakescopeError(f"{what} names must be unique: {', '.join(names)}")
        return list(names)
    paths = [p.resolve() for p in paths]  # "." and "runs/a/" name their folder too
    out = [p.name for p in paths]
    if len(set(out)) != len(out):
        out = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(out)) != len(out):
        out = [f"{n}#{i + 1}" for i, n in enumerate(out)]
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def md_table(header: list, rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list, rows: list[list]) -> str:
    """A fixed-width table for the terminal."""
    cells = [list(map(str, header))] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path
