"""Image perturbations for robustness curves: how a detector's AUC/F1 fall as each one grows.

Every function takes a PIL image and returns a new RGB image of the same size; the input is
never modified. Randomness (only ``noise``) comes from an explicit seed or generator, so a
sweep is reproducible image by image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter

from fakescope.errors import FakescopeError

Level = int | float
Seed = int | np.random.Generator


def _rgb(im: Image.Image) -> Image.Image:
    # a copy even when already RGB: callers may mutate the result without touching the input
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def _resize(im: Image.Image, size: tuple[int, int], interpolation: int) -> Image.Image:
    return Image.fromarray(cv2.resize(np.asarray(im), size, interpolation=interpolation))


def _encode_jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    # 4:2:0 stated outright: it is what cameras and upload pipelines use, and Pillow's default
    # has changed with quality settings across releases
    im.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (1-100). Quality 100 is still a lossy round trip (chroma
    subsampling, rounding), only a very mild one."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    return _encode_jpeg(_rgb(im), q)


def blur(im: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels; 0 leaves the image unchanged."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    im = _rgb(im)
    if sigma == 0:
        return im
    # OpenCV rather than ImageFilter.GaussianBlur: Pillow approximates it with box blurs, and
    # the sweep's axis is meant to be a true Gaussian sigma
    arr = cv2.GaussianBlur(
        np.asarray(im), (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    return Image.fromarray(arr)


def downscale(im: Image.Image, factor: float) -> Image.Image:
    """Shrink to ``factor`` of each side (area averaging), then enlarge back to the original size
    (bicubic): the detail a low-resolution copy loses, at the size the detector expects."""
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    im = _rgb(im)
    if factor == 1:
        return im
    w, h = im.size
    small = _resize(im, (max(1, round(w * factor)), max(1, round(h * factor))), cv2.INTER_AREA)
    return _resize(small, (w, h), cv2.INTER_CUBIC)


def noise(im: Image.Image, sigma: float, seed: Seed = 0) -> Image.Image:
    """Add independent Gaussian noise of standard deviation ``sigma`` (0-255 units) to every
    channel of every pixel, rounded and clipped to 0-255. ``seed`` is an int or a numpy
    Generator (which is advanced, so successive calls on one generator differ)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    im = _rgb(im)
    if sigma == 0:
        return im
    arr = np.asarray(im, dtype=np.float32)
    arr = arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class SocialStep:
    scale: float  # fraction of each side the platform keeps
    sharpen: int  # unsharp-mask strength in percent, 0 for none
    quality: int  # JPEG quality of the stored copy


# Level 0 is the untouched image. Platforms store a smaller copy, commonly sharpen it after the
# resize to hide the softness, and compress it hard; repeated re-shares compound this, which the
# higher levels stand in for with smaller sizes and lower qualities.
SOCIAL_STEPS: tuple[SocialStep, ...] = (
    SocialStep(scale=0.9, sharpen=30, quality=90),
    SocialStep(scale=0.75, sharpen=50, quality=80),
    SocialStep(scale=0.6, sharpen=50, quality=70),
    SocialStep(scale=0.5, sharpen=60, quality=55),
)


def social(im: Image.Image, level: int) -> Image.Image:
    """Imitate a social-network re-upload of strength ``level`` (0 = none .. 4): downscale,
    unsharp mask and JPEG at the reduced size, then bicubic back to the original size."""
    lvl = int(level)
    if lvl != level or not 0 <= lvl <= len(SOCIAL_STEPS):
        raise ValueError(f"social level must be an integer 0..{len(SOCIAL_STEPS)}, got {level}")
    im = _rgb(im)
    if lvl == 0:
        return im
    step = SOCIAL_STEPS[lvl - 1]
    w, h = im.size
    small_size = (max(1, round(w * step.scale)), max(1, round(h * step.scale)))
    small = _resize(im, small_size, cv2.INTER_AREA)
    if step.sharpen:
        small = small.filter(ImageFilter.UnsharpMask(radius=1.0, percent=step.sharpen, threshold=2))
    # compressed at the small size, as the platform stores it, so its 8x8 blocks are enlarged
    # with the image, as they are when a detector resizes a downloaded copy
    small = _encode_jpeg(small, step.quality)
    return _resize(small, (w, h), cv2.INTER_CUBIC)


# Uniform (image, level, seed) adapters. Module-level functions rather than lambdas so that a
# Perturbation pickles, e.g. into DataLoader worker processes.
def _apply_jpeg(im: Image.Image, level: Level, seed: Seed) -> Image.Image:
    return jpeg(im, int(level))


def _apply_blur(im: Image.Image, level: Level, seed: Seed) -> Image.Image:
    return blur(im, float(level))


def _apply_downscale(im: Image.Image, level: Level, seed: Seed) -> Image.Image:
    return downscale(im, float(level))


def _apply_noise(im: Image.Image, level: Level, seed: Seed) -> Image.Image:
    return noise(im, float(level), seed)


def _apply_social(im: Image.Image, level: Level, seed: Seed) -> Image.Image:
    return social(im, int(level))


@dataclass(frozen=True)
class Perturbation:
    """One kind of perturbation and the severities a robustness sweep visits.

    ``levels`` starts at ``clean`` and grows in severity, whichever way the number runs (JPEG
    quality and downscale factor fall, sigmas rise). ``unit`` labels the x axis of a plot.
    """

    name: str
    levels: tuple[Level, ...]
    unit: str
    clean: Level
    fn: Callable[[Image.Image, Level, Seed], Image.Image]

    def apply(self, im: Image.Image, level: Level, seed: Seed = 0) -> Image.Image:
        """The perturbed image; ``seed`` matters only to random perturbations (noise)."""
        return self.fn(im, level, seed)


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("jpeg", (100, 90, 70, 50, 30), "JPEG quality", 100, _apply_jpeg),
        Perturbation("blur", (0, 0.5, 1, 2, 3), "Gaussian blur sigma (px)", 0, _apply_blur),
        Perturbation(
            "downscale", (1, 0.75, 0.5, 0.35, 0.25), "downscale factor", 1, _apply_downscale
        ),
        Perturbation("noise", (0, 2, 5, 10, 20), "noise sigma (0-255)", 0, _apply_noise),
        Perturbation("social", (0, 1, 2, 3, 4), "social re-upload level", 0, _apply_social),
    )
}


def parse_perturbations(spec: str) -> list[Perturbation]:
    """The perturbations named in a comma-separated list (``"jpeg,blur"``), in that order,
    repeats dropped; ``"all"`` names every one. Unknown or no names raise FakescopeError."""
    known = ", ".join(PERTURBATIONS)
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    if not names:
        raise FakescopeError(f"no perturbation named in {spec!r}; known: {known}")
    if "all" in names:
        return list(PERTURBATIONS.values())
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise FakescopeError(
            f"unknown perturbation{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; known: {known}"
        )
    return [PERTURBATIONS[n] for n in dict.fromkeys(names)]
