"""Training: the paper's schedule of up to three steps with progressive freezing.

Step k freezes the first ``freeze_stages[k]`` of the backbone's five stages (stem, stage1..4) and
trains the rest with Adam and binary cross-entropy; each step early-stops on validation loss and
keeps its best weights, which the next step starts from. Defaults: step 1 freezes nothing (the
whole network is fine-tuned, the variant the paper found best), step 2 freezes stem..stage2,
step 3 freezes stem..stage3 (only the last stage and the head train).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import DEFAULT_FACE_MARGIN, TrainConfig
from ..data.dataset import ImageDataset, make_loader
from ..data.folders import fingerprint, load_samples, write_splits
from ..data.transforms import Augment
from ..errors import FakescopeError
from ..evaluation import metrics as M
from ..model.detector import Detector
from ..model.runtime import Runtime, select_runtime
from ..runs import (
    META,
    WEIGHTS,
    ModelSpec,
    load_resume,
    new_meta,
    read_resume_state,
    save_resume,
    save_weights,
    write_meta,
)
from ..scoring.scorer import Scorer, TorchBackend
from .distributed import Ranks, spawn
from .state import EarlyStopping, LogSink, TrainState

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _limit(samples, n):
    if not n:
        return samples
    kept, seen = [], {}
    for s in samples:
        k = (s.split, s.label)
        if seen.get(k, 0) < n:
            kept.append(s)
            seen[k] = seen.get(k, 0) + 1
    return kept


def n_batches_per_epoch(n_images: int, cfg: TrainConfig, world: int) -> int:
    """Optimiser steps per epoch: each of ``world`` processes takes its share of the images in
    batches of its share of ``batch_size``."""
    per_proc = -(-n_images // world)
    n = -(-per_proc // (cfg.batch_size // world))
    return min(n, cfg.max_train_batches) if cfg.max_train_batches else n


def _scheduler(cfg: TrainConfig, opt, batches_per_epoch: int, epochs: int):
    """``constant`` is the paper's; ``cosine`` decays to zero over the step's ``epochs`` (or
    ``cfg.lr_epochs``), which helps when a CPU affords only a few epochs."""
    if cfg.lr_schedule == "constant":
        return None
    total = max(1, (cfg.lr_epochs or epochs) * batches_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )


def _weight_average(cfg: TrainConfig, model):
    """An exponential moving average of the weights (and BatchNorm buffers), or None."""
    if not cfg.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def _face_framing(cfg: TrainConfig, train_ds, n: int = 32) -> dict:
    """The face-crop margin prediction should use. Training on whole images (faces "never"),
    it is measured on training images, so crops cut from group photos look like what the
    model learnt from; training through the face stage, it is the margin that stage used."""
    if cfg.face_margin > 0 or cfg.faces != "never":
        margin = cfg.face_margin if cfg.face_margin > 0 else DEFAULT_FACE_MARGIN
        return {"mode": cfg.faces, "margin": margin, "margin_source": "configured"}
    from ..data.faces import framing_margin
    from ..data.images import load_rgb

    step = max(1, len(train_ds.samples) // n)
    picked = train_ds.samples[::step][:n]
    try:
        m = framing_margin([load_rgb(train_ds.root / s.path) for s in picked])
    except ImportError as e:  # facenet-pytorch missing: prediction without faces still works
        log.warning("face detector unavailable (%s); face margin left at the default", e)
        m = None
    if m is None:
        return {
            "mode": "never",
            "margin": DEFAULT_FACE_MARGIN,
            "margin_source": "default (no face found)",
        }
    return {
        "mode": "never",
        "margin": round(m, 3),
        "margin_source": f"median framing of {len(picked)} training images",
    }


def _prepare_fn(cfg: TrainConfig):
    if cfg.faces == "never":
        return None
    from ..data.faces import FaceCropper

    return FaceCropper(mode=cfg.faces, margin=cfg.face_margin).training_crop


def _samples(cfg: TrainConfig, resume: bool):
    """The run's samples and where their split came from, after every check that can fail
    before training starts (so a bad call leaves no half-made run folder)."""
    out = Path(cfg.out)
    if (out / META).exists() and not resume:
        raise FakescopeError(f"{out}: a finished run is already there; pick another --out")
    samples, origin = load_samples(cfg.data, seed=cfg.seed, exclude=cfg.exclude)
    samples = _limit(samples, cfg.limit_per_class)
    val_s = [s for s in samples if s.split == "val"]
    if not any(s.split == "train" for s in samples) or len({s.label for s in val_s}) < 2:
        raise FakescopeError(f"{cfg.data}: need train and val images of both classes")
    if resume and read_resume_state(out / "resume") is None:
        raise FakescopeError(f"{out}: nothing to resume (no {out / 'resume'}/state.json)")
    return samples, origin


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False) -> Path:
    """Train a detector as ``cfg`` says; returns the run folder. Under torchrun every process
    calls this and they train one model together; otherwise ``cfg.procs`` > 1 spawns that many
    local processes that do the same."""
    cfg.check()
    _samples(cfg, resume)  # fail here, before any process starts
    if Ranks.from_env().world == 1 and cfg.procs > 1:
        spawn(_process, cfg.procs, (cfg, progress, resume))
    else:
        _process(cfg, progress, resume)
    return Path(cfg.out)


def _process(cfg: TrainConfig, progress: bool, resume: bool) -> None:
    ranks = Ranks.from_env()
    if ranks.world > 1 and cfg.batch_size % ranks.world:
        raise FakescopeError(
            f"--batch-size ({cfg.batch_size}) must be a multiple of the processes ({ranks.world})"
        )
    runtime = ranks.join(select_runtime(cfg.device, precision=cfg.precision))
    try:
        _fit(cfg, progress and ranks.lead, resume, ranks, runtime)
    finally:
        ranks.leave()


@dataclass
class Epoch:
    """What one training epoch needs besides the data: the thing to call forward on (the model
    or its DDP wrapper), its optimiser, schedule, scaler and weight average."""

    net: nn.Module
    opt: torch.optim.Optimizer
    sched: object | None
    scaler: torch.amp.GradScaler
    runtime: Runtime
    ema: object | None
    smooth: float
    world: int
    n_batches: int

    def run(self, loader, desc: str, progress: bool) -> tuple[float, int]:
        """One pass over this process's loader; returns (summed BCE loss, images seen)."""
        self.net.train()
        bce = nn.BCEWithLogitsLoss()
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(total=self.n_batches, desc=desc, disable=not progress, unit="batch")
        for b, (x, y, _) in enumerate(loader):
            if b >= self.n_batches:
                break
            x, y = self.runtime.batch(x), y.float().to(self.runtime.device)
            with self.runtime.autocast():
                logit = self.net(x).float().squeeze(1)
            loss = bce(logit, y * (1 - self.smooth) + self.smooth / 2)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(getattr(self.net, "module", self.net))
            if self.sched is not None:
                self.sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            ips = self.world * seen / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{ips:.1f}")
            bar.update(1)
        bar.close()
        return loss_sum, seen


