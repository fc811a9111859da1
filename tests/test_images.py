"""Every kind of awkward image file: handled correctly or a BadInput naming file and problem."""

import numpy as np
import pytest
from PIL import Image

from fakescope.data.images import list_files, load_rgb
from fakescope.errors import BadInput

from .conftest import sg_images


@pytest.fixture
def face():
    return Image.open(sg_images("real", n=1)[0]).convert("RGB")


def test_modes_become_rgb(tmp_path, face):
    face.convert("CMYK").save(tmp_path / "cmyk.jpg")
    face.convert("L").save(tmp_path / "grey.png")
    rgba = face.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    a16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "sixteen.png")
    face.convert("P").save(tmp_path / "palette.gif")
    for name in ("cmyk.jpg", "grey.png", "rgba.png", "sixteen.png", "palette.gif"):
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == face.size, name
    # 16-bit is rescaled, not clipped to white
    assert 20 < np.asarray(load_rgb(tmp_path / "sixteen.png")).mean() < 235


def test_exif_rotation_is_applied(tmp_path, face):
    wide = face.resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    wide.save(tmp_path / "rot.jpg", exif=exif)
    upright = load_rgb(tmp_path / "rot.jpg")
    assert upright.size == (200, 300)
    # the pixels turned too (rotated in place, not copied), to JPEG's rounding
    turned = np.asarray(wide.transpose(Image.Transpose.ROTATE_270), dtype=float)
    assert np.abs(np.asarray(upright, dtype=float) - turned).mean() < 4
    assert np.abs(np.asarray(upright, dtype=float) - turned[::-1, ::-1]).mean() > 20


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"this is text, not a JPEG\n" * 10, "not an image"),
        ("garbage.png", bytes(range(256)) * 8, "not an image"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadInput) as e:
        load_rgb(tmp_path / name)
    assert name in str(e.value) and problem in str(e.value)


def test_truncated_jpeg(tmp_path):
    data = sg_images("fake", n=1)[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInput, match="cut.jpg: corrupt or truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_missing_and_huge(tmp_path, monkeypatch):
    with pytest.raises(BadInput, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")
    Image.new("RGB", (3000, 2000), (120, 90, 60)).save(tmp_path / "big.jpg")
    assert load_rgb(tmp_path / "big.jpg").size[0] >= 1500  # decoded (draft may downscale)
    import fakescope.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    with pytest.raises(BadInput, match="big.jpg: image too large"):
        load_rgb(tmp_path / "big.jpg")


def test_list_files_recurses_and_skips_hidden(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a" / "y.txt").write_bytes(b"1")
    (tmp_path / ".hidden").write_bytes(b"1")
    names = [p.name for p in list_files([tmp_path])]
    assert names == ["y.txt", "x.jpg"] or sorted(names) == ["x.jpg", "y.txt"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))  # fmt: skip


def test_a_decompression_bomb_is_refused_fast_with_flat_memory(tmp_path):
    import resource
    import time

    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(BadInput, match="bomb.png: image too large .*150,000,000"):
        load_rgb(tmp_path / "bomb.png")
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


@pytest.fixture(scope="module")
def photo_12000x9000(tmp_path_factory):
    """A real face scaled up to a 108-megapixel JPEG (over Pillow's 89 MP bomb warning)."""
    path = tmp_path_factory.mktemp("big") / "dslr.jpg"
    Image.open(sg_images("fake", n=1)[0]).convert("RGB").resize((12000, 9000)).save(
        path, quality=85
    )
    return path


def test_a_108_megapixel_photo_is_read_at_reduced_size(photo_12000x9000):
    im = load_rgb(photo_12000x9000)
    assert im.size[0] / im.size[1] == pytest.approx(12000 / 9000, rel=0.01)
    assert 1500 <= im.size[0] <= 12000


def test_predict_scores_a_108_megapixel_photo(small_run, photo_12000x9000, capsys):
    from fakescope.cli import main

    assert main(["predict", str(small_run), str(photo_12000x9000), "--faces", "never"]) == 0
    out = capsys.readouterr().out
    assert "dslr.jpg" in out and ("fake" in out or "real" in out) and "error" not in out.lower()


def test_a_big_jpeg_is_decoded_at_reduced_scale_only_when_asked(tmp_path, face):
    big = face.resize((2400, 1800), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    big.save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.jpg").size == (2400, 1800)  # under 2x 2048 on a side
    # 320 px needed: 1/4 scale keeps the short side at 450, 1/8 would give 225
    assert load_rgb(tmp_path / "big.jpg", least_side=320).size == (600, 450)
    assert load_rgb(tmp_path / "big.jpg", least_side=1000).size == (2400, 1800)
    assert load_rgb(tmp_path / "big.png", least_side=320).size == (2400, 1800)  # not a JPEG
