"""Sharpness-aware minimisation (SAM; Foret et al., ICLR 2021), the optimiser the SBI authors
train with (mapooon/SelfBlendedImages wraps SGD in it).

Each step takes its gradient not at the weights w but at the nearby worst case
w + rho * g / |g| (g: the ordinary gradient), then applies that gradient at w with the usual
optimiser. This favours flat minima, which the SAM paper ties to better generalisation. It
costs a second forward and backward pass per step.

It wraps any optimiser from outside rather than subclassing one: after the first backward pass
``ascend()`` moves the weights, after the second ``descend()`` moves them back, then the
optimiser steps. Under fp16 loss scaling both passes are scaled alike (``ascend`` uses only the
direction of g), so the scaler unscales and checks the second pass's gradient. Under
DistributedDataParallel both backward passes all-reduce, so every process ascends along the
same global gradient, as the authors' multi-GPU training does.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class SharpnessAware:
    """SAM for ``model``'s trainable weights; its BatchNorm layers are found once, here."""

    def __init__(self, model: nn.Module, rho: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rho = rho
        self._norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._moved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def ascend(self) -> None:
        """Move every weight with a gradient by rho along the normalised gradient."""
        grads = [(p, p.grad) for p in self.params if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for _, g in grads]))
        if not torch.isfinite(norm):  # an fp16 overflow: the loss scaler skips this step anyway
            return
        scale = self.rho / (norm + 1e-12)
        for p, g in grads:
            e = (g.float() * scale).to(p.dtype)
            p.add_(e)
            self._moved.append((p, e))

    @torch.no_grad()
    def descend(self) -> None:
        """Put the weights back where ``ascend`` found them."""
        for p, e in self._moved:
            p.sub_(e)
        self._moved = []

    @contextlib.contextmanager
    def batchnorm_stats_kept(self):
        """The second (perturbed) forward pass sees the same batch again: it must not count
        twice in BatchNorm's running statistics. Momentum 0 leaves them as they are."""
        saved = [m.momentum for m in self._norms]
        for m in self._norms:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, mom in zip(self._norms, saved, strict=True):
                m.momentum = mom
