"""Training: the paper's schedule of up to three steps with progressive freezing.

Step k freezes the first ``freeze_stages[k]`` of the backbone's five stages (stem, stage1..4) and
trains the rest with Adam and binary cross-entropy; each step early-stops on validation loss and
keeps its best weights, which the next step starts from. Defaults: step 1 freezes nothing (the
whole network is fine-tuned, the variant the paper found best), step 2 freezes stem..stage2,
step 3 freezes stem..stage3 (only the last stage and the head train).
"""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from . import metrics as M
from .config import TrainConfig
from .device import select_runtime
from .errors import FakescopeError
from .model import Detector, fake_logits, inference_model
from .runs import (
    META,
    WEIGHTS,
    load_resume,
    read_resume_state,
    save_resume,
    save_weights,
    versions,
    write_json,
)

LOG_FIELDS = [
    "step",
    "epoch",
    "frozen_stages",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_acc",
    "lr",
    "images_per_s",
    "seconds",
]


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


def make_loader(dataset, batch_size, shuffle, workers, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
    )


@torch.no_grad()
def score_loader(model, loader, runtime, desc="scoring", progress=True, tta=False):
    """Probabilities, labels and mean BCE loss of a model over a loader (``tta``: average the
    logits of each image and its mirror image). ``model`` itself is left untouched: a copy with
    BatchNorm folded into the convolutions does the scoring."""
    model = runtime.prepare(inference_model(model))
    scores, labels, loss_sum = [], [], 0.0
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    for x, y, _ in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        with runtime.autocast():
            logit = fake_logits(model, runtime.batch(x), tta).float().squeeze(1)
        y = y.float().to(logit.device)
        loss_sum += float(bce(logit, y))
        scores.append(torch.sigmoid(logit).cpu())
        labels.append(y.cpu())
    s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy().astype(int)
    return s, y, loss_sum / max(len(y), 1)


def _train_epoch(
    model, loader, opt, sched, scaler, runtime, n_batches, desc, progress, ema=None, smooth=0.0
):
    """One pass over the training loader; returns (mean BCE loss, images seen)."""
    model.train()
    bce = nn.BCEWithLogitsLoss()
    t0, seen, loss_sum = time.time(), 0, 0.0
    bar = tqdm(total=n_batches, desc=desc, disable=not progress, unit="batch")
    for b, (x, y, _) in enumerate(loader):
        if b >= n_batches:
            break
        x, y = runtime.batch(x), y.float().to(runtime.device)
        with runtime.autocast():
            logit = model(x).float().squeeze(1)
        loss = bce(logit, y * (1 - smooth) + smooth / 2)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        if sched is not None:
            sched.step()
        seen += len(y)
        loss_sum += loss.item() * len(y)
        ips = seen / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{ips:.1f}")
        bar.update(1)
    bar.close()
    return loss_sum / max(seen, 1), seen


