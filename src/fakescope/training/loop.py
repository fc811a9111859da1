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
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.dataset import ImageDataset, make_loader
from ..data.order import BalancedOrder, PairedOrder, ShuffledOrder
from ..data.shards import is_shards
from ..data.sources import SBI_SOURCE, load_sources, make_split, write_split_file
from ..data.transforms import Augment, normalise
from ..errors import FakescopeError
from ..evaluation import metrics as M
from ..faults import crash_point
from ..model.detector import Detector
from ..model.runtime import Runtime, select_runtime
from ..runs import (
    META,
    ModelSpec,
    load_resume,
    read_resume_state,
    save_resume,
    save_weights,
)
from ..scoring.scorer import Scorer, TorchBackend
from .distributed import Ranks, spawn
from .finish import finish_run
from .sam import SharpnessAware
from .state import EarlyStopping, LogSink, TimeBudget, TrainState

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss() -> str:
    """Peak resident memory of this process and of its largest child (a loader worker, alive
    or finished), in MB: flat from epoch to epoch when the data streams."""
    import multiprocessing
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]
    for child in multiprocessing.active_children():  # live workers' high-water marks (Linux)
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            kids += [int(line.split()[1]) / 1024 for line in status.splitlines()
                     if line.startswith("VmHWM:")]  # fmt: skip
        except (OSError, ValueError, IndexError):
            pass
    return f"{own:.0f}" + (f" (workers {max(kids):.0f})" if max(kids) else "")


