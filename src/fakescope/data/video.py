"""Reading frames out of videos (PyAV), with every failure turned into a BadInput for that file."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..errors import BadInput
from .images import check_file


def _open(path: Path):
    check_file(path, "a video")
    try:
        container = av.open(str(path), mode="r")
    except Exception as e:  # PyAV raises many types here (InvalidDataError, OSError, ...)
        raise BadInput(f"{path}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise BadInput(f"{path}: no video stream in the file (audio or data only)")
    return container


def _reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return msg.strip()


def _upright(frame) -> Image.Image:
    im = frame.to_image()  # RGB
    # Phone videos store landscape pixels plus a display rotation; faces lying on their side
    # are not found by the detector. ``rotation`` is counter-clockwise degrees (FFmpeg's
    # display-matrix angle), which is what PIL's rotate takes too.
    rot = round(getattr(frame, "rotation", 0) or 0) % 360
    if rot in (90, 180, 270):
        im = im.rotate(rot, expand=True)
    return im


def _targets(n: int, count: int) -> list[int]:
    if n <= 0 or count <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(count, n))})


def _decode(path: Path, wanted: set[int] | None, count_only: bool = False):
    """One pass over the video stream, stopping after the last wanted frame.

    Returns (frames kept, frames decoded, ran to the end of the stream, error or None)."""
    kept: list[tuple[int, float, Image.Image]] = []
    decoded = 0
    error = None
    ended = False
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        last = max(wanted) if wanted else None
        try:
            for frame in container.decode(stream):
                i = decoded
                decoded += 1
                if not count_only and (wanted is None or i in wanted):
                    t = frame.time
                    if t is None:
                        t = float(i / rate) if rate else 0.0
                    kept.append((i, float(t), _upright(frame)))
                if last is not None and i >= last:
                    break
            else:
                ended = True
        except Exception as e:  # a truncated or damaged file fails somewhere in the middle
            error = _reason(e)
    finally:
        container.close()
    return kept, decoded, ended, error


def sample_frames(path: str | Path, count: int = 16) -> list[tuple[int, float, Image.Image]]:
    """``count`` frames spread evenly over the video: (frame index, time in seconds, RGB image).

    A file that breaks off part way yields the frames decoded before the break (with a
    warning); BadInput is raised only when no frame at all can be decoded.
    """
    path = Path(path)
    if count < 1:
        raise ValueError("count must be at least 1")
    container = _open(path)
    try:
        n = int(container.streams.video[0].frames or 0)
    except Exception:
        n = 0
    finally:
        container.close()

    error = None
    if n <= 0:
        # No frame count in the header (some containers): count by decoding, then pick.
        _, n, _, error = _decode(path, None, count_only=True)
        if n == 0:
            why = f" ({error})" if error else ""
            raise BadInput(f"{path}: no decodable video frames{why}")
    kept, decoded, ended, err = _decode(path, set(_targets(n, count)))
    error = error or err
    short = error is None and ended and decoded < n
    if (short or err) and len(kept) < min(count, decoded):
        # The file breaks off before the frame count its header gives (a cut-off download):
        # pick again, evenly over the frames that do decode.
        kept, *_ = _decode(path, set(_targets(decoded, count)))
    if not kept:
        why = f" ({error})" if error else ""
        raise BadInput(f"{path}: no decodable video frames{why}")
    if error is not None:
        warnings.warn(
            f"{path}: decoding failed part way ({error}); using {len(kept)} frames "
            "from the part before that",
            stacklevel=2,
        )
    elif short:
        warnings.warn(
            f"{path}: video ends after {decoded} of the {n} frames its header lists "
            f"(truncated?); using {len(kept)} frames from that part",
            stacklevel=2,
        )
    return kept


def duration_seconds(path: str | Path) -> float | None:
    """The video's length as its container states it (None when it states none); a file that
    cannot be opened raises BadInput."""
    container = _open(Path(path))
    try:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000  # av.time_base: microseconds
        return None
    finally:
        container.close()
