"""The order training reads its images in: one list per epoch, the same on every process and for
any number of processes, so a run can stop after any batch and resume where it stopped with
more or fewer processes.

An epoch's order is cut into global batches of ``--batch-size`` images; each of ``world``
processes takes every ``world``-th image of each batch (its share), and the gradients DDP
averages are those of the whole batch. Skipping the first ``k`` batches of the order is all a
resume needs. The order is padded with its own first images to a multiple of ``world`` so that
every process takes as many steps.
"""

from __future__ import annotations

import random

import torch


class TrainOrder(torch.utils.data.Sampler):
    """This process's share of an epoch's order, from batch ``start`` on. Subclasses define
    ``epoch_order()``: the whole epoch's list of dataset indices."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.epoch, self.seed, self.skip = 0, 0, 0
        self._drawn: tuple | None = None  # ((epoch, seed), padded order): len and iter share it

    def set_epoch(self, epoch: int, seed: int = 0, start_batch: int = 0, batch_size: int = 1):
        """The epoch (and its seed) to draw, and the global batches already trained."""
        self.epoch, self.seed, self.skip = epoch, seed, start_batch * batch_size

    def epoch_order(self) -> list[int]:
        raise NotImplementedError

    def _padded(self) -> list[int]:
        key = (self.epoch, self.seed)
        if self._drawn is None or self._drawn[0] != key:
            order = self.epoch_order()
            self._drawn = (key, order + order[: -len(order) % self.world])
        return self._drawn[1]

    def __len__(self) -> int:
        return max(0, len(self._padded()) - self.skip) // self.world

    def __iter__(self):
        return iter(self._padded()[self.skip :][self.rank :: self.world])


class ShuffledOrder(TrainOrder):
    """A seeded permutation of ``n`` images: the order a one-process run has always had
    (a DataLoader shuffling with a generator seeded by the epoch's seed, which draws one
    number for its workers before the permutation), now for any number of processes."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        super().__init__(rank, world)
        self.n = n

    def epoch_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's draw
        return torch.randperm(self.n, generator=g).tolist()


class BalancedOrder(TrainOrder):
    """Each epoch, as many images from every source as the largest source has (smaller ones
    are drawn again in a new order), shuffled together. Deterministic for (seed, epoch)."""

    def __init__(self, groups: list[str], seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__(rank, world)
        self.by_group: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            self.by_group.setdefault(g, []).append(i)
        self.base_seed = seed
        self.per_group = max(len(v) for v in self.by_group.values())

    def epoch_order(self) -> list[int]:
        rng = random.Random(hash((self.base_seed, self.epoch)))
        order: list[int] = []
        for _, idx in sorted(self.by_group.items()):
            drawn = []
            while len(drawn) < self.per_group:
                more = idx[:]
                rng.shuffle(more)
                drawn += more
            order += drawn[: self.per_group]
        rng.shuffle(order)
        return order


class PairedOrder(TrainOrder):
    """Each real image beside its self-blended twin, in the same batch and the same process (the
    SBI authors' batches: the blend is all that tells a pair apart). ``units`` orders the pairs
    (any TrainOrder over ``len(pairs)`` items); each run of ``world`` pairs is laid out first
    members, then second members, so that process r, which takes every ``world``-th image,
    takes pair r whole. Needs an even number of images per process and batch."""

    def __init__(self, units: TrainOrder, pairs: list[tuple[int, int]], rank=0, world=1):
        super().__init__(rank, world)
        self.units, self.pairs = units, pairs

    def epoch_order(self) -> list[int]:
        self.units.epoch, self.units.seed = self.epoch, self.seed
        ids = self.units.epoch_order()
        order: list[int] = []
        for k in range(0, len(ids), self.world):
            run = [self.pairs[u] for u in ids[k : k + self.world]]
            order += [a for a, _ in run] + [b for _, b in run]
        return order
