"""The torch Dataset over samples of a data folder."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..data.images import load_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, to_tensor


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


def make_loader(dataset, batch_size, shuffle=False, workers=0, seed=0, sampler=None):
    """A DataLoader whose shuffling is seeded (the same order on every run and process)."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=None if sampler is not None else shuffle,
        sampler=sampler,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
    )
