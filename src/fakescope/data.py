"""Data sets on disk: discovery, splits, the torch Dataset and the forensic augmentations.

Layout: ``DIR/real/**`` and ``DIR/fake/**``; the first folder under ``fake/`` names the generator
(DFFD: ``fake/stylegan/...``, ``fake/faceapp/...``), files directly in ``fake/`` belong to
generator ``fake``. ``DIR/splits.csv`` (``path,label,split``) is used when present.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from .errors import FakescopeError
from .images import IMAGE_EXTS, load_rgb

LABELS = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    out = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            try:
                label = LABELS[row["label"].strip()]
                split = row["split"].strip()
                if split not in SPLITS:
                    raise KeyError(split)
            except KeyError as e:
                raise FakescopeError(f"{path}:{i}: bad row {row} ({e})") from None
            out.append(Sample(row["path"].strip(), label, split, _source(row["path"].strip())))
    return out


def write_splits(samples: list[Sample], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for s in samples:
            w.writerow([s.path, "fake" if s.label else "real", s.split])


def load_samples(root, splits_file=None, seed: int = 0, exclude=()) -> tuple[list[Sample], str]:
    """All samples of a data set with their split; returns (samples, where the split came from)."""
    root = Path(root)
    if splits_file is None and (root / "splits.csv").exists():
        splits_file = root / "splits.csv"
    if splits_file is not None:
        samples, origin = read_splits(splits_file), str(splits_file)
    else:
        samples, origin = stratified_split(scan(root), seed), f"stratified 70/15/15, seed {seed}"
    excluded = {e.lower() for e in exclude}
    samples = [s for s in samples if not (s.label == 1 and s.source.lower() in excluded)]
    return samples, origin


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


# --------------------------------------------------------------------------- transforms


@dataclass
class Augment:
    hflip: bool = True
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 100)
    blur_prob: float = 0.0
    resize_prob: float = 0.0
    crop_scale: float = 1.0  # <1: random square crop of this to 1x the short side

    def __call__(self, im: Image.Image, rng: random.Random) -> Image.Image:
        if self.hflip and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.crop_scale < 1.0:
            w, h = im.size
            side = round(min(w, h) * rng.uniform(self.crop_scale, 1.0))
            x, y = rng.randint(0, w - side), rng.randint(0, h - side)
            im = im.crop((x, y, x + side, y + side))
        if self.resize_prob and rng.random() < self.resize_prob:
            f = rng.uniform(0.5, 1.0)
            w, h = im.size
            im = im.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BILINEAR).resize((w, h))
        if self.blur_prob and rng.random() < self.blur_prob:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 1.5)))
        if self.jpeg_prob and rng.random() < self.jpeg_prob:
            im = jpeg_roundtrip(im, rng.randint(*self.jpeg_quality))
        return im


def jpeg_roundtrip(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


FITS = ("resize", "pad")
# ImageNet mean colour: padding with it gives zeros after normalisation
PAD_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)


def fit_square(im: Image.Image, size: int, fit: str = "resize") -> Image.Image:
    """Bring an image to size x size. ``resize`` (the paper's): scale the short side to ``size``
    and centre-crop. ``pad``: never upsample; a smaller image is centred on a mean-colour
    canvas, so its pixels reach the network unresampled (interpolation blurs the
    high-frequency traces generators leave); a larger one is scaled down as with ``resize``."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if fit == "pad" and max(w, h) <= size:
        canvas = Image.new("RGB", (size, size), PAD_RGB)
        canvas.paste(im, ((size - w) // 2, (size - h) // 2))
        return canvas
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_tensor(
    im: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, fit: str = "resize"
) -> torch.Tensor:
    a = np.asarray(fit_square(im, size, fit), dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


class ImageDataset(torch.utils.data.Dataset):
    """Samples of one data set as (tensor, label, index). ``prepare`` maps a loaded image to the
    image the model sees (the face stage plugs in here, so training and serving crop alike)."""

    def __init__(
        self,
        root,
        samples,
        size=299,
        augment: Augment | None = None,
        seed=0,
        prepare=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        fit="resize",
    ):
        self.fit = fit
        self.root, self.samples, self.size = Path(root), list(samples), size
        self.augment, self.seed, self.prepare = augment, seed, prepare
        self.mean, self.std = mean, std
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        im = load_rgb(self.root / s.path)
        if self.prepare is not None:
            im = self.prepare(im, self.root / s.path)
        if self.augment is not None:
            # seeded per (seed, epoch, index): reproducible with any number of workers
            im = self.augment(im, random.Random(hash((self.seed, self.epoch, i))))
        return to_tensor(im, self.size, self.mean, self.std, self.fit), s.label, i
