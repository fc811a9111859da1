"""Reading one image file safely: every way a file can be bad becomes a BadInput saying why."""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInput, TooLarge

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# fakescope's own pixel limit (README): 150 megapixels holds every phone and DSLR photo (100+ MP
# exist); beyond it a file is more likely a decompression bomb than a photo. Pillow's own bomb
# check (a warning at 89 MP) is silenced so that this limit, not Pillow's, decides; its error
# (at 179 MP) is reported as this limit.
MAX_PIXELS = 150_000_000
# Huge JPEGs are decoded at reduced scale straight away (PIL's draft mode) to save memory: those
# at least twice this on both sides, at 1/2-1/8 scale, keeping both sides at least this.
DRAFT_SIDE = 2048


def check_file(path: str | Path, what: str) -> Path:
    """The checks every reader makes first: the path exists, is a file, is not empty."""
    if "\x00" in str(path):
        raise BadInput(f"{str(path)!r}: a file name cannot contain a NUL byte")
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise BadInput(f"{path}: broken symbolic link (points to {os.readlink(path)})")
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a folder, not {what}")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: empty file (0 bytes)")
    return path


def load_rgb(path: str | Path, least_side: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, upright per its EXIF orientation.

    ``least_side``: the caller only needs this many pixels on the short side (whole-image
    scoring, which resizes to the network's input anyway). A JPEG at least twice that is then
    decoded at 1/2, 1/4 or 1/8 scale inside the decoder (Pillow's draft mode), keeping at
    least ``least_side``: a 12 MP photo decodes in a fraction of the time (docs/benchmarks.md).
    """
    path = check_file(path, "an image")
    return _decode(path, path, least_side)


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """``load_rgb`` for an image's bytes (a member of a tar shard); errors name ``name``."""
    if not data:
        raise BadInput(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _draft_size(size: tuple[int, int], least_side: int | None) -> tuple[int, int] | None:
    """The size to ask Pillow's JPEG draft mode for, or None to decode at full size. Pillow
    reduces by the largest of 2, 4, 8 that keeps *both* sides at least the size asked for."""
    w, h = size
    if least_side and least_side * 2 <= min(w, h):
        s = least_side / min(w, h)
        return math.ceil(w * s), math.ceil(h * s)
    if max(w, h) > DRAFT_SIDE:
        return DRAFT_SIDE, DRAFT_SIDE
    return None


def _decode(source, path, least_side: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
            if im.width * im.height > MAX_PIXELS:
                raise TooLarge(
                    f"{path}: image too large ({im.width}x{im.height} pixels, limit {MAX_PIXELS:,})"
                )
            draft = _draft_size(im.size, least_side) if im.format == "JPEG" else None
            if draft is not None:
                im.draft("RGB", draft)
            im.load()
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"{path}: not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError:
        raise TooLarge(
            f"{path}: image too large (over the limit of {MAX_PIXELS:,} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadInput(f"{path}: corrupt or truncated image ({e})") from None
    except Exception as e:  # noqa: BLE001  Pillow's plugins raise a zoo on hostile bytes
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise BadInput(f"{path}: unreadable image ({reason})") from None
    try:
        # in place: otherwise Pillow returns a copy of every image, rotated or not (0.05-0.3 ms
        # of a 256 px JPEG's 0.6-0.9 ms)
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # a broken EXIF block should not cost the image itself
        pass
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: 16-bit is rescaled, transparency composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, P


def list_files(paths) -> list[Path]:
    """Expand files and folders (recursively, hidden files skipped). Every file found is kept,
    whatever its extension, so that a bad one is reported rather than silently passed over."""
    out: list[Path] = []
    for p in map(Path, paths):
        if "\x00" not in str(p) and p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    # a dangling link is kept: it gets an error row, not silence
                    if (f.is_file() or (f.is_symlink() and not f.exists()))
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        else:
            out.append(p)
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS
