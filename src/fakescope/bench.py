"""Images per second for training and inference, fast path against the plain fp32 eager baseline
measured in the same process, so the ratio holds on whatever machine runs it."""

from __future__ import annotations

import time

import torch
from torch import nn

from .model.detector import Detector, inference_model
from .model.runtime import Runtime, select_runtime


def _measure(model: nn.Module, rt: Runtime, x: torch.Tensor, iters: int, train: bool) -> float:
    model = rt.prepare(model)
    x = rt.batch(x)
    y = torch.zeros(len(x), device=rt.device)
    opt = torch.optim.Adam(model.parameters(), 1e-3) if train else None
    bce = nn.BCEWithLogitsLoss()

    def once():
        if train:
            with rt.autocast():
                loss = bce(model(x).float().squeeze(1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), rt.autocast():
                model(x)

    model.train(train)
    once()  # warm-up: oneDNN picks kernels, caches fill
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        once()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return iters * len(x) / (time.perf_counter() - t)


def run_bench(backbone="resnet50", size=299, batch=16, iters=3, device="auto") -> dict:
    modes = ("inference", "training")
    base = select_runtime(device, fast=False)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    print(
        f"fakescope bench: {backbone} at {size}px, batch {batch}, {iters} timed batches, "
        f"{torch.get_num_threads()} threads"
    )

    def rate(mode: str, rt: Runtime, fold: bool) -> float:
        model = Detector(backbone, "flatten", size, weights="none")
        if fold:
            model = inference_model(model)  # what predict and evaluate score with
        return _measure(model, rt, x, iters, train=mode == "training")

    # Every baseline first: on a CPU the fast runtime also changes how malloc keeps memory, for
    # the whole process and for good.
    baseline = {mode: rate(mode, base, False) for mode in modes}
    fast = select_runtime(device, fast=True)
    results = {}
    for mode in modes:
        r = {"baseline": baseline[mode], "fast": rate(mode, fast, mode == "inference")}
        results[mode] = {**r, "ratio": r["fast"] / r["baseline"]}
        path = fast.describe() + (", BN folded" if mode == "inference" else "")
        print(
            f"  {mode:9}: baseline fp32 eager {r['baseline']:7.2f} img/s   "
            f"{path:48} {r['fast']:7.2f} img/s   ratio {results[mode]['ratio']:.2f}x"
        )
    return results