def n_batches_per_epoch(n_images: int, cfg: TrainConfig) -> int:
    n = -(-n_images // cfg.batch_size)
    return min(n, cfg.max_train_batches) if cfg.max_train_batches else n


def _scheduler(cfg: TrainConfig, opt, batches_per_epoch: int, epochs: int):
    """``constant`` is the paper's; ``cosine`` decays to zero over the step's ``epochs``, which
    helps when a CPU affords only a few epochs. Resumed steps restart the schedule at the
    resumed epoch (the caller fast-forwards it)."""
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule != "cosine":
        raise FakescopeError("--lr-schedule must be constant or cosine")
    total = max(1, epochs * batches_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )


def _weight_average(cfg: TrainConfig, model):
    """An exponential moving average of the weights (and BatchNorm buffers), or None."""
    if not cfg.ema:
        return None
    if not 0 < cfg.ema < 1:
        raise FakescopeError("--ema must be between 0 and 1 (e.g. 0.99), or 0 for off")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def _face_framing(cfg: TrainConfig, train_ds, n: int = 32) -> dict:
    """The face-crop margin prediction should use. Training on whole images (faces "never"),
    it is measured on training images, so crops cut from group photos look like what the
    model learnt from; training through the face stage, it is the margin that stage used."""
    if cfg.face_margin > 0 or cfg.faces != "never":
        margin = cfg.face_margin if cfg.face_margin > 0 else 1.3
        return {"mode": cfg.faces, "margin": margin, "margin_source": "configured"}
    from .faces import framing_margin
    from .images import load_rgb

    step = max(1, len(train_ds.samples) // n)
    picked = train_ds.samples[::step][:n]
    try:
        m = framing_margin([load_rgb(train_ds.root / s.path) for s in picked])
    except ImportError as e:  # facenet-pytorch missing: prediction without faces still works
        print(f"fakescope: face detector unavailable ({e}); face margin left at 1.3")
        m = None
    if m is None:
        return {"mode": "never", "margin": 1.3, "margin_source": "default (no face found)"}
    return {
        "mode": "never",
        "margin": round(m, 3),
        "margin_source": f"median framing of {len(picked)} training images",
    }


def _prepare_fn(cfg: TrainConfig):
    if cfg.faces == "never":
        return None
    from .faces import FaceCropper

    return FaceCropper(mode=cfg.faces, margin=cfg.face_margin).training_crop


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False) -> Path:
    """Train a detector as ``cfg`` says; returns the run folder."""
    if not 1 <= cfg.steps <= 3:
        raise FakescopeError("--steps must be 1, 2 or 3")
    if len(cfg.freeze_stages) < cfg.steps:
        raise FakescopeError(f"--freeze-stages needs one value per step ({cfg.steps})")
    if not isinstance(cfg.epochs, int) and len(cfg.epochs) < cfg.steps:
        raise FakescopeError(f"--epochs needs one number, or one per step ({cfg.steps})")
    if not 0 <= cfg.label_smoothing < 1:
        raise FakescopeError("--label-smoothing must be in [0, 1), e.g. 0.1")
    out = Path(cfg.out)
    if (out / META).exists() and not resume:
        raise FakescopeError(f"{out}: a finished run is already there; pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    runtime = select_runtime(cfg.device)
    samples, origin = D.load_samples(cfg.data, seed=cfg.seed, exclude=cfg.exclude)
    samples = _limit(samples, cfg.limit_per_class)
    D.write_splits(samples, out / "split.csv")
    train_s = [s for s in samples if s.split == "train"]
    val_s = [s for s in samples if s.split == "val"]
    if not train_s or not val_s or len({s.label for s in val_s}) < 2:
        raise FakescopeError(f"{cfg.data}: need train and val images of both classes")

    model = Detector(cfg.backbone, cfg.head, cfg.input_size, cfg.weights)
    model.freeze_bn = cfg.freeze_bn
    model = runtime.prepare(model)
    prepare = _prepare_fn(cfg)
    aug = D.Augment(
        cfg.hflip,
        cfg.jpeg_prob,
        tuple(cfg.jpeg_quality),
        cfg.blur_prob,
        cfg.resize_prob,
        cfg.crop_scale,
    )
    if cfg.fit not in D.FITS:
        raise FakescopeError(f"--fit must be one of {', '.join(D.FITS)}")
    train_ds = D.ImageDataset(
        cfg.data, train_s, cfg.input_size, aug, cfg.seed, prepare, fit=cfg.fit
    )
    val_ds = D.ImageDataset(cfg.data, val_s, cfg.input_size, None, cfg.seed, prepare, fit=cfg.fit)
    val_loader = make_loader(val_ds, cfg.batch_size, False, cfg.workers)
    # fp16 gradients underflow without loss scaling; a disabled scaler is a no-op elsewhere
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)

    tb = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))
    log_path = out / "log.csv"
    resume_dir = out / "resume"
    state = {
        "step": 0,
        "epoch": 0,
        "best_loss": float("inf"),
        "bad_epochs": 0,
        "global": 0,
        "summaries": [],
    }
    if resume:
        saved = read_resume_state(resume_dir)
        if saved is None:
            raise FakescopeError(f"{out}: nothing to resume (no {resume_dir}/state.json)")
        state = saved
        load_resume(resume_dir, model)  # optimizer state is restored in its own step below
        print(f"fakescope: resuming at step {state['step'] + 1}, epoch {state['epoch'] + 1}")
    elif log_path.exists():
        log_path.unlink()
    if not log_path.exists():
        with open(log_path, "w", newline="") as fh:
            csv.writer(fh).writerow(LOG_FIELDS)

    print(
        f"fakescope: training {cfg.backbone}/{cfg.head} at {cfg.input_size}px on "
        f"{len(train_s)} train / {len(val_s)} val images ({origin}); device {runtime.describe()}; "
        f"trainable parameters in the head: {model.head_parameters():,}"
    )
    best_val = None
    for step in range(state["step"], cfg.steps):
        model.freeze(cfg.freeze_stages[step])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = _scheduler(cfg, opt, n_batches_per_epoch(len(train_ds), cfg), cfg.epochs_of(step))
        if resume and state["epoch"] > 0:
            load_resume(resume_dir, model, opt)
            for _ in range(state["epoch"] * n_batches_per_epoch(len(train_ds), cfg) * bool(sched)):
                sched.step()
        ema = _weight_average(cfg, model)  # restarts with each step, from its starting weights
        scored = model if ema is None else ema.module  # what is validated and kept
        best_file = resume_dir / f"best_step{step + 1}.safetensors"
        best_val = None  # the best epoch's validation scores, reused for calibration
        resume_dir.mkdir(exist_ok=True)
        while state["epoch"] < cfg.epochs_of(step) and state["bad_epochs"] < cfg.patience:
            epoch = state["epoch"]
            train_ds.epoch = epoch + 100 * step
            loader = make_loader(
                train_ds, cfg.batch_size, True, cfg.workers, seed=cfg.seed + epoch + 100 * step
            )
            t0 = time.time()
            train_loss, seen = _train_epoch(
                model,
                loader,
                opt,
                sched,
                scaler,
                runtime,
                n_batches_per_epoch(len(train_ds), cfg),
                f"step {step + 1} epoch {epoch + 1}",
                progress,
                ema,
                cfg.label_smoothing,
            )
            s, yv, val_loss = score_loader(
                scored, val_loader, runtime, "validating", progress, cfg.tta
            )
            free = M.threshold_free(yv, s)
            acc = M.at_threshold(yv, s, 0.5)["accuracy"]
            secs = time.time() - t0
            row = [
                step + 1,
                epoch + 1,
                cfg.freeze_stages[step],
                f"{train_loss:.5f}",
                f"{val_loss:.5f}",
                f"{free['auc']:.5f}",
                f"{acc:.5f}",
                f"{opt.param_groups[0]['lr']:.3g}",
                f"{seen / secs:.2f}",
                f"{secs:.1f}",
            ]
            with open(log_path, "a", newline="") as fh:
                csv.writer(fh).writerow(row)
            if tb is not None:
                g = state["global"]
                tb.add_scalar("loss/train", train_loss, g)
                tb.add_scalar("loss/val", val_loss, g)
                tb.add_scalar("val/auc", free["auc"], g)
                tb.add_scalar("val/accuracy", acc, g)
            improved = val_loss < state["best_loss"]
            print(
                f"  step {step + 1} epoch {epoch + 1}: train loss {train_loss:.4f}, val loss "
                f"{val_loss:.4f}, val AUC {free['auc']:.4f}, val acc {acc:.4f}"
                f"{'  (best)' if improved else ''}"
            )
            if improved:
                state["best_loss"], state["bad_epochs"] = val_loss, 0
                save_weights(scored, best_file)
                best_val = (s, yv)
            else:
                state["bad_epochs"] += 1
            state["epoch"] += 1
            state["global"] += 1
            save_resume(resume_dir, model, opt, dict(state))
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_file)))
        state["summaries"].append(
            {
                "step": step + 1,
                "frozen_stages": cfg.freeze_stages[step],
                "epochs": state["epoch"],
                "best_val_loss": state["best_loss"],
            }
        )
        state.update(step=step + 1, epoch=0, best_loss=float("inf"), bad_epochs=0)
        save_resume(resume_dir, model, opt, dict(state))
    if tb is not None:
        tb.close()

    faces_meta = _face_framing(cfg, train_ds)
    # Calibrate on the validation split only; the test split is never looked at here.
    if best_val is None:  # resumed after the last step's best epoch: score its weights again
        s, yv, _ = score_loader(model, val_loader, runtime, "calibrating", progress, cfg.tta)
    else:
        s, yv = best_val
    thr = M.ideal_thresholds(yv, s)
    # the paper's open question, asked on the split the threshold came from
    thr["kde_intersection"] = M.kde_analysis(yv, s).get("main_intersection")
    model.freeze(0)
    save_weights(model, out / WEIGHTS)
    meta = {
        "format": 1,
        "model": {
            "backbone": cfg.backbone,
            "head": cfg.head,
            "input_size": cfg.input_size,
            "fit": cfg.fit,
            "mean": list(D.IMAGENET_MEAN),
            "std": list(D.IMAGENET_STD),
            "feature_shape": list(model.feature_shape),
            "head_parameters": model.head_parameters(),
            "output": "one logit; sigmoid gives P(fake)",
            "tta": "hflip" if cfg.tta else "none",
        },
        "threshold": {
            "value": thr["youden"],
            "criterion": "youden",
            **thr,
            "computed_on": "val",
            "n_val": int(len(yv)),
        },
        "faces": faces_meta,
        "train": cfg.to_dict(),
        "steps": state["summaries"],
        "data": {**D.fingerprint(cfg.data, samples), "split_origin": origin},
        "runtime": runtime.describe(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / META, meta)
    print(f"fakescope: run saved to {out} (threshold {thr['youden']:.4f}, Youden's J on val)")
    return out
