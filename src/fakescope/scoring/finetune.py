"""Quantisation-aware fine-tuning for int8 exports.

Post-training int8 moves a mobilenet_v2's logits by about 0.7-1.0 RMS, spread over the whole
network, and its verdicts near the threshold with them (docs/benchmarks.md, sessions 22-23).
Here NNCF puts its fake quantisers into the torch network (BatchNorm folded first, as every
runtime runs it), calibrates them on the run's training images as post-training quantisation
would, and then trains weights and quantiser ranges (one pass over the training split by
default) so that the int8 network
reproduces the fp32 network's logits on the training images (distillation from the network
itself: no labels, so the run's decision is what is kept, not refitted). The result is an
ordinary torch module that OpenVINO converts to an int8 graph.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..model.detector import inference_model

log = logging.getLogger(__name__)

# NNCF's example for fine-tuning a quantised network; on the demo 1e-4 diverged and 3e-5 over
# two passes came no closer (docs/benchmarks.md, session 23)
LR = 1e-5
# batches between comparisons with the fp32 logits on the calibration images: the closest
# network seen is kept (on the AVX2 demo 24 batches came to 0.455 RMS and a whole pass, 97,
# back to 0.533 from the calibrated 0.531; docs/benchmarks.md, session 28)
CHECK_EVERY = 16
EXTENSION_BUILD_SECONDS = 600  # how long NNCF may take to build its extension (see finetune_int8)


class _Module(nn.Module):
    """A plain module around the folded network: NNCF sends a ``torch.fx.GraphModule`` (what
    folding returns) to its experimental fx backend; this keeps it on the torch backend that
    NNCF's quantisation-aware training guide uses."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _rmse(net: nn.Module, batches: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        d = [(net(x).reshape(-1) - t).square() for x, t in zip(batches, targets, strict=True)]
    return float(torch.cat(d).mean().sqrt())


def _training(net: nn.Module) -> None:
    net.train()
    for m in net.modules():  # folded, so none are left; but never let statistics drift
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune_int8(
    model: nn.Module,
    calibration: list[torch.Tensor],
    train,
    steps: int,
    lr: float = LR,
    progress: bool = True,
    check_every: int = CHECK_EVERY,
) -> tuple[nn.Module, dict]:
    """An int8 (fake-quantised) copy of ``model`` calibrated on ``calibration`` (normalised
    batches) and fine-tuned for ``steps`` batches of ``train`` (a loader of (x, y, path), as
    many passes as that takes; a short last batch is passed over) to reproduce ``model``'s
    logits, each image or its mirror at random, the learning rate decaying from ``lr`` to 0
    on a cosine. Every ``check_every`` batches, and after the last, its logits are compared with
    fp32's on the calibration batches; the closest network seen, the calibrated one included,
    is returned in eval mode with what the fine-tuning measured: the RMS difference
    calibrated (before) and at the best fine-tuned check (after), the checks' trace, and
    which was kept."""
    # NNCF compiles its torch quantisers (a C++ extension) on first use in each environment and
    # gives up after 60 s; on 2 cores with anything else running that took longer (session 25)
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", str(EXTENSION_BUILD_SECONDS))
    import nncf

    teacher = inference_model(model)
    student = nncf.quantize(
        _Module(copy.deepcopy(teacher)), nncf.Dataset(calibration), subset_size=len(calibration)
    )
    with torch.no_grad():  # the fp32 logits of the calibration images, compared twice
        targets = [teacher(x).reshape(-1) for x in calibration]
    before = _rmse(student.eval(), calibration, targets)
    calibrated = copy.deepcopy(student.state_dict())
    best = None  # (rmse, step, state) of the closest fine-tuned check
    trace = [(0, before)]
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    # Without a decay the pass ends as noisy as it ran, and one short batch moved the demo's
    # logits from 0.436 to 0.533 RMS in its last step (docs/benchmarks.md, session 29)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    full = min(getattr(train, "batch_size", None) or 1, len(getattr(train, "dataset", ())) or 1)
    gen = torch.Generator().manual_seed(0)
    _training(student)
    bar = tqdm(total=steps, desc="int8 fine-tuning", unit="batch", disable=not progress)
    losses, step = [], 0
    while step < steps:
        for x, _, _ in train:
            if len(x) < full:
                continue
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            with torch.no_grad():
                target = teacher(x).reshape(-1)
            loss = (student(x).reshape(-1) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
            losses.append(loss.item())  # float(loss) warns of the graph it holds
            step += 1
            bar.update()
            bar.set_postfix(mse=f"{np.mean(losses[-10:]):.3f}")
            if step % check_every == 0 or step == steps:
                rmse = _rmse(student.eval(), calibration, targets)
                trace.append((step, rmse))
                if best is None or rmse < best[0]:
                    best = (rmse, step, copy.deepcopy(student.state_dict()))
                _training(student)
            if step == steps:
                break
    bar.close()
    student.eval()
    # Fine-tuning can move a weakly trained network's logits further away (a 96 px test run
    # did: 0.18 to 0.25 RMS in 48 batches); then the calibrated network is what is kept.
    after, best_step, state = best if best else (before, 0, calibrated)
    kept = after < before
    student.load_state_dict(state if kept else calibrated)
    log.info(
        "int8 logits against fp32 (RMS on the calibration images): %.3f calibrated, %.3f "
        "fine-tuned (closest after %d of %d batches); kept the %s network",
        before, after, best_step, steps, "fine-tuned" if kept else "calibrated",
    )  # fmt: skip
    return student, {
        "steps": steps,
        "lr": lr,
        "lr_schedule": "cosine to 0",
        "batch_size": getattr(train, "batch_size", None),
        "logit_rmse_before": before,
        "logit_rmse_after": after,  # at the closest fine-tuned check
        "best_step": best_step,
        "trace": trace,  # (batches, RMS) at each check, 0 the calibrated network
        "kept": "fine-tuned" if kept else "calibrated",
    }