def _fit(cfg: TrainConfig, progress, resume, ranks: Ranks, runtime: Runtime) -> None:
    """The training loop of one process; the lead process writes the run folder."""
    out, lead = Path(cfg.out), ranks.lead
    samples, origin = _samples(cfg, resume)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        write_splits(samples, out / "split.csv")
    seed_everything(cfg.seed)
    train_s = [s for s in samples if s.split == "train"]
    val_s = [s for s in samples if s.split == "val"]
    spec = ModelSpec.of_config(cfg)

    model = Detector(cfg.backbone, cfg.head, cfg.input_size, cfg.weights)
    model.freeze_bn = cfg.freeze_bn
    model = runtime.prepare(model)
    prepare = _prepare_fn(cfg)
    aug = Augment(
        cfg.hflip,
        cfg.jpeg_prob,
        tuple(cfg.jpeg_quality),
        cfg.blur_prob,
        cfg.resize_prob,
        cfg.crop_scale,
    )
    train_ds = ImageDataset(cfg.data, train_s, cfg.input_size, aug, cfg.seed, prepare, fit=cfg.fit)
    # each process scores its share of the validation images; the scores are then pooled
    val_ds = ImageDataset(
        cfg.data,
        val_s[ranks.rank :: ranks.world],
        cfg.input_size,
        None,
        cfg.seed,
        prepare,
        fit=cfg.fit,
    )
    val_loader = make_loader(val_ds, cfg.batch_size, workers=cfg.workers)
    # fp16 gradients underflow without loss scaling; a disabled scaler is a no-op elsewhere
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)

    def validate(scored, desc):
        scorer = Scorer(TorchBackend(scored, runtime), spec, cfg.batch_size)
        s, y, loss = scorer.score_loader(val_loader, desc, progress)
        parts = ranks.gather((s, y, loss * len(y)))
        s = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return s, y, sum(p[2] for p in parts) / max(len(y), 1)

    resume_dir = out / "resume"
    state = TrainState(EarlyStopping(cfg.patience))
    if resume:
        state = TrainState.from_json(read_resume_state(resume_dir), cfg.patience)
        load_resume(resume_dir, model)  # optimizer state is restored in its own step below
        if lead:
            log.info("fakescope: resuming at step %d, epoch %d", state.step + 1, state.epoch + 1)
    sink = LogSink(out, cfg.tensorboard, resume) if lead else None
    if lead:
        procs = f", {ranks.world} processes" if ranks.world > 1 else ""
        log.info(
            f"fakescope: training {cfg.backbone}/{cfg.head} at {cfg.input_size}px on "
            f"{len(train_s)} train / {len(val_s)} val images ({origin}); device "
            f"{runtime.describe()}{procs}; trainable parameters in the head: "
            f"{model.head_parameters():,}"
        )
    n_batches = n_batches_per_epoch(len(train_ds), cfg, ranks.world)
    best_val = None
    for step in range(state.step, cfg.steps):
        model.freeze(cfg.freeze_stages[step])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = _scheduler(cfg, opt, n_batches, cfg.epochs_of(step))
        if resume and state.epoch > 0:
            load_resume(resume_dir, model, opt)
            for _ in range(state.epoch * n_batches * bool(sched)):
                sched.step()
        ema = _weight_average(cfg, model)  # restarts with each step, from its starting weights
        scored = model if ema is None else ema.module  # what is validated and kept
        epoch_runner = Epoch(
            ranks.wrap(model, runtime),
            opt,
            sched,
            scaler,
            runtime,
            ema,
            cfg.label_smoothing,
            ranks.world,
            n_batches,
        )
        best_state, best_val = None, None  # the best epoch's weights and validation scores
        if lead:
            resume_dir.mkdir(exist_ok=True)
        while state.epoch < cfg.epochs_of(step) and not state.stopping.stop:
            epoch = state.epoch
            train_ds.epoch = epoch + 100 * step
            seed = cfg.seed + epoch + 100 * step
            sampler = ranks.sampler(train_ds, True, seed)
            loader = make_loader(
                train_ds, cfg.batch_size // ranks.world, True, cfg.workers, seed, sampler
            )
            t0 = time.time()
            loss_sum, seen = epoch_runner.run(
                loader, f"step {step + 1} epoch {epoch + 1}", progress
            )
            loss_sum, seen = ranks.sum(loss_sum, seen)
            s, yv, val_loss = validate(scored, "validating")
            auc = M.threshold_free(yv, s)["auc"]
            acc = M.at_threshold(yv, s, 0.5)["accuracy"]
            secs = time.time() - t0
            improved = state.stopping.update(val_loss)
            if lead:
                sink.write(
                    {
                        "step": step + 1,
                        "epoch": epoch + 1,
                        "frozen_stages": cfg.freeze_stages[step],
                        "train_loss": f"{loss_sum / max(seen, 1):.5f}",
                        "val_loss": f"{val_loss:.5f}",
                        "val_auc": f"{auc:.5f}",
                        "val_acc": f"{acc:.5f}",
                        "lr": f"{opt.param_groups[0]['lr']:.3g}",
                        "images_per_s": f"{seen / secs:.2f}",
                        "seconds": f"{secs:.1f}",
                    },
                    state.global_epoch,
                )
                log.info(
                    f"  step {step + 1} epoch {epoch + 1}: train loss {loss_sum / max(seen, 1):.4f}"
                    f", val loss {val_loss:.4f}, val AUC {auc:.4f}, val acc {acc:.4f}"
                    f"{'  (best)' if improved else ''}"
                )
            if improved:
                best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
                best_val = (s, yv)
                if lead:  # for --resume after an interruption
                    save_weights(scored, resume_dir / f"best_step{step + 1}.safetensors")
            state.epoch += 1
            state.global_epoch += 1
            if lead:
                save_resume(resume_dir, model, opt, state.to_json())
        if best_state is None:  # resumed after the step's last epoch: its best is on disk
            from safetensors.torch import load_file

            best_state = load_file(str(resume_dir / f"best_step{step + 1}.safetensors"))
        model.load_state_dict(ranks.share_state(best_state))
        state.next_step(cfg.freeze_stages[step])
        if lead:
            save_resume(resume_dir, model, opt, state.to_json())
    if sink is not None:
        sink.close()
    if best_val is None:  # resumed after the last step's best epoch: score its weights again
        best_val = validate(model, "calibrating")[:2]
    if lead:
        _finish(cfg, model, best_val, train_ds, samples, origin, state, runtime, ranks)


