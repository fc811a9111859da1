"""Self-Blended Images (SBI): pseudo-fakes made on the fly from real faces.

Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022. A real face is
blended with a slightly altered copy of itself inside a face-shaped mask. The result carries the
generic traces of face swapping (a blending boundary, colour and sharpness mismatch, a small
misalignment) without any one generator's fingerprint, which is why detectors trained on it
generalise to unseen manipulation methods.

Recipe, per call:

1. source = jittered copy of the image: RGB shift, HSV shift, brightness/contrast, then either
   downscale-and-upscale or sharpen; then a small affine (shift, scale) about the face centre.
   target = the original image, unchanged.
2. mask = convex hull of the landmarks, moved by the same affine as the source, randomly
   deformed (smooth elastic field), eroded or dilated, Gaussian-blurred (different sigmas in x
   and y), scaled to a peak of 1.
3. weight = mask * ratio, ratio drawn from ``blend_ratios``; output = weight * source +
   (1 - weight) * target. Outside the mask the output is byte-identical to the input.

Sizes (elastic field, erosion, blur) are fractions of the face size (square root of the hull
area), not pixels, so the recipe looks the same on 256 px and 1024 px crops. The paper's pixel
values were for ~150-200 px faces in 256 px masks; the fractions below reproduce them there.
Images larger than ``mask_side`` (256) get their mask made at that size and resized up, as the
authors also build masks at 192-256 px: it is smooth, and blurring at full size costs more.

Where ``SelfBlend``'s defaults differ from the authors' code (mapooon/SelfBlendedImages) and why:

- The jitter always goes to the source. The authors jitter source or target with equal odds; a
  jittered target means the "real" partner of the pair is the jittered image, which is the same
  as jittering the source the other way plus a global colour change -- the training pipeline's
  own augmentation already supplies that, and keeping the target untouched keeps everything
  outside the face byte-identical to the real image.
- HSV shift: the authors pass limits of 0.3 to albumentations, which on uint8 images means 0.3
  of a hue/saturation/value step -- effectively no shift. Here: hue +-3 (of OpenCV's 180),
  saturation +-15 and value +-10 (of 255), small but real.
- Sharpen: a 3x3 Laplacian boost of strength ``sharpen`` (as albumentations' alpha 0.2-0.5),
  without albumentations' "lightness" term, which only darkens (brightness jitter covers that).
- Affine: scaled about the landmarks' centre, not the image centre, so the blended face stays
  on the face however the crop is framed. Translation is a fraction of the image (3% x, 1.5% y)
  as in the authors' code; scale 0.95-1/0.95 drawn per axis, also as there.
- Mask shape: by default the 68-point convex hull. The authors' code draws one of four shapes
  per image from Face X-ray's mask library (the convex hull; DeepFaceLab's "full" mask, a union
  of jaw, nose-ridge and brow hulls; "components", a union of eight hulls of face parts; and
  "extended", the components with the brows raised towards the forehead) and, with 81-point
  landmarks (not on PyPI), hulls that include the forehead. ``mask_shapes=MASK_SHAPES`` draws
  from the four 68-point shapes as they do (``fakescope train --sbi-masks mixed``); with fewer
  than 68 landmarks (MTCNN's 5) every shape is the hull.
- Mask edge: their mask is blurred, thresholded at 1 (an erosion of about half the first
  kernel, 2-12 px), and blurred again (kernel 5-25 px); here erosion / dilation and blur are
  explicit: morph radius in [-8%, +2%] of the face size (negative erodes;
  Face X-ray's recipe also dilates a little), blur sigma 1-5% of the face size per axis, which
  matches a 5-25 px kernel on a ~150 px face. The elastic field (authors: albumentations
  ElasticTransform alpha 50, sigma 7, a 1-3 px wiggle) is a smooth random displacement with
  std 1% of the face size and correlation length 10% of it.
- The authors then apply the same colour/JPEG augmentation to the real and the fake of each
  pair; that belongs to the training pipeline, not here.

Everything random comes from the ``random.Random`` passed in, so the same seed gives a
byte-identical image and mask. Only numpy, Pillow and OpenCV are used; about 3-6 ms per 256 px
image on one CPU core.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..errors import BadInput, FakescopeError

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
# Weights below this are set to 0: w * 255 < 0.26 cannot change a pixel after rounding, and the
# returned mask then marks exactly the pixels that may differ (the far tail of the blur).
MASK_EPS = 1e-3
# A hull smaller than this (square pixels) is no face: landmarks collapsed to a point or line.
MIN_HULL_PIXELS = 16

# Mask shapes on dlib's 68 points, each a union of convex hulls of point groups (Face X-ray's
# DeepFakeMask shapes, which the SBI authors draw from). Indices: 0-16 jaw, 17-21 and 22-26 the
# brows, 27-30 nose ridge, 31-35 nostrils, 36-47 eyes, 48-67 mouth.
_R = range
_SHAPES = {
    "dfl_full": (
        [*_R(0, 17), *_R(48, 68), 0, 8, 16],  # jaw and mouth
        [*_R(27, 31), 33],  # nose ridge
        [*_R(17, 27), 0, 27, 16, 33],  # brows down to the nose
    ),
    "components": (
        [*_R(0, 9), 17],  # right jaw
        [*_R(8, 17), 26],  # left jaw
        [17, 18, 19, 8],  # right cheek
        [24, 25, 26, 8],  # left cheek
        [*_R(19, 25), 8],  # nose ridge to chin
        [*_R(17, 22), 27, *_R(31, 36), 8],  # right eye region
        [*_R(22, 27), 27, *_R(31, 36), 8],  # left eye region
        [*_R(27, 31), *_R(31, 36)],  # nose
    ),
}
MASK_SHAPES = ("facehull", "dfl_full", "components", "extended")


def _raised_brows(pts: np.ndarray) -> np.ndarray:
    """The 68 points with each brow moved up by half its distance from the eye's top edge (the
    "extended" shape reaches onto the forehead)."""
    p = pts.copy()
    outer_l, outer_r = (p[36] + p[0]) / 2, (p[45] + p[16]) / 2
    under_l = np.array([(p[36] + outer_l) / 2, p[36], p[37], p[38], p[39]])
    under_r = np.array([p[42], p[43], p[44], p[45], (p[45] + outer_r) / 2])
    p[17:22] += (p[17:22] - under_l) / 2
    p[22:27] += (p[22:27] - under_r) / 2
    return p


def shape_mask(landmarks, size: tuple[int, int], shape: str = "facehull") -> np.ndarray:
    """Like ``hull_mask`` for one of ``MASK_SHAPES``: 1 inside the union of the shape's hulls.
    Shapes other than the hull need dlib's 68 points; with others the hull is used."""
    pts = _check_landmarks(landmarks)
    if shape not in MASK_SHAPES:
        raise FakescopeError(f"mask shape {shape!r}: choose from {', '.join(MASK_SHAPES)}")
    if shape == "facehull" or len(pts) != 68:
        return hull_mask(pts, size)
    if shape == "extended":
        pts, shape = _raised_brows(pts), "components"
    return np.maximum.reduce([hull_mask(pts[list(g)], size) for g in _SHAPES[shape]])


