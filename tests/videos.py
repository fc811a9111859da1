"""Writing real videos for the tests (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from PIL import Image


def write_video(path: str | Path, images: list[Image.Image], fps: int = 5) -> Path:
    """Write ``images`` as an H.264 (or MPEG-4 part 2) mp4; all frames take the first's size,
    trimmed to even sides as yuv420p requires."""
    if not images:
        raise ValueError("write_video needs at least one image")
    path = Path(path)
    w, h = images[0].size
    w, h = w - w % 2, h - h % 2
    if w < 2 or h < 2:
        raise ValueError(f"frames too small for a video: {images[0].size}")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for im in images:
            im = im.convert("RGB")
            if im.size != (w, h):
                same = im.size == images[0].size
                im = im.crop((0, 0, w, h)) if same else im.resize((w, h), Image.BILINEAR)
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
