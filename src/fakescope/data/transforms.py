"""What an image goes through on its way to the network: forensic augmentations (applied to both
classes alike), fitting to the input size and normalisation."""

from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Augment:
    hflip: bool = True
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 100)
    blur_prob: float = 0.0
    resize_prob: float = 0.0
    crop_scale: float = 1.0  # <1: random square crop of this to 1x the short side

    @classmethod
    def of(cls, cfg) -> Augment:
        """The augmentations a training config (``TrainConfig``) asks for."""
        return cls(cfg.hflip, cfg.jpeg_prob, tuple(cfg.jpeg_quality), cfg.blur_prob,
                   cfg.resize_prob, cfg.crop_scale)  # fmt: skip

    def __call__(self, im: Image.Image, rng: random.Random) -> Image.Image:
        if self.hflip and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.crop_scale < 1.0:
            w, h = im.size
            side = round(min(w, h) * rng.uniform(self.crop_scale, 1.0))
            x, y = rng.randint(0, w - side), rng.randint(0, h - side)
            im = im.crop((x, y, x + side, y + side))
        if self.resize_prob and rng.random() < self.resize_prob:
            f = rng.uniform(0.5, 1.0)
            w, h = im.size
            im = im.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BILINEAR).resize((w, h))
        if self.blur_prob and rng.random() < self.blur_prob:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 1.5)))
        if self.jpeg_prob and rng.random() < self.jpeg_prob:
            im = jpeg_roundtrip(im, rng.randint(*self.jpeg_quality))
        return im


def jpeg_roundtrip(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


FITS = ("resize", "pad")
# ImageNet mean colour: padding with it gives zeros after normalisation
PAD_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)


def fit_square(im: Image.Image, size: int, fit: str = "resize") -> Image.Image:
    """Bring an image to size x size. ``resize`` (the paper's): scale the short side to ``size``
    and centre-crop. ``pad``: never upsample; a smaller image is centred on a mean-colour
    canvas, so its pixels reach the network unresampled (interpolation blurs the
    high-frequency traces generators leave); a larger one is scaled down as with ``resize``."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if _pads(w, h, size, fit):
        canvas = Image.new("RGB", (size, size), PAD_RGB)
        canvas.paste(im, ((size - w) // 2, (size - h) // 2))
        return canvas
    nw, nh, left, top = _cover(w, h, size)
    im = im.resize((nw, nh), Image.BICUBIC)
    return im.crop((left, top, left + size, top + size))


def _pads(w: int, h: int, size: int, fit: str) -> bool:
    """``fit`` "pad" leaves an image that fits inside the square unresampled."""
    return fit == "pad" and max(w, h) <= size


def _cover(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """The resize that scales the short side to ``size`` (width, height), and the top-left
    corner of the centred size x size crop: ``fit_square`` and ``to_tensor`` share it."""
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


@functools.lru_cache(maxsize=8)
def _normalisation(mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - shift) * scale on 0-255 pixels is (x / 255 - mean) / std."""
    shift = torch.tensor(mean, dtype=torch.float32).mul_(255.0).view(3, 1, 1)
    return shift, torch.tensor(std, dtype=torch.float32).mul_(255.0).reciprocal_().view(3, 1, 1)


def to_pixels(im: Image.Image, size: int, fit: str = "resize") -> torch.Tensor:
    """``fit_square``'s geometry as a uint8 CHW tensor: what a training loader's workers send
    to a GPU, a quarter of the bytes of the float input, normalised there (``normalise``).
    Resampling runs in torchvision on the uint8 pixels (bicubic, antialiased as PIL's is):
    within 2 of 255 of PIL's pixels and 4x faster, the largest cost of preparing a file after
    decoding it (docs/benchmarks.md)."""
    w, h = im.size
    if (w, h) == (size, size) or _pads(w, h, size, fit):
        return torch.from_numpy(np.array(fit_square(im, size, fit))).permute(2, 0, 1)
    nw, nh, left, top = _cover(w, h, size)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    x = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return x[:, top : top + size, left : left + size]


def normalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 pixels (one image CHW or a batch NCHW, on any device) as the network's float
    input, in the memory format they came in."""
    shift, scale = _normalisation(tuple(mean), tuple(std))
    if x.device != shift.device:
        shift, scale = shift.to(x.device, non_blocking=True), scale.to(x.device, non_blocking=True)
    # one pass each, into a fresh tensor: the whole-array numpy form this replaced made five
    # image-sized float arrays and cost more than the resize
    if x.dim() == 3:  # one image: a contiguous tensor for the batch to be stacked from
        return x.to(torch.float32, memory_format=torch.contiguous_format).sub_(shift).mul_(scale)
    return x.to(torch.float32).sub_(shift).mul_(scale)


def pixels_of(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``normalise``'s inverse: the uint8 pixels a normalised batch was made from, exactly
    (its float error is far under half a pixel level), for a model that takes pixels."""
    shift, scale = _normalisation(tuple(mean), tuple(std))
    return x.div(scale.to(x.device)).add_(shift.to(x.device)).round_().clamp_(0, 255).byte()


def to_tensor(
    im: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, fit: str = "resize"
) -> torch.Tensor:
    """The network's input for an RGB image: ``fit_square``'s geometry, normalised, as a
    contiguous float CHW tensor."""
    return normalise(to_pixels(im, size, fit), mean, std)