def _check_landmarks(landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise BadInput(f"landmarks must be a (K, 2) array with K >= 3, not shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise BadInput("landmarks contain NaN or infinite values")
    return pts


def hull_mask(landmarks, size: tuple[int, int]) -> np.ndarray:
    """1 inside the convex hull of ``landmarks`` (K, 2 of x, y), 0 outside, as float32 (H, W)
    for an image of ``size`` = (width, height). Points outside the image are fine."""
    pts = _check_landmarks(landmarks)
    w, h = size
    mask = np.zeros((h, w), dtype=np.float32)
    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
    # 4 fractional bits: sub-pixel landmarks (MTCNN's, rescaled ones) are not snapped to the grid.
    fixed = np.round(hull * 16).astype(np.int32)
    cv2.fillConvexPoly(mask, fixed, 1.0, lineType=cv2.LINE_8, shift=4)
    return mask


def _check_range(name: str, r, lo: float = -math.inf, hi: float = math.inf) -> None:
    if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi):
        raise FakescopeError(f"SelfBlend.{name} must be (low, high) within [{lo}, {hi}], not {r}")


@dataclass(frozen=True)
class SelfBlend:
    """Makes one SBI pseudo-fake from a real face and its landmarks; see the module docstring
    for the recipe and how the defaults relate to the paper's.

    ``sbi(image, landmarks, rng) -> (fake, weight)``: ``fake`` is an RGB PIL image of the input's
    size, ``weight`` the float32 (H, W) map in [0, 1] it was blended with (mask * ratio), so
    ``fake = weight * source + (1 - weight) * image``. Labels for training: the input is real,
    ``fake`` is fake; ``weight`` can serve as a blending-boundary target.
    """

    # Source jitter. Shifts are in 8-bit levels (hue in OpenCV's 0-180 units).
    rgb_shift: float = 20.0
    rgb_shift_p: float = 0.3
    hue_shift: float = 3.0
    sat_shift: float = 15.0
    val_shift: float = 10.0
    brightness: float = 0.1  # fraction of 255 added
    contrast: float = 0.1  # gain about the image mean is 1 +- this
    downscale_p: float = 0.5  # else sharpen
    downscale_factors: tuple[int, ...] = (2, 4)
    sharpen: tuple[float, float] = (0.2, 0.5)
    # Source (and mask) geometry: translation as a fraction of image width, height.
    translate: tuple[float, float] = (0.03, 0.015)
    scale: tuple[float, float] = (0.95, 1 / 0.95)
    # Mask, as fractions of the face size sqrt(hull area).
    elastic: float = 0.01  # displacement std
    elastic_grid: float = 0.1  # correlation length of the displacement field
    morph: tuple[float, float] = (-0.08, 0.02)  # radius; < 0 erodes, > 0 dilates
    blur: tuple[float, float] = (0.01, 0.05)  # Gaussian sigma, drawn per axis
    blend_ratios: tuple[float, ...] = BLEND_RATIOS
    # Drawn per image; the default hull alone draws nothing (MASK_SHAPES: the authors' four)
    mask_shapes: tuple[str, ...] = ("facehull",)
    mask_side: int = 256  # the mask is made at most this size, then resized to the image

    def __post_init__(self):
        for name in ("rgb_shift_p", "downscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FakescopeError(f"SelfBlend.{name} must be within [0, 1]")
        _check_range("sharpen", self.sharpen, 0.0)
        _check_range("scale", self.scale, 0.0)
        _check_range("morph", self.morph, -0.5, 0.5)
        _check_range("blur", self.blur, 0.0)
        if not self.blend_ratios or not all(0 < r <= 1 for r in self.blend_ratios):
            raise FakescopeError("SelfBlend.blend_ratios must be non-empty, each in (0, 1]")
        if self.mask_side < 16:
            raise FakescopeError("SelfBlend.mask_side must be at least 16")
        if not self.mask_shapes or not set(self.mask_shapes) <= set(MASK_SHAPES):
            raise FakescopeError(f"SelfBlend.mask_shapes must be some of {MASK_SHAPES}")
        if not self.downscale_factors or min(self.downscale_factors) < 1:
            raise FakescopeError("SelfBlend.downscale_factors must be non-empty, each >= 1")

    def describe(self) -> dict:
        """The parameters, for a run's record."""
        return dataclasses.asdict(self)

    def __call__(
        self, image: Image.Image, landmarks: np.ndarray, rng: random.Random
    ) -> tuple[Image.Image, np.ndarray]:
        target = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        h, w = target.shape[:2]
        pts = _check_landmarks(landmarks)
        # The polygon's own area, not its pixel count: a line of points fills a row of pixels.
        area = float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32))))
        if area < MIN_HULL_PIXELS:
            raise BadInput(f"landmarks enclose {area:.0f} pixels of the image, no face to blend")
        # Arrays of noise come from a numpy generator seeded from rng, so rng alone decides all.
        nprng = np.random.default_rng(rng.getrandbits(64))

        source = self._jitter(target, rng)
        m = self._affine(pts, (w, h), rng)
        source = cv2.warpAffine(
            source, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        # The mask is made at most mask_side pixels wide and high, then resized (the authors
        # work at 192-256 px too): it is smooth, and its blur would cost ~ side^3 at full size.
        k = min(1.0, self.mask_side / max(w, h))
        mw, mh = max(1, round(w * k)), max(1, round(h * k))
        fx, fy = mw / w, mh / h
        shape = self.mask_shapes[0] if len(self.mask_shapes) == 1 else rng.choice(self.mask_shapes)
        hull = shape_mask(pts * (fx, fy), (mw, mh), shape)
        if hull.sum() == 0:
            raise BadInput("the landmarks' hull lies outside the image, no face to blend")
        mm = m.copy()  # the same affine in mask pixels: S m S^-1, S = diag(fx, fy)
        mm[0, 1] *= fx / fy
        mm[1, 0] *= fy / fx
        mm[:, 2] *= (fx, fy)
        mask = cv2.warpAffine(hull, mm, (mw, mh), flags=cv2.INTER_LINEAR, borderValue=0)
        mask = self._deform(mask, hull, math.sqrt(area * fx * fy), rng, nprng)
        if (mw, mh) != (w, h):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
            mask[mask < MASK_EPS] = 0.0
        weight = mask * np.float32(rng.choice(self.blend_ratios))

        t = target.astype(np.float32)
        out = t + weight[..., None] * (source.astype(np.float32) - t)
        # +0.5 then truncation rounds; out stays within [0, 255] as a convex combination.
        fake = (out + 0.5).astype(np.uint8)
        return Image.fromarray(fake), weight

    def _jitter(self, arr: np.ndarray, rng: random.Random) -> np.ndarray:
        """Colour, contrast and sharpness changes of the source, all on uint8 with clipping
        between steps as image tools do."""
        x = arr
        if rng.random() < self.rgb_shift_p:
            shift = np.array([rng.uniform(-self.rgb_shift, self.rgb_shift) for _ in range(3)])
            x = np.clip(x.astype(np.float32) + shift.astype(np.float32), 0, 255).astype(np.uint8)

        levels = np.arange(256, dtype=np.float32)
        dh = rng.uniform(-self.hue_shift, self.hue_shift)
        ds = rng.uniform(-self.sat_shift, self.sat_shift)
        dv = rng.uniform(-self.val_shift, self.val_shift)
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        # Lookup tables: one pass per channel; hue wraps around OpenCV's 180.
        luts = (
            np.round(levels + dh) % 180,
            np.clip(np.round(levels + ds), 0, 255),
            np.clip(np.round(levels + dv), 0, 255),
        )
        chans = [cv2.LUT(hsv[..., i], lut.astype(np.uint8)) for i, lut in enumerate(luts)]
        x = cv2.cvtColor(cv2.merge(chans), cv2.COLOR_HSV2RGB)

        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        offset = 255.0 * rng.uniform(-self.brightness, self.brightness)
        mean = float(x.mean())
        lut = np.clip(np.round((levels - mean) * gain + mean + offset), 0, 255).astype(np.uint8)
        x = cv2.LUT(x, lut)

        h, w = x.shape[:2]
        if rng.random() < self.downscale_p:
            f = rng.choice(self.downscale_factors)
            # Nearest down, linear up, as the authors: blocky detail the way a low-res face is.
            small = cv2.resize(
                x, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_NEAREST
            )
            x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            a = rng.uniform(*self.sharpen)
            kernel = np.full((3, 3), -a, dtype=np.float32)
            kernel[1, 1] = 1.0 + 8.0 * a
            x = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        return x

    def _affine(self, pts: np.ndarray, size: tuple[int, int], rng: random.Random) -> np.ndarray:
        w, h = size
        cx, cy = pts.mean(0)
        sx, sy = rng.uniform(*self.scale), rng.uniform(*self.scale)
        tx = rng.uniform(-self.translate[0], self.translate[0]) * w
        ty = rng.uniform(-self.translate[1], self.translate[1]) * h
        return np.array(
            [[sx, 0.0, cx - sx * cx + tx], [0.0, sy, cy - sy * cy + ty]], dtype=np.float64
        )

    def _deform(
        self,
        mask: np.ndarray,
        hull: np.ndarray,
        face: float,
        rng: random.Random,
        nprng: np.random.Generator,
    ) -> np.ndarray:
        h, w = mask.shape
        if self.elastic > 0:
            step = max(4.0, self.elastic_grid * face)
            gh, gw = math.ceil(h / step) + 1, math.ceil(w / step) + 1
            field = nprng.standard_normal((2, gh, gw)).astype(np.float32)
            field *= np.float32(self.elastic * face)
            # Cubic upsampling of coarse noise: a smooth field, far cheaper than blurring
            # full-size noise with a wide Gaussian.
            dx = cv2.resize(field[0], (w, h), interpolation=cv2.INTER_CUBIC)
            dy = cv2.resize(field[1], (w, h), interpolation=cv2.INTER_CUBIC)
            gx, gy = np.meshgrid(
                np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="xy"
            )
            mask = cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderValue=0)
        binary = (mask > 0.5).astype(np.float32)
        if not binary.any():
            # The affine or the field pushed the face out of a tiny image; the plain hull
            # still marks the face.
            binary = hull.copy()

        r = round(rng.uniform(*self.morph) * face)
        if r != 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(r) + 1, 2 * abs(r) + 1))
            morphed = cv2.erode(binary, k) if r < 0 else cv2.dilate(binary, k)
            if morphed.any():  # an erosion bigger than a thin face would leave nothing
                binary = morphed

        sx = rng.uniform(*self.blur) * face
        sy = rng.uniform(*self.blur) * face
        if sx > 0 or sy > 0:
            mask = cv2.GaussianBlur(binary, (0, 0), sigmaX=max(sx, 1e-3), sigmaY=max(sy, 1e-3))
        else:
            mask = binary
        mask /= mask.max()
        mask[mask < MASK_EPS] = 0.0
        return mask
