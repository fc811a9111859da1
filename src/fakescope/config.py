"""One typed configuration object for training; it is stored verbatim in the run's JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainConfig:
    data: str = "../shared/data/sg-ffhq"
    out: str = "runs/latest"
    backbone: str = "resnet50"
    head: str = "flatten"  # "flatten" (the paper's) or "gap"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    input_size: int = 299
    fit: str = "resize"  # how images reach input_size: "resize" (paper) or "pad" (no upsampling)
    # Training (paper: Adam, lr 0.001, binary cross-entropy)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" (paper) or "cosine" (decay to 0 over `epochs`)
    # Epochs the cosine schedule spans; 0: the step's max epochs. More than those: the step
    # ends before the rate reaches zero (a truncated cosine)
    lr_epochs: int = 0
    batch_size: int = 16
    # Max epochs per step (early stopping usually ends sooner): one number for every step, or
    # one per step, e.g. (1, 3): a short step with the stem frozen, then a longer full one
    epochs: int | tuple[int, ...] = 10
    patience: int = 2  # epochs without a validation-loss improvement before a step stops
    # BatchNorm layers keep their ImageNet statistics (eval mode) while their affine weights train:
    # ~18% faster steps on a CPU, but it learnt much more slowly on sg-ffhq (docs/results.md)
    freeze_bn: bool = False
    ema: float = 0.0  # >0: keep an exponential moving average of the weights with this decay
    # Score each image and its mirror image and average the logits, in validation and in every
    # later use of the run (stored in it): more reliable ranking at twice the inference cost
    tta: bool = False
    label_smoothing: float = 0.0  # train on targets eps/2 and 1-eps/2 instead of 0 and 1
    steps: int = 3  # how many of the three steps to run; the paper found step 1 alone best
    # Backbone stages frozen in steps 1, 2, 3 (stages: stem, stage1..stage4; see model.py)
    freeze_stages: tuple[int, ...] = (0, 3, 4)
    exclude: tuple[
        str, ...
    ] = ()  # generator names dropped from the data (paper: faceswap, stargan)
    seed: int = 0
    # Forensic augmentations, applied to both classes alike
    hflip: bool = True
    jpeg_prob: float = 0.0  # probability of re-compressing a training image as JPEG
    jpeg_quality: tuple[int, int] = (60, 100)
    blur_prob: float = 0.0
    resize_prob: float = 0.0  # random down-and-up resize (0.5x to 1x)
    crop_scale: float = 1.0  # <1: random square crops of crop_scale..1 of the short side
    # Face stage used on the training data ("never" trains on the images as they are)
    faces: str = "never"
    face_margin: float = 0.0  # crop side / face box side; 0 = measure on the training images
    # Machine
    device: str = "auto"
    # "auto": bf16/fp16 autocast where the hardware is fast at it; "fp32": never (and no TF32)
    precision: str = "auto"
    workers: int = 0
    # Training processes (DistributedDataParallel). On a CPU, N processes of cores/N threads each
    # outrun one process of all threads (small kernels parallelise poorly); batch_size is the
    # total over them, so each process's BatchNorm sees batch_size/procs images.
    procs: int = 1
    max_train_batches: int = 0  # >0 caps batches per epoch (smoke tests)
    limit_per_class: int = 0  # >0 caps images per class and split (smoke tests)
    tensorboard: bool = True

    def epochs_of(self, step: int) -> int:
        """Max epochs of step ``step`` (0-based)."""
        return self.epochs if isinstance(self.epochs, int) else self.epochs[step]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("freeze_stages", "exclude", "jpeg_quality", "epochs"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)
