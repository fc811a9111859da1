"""Data sets on disk: discovery, labels, generators, splits and fingerprints.

Layout: ``DIR/real/**`` and ``DIR/fake/**``; the first folder under ``fake/`` names the generator
(DFFD: ``fake/stylegan/...``, ``fake/faceapp/...``), files directly in ``fake/`` belong to
generator ``fake``. ``DIR/splits.csv`` (``path,label,split``) is used when present.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from ..data.images import IMAGE_EXTS
from ..errors import FakescopeError

LABELS = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the data set root
    label: int  # 0 real, 1 fake
    split: str
    source: str  # generator for fakes, origin for reals ("real" when flat)


def _source(rel: str) -> str:
    parts = Path(rel).parts
    return parts[1] if len(parts) > 2 else parts[0]


def scan(root: str | Path) -> list[tuple[str, int]]:
    root = Path(root)
    if not root.is_dir():
        raise FakescopeError(f"{root}: data folder not found")
    found = []
    for name, label in LABELS.items():
        d = root / name
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                found.append((f.relative_to(root).as_posix(), label))
    if not found:
        raise FakescopeError(
            f"{root}: no images under real/ or fake/ (expected DIR/real, DIR/fake)"
        )
    return found


def stratified_split(items, seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> list[Sample]:
    """70/15/15 per (label, source) group, shuffled with a fixed seed."""
    groups: dict[tuple[int, str], list[str]] = {}
    for rel, label in items:
        groups.setdefault((label, _source(rel)), []).append(rel)
    rng = random.Random(seed)
    out = []
    for (label, source), rels in sorted(groups.items()):
        rels = sorted(rels)
        rng.shuffle(rels)
        n_train = round(len(rels) * fractions[0])
        n_val = round(len(rels) * fractions[1])
        for i, rel in enumerate(rels):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out.append(Sample(rel, label, split, source))
    return sorted(out, key=lambda s: s.path)


def read_splits(path: str | Path) -> list[Sample]:
    """``path,label,split`` rows (any column order, extra columns ignored); every way the file
    can be bad is one FakescopeError naming the file and the line."""
    out = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not {"path", "label", "split"} <= cols:
                raise FakescopeError(
                    f"{path}: header must name the columns path,label,split "
                    f"(found: {','.join(sorted(c for c in cols if c)) or 'nothing'})"
                )
            for i, row in enumerate(reader, start=2):
                rel = (row.get("path") or "").strip()
                label = (row.get("label") or "").strip()
                split = (row.get("split") or "").strip()
                bad = (
                    "no path" if not rel
                    else f"label {label!r} is not real or fake" if label not in LABELS
                    else f"split {split!r} is not one of {', '.join(SPLITS)}" if split not in SPLITS
                    else "the path leaves the data folder" if _escapes(rel)
                    else None
                )  # fmt: skip
                if bad:
                    raise FakescopeError(f"{path}:{i}: {bad}")
                out.append(Sample(rel, LABELS[label], split, _source(rel)))
    except UnicodeDecodeError as e:
        raise FakescopeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise FakescopeError(f"{path}: not a readable CSV file ({e})") from None
    return out


def _escapes(rel: str) -> bool:
    p = Path(rel)
    return p.is_absolute() or ".." in p.parts


def write_splits(samples: list[Sample], path: str | Path, sources: list[str] | None = None) -> None:
    """``path,label,split`` per sample; with ``sources`` (one name per sample, for runs on
    several data folders) a ``source`` column says which folder the path is relative to."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"] + (["source"] if sources else []))
        for i, s in enumerate(samples):
            extra = [sources[i]] if sources else []
            w.writerow([s.path, "fake" if s.label else "real", s.split, *extra])


def load_samples(root, splits_file=None, seed: int = 0, exclude=()) -> tuple[list[Sample], str]:
    """All samples of a data set with their split; returns (samples, where the split came from)."""
    root = Path(root)
    if splits_file is None and (root / "splits.csv").exists():
        splits_file = root / "splits.csv"
    if splits_file is not None:
        samples, origin = read_splits(splits_file), str(splits_file)
        check_present(samples, root, splits_file)
    else:
        samples, origin = stratified_split(scan(root), seed), f"stratified 70/15/15, seed {seed}"
    return drop_generators(samples, exclude), origin


def check_present(samples: list[Sample], root: Path, listed_in) -> None:
    """Every listed file exists: found before any work, not after an epoch of training."""
    missing = [s.path for s in samples if not (Path(root) / s.path).is_file()]
    if missing:
        raise FakescopeError(
            f"{listed_in}: {len(missing)} listed file(s) not found under {root}, e.g. "
            f"{missing[0]!r}; fix the list or restore the files"
        )


def drop_generators(samples: list[Sample], exclude) -> list[Sample]:
    """The samples without the fakes of the generators named in ``exclude`` (any case)."""
    excluded = {e.lower() for e in exclude}
    return [s for s in samples if not (s.label == 1 and s.source.lower() in excluded)]


def generators(samples: list[Sample]) -> set[str]:
    """The generator names of a data set's fakes (what --exclude can name)."""
    return {s.source for s in samples if s.label == 1}


def all_as(root, split="all") -> list[Sample]:
    """Every image of a folder under one split name (for scoring data without splits.csv)."""
    return [Sample(rel, label, split, _source(rel)) for rel, label in scan(root)]


def fingerprint(root, samples: list[Sample]) -> dict:
    """A hash of the file list, labels, splits and sizes: two runs on the same data agree."""
    h = hashlib.sha256()
    root = Path(root)
    for s in sorted(samples, key=lambda s: s.path):
        size = (root / s.path).stat().st_size if (root / s.path).exists() else -1
        h.update(f"{s.path}|{s.label}|{s.split}|{size}\n".encode())
    counts = {}
    for s in samples:
        key = f"{s.split}/{'fake' if s.label else 'real'}"
        counts[key] = counts.get(key, 0) + 1
    return {"root": str(root), "sha256": h.hexdigest(), "counts": dict(sorted(counts.items()))}
