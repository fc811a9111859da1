"""Frame sampling on real, PyAV-written videos, and every way a video file can be bad."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fakescope.data.video import sample_frames
from fakescope.errors import BadInput

from .videos import write_video

# conftest.py lets FAKESCOPE_SHARED move the shared folder; the default is ../shared
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = Path(os.environ.get("FAKESCOPE_SHARED", SHARED)) / "data"
FFHQ = DATA / "sg-ffhq" / "real"


@pytest.fixture(scope="module")
def faces() -> list[Image.Image]:
    if not FFHQ.is_dir():
        pytest.skip(f"sample data not at {DATA}")
    return [Image.open(p).convert("RGB") for p in sorted(FFHQ.glob("*.jpg"))[:12]]


@pytest.fixture(scope="module")
def video(tmp_path_factory, faces) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "faces.mp4", faces, fps=5)


def test_samples_evenly(video, faces):
    frames = sample_frames(video, 4)
    assert [i for i, _, _ in frames] == [0, 4, 7, 11]
    assert [t for _, t, _ in frames] == pytest.approx([0.0, 0.8, 1.4, 2.2])
    for i, _, im in frames:
        assert im.mode == "RGB" and im.size == (256, 256)
        # lossy, but recognisably the frame that was written at that index
        diff = np.abs(np.asarray(im, float) - np.asarray(faces[i], float)).mean()
        assert diff < 12


def test_more_frames_asked_than_there_are(video):
    assert [i for i, _, _ in sample_frames(video, 50)] == list(range(12))


def test_container_without_frame_count(tmp_path, faces):
    # Matroska headers carry no frame count: the frames are counted by decoding.
    mkv = write_video(tmp_path / "faces.mkv", faces[:6])
    assert [i for i, _, _ in sample_frames(mkv, 3)] == [0, 2, 5]


def test_odd_sizes_are_trimmed_to_even(tmp_path, faces):
    ims = [im.crop((0, 0, 101, 75)) for im in faces[:3]]
    frames = sample_frames(write_video(tmp_path / "odd.mp4", ims), 3)
    assert [im.size for _, _, im in frames] == [(100, 74)] * 3


def test_text_file_named_mp4(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_text("this is not a video\n" * 20)
    with pytest.raises(BadInput, match="not a readable video") as e:
        sample_frames(bad)
    assert str(e.value).startswith(str(bad))


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="empty") as e:
        sample_frames(empty)
    assert str(e.value).startswith(str(empty))


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        sample_frames(tmp_path / "gone.mp4")


def test_truncated_video_gives_frames_or_bad_input(tmp_path, video):
    data = video.read_bytes()
    for frac in (0.1, 0.5, 0.9):
        cut = tmp_path / f"cut{frac}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frames = sample_frames(cut, 4)
        except BadInput as e:
            assert str(e).startswith(str(cut))
        else:
            assert frames and all(im.size == (256, 256) for _, _, im in frames)


def test_truncated_streamable_video_keeps_what_decodes(tmp_path, faces):
    # With the index up front (as streamed/downloaded mp4s have it), a cut-off file still opens
    # and its first frames decode.
    whole = tmp_path / "fast.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for im in faces:
            out.mux(stream.encode(av.VideoFrame.from_image(im)))
        out.mux(stream.encode())
    data = whole.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.warns(UserWarning, match="truncated"):
        frames = sample_frames(cut, 4)
    idx = [i for i, _, _ in frames]
    assert len(idx) >= 2 and idx == sorted(set(idx)) and idx[-1] < 11


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for k in range(4):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, k * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(BadInput, match="no video stream"):
        sample_frames(path)


def test_display_rotation_is_applied(tmp_path):
    # Phones store landscape pixels plus a rotation in the mp4 track header. Patch a -90 degree
    # display matrix (an upright phone recording) into a video whose left half is red.
    arr = np.zeros((160, 320, 3), np.uint8)
    arr[:, :160, 0] = 255
    path = write_video(tmp_path / "rot.mp4", [Image.fromarray(arr)] * 2)
    data = bytearray(path.read_bytes())
    tkhd = data.index(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0 layout
    matrix = tkhd + 4 + 4 + 5 * 4 + 8 + 8
    struct.pack_into(">9i", data, matrix, 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    ((_, _, im),) = sample_frames(path, 1)
    assert im.size == (160, 320)
    a = np.asarray(im, float)
    assert a[:150, :, 0].mean() > 240 and a[170:, :, 0].mean() < 15  # turned clockwise


def test_write_video_rejects_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_video(tmp_path / "none.mp4", [])