def _finish(cfg, model, best_val, train_ds, samples, origin, state, runtime, ranks) -> None:
    """Calibrate on the validation split (the test split is never looked at here) and write
    the weights and the run's description."""
    out = Path(cfg.out)
    s, yv = best_val
    thr = M.ideal_thresholds(yv, s)
    # the paper's open question, asked on the split the threshold came from
    thr["kde_intersection"] = M.kde_analysis(yv, s).get("main_intersection")
    model.freeze(0)
    save_weights(model, out / WEIGHTS)
    source = {
        **fingerprint(cfg.data, samples),
        "root": str(Path(cfg.data).resolve()),
        "name": Path(cfg.data).resolve().name,
        "split_origin": origin,
    }
    meta = new_meta(
        cfg,
        {**thr, "n_val": int(len(yv))},
        _face_framing(cfg, train_ds),
        [source],
        steps=state.summaries,
        runtime=runtime.describe() + (f", {ranks.world} processes" if ranks.world > 1 else ""),
        model={
            "feature_shape": list(model.feature_shape),
            "head_parameters": model.head_parameters(),
            "output": "one logit; sigmoid gives P(fake)",
        },
    )
    write_meta(out, meta)
    log.info(f"fakescope: run saved to {out} (threshold {thr['youden']:.4f}, Youden's J on val)")
