"""Training on several data folders at once, and on self-blended pseudo-fakes.

A run's training data is a list of ``Source``s (one per ``--data`` folder), each with its own
split. ``TrainingData`` turns them into the training and validation sets: every image of every
source, plus (``sbi`` > 0) self-blended fakes made on the fly from real training images, and,
with ``real_only``, none of the sources' fake images at all. ``data.order.BalancedOrder`` draws
the same number of images from each source per epoch, so a small source is not drowned by a
large one.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput, FakescopeError
from .folders import Sample, drop_generators, fingerprint, generators, load_samples, write_splits
from .shards import ShardSource

log = logging.getLogger(__name__)

SBI_SOURCE = "sbi"  # the source name of self-blended fakes in per-source metrics


@dataclass
class Source:
    name: str
    root: Path
    samples: list[Sample]
    origin: str  # where the split came from
    real_only: bool = False  # its fakes are left out (--reals-from)

    def describe(self) -> dict:
        """The run's record of this source: absolute root, fingerprint, counts, split origin."""
        return {
            **fingerprint(self.root, self.samples),
            "root": str(self.root),
            "name": self.name,
            "split_origin": self.origin,
            **({"use": "real images only"} if self.real_only else {}),
        }


def load_sources(
    roots,
    seed: int = 0,
    exclude=(),
    limit_per_class: int = 0,
    train_fraction: float = 1.0,
    reals_from=(),
) -> list[Source]:
    """The data folders as sources; ``train_fraction`` < 1 keeps that share of each class's
    training images (drawn with ``seed``), validation and test untouched. The folders of
    ``reals_from`` come after them, their fakes left out."""
    sources, names, found = [], set(), set()
    for r in [*roots, *reals_from]:
        root, reals_only = Path(r).resolve(), r in reals_from
        samples, origin = load_samples(root, seed=seed)
        found |= {g.lower() for g in generators(samples)}
        samples = drop_generators(samples, exclude)
        if reals_only:
            samples = [s for s in samples if s.label == 0]
        if limit_per_class:
            samples = _limit(samples, limit_per_class)
        if train_fraction < 1:
            samples = _train_share(samples, train_fraction, seed)
        name = root.name
        while name in names:  # two folders of the same name stay apart
            name += "'"
        names.add(name)
        sources.append(Source(name, root, samples, origin, reals_only))
    unknown = sorted({e for e in exclude if e.lower() not in found})
    if unknown:
        raise FakescopeError(
            f"--exclude {','.join(unknown)}: no generator of that name in the data (its "
            f"generators: {', '.join(sorted(found)) or 'none'})"
        )
    return sources


def _train_share(samples, fraction: float, seed: int):
    rng = random.Random(seed)
    dropped = set()
    for label in (0, 1):
        train = [i for i, s in enumerate(samples) if s.split == "train" and s.label == label]
        keep = max(1, round(len(train) * fraction)) if train else 0
        dropped |= set(train) - set(rng.sample(train, keep))
    return [s for i, s in enumerate(samples) if i not in dropped]


def _limit(samples, n):
    kept, seen = [], {}
    for s in samples:
        k = (s.split, s.label)
        if seen.get(k, 0) < n:
            kept.append(s)
            seen[k] = seen.get(k, 0) + 1
    return kept


def write_split_file(sources: list[Source], path: Path) -> None:
    """The run's split.csv over all its sources (a ``source`` column when there are several)."""
    if len(sources) == 1 and isinstance(sources[0], ShardSource):
        sources[0].write_split(path)
        return
    samples = [s for src in sources for s in src.samples]
    names = [src.name for src in sources for _ in src.samples] if len(sources) > 1 else None
    write_splits(samples, path, names)


def cache_dir() -> Path:
    """Where computed landmarks are kept: $FAKESCOPE_CACHE, else ~/.cache/fakescope."""
    return Path(os.environ.get("FAKESCOPE_CACHE", Path.home() / ".cache" / "fakescope"))


