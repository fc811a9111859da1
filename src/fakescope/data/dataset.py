"""The torch Dataset over samples of a data folder."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from .images import load_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, to_pixels, to_tensor

PREFETCH = 4  # batches each loader worker makes ahead


class ImageDataset(torch.utils.data.Dataset):
    """Samples as (tensor, label, index). ``root`` is the data folder, or one folder per sample
    when samples come from several sources. ``prepare`` maps a loaded image to the image the
    model sees (the face stage plugs in here, so training and serving crop alike). Samples
    whose ``blend`` flag is set are turned into pseudo-fakes by ``blender(image, path, rng)``
    (self-blended images; ``sources.SelfBlender``) and labelled fake."""

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
        blend=None,
        blender=None,
    ):
        self.fit = fit
        self.samples, self.size = list(samples), size
        if isinstance(root, str | Path):
            self.root, self.roots = Path(root), None
        else:
            self.roots = [Path(r) for r in root]
            self.root = self.roots[0] if self.roots else Path(".")
        self.augment, self.seed, self.prepare = augment, seed, prepare
        self.blend = list(blend) if blend is not None else None
        self.blender = blender
        self.mean, self.std = mean, std
        self.epoch = 0
        # True: items are uint8 pixels, normalised by the consumer (``transforms.normalise``):
        # a quarter of the bytes between loader processes and into a GPU's pinned memory
        self.pixels = False

    def __len__(self):
        return len(self.samples)

    def path_of(self, i: int) -> Path:
        return (self.roots[i] if self.roots else self.root) / self.samples[i].path

    def label_of(self, i: int) -> int:
        return 1 if self.blend and self.blend[i] else self.samples[i].label

    def load(self, i: int):
        """Image ``i`` as read from disk (RGB, upright), before any change."""
        return load_rgb(self.path_of(i))

    def framing_images(self, n: int) -> list:
        """Up to ``n`` images spread over the set, pseudo-fakes left out (what measures how
        the data frames its faces)."""
        kept = [i for i in range(len(self)) if not (self.blend and self.blend[i])]
        return [self.load(i) for i in kept[:: max(1, len(kept) // n)][:n]]

    def __getitem__(self, i):
        path = self.path_of(i)
        im = self.load(i)
        # seeded per (seed, epoch, index): reproducible with any number of workers
        rng = random.Random(hash((self.seed, self.epoch, i)))
        if self.blend and self.blend[i]:
            im = self.blender(im, path, rng)
        if self.prepare is not None:
            im = self.prepare(im, path)
        if self.augment is not None:
            im = self.augment(im, rng)
        if self.pixels:
            return to_pixels(im, self.size, self.fit), self.label_of(i), i
        return to_tensor(im, self.size, self.mean, self.std, self.fit), self.label_of(i), i


def make_loader(dataset, batch_size, shuffle=False, workers=0, seed=0, sampler=None, pin=False):
    """A DataLoader whose shuffling is seeded (the same order on every run and process).
    ``pin``: batches in page-locked memory, so the copy to a GPU overlaps its work."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=None if sampler is not None else shuffle,
        sampler=sampler,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
        pin_memory=pin,
        prefetch_factor=PREFETCH if workers > 0 else None,
    )