def n_batches_per_epoch(n_images: int, cfg: TrainConfig, world: int) -> int:
    """Optimiser steps per epoch: each of ``world`` processes takes its share of the images in
    batches of its share of ``batch_size``."""
    per_proc = -(-n_images // world)
    n = -(-per_proc // (cfg.batch_size // world))
    return min(n, cfg.max_train_batches) if cfg.max_train_batches else n


def _scheduler(cfg: TrainConfig, opt, batches_per_epoch: int, epochs: int, budget=None):
    """``constant`` is the paper's; ``cosine`` decays to zero over the step's ``epochs`` (or
    ``cfg.lr_epochs``), which helps when a CPU affords only a few epochs. Under a time budget
    the cosine's length is the budget's plan, read at every step."""
    if cfg.lr_schedule == "constant":
        return None
    fixed = max(1, (cfg.lr_epochs or epochs) * batches_per_epoch)

    def factor(i):
        total = budget.lr_steps if budget is not None else fixed
        return 0.5 * (1 + math.cos(math.pi * min(i, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _weight_average(cfg: TrainConfig, model):
    """An exponential moving average of the weights (and BatchNorm buffers), or None."""
    if not cfg.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def _prepare_fn(cfg: TrainConfig):
    if cfg.faces == "never":
        return None
    from ..data.faces import FaceCropper

    return FaceCropper(mode=cfg.faces, margin=cfg.face_margin).training_crop


def _sources(cfg: TrainConfig, resume: bool):
    """The run's data sources, after every check that can fail before training starts (so a
    bad call leaves no half-made run folder)."""
    out = Path(cfg.out)
    if (out / META).exists() and not resume:
        raise FakescopeError(f"{out}: a finished run is already there; pick another --out")
    if any(is_shards(d) for d in cfg.data):
        sources = [_shard_source(cfg)]
        if resume and not out.is_dir():
            raise FakescopeError(f"{out}: nothing to resume (no such run folder)")
        return sources
    sources = load_sources(cfg.data, cfg.seed, cfg.exclude, cfg.limit_per_class, cfg.train_fraction,
                           cfg.reals_from)  # fmt: skip
    for src in sources:
        for split in ("train", "val"):
            have = {s.label for s in src.samples if s.split == split}
            need = {0} if (cfg.real_only or src.real_only) else {0, 1}
            if not need <= have:
                lack = [("real", "fake")[k] for k in sorted(need - have)]
                absent = [d for d in lack if not (src.root / d).is_dir()]
                why = f" (there is no {src.root / absent[0]} folder)" if absent else ""
                raise FakescopeError(
                    f"{src.root}: no {' and '.join(lack)} images in the {split} split{why}"
                )
    if resume and not out.is_dir():
        raise FakescopeError(f"{out}: nothing to resume (no such run folder)")
    return sources


def _shard_source(cfg: TrainConfig):
    """The run's one source when --data names shards, with what streaming cannot do refused."""
    from ..data.shards import ShardSource

    refused = [
        (len(cfg.data) > 1, "one --data at a time; pack the folders into one set of shards"),
        (bool(cfg.reals_from), "no --reals-from"),
        (cfg.sbi > 0, "no --sbi (self-blending reads landmarks cached per file): use the folder"),
        (cfg.source_heads, "no --source-heads"),
        (bool(cfg.exclude), "no --exclude: pack the folder without that generator"),
        (cfg.limit_per_class > 0 or cfg.train_fraction < 1,
         "no --limit-per-class or --train-fraction: pack the subset instead"),
    ]  # fmt: skip
    for bad, what in refused:
        if bad:
            raise FakescopeError(f"--data {cfg.data[0]}: training on shards takes {what}")
    src = ShardSource(cfg.data[0])
    for split in ("train", "val"):
        lack = [("real", "fake")[k] for k in sorted({0, 1} - src.labels(split))]
        if lack:
            what = " and ".join(lack)
            raise FakescopeError(f"{src.root}: no {what} images in the {split} shards")
    return src


def _check_writable(out: Path) -> None:
    """--out can be made and written to: found now, not after the first epoch."""
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        # one probe per process: under torchrun every process checks at once
        probe = out / f".fakescope-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as e:
        for p in made:  # leave nothing behind
            try:
                p.rmdir()
            except OSError:
                pass
        raise FakescopeError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False) -> Path:
    """Train a detector as ``cfg`` says; returns the run folder. Under torchrun every process
    calls this and they train one model together; otherwise ``cfg.procs`` > 1 spawns that many
    local processes that do the same."""
    cfg.check()
    if resume and Path(cfg.out).is_dir() and read_resume_state(Path(cfg.out) / "resume") is None:
        # killed before its first epoch was saved: nothing is lost by starting again
        log.info("fakescope: %s has no saved epoch yet; starting from the beginning", cfg.out)
        resume = False
    _sources(cfg, resume)  # fail here, before any process starts
    _check_writable(Path(cfg.out))
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


def source_heads(cfg: TrainConfig, tr) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """With ``cfg.source_heads``: the heads' names (the training split's sources of fakes) and,
    per training image, the head its fake teaches (-1 for a real image, which teaches all)."""
    if not cfg.source_heads:
        return (), None
    kinds = tr.fake_sources()
    names = tuple(sorted({k for k in kinds if k is not None}))
    index = {n: i for i, n in enumerate(names)}
    return names, torch.tensor([index.get(k, -1) for k in kinds], dtype=torch.long)


def source_head_loss(logits: torch.Tensor, head: torch.Tensor, smooth: float = 0.0):
    """Binary cross-entropy of per-source heads, (N, K) logits: a fake (``head`` >= 0) is a
    positive for its own head only and says nothing to the others, so a cue that marks one
    source's fakes is never punished by another's; a real image (-1) is a negative for every
    head. Each image weighs the same whatever its number of terms."""
    fake = head >= 0
    mask = torch.ones_like(logits)
    mask[fake] = 0
    target = torch.zeros_like(logits)
    rows = fake.nonzero().squeeze(1)
    mask[rows, head[rows]] = 1
    target[rows, head[rows]] = 1
    per = F.binary_cross_entropy_with_logits(
        logits, target * (1 - smooth) + smooth / 2, reduction="none"
    )
    return ((per * mask).sum(1) / mask.sum(1)).mean()


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
    # called once with the seconds per batch, measured over batches 3-12 of the first epoch
    probe: object | None = None
    # per training image, the per-source head its fake teaches (source_heads); None: one head
    head_of: torch.Tensor | None = None
    # sharpness-aware minimisation (--sam): a second pass per step at perturbed weights
    sam: SharpnessAware | None = None
    # (mean, std) where the loader sends uint8 pixels, normalised on the device
    norm: tuple | None = None

    def _loss(self, x, y, head) -> torch.Tensor:
        with self.runtime.autocast():
            logit = self.net(x).float()
        if head is None:
            return F.binary_cross_entropy_with_logits(
                logit.squeeze(1), y * (1 - self.smooth) + self.smooth / 2
            )
        return source_head_loss(logit, head, self.smooth)

    def run(self, loader, desc: str, progress: bool, start: int = 0, carried=(0.0, 0),
            after_step=None) -> tuple[float, int]:  # fmt: skip
        """One pass over this process's loader, whose first batch is the epoch's ``start``-th;
        ``carried``: (summed loss, images) of the batches before it. ``after_step(b, loss_sum,
        seen)`` is called after each optimiser step, ``b`` batches into the epoch. Returns
        (summed BCE loss, images seen)."""
        self.net.train()
        t0, (loss_sum, seen), fresh = time.time(), carried, 0
        bar = tqdm(total=self.n_batches, initial=start, desc=desc, disable=not progress,
                   unit="batch")  # fmt: skip
        for b, (x, y, idx) in enumerate(loader, start):
            if b >= self.n_batches:
                break
            x, y = self.runtime.batch(x), y.float().to(self.runtime.device)
            if self.norm is not None:
                x = normalise(x, *self.norm)
            head = None if self.head_of is None else self.head_of[idx].to(self.runtime.device)
            loss = self._loss(x, y, head)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.sam is not None:  # the gradient at the worst nearby weights, applied here
                self.sam.ascend()
                self.opt.zero_grad(set_to_none=True)
                with self.sam.batchnorm_stats_kept():
                    self.scaler.scale(self._loss(x, y, head)).backward()
                self.sam.descend()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                # the model itself, under torch.compile's and DDP's wrappers
                inner = getattr(self.net, "_orig_mod", self.net)
                self.ema.update_parameters(getattr(inner, "module", inner))
            if self.sched is not None:
                self.sched.step()
            crash_point("batch")
            seen += len(y)
            fresh += len(y)
            loss_sum += loss.item() * len(y)
            if after_step is not None:
                after_step(b + 1, loss_sum, seen)
            if self.probe is not None and b in (2, 12):  # two warm-up batches are not timed
                if b == 2:
                    t_probe = time.time()
                else:
                    self.probe((time.time() - t_probe) / 10)
                    self.probe = None
            ips = self.world * fresh / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{ips:.1f}")
            bar.update(1)
        bar.close()
        return loss_sum, seen


def _datasets(cfg: TrainConfig, sources, ranks: Ranks, progress: bool):
    """Training and validation sets (this process's share of validation), and the sampler
    that balances several sources."""
    blender = None
    if cfg.sbi:
        from ..data.sources import SelfBlender

        blender = SelfBlender(sources, cfg.landmarks, progress, cfg.sbi_masks)
    aug = Augment.of(cfg)
    prepare = _prepare_fn(cfg)
    if getattr(sources[0], "shards", None) is not None:
        return _streams(cfg, sources[0], ranks, aug, prepare)
    tr = make_split(sources, "train", cfg.sbi, cfg.real_only, cfg.seed)
    # validation judges the fakes the run will meet: the data's own, or (real-only) pseudo-fakes
    va = make_split(sources, "val", cfg.sbi if cfg.real_only else 0, cfg.real_only, cfg.seed + 1)
    mine = slice(ranks.rank, None, ranks.world)  # each process scores its share, then pooled
    common = dict(size=cfg.input_size, seed=cfg.seed, prepare=prepare, fit=cfg.fit)
    train_ds = ImageDataset(tr.roots, tr.samples, augment=aug, blend=tr.blend, blender=blender,
                            **common)  # fmt: skip
    val_ds = ImageDataset(va.roots[mine], va.samples[mine], blend=va.blend[mine],
                          blender=blender, **common)  # fmt: skip
    if cfg.sbi_pairs:
        order = _paired(cfg, tr, ranks)
    else:
        order = _shuffled([str(r) for r in tr.roots], cfg.seed, ranks.rank, ranks.world)
    return train_ds, val_ds, va.source[mine], order, tr, blender


def _shuffled(sources: list[str], seed: int, rank: int = 0, world: int = 1):
    """The order of items from ``sources`` (one name per item): balanced when there are
    several sources, else a plain shuffle."""
    if len(set(sources)) > 1:
        return BalancedOrder(sources, seed, rank, world)
    return ShuffledOrder(len(sources), rank, world)


def _paired(cfg: TrainConfig, tr, ranks: Ranks) -> PairedOrder:
    """--sbi-pairs: the pairs, ordered as single images are, each kept whole."""
    if (cfg.batch_size // ranks.world) % 2:
        raise FakescopeError(
            f"--sbi-pairs: {cfg.batch_size // ranks.world} images per process and batch; "
            "pairs need an even number (--batch-size)"
        )
    pairs = tr.pairs()
    units = _shuffled([str(tr.roots[a]) for a, _ in pairs], cfg.seed)
    return PairedOrder(units, pairs, ranks.rank, ranks.world)


def _streams(cfg: TrainConfig, src, ranks: Ranks, aug, prepare):
    """``_datasets`` for shards: the training stream is its own order (``data.shards``)."""
    from ..data.shards import ShardStream

    common = dict(size=cfg.input_size, seed=cfg.seed, prepare=prepare, fit=cfg.fit,
                  rank=ranks.rank, world=ranks.world)  # fmt: skip
    train_ds = ShardStream(src.shards, "train", cfg.batch_size, augment=aug, **common)
    val_ds = ShardStream(src.shards, "val", cfg.batch_size, train=False, **common)
    return train_ds, val_ds, [src.name] * len(val_ds), train_ds, train_ds, None


def _fit(cfg: TrainConfig, progress, resume, ranks: Ranks, runtime: Runtime) -> None:
    """The training loop of one process; the lead process writes the run folder."""
    started = time.time()
    out, lead = Path(cfg.out), ranks.lead
    sources = _sources(cfg, resume)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        write_split_file(sources, out / "split.csv")
    train_ds, val_ds, val_names, order, tr, blender = _datasets(cfg, sources, ranks, progress)
    train_ds.pixels = runtime.loader_sends_pixels
    heads, head_of = source_heads(cfg, tr)
    seed_everything(cfg.seed)  # the head's initial weights depend on nothing above
    spec = ModelSpec.of_config(cfg, heads)
    model = Detector(cfg.backbone, cfg.head, cfg.input_size, cfg.weights, heads)
    model.freeze_bn = cfg.freeze_bn
    model = runtime.prepare(model)
    pin = runtime.device.type == "cuda"
    val_loader = make_loader(val_ds, cfg.batch_size, workers=cfg.workers, pin=pin)
    # fp16 gradients underflow without loss scaling; a disabled scaler is a no-op elsewhere
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)

    def validate(scored, desc):
        scorer = Scorer(TorchBackend(scored, runtime), spec, cfg.batch_size)
        s, y, loss = scorer.score_loader(val_loader, desc, progress)
        crash_point("validate")
        parts = ranks.gather((s, y, loss * len(y), val_names))
        s = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        names = [n for p in parts for n in p[3]]
        return s, y, sum(p[2] for p in parts) / max(len(y), 1), names

    resume_dir = out / "resume"
    state = TrainState(EarlyStopping(cfg.patience))
    if resume:
        state = TrainState.from_json(read_resume_state(resume_dir), cfg.patience)
        load_resume(resume_dir, model)  # optimizer state is restored in its own step below
        if lead:
            log.info("fakescope: resuming at step %d, epoch %d", state.step + 1, state.epoch + 1)
    sink = LogSink(out, cfg.tensorboard, resume, state.global_epoch) if lead else None
    if lead:
        procs = f", {ranks.world} processes" if ranks.world > 1 else ""
        log.info(
            f"fakescope: training {cfg.backbone}/{cfg.head} at {cfg.input_size}px on "
            f"{len(train_ds)} train / {len(val_ds) * ranks.world} val images "
            f"({', '.join(f'{k} {v}' for k, v in tr.counts().items())}); device "
            f"{runtime.describe()}{procs}; trainable parameters in the head: "
            f"{model.head_parameters():,}"
        )
    n_images = len(order) * ranks.world
    n_batches = n_batches_per_epoch(n_images, cfg, ranks.world)
    budget = None
    if cfg.time_budget:
        stretch = cfg.lr_epochs / cfg.epochs_of(0) if cfg.lr_epochs else 1.0
        budget = TimeBudget(cfg.time_budget, started, stretch, n_batches)
    best_val = None
    for step in range(state.step, cfg.steps):
        model.freeze(cfg.freeze_stages[step])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = _scheduler(cfg, opt, n_batches, cfg.epochs_of(step), budget)
        if resume and (state.epoch > 0 or state.batch > 0):
            load_resume(resume_dir, model, opt)
            with warnings.catch_warnings():
                # fast-forwarding the schedule to where it stopped is not the misordered call
                # torch warns of (every resumed run printed it)
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                for _ in range((state.epoch * n_batches + state.batch) * bool(sched)):
                    sched.step()
        ema = _weight_average(cfg, model)  # restarts with each step, from its starting weights
        scored = model if ema is None else ema.module  # what is validated and kept
        net = ranks.wrap(model, runtime)  # what forward is called on
        epoch_runner = Epoch(
            torch.compile(net) if cfg.compile else net,
            opt,
            sched,
            scaler,
            runtime,
            ema,
            cfg.label_smoothing,
            ranks.world,
            n_batches,
            head_of=head_of,
            sam=SharpnessAware(model, cfg.sam) if cfg.sam else None,
            norm=(train_ds.mean, train_ds.std) if train_ds.pixels else None,
        )
        best_state, best_val = None, None  # the best epoch's weights and validation scores

        if lead:
            resume_dir.mkdir(exist_ok=True)
        if budget is not None and state.epoch == 0:
            # a first plan from the first batches: validation costs about a third of a
            # training pass per image (twice that with TTA)
            val_share = len(val_ds) * ranks.world / max(n_images, 1) / 3 * (2 if cfg.tta else 1)
            # every process reaches batch 12 at the same step: they plan alike from the slowest
            epoch_runner.probe = lambda spb, k=1 + val_share: budget.plan(
                max(ranks.gather(spb)) * n_batches * k, 0
            )
        while not state.stopping.stop and state.epoch < (
            budget.epochs if budget is not None else cfg.epochs_of(step)
        ):
            epoch = state.epoch
            train_ds.epoch = epoch + 100 * step
            seed = cfg.seed + epoch + 100 * step
            start, resumed_at = state.batch, ""
            if start:  # resumed inside this epoch: the order goes on from the next batch
                resumed_at = f"batch {start + 1} ({state.world} -> {ranks.world} processes)"
                if lead:
                    log.info(f"fakescope: epoch {epoch + 1} resumes at {resumed_at}")
            order.set_epoch(epoch + 100 * step, seed, start, cfg.batch_size)
            streamed = order is train_ds  # shards: the stream orders itself
            loader = make_loader(
                train_ds, cfg.batch_size // ranks.world, not streamed, cfg.workers, seed,
                None if streamed else order, pin,
            )  # fmt: skip
            # the lead carries the sums of the batches trained before the interruption
            carried = tuple(state.partial) if lead and start else (0.0, 0)

            def checkpoint(b, loss_sum, seen, opt=opt):
                """Every --checkpoint-every steps inside an epoch: the resume state, atomically."""
                if not cfg.checkpoint_every or b % cfg.checkpoint_every or b >= n_batches:
                    return
                state.batch, state.partial, state.world = b, ranks.sum(loss_sum, seen), ranks.world
                if lead:
                    save_resume(resume_dir, model, opt, state.to_json())
                crash_point("checkpoint")

            t0 = time.time()
            loss_sum, seen = epoch_runner.run(
                loader, f"step {step + 1} epoch {epoch + 1}", progress, start, carried, checkpoint
            )
            loss_sum, seen = ranks.sum(loss_sum, seen)
            state.batch, state.partial = 0, (0.0, 0)
            s, yv, val_loss, names = validate(scored, "validating")
            auc = M.threshold_free(yv, s)["auc"]
            by_source = M.per_source_auc(s, yv, names, SBI_SOURCE) if len(set(names)) > 1 else {}
            acc = M.at_threshold(yv, s, 0.5)["accuracy"]
            secs = time.time() - t0
            if budget is not None and epoch == 0:
                # every process plans alike from the slowest one's epoch
                budget.plan(max(ranks.gather(secs)), 1)
            # the criterion lower-is-better: the loss, or the AUC (each source's alike) negated
            watched = val_loss
            if cfg.select_by == "auc":
                watched = -(float(np.mean(list(by_source.values()))) if by_source else auc)
            improved = state.stopping.update(watched)
            if lead:
                row = {
                    "step": step + 1,
                    "epoch": epoch + 1,
                    "frozen_stages": cfg.freeze_stages[step],
                    "train_loss": f"{loss_sum / max(seen, 1):.5f}",
                    "val_loss": f"{val_loss:.5f}",
                    "val_auc": f"{auc:.5f}",
                    "val_acc": f"{acc:.5f}",
                    "val_auc_by_source": " ".join(f"{k}:{v:.4f}" for k, v in by_source.items()),
                    "lr": f"{opt.param_groups[0]['lr']:.3g}",
                    "images_per_s": f"{seen / secs:.2f}",
                    "seconds": f"{secs:.1f}",
                    "peak_rss_mb": peak_rss(),
                    "resumed_at": resumed_at,
                }
                sink.write(row, state.global_epoch)
                plan = f" of {budget.epochs} (time budget)" if budget is not None else ""
                log.info(
                    f"  step {step + 1} epoch {epoch + 1}{plan}: train loss "
                    f"{loss_sum / max(seen, 1):.4f}, val loss {val_loss:.4f}, val AUC {auc:.4f}"
                    + "".join(f" ({k} {v:.4f})" for k, v in by_source.items())
                    + f", val acc {acc:.4f}, peak memory {row['peak_rss_mb']} MB"
                    + ("  (best)" if improved else "")
                )
            if improved:
                best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
                best_val = (s, yv)
                if lead:  # for --resume after an interruption; committed with the state
                    state.best_file = f"best-{step + 1}-{epoch + 1}.safetensors"
                    save_weights(scored, resume_dir / state.best_file)
                    crash_point("best")
            state.epoch += 1
            state.global_epoch += 1
            if lead:
                save_resume(resume_dir, model, opt, state.to_json())
        if best_state is None:  # resumed after the step's last epoch: its best is on disk
            from safetensors.torch import load_file

            best_file = state.best_file or f"best_step{step + 1}.safetensors"  # older runs
            best_state = load_file(str(resume_dir / best_file))
        model.load_state_dict(ranks.share_state(best_state))
        state.next_step(cfg.freeze_stages[step], cfg.select_by)
        if lead:
            save_resume(resume_dir, model, opt, state.to_json())
    if sink is not None:
        sink.close()
    if best_val is None:  # resumed after the last step's best epoch: score its weights again
        best_val = validate(model, "calibrating")[:2]
    if lead:
        extra = {}
        if budget is not None:
            extra["time_budget"] = {"minutes": cfg.time_budget, "epochs": budget.epochs}
        if blender is not None:
            extra["sbi"] = blender.describe()
        extra["training_images"] = tr.counts()
        finish_run(cfg, model, best_val, train_ds, sources, state.summaries, runtime,
                   ranks.world, extra)  # fmt: skip