class SelfBlender:
    """Turns a real image into a self-blended fake, with its landmarks from a per-source cache
    (computed once, before training starts: DataLoader workers only read it)."""

    def __init__(
        self,
        sources: list[Source],
        landmarks: str = "auto",
        progress: bool = True,
        masks: str = "hull",
    ):
        from .landmarks import LandmarkCache, landmark_source
        from .sbi import MASK_SHAPES, SelfBlend

        self.blend = SelfBlend(mask_shapes=MASK_SHAPES) if masks == "mixed" else SelfBlend()
        try:
            self.source, self.source_name = landmark_source(landmarks), None
            self.source_name = self.source.name
        except FakescopeError:
            if landmarks == "auto":
                raise
            # a named source that is not installed here can still be read from its cache
            # (computed on another machine, e.g. before training on a GPU server)
            self.source, self.source_name = None, landmarks
        self.caches = {}
        for src in sources:
            # keyed by the data's fingerprint, so the cache follows the files, not the path
            key = fingerprint(src.root, src.samples)["sha256"][:12]
            path = cache_dir() / f"landmarks-{src.name}-{self.source_name}-{key}.npz"
            cache = LandmarkCache(path, src.root, self.source)
            reals = [s.path for s in src.samples if s.label == 0 and s.split in ("train", "val")]
            if cache.update(reals, progress=progress):
                cache.save()
            self.caches[str(src.root)] = cache

    def describe(self) -> dict:
        return {"landmarks": self.source_name, **self.blend.describe()}

    def __call__(self, im, path: Path, rng: random.Random):
        cache = next((c for r, c in self.caches.items() if str(path).startswith(r + os.sep)), None)
        if cache is None:
            raise FakescopeError(f"{path}: no landmarks for images outside the training sources")
        pts = cache.for_size(path, im.size)
        try:
            return self.blend(im, pts, rng)[0]
        except BadInput:  # landmarks too small to blend: blend a central ellipse instead
            w, h = im.size
            t = [2 * math.pi * k / 24 for k in range(24)]
            ellipse = [(w / 2 + 0.3 * w * math.cos(a), h / 2 + 0.38 * h * math.sin(a)) for a in t]
            return self.blend(im, ellipse, rng)[0]


@dataclass
class Split:
    """One split's images: a root, a sample, whether it becomes a pseudo-fake, its source."""

    roots: list[Path]
    samples: list[Sample]
    blend: list[bool]
    source: list[str]

    def __len__(self) -> int:
        return len(self.samples)

    def fake_sources(self) -> list[str | None]:
        """Per image: the source of its fake (``sbi`` for a pseudo-fake), or None if real."""
        return [
            src if (b or s.label) else None
            for s, b, src in zip(self.samples, self.blend, self.source, strict=True)
        ]

    def pairs(self) -> list[tuple[int, int]]:
        """(real, pseudo-fake made from it) index pairs, one per pseudo-fake."""
        both = list(enumerate(zip(self.samples, self.blend, strict=True)))
        real_at = {id(s): i for i, (s, b) in both if not b}
        return [(real_at[id(s)], j) for j, (s, b) in both if b]

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for s, b, src in zip(self.samples, self.blend, self.source, strict=True):
            key = f"{src}/{'fake' if (b or s.label) else 'real'}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))


def make_split(sources: list[Source], split: str, sbi: float, real_only: bool, seed: int):
    """The images of ``split``: each source's images (without its fakes when ``real_only``),
    and self-blended fakes of a ``sbi`` share of its real images (rounded down, at least one
    per source when ``sbi`` > 0; the share is drawn with ``seed``). Pseudo-fakes count as
    their own source, ``sbi``."""
    out = Split([], [], [], [])

    def add(src, s, blend):
        out.roots.append(src.root)
        out.samples.append(s)
        out.blend.append(blend)
        out.source.append(SBI_SOURCE if blend else src.name)

    rng = random.Random(seed)
    for src in sources:
        chosen = [s for s in src.samples if s.split == split]
        for s in chosen:
            if not (real_only and s.label == 1):
                add(src, s, False)
        if sbi > 0:
            reals = [s for s in chosen if s.label == 0]
            n = max(1, math.floor(len(reals) * sbi)) if reals else 0
            picks = reals if n >= len(reals) else rng.sample(reals, n)
            for s in picks:
                add(src, s, True)
            for _ in range(n - len(picks)):  # sbi > 1: more pseudo-fakes than reals
                add(src, rng.choice(reals), True)
    return out
