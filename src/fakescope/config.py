"""One typed configuration object for training; it is stored verbatim in the run's JSON.

Each field carries its command-line help (and choices) in its metadata: ``fakescope train``'s
options are generated from these fields (cli.py), so a field, its default and its help text
live in one place.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import FakescopeError

# crop side / face box side where nothing better is known (training measures its own framing)
DEFAULT_FACE_MARGIN = 1.3
# how `fakescope ensemble` joins its members' votes (model/ensemble.py); here, not there, so the
# command line knows them without importing torch
FUSIONS = ("max", "mean")


def opt(default, help: str, **cli):
    """A config field with its command-line help; ``cli`` holds argparse extras (choices,
    metavar) and ``flag``: the option's name when it is not --field-name."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    data: tuple[str, ...] = opt(
        ("../shared/data/sg-ffhq",),
        "folder with real/ and fake/ (fake/<generator>/ for DFFD); splits.csv used when present. "
        "Repeat to train on several sources at once (each epoch draws alike from each). Or "
        "shards from `fakescope shards` (their folder, or a glob of .tar files): streamed",
        repeat=True,
    )
    out: str = opt("runs/latest", "run folder to create")
    backbone: str = opt(
        "resnet50", "torchvision model: resnet50, mobilenet_v2, resnet18, efficientnet_b0, ..."
    )
    head: str = opt(
        "flatten",
        "flatten: the paper's Flatten+Dense(1); gap: global average pool first",
        choices=("flatten", "gap"),
    )
    weights: str = opt(
        "imagenet",
        "'imagenet' (torchvision download, cached in $TORCH_HOME), 'none' (random init) or a "
        "weights file path",
    )
    input_size: int = opt(299, "input side in pixels (the paper's: 299)")
    fit: str = opt(
        "resize",
        "resize: scale to the input size (the paper's); pad: never upsample, centre smaller "
        "images on a mean-colour canvas",
        choices=("resize", "pad"),
    )
    # Training (paper: Adam, lr 0.001, binary cross-entropy)
    lr: float = opt(1e-3, "Adam learning rate (the paper's: 0.001)")
    lr_schedule: str = opt(
        "constant",
        "constant (the paper's) or cosine decay to 0 over each step's epochs",
        choices=("constant", "cosine"),
    )
    lr_epochs: int = opt(
        0,
        "epochs the cosine schedule spans (0: the step's --epochs); more than --epochs stops "
        "training before the rate reaches zero",
    )
    batch_size: int = opt(16, "images per optimiser step (the total over --procs processes)")
    epochs: int | tuple[int, ...] = opt(
        10, "max epochs per step: one number for every step, or one per step (e.g. 1,3)"
    )
    patience: int = opt(2, "early stopping: epochs without a val-loss improvement")
    checkpoint_every: int = opt(
        0,
        "also save the resume state every N optimiser steps inside an epoch (long epochs); "
        "--resume continues from the last one, with any number of processes. 0: at epoch ends",
    )
    select_by: str = opt(
        "loss",
        "what early stopping watches and which epoch's weights are kept: loss (validation "
        "loss, the paper's) or auc (validation AUC; with several sources the mean of their "
        "AUCs, so each counts alike)",
        choices=("loss", "auc"),
    )
    freeze_bn: bool = opt(
        False,
        "keep BatchNorm statistics at their ImageNet values (affine weights still train); "
        "~18%% faster on a CPU but learnt much more slowly on sg-ffhq",
    )
    ema: float = opt(
        0.0,
        "decay of an exponential moving average of the weights (e.g. 0.998); the averaged "
        "weights are validated, kept and saved. 0 = off",
    )
    tta: bool = opt(
        False,
        "test-time augmentation stored in the run: every score (validation, evaluate, "
        "predict) averages the image and its mirror image; twice the inference cost",
    )
    sam: float = opt(
        0.0,
        "sharpness-aware minimisation (as the SBI authors train): each step's gradient is "
        "taken at the worst weights within this distance (e.g. 0.05); twice the cost per step. "
        "0 = off",
    )
    label_smoothing: float = opt(
        0.0,
        "train on targets eps/2 and 1-eps/2 instead of 0 and 1 (e.g. 0.1); validation loss "
        "always uses the true labels",
    )
    steps: int = opt(
        3,
        "training steps to run; 1 = the paper's best variant (all layers)",
        choices=(1, 2, 3),
    )
    freeze_stages: tuple[int, ...] = opt(
        (0, 3, 4), "backbone stages (of stem,stage1..stage4) frozen in steps 1,2,3"
    )
    exclude: tuple[str, ...] = opt((), "generators to drop, e.g. faceswap,stargan (the paper's)")
    # Self-blended images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces
    sbi: float = opt(
        0.0,
        "self-blended pseudo-fakes per real training image and epoch (e.g. 1): a real face "
        "blended with an altered copy of itself inside a landmark mask. 0 = off",
    )
    real_only: bool = opt(
        False,
        "train and validate without any fake image of the data: the fakes are the self-blended "
        "ones (needs --sbi)",
    )
    sbi_masks: str = opt(
        "hull",
        "mask shapes of the pseudo-fakes: hull (the 68 points' convex hull) or mixed (one of "
        "four face-mask shapes per image, as the SBI authors' code draws; data/sbi.py)",
        choices=("hull", "mixed"),
    )
    sbi_pairs: bool = opt(
        False,
        "every real image and its pseudo-fake in the same batch (the SBI authors' batches), so "
        "the blend is all that tells them apart; needs --real-only --sbi 1",
    )
    reals_from: tuple[str, ...] = opt(
        (),
        "a data folder whose real images only are added (repeatable): an expert on one kind "
        "of fake still learns that the other sets' real photos are real (fakescope ensemble)",
        repeat=True,
    )
    source_heads: bool = opt(
        False,
        "one output unit per source of fakes (each --data folder's, and the self-blended "
        "ones): a fake teaches only its own source's unit, a real image every unit, and the "
        "score is the highest unit's. For sources whose cues conflict (docs/results.md §8)",
    )
    landmarks: str = opt(
        "auto",
        "landmarks for the SBI masks: dlib68 (not for commercial use), mtcnn5, or auto (dlib "
        "when installed); computed once per image and cached in $FAKESCOPE_CACHE",
        choices=("auto", "dlib68", "mtcnn5"),
    )
    time_budget: float = opt(
        0.0,
        "minutes of training: the epochs (and the cosine, stretched by --lr-epochs/--epochs "
        "when both are given) are sized from the measured speed so training ends inside the "
        "budget; a faster machine trains longer. 0 = off (--epochs decides)",
    )
    seed: int = opt(0, "seed of the split (when made), the order, the augmentations and init")
    # Forensic augmentations, applied to both classes alike
    hflip: bool = opt(True, "no random horizontal flips", flag="--no-hflip")
    jpeg_prob: float = opt(0.0, "probability of JPEG re-compression (both classes alike)")
    jpeg_quality: tuple[int, int] = opt((60, 100), "JPEG quality range, e.g. 60,100")
    blur_prob: float = opt(0.0, "probability of a Gaussian blur (sigma 0.1-1.5)")
    resize_prob: float = opt(0.0, "probability of a random down-and-up resize (0.5x-1x)")
    crop_scale: float = opt(
        1.0, "<1: random square crops of this..1 of the short side (scale jitter)"
    )
    faces: str = opt(
        "never",
        "crop training images through the face stage (as predict does)",
        choices=("never", "auto", "always"),
    )
    face_margin: float = opt(
        0.0,
        "crop side / face box side for the face stage; 0 = measure how the training images "
        "frame their faces and use that at prediction",
    )
    # Machine
    device: str = opt("auto", "auto, cpu, cuda, cuda:1, mps")
    precision: str = opt(
        "auto",
        "auto: bf16/fp16 autocast where the hardware is fast at it; fp32: never, and no TF32 "
        "on CUDA (a GPU then trains with a CPU's arithmetic)",
        choices=("auto", "fp32"),
    )
    workers: int = opt(0, "data-loading processes")
    compile: bool = opt(
        False,
        "train through torch.compile: the first batches of each step compile (minutes on a "
        "CPU), later ones run fused kernels; worth it on a GPU (docs/benchmarks.md)",
    )
    procs: int = opt(
        1,
        "training processes on this machine (DistributedDataParallel), each with its share of "
        "the CPU cores or its own GPU; --batch-size is the total over them. Under torchrun "
        "leave it at 1: torchrun starts the processes",
    )
    max_train_batches: int = opt(0, "cap on batches per epoch (smoke runs)")
    limit_per_class: int = opt(0, "use at most N images per class and split (smoke runs)")
    train_fraction: float = opt(
        1.0,
        "share of each class's training images to train on, drawn with --seed (data-size "
        "experiments); validation and test stay whole",
    )
    tensorboard: bool = opt(True, "no TensorBoard log", flag="--no-tensorboard")

    def __post_init__(self):
        if isinstance(self.data, str | bytes) or hasattr(self.data, "__fspath__"):
            self.data = (str(self.data),)  # one folder, as the API and old runs give it
        self.data = tuple(str(d) for d in self.data)

    def epochs_of(self, step: int) -> int:
        """Max epochs of step ``step`` (0-based)."""
        return self.epochs if isinstance(self.epochs, int) else self.epochs[step]

    def check(self) -> None:
        """Every value that can be wrong before anything runs, as one clear error."""
        self._check_ranges()
        if not 1 <= self.steps <= 3:
            raise FakescopeError("--steps must be 1, 2 or 3")
        if len(self.freeze_stages) < self.steps:
            raise FakescopeError(f"--freeze-stages needs one value per step ({self.steps})")
        if not isinstance(self.epochs, int) and len(self.epochs) < self.steps:
            raise FakescopeError(f"--epochs needs one number, or one per step ({self.steps})")
        if not 0 <= self.label_smoothing < 1:
            raise FakescopeError("--label-smoothing must be in [0, 1), e.g. 0.1")
        if self.procs < 1 or self.batch_size % self.procs:
            raise FakescopeError(
                f"--batch-size ({self.batch_size}) must be a multiple of --procs ({self.procs})"
            )
        for name in ("fit", "head", "lr_schedule", "faces", "precision", "select_by", "sbi_masks"):
            allowed = choices(name)
            if getattr(self, name) not in allowed:
                flag = "--" + name.replace("_", "-")
                raise FakescopeError(f"{flag} must be one of {', '.join(allowed)}")
        if self.lr_epochs < 0:
            raise FakescopeError("--lr-epochs must be 0 (the step's epochs) or more")
        if not self.data:
            raise FakescopeError("--data: name at least one data folder")
        both = {str(d).rstrip("/") for d in self.data} & {
            str(d).rstrip("/") for d in self.reals_from
        }
        if both:
            raise FakescopeError(f"--reals-from {sorted(both)[0]}: already a --data folder")
        if self.sbi < 0:
            raise FakescopeError("--sbi must be 0 (off) or more, e.g. 1")
        if self.real_only and not self.sbi:
            raise FakescopeError("--real-only needs --sbi: without fakes there is nothing to learn")
        if self.sbi_pairs and not (self.real_only and self.sbi == 1):
            raise FakescopeError("--sbi-pairs pairs each real image with one pseudo-fake: "
                                 "use it with --real-only --sbi 1")  # fmt: skip
        if self.time_budget < 0 or (self.time_budget and self.steps != 1):
            raise FakescopeError("--time-budget sizes one training step: use it with --steps 1")
        if self.sam < 0:
            raise FakescopeError("--sam must be 0 (off) or a radius, e.g. 0.05")
        if self.ema and not 0 < self.ema < 1:
            raise FakescopeError("--ema must be between 0 and 1 (e.g. 0.99), or 0 for off")

    def _check_ranges(self) -> None:
        for name, value in (
            ("data", self.data),
            ("reals_from", self.reals_from),
            ("out", (self.out,)),
            ("weights", (self.weights,)),
        ):
            if any("\x00" in str(v) for v in value):
                raise FakescopeError(f"--{name}: a path cannot contain a NUL byte")

        def bad(name: str, want: str):
            value = getattr(self, name)
            return FakescopeError(f"--{name.replace('_', '-')} {value}: must be {want}")

        # 0 is allowed: the weights stay as they start (a baseline, and the tests' reference)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr >= 0):
            raise bad("lr", "a number of at least 0, e.g. 0.001")
        epochs = (self.epochs,) if isinstance(self.epochs, int) else self.epochs
        for name, values, low in (
            ("batch_size", (self.batch_size,), 1),
            ("epochs", epochs, 1),
            ("patience", (self.patience,), 1),
            ("input_size", (self.input_size,), 32),
            ("workers", (self.workers,), 0),
            ("max_train_batches", (self.max_train_batches,), 0),
            ("checkpoint_every", (self.checkpoint_every,), 0),
            ("limit_per_class", (self.limit_per_class,), 0),
        ):
            if any(v < low for v in values):
                raise bad(name, f"a whole number of at least {low}")
        for name in ("jpeg_prob", "blur_prob", "resize_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "a probability in 0..1")
        if not 0 < self.train_fraction <= 1:
            raise bad("train_fraction", "a share in (0, 1], e.g. 0.25")
        if len(self.jpeg_quality) != 2:
            raise FakescopeError("--jpeg-quality: give two numbers LOW,HIGH, e.g. 60,100")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise FakescopeError(
                f"--jpeg-quality {lo},{hi}: must be LOW,HIGH with 1 <= LOW <= HIGH <= 100"
            )
        if not 0 < self.crop_scale <= 1:
            raise bad("crop_scale", "in (0, 1]")
        if self.face_margin < 0:
            raise bad("face_margin", "0 (measure it) or a positive ratio, e.g. 1.3")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("freeze_stages", "exclude", "jpeg_quality", "epochs", "data"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def choices(name: str) -> tuple:
    """The allowed values of a TrainConfig field (what --NAME accepts; what a run may store)."""
    return tuple(_FIELDS[name].metadata["choices"])
