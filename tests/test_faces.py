"""The face stage on real images with the real MTCNN (no mocks)."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakescope.data.faces import Face, FaceCropper, MTCNNDetector, crop_face
from fakescope.errors import FakescopeError

# conftest.py lets FAKESCOPE_SHARED move the shared folder; the default is ../shared
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = Path(os.environ.get("FAKESCOPE_SHARED", SHARED)) / "data"
FFHQ_REAL = DATA / "sg-ffhq" / "real"

pytestmark = pytest.mark.skipif(not FFHQ_REAL.is_dir(), reason=f"sample data not at {DATA}")


class MemoDetector:
    """The real MTCNN, answering repeat questions about the same pixels from memory: several
    tests look at the same group photo, and each MTCNN pass over it costs seconds."""

    name = "mtcnn"

    def __init__(self):
        self.inner = MTCNNDetector()
        self.memo: dict[bytes, list[Face]] = {}

    def detect(self, im: Image.Image, min_face: int | None = None) -> list[Face]:
        key = hashlib.sha1(im.tobytes()).digest() + repr((im.size, im.mode, min_face)).encode()
        if key not in self.memo:
            self.memo[key] = self.inner.detect(im, min_face)
        return list(self.memo[key])


@pytest.fixture(scope="module")
def detector():
    return MemoDetector()


def ffhq(n: int, label: str = "real") -> list[Path]:
    return sorted((DATA / "sg-ffhq" / label).glob("*.jpg"))[:n]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def paste_faces(detector, paths, size, canvas_size, positions):
    """Paste face images at ``positions``; return the canvas and each face's expected box there
    (MTCNN's box on the unpasted image, scaled and shifted: the face, not the tile)."""
    canvas = Image.new("RGB", canvas_size, (128, 128, 128))
    expected = []
    for p, (x, y) in zip(paths, positions, strict=True):
        im = Image.open(p).convert("RGB")
        (face,) = detector.detect(im)
        s = size / im.width
        canvas.paste(im.resize((size, size), Image.BICUBIC), (x, y))
        b = face.box
        expected.append((x + b[0] * s, y + b[1] * s, x + b[2] * s, y + b[3] * s))
    return canvas, expected


@pytest.fixture(scope="module")
def group(detector):
    positions = [(40, 60), (330, 420), (560, 80), (800, 430)]
    return paste_faces(detector, ffhq(4), 170, (1000, 700), positions)


def test_always_finds_each_face_in_a_group_photo(detector, group):
    canvas, expected = group
    found = FaceCropper("always", detector=detector).crops(canvas)
    assert len(found) >= 4
    for box in expected:
        best = max(iou(box, f.box) for f, _ in found)
        assert best >= 0.5, f"face at {box} matched at IoU {best:.2f} only"
    for face, crop in found:
        side = round(1.3 * max(face.width, face.height))
        assert crop.size == (side, side)
    confidences = [f.confidence for f, _ in found]
    assert confidences == sorted(confidences, reverse=True)
    assert min(confidences) >= 0.9


def test_auto_crops_a_group_photo(detector, group):
    canvas, expected = group
    found = FaceCropper("auto", detector=detector).crops(canvas)
    assert len(found) >= 4
    assert all(crop is not canvas and crop.size[0] < 400 for _, crop in found)


LFW = DATA / "lfw-faceswap"
# (image, how far its face's centre may lie from the image centre, as a fraction of the side).
# real_521, real_347 and fake_51 also hold a neighbour's face, as big and at least as confident as
# the subject's: they are still face crops, and the subject's face is the one reported.
TIGHT = [
    *[(p, 0.2) for p in ffhq(2, "real") + ffhq(2, "fake")],
    (LFW / "real" / "real_1.jpg", 0.1),
    (LFW / "real" / "real_521.jpg", 0.1),
    (LFW / "real" / "real_347.jpg", 0.1),
    (LFW / "fake" / "fake_1.jpg", 0.1),
    (LFW / "fake" / "fake_51.jpg", 0.1),
]


@pytest.mark.parametrize(
    "path,off",
    TIGHT,
    ids=lambda v: f"{v.parent.parent.name}/{v.name}" if isinstance(v, Path) else f"off{v}",
)
def test_auto_scores_face_crops_whole(detector, path, off):
    """Both ways of answering: the quick Haar test (no probability) and MTCNN alone."""
    im = Image.open(path).convert("RGB")
    for quick in (True, False):
        found = FaceCropper("auto", detector=detector, quick_test=quick).crops(im)
        assert len(found) == 1
        face, crop = found[0]
        assert crop is im
        assert face is not None
        assert face.confidence >= 0.9 if face.confidence is not None else quick
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        assert abs(cx - im.width / 2) < off * im.width and abs(cy - im.height / 2) < off * im.height


def no_face_images():
    x = np.linspace(0, 255, 320, dtype=np.float64)
    gradient = np.stack(
        [np.tile(x, (240, 1)), np.tile(x[:240, None], (1, 320)), 255 - np.tile(x, (240, 1))], -1
    )
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3))
    return [Image.fromarray(gradient.astype(np.uint8)), Image.fromarray(noise.astype(np.uint8))]


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_no_face_gives_nothing(detector, mode):
    for im in no_face_images():
        assert FaceCropper(mode, detector=detector).crops(im) == []


def test_never_returns_the_image(detector):
    im = no_face_images()[0]
    assert FaceCropper("never", detector=detector).crops(im) == [(None, im)]


@pytest.mark.parametrize(
    "size", [(1, 1), (5, 5), (8, 8), (12, 12), (19, 300), (3000, 14), (40, 40)]
)
def test_tiny_and_sliver_images_do_not_crash(detector, size):
    im = Image.new("RGB", size, (200, 150, 120))
    assert detector.detect(im) == []
    assert FaceCropper("always", detector=detector).crops(im) == []
    assert FaceCropper("auto", detector=detector).crops(im) == []


def test_many_faces_are_capped(detector):
    # One detection only: MTCNN resamples every candidate box one by one, so a crowd costs
    # 10-20 s on two busy cores.
    tiles = [Image.open(p).convert("RGB").resize((60, 60)) for p in ffhq(64)]
    canvas = Image.new("RGB", (8 * 64, 8 * 64), (128, 128, 128))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 8) * 64 + 2, (i // 8) * 64 + 2))
    found = FaceCropper("always", detector=detector, max_faces=40).crops(canvas)
    assert len(found) == 40
    confidences = [f.confidence for f, _ in found]
    assert confidences == sorted(confidences, reverse=True)


def test_detector_keeps_the_most_confident(detector, group):
    canvas, _ = group
    everything = detector.detect(canvas)
    capped = MTCNNDetector(max_faces=2).detect(canvas)
    assert len(everything) > 2
    assert [f.confidence for f in capped] == [f.confidence for f in everything[:2]]


def test_channels_last_mtcnn_finds_what_the_library_as_shipped_finds(detector, group):
    """fakescope runs MTCNN with channels_last weights for speed (docs/faces.md); the faces
    must be the ones facenet-pytorch's own NCHW network finds, to float rounding."""
    import torch
    from facenet_pytorch import MTCNN

    shipped = MTCNN(keep_all=True, device="cpu", min_face_size=20, select_largest=False)
    ims = [group[0], *(Image.open(p).convert("RGB") for p in ffhq(3, "fake"))]
    for im in ims:
        ours = detector.detect(im)
        boxes, probs = shipped.detect(im)
        keep = [i for i, p in enumerate(probs) if p >= 0.9]
        assert len(ours) == len(keep) > 0
        theirs = sorted(((float(probs[i]), boxes[i]) for i in keep), key=lambda t: -t[0])
        for face, (p, box) in zip(ours, theirs, strict=True):
            assert abs(face.confidence - p) < 1e-4
            assert np.allclose(face.box, np.asarray(box, dtype=float), atol=0.05)
    conv = next(m for m in detector.inner._model().modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_large_image_boxes_map_back_to_original_coordinates(detector):
    canvas, (expected,) = paste_faces(detector, ffhq(1), 900, (3600, 2400), [(2200, 700)])
    faces = detector.detect(canvas)
    assert faces and iou(faces[0].box, expected) >= 0.5
    assert all(p[0] > 2200 and p[1] > 700 for p in faces[0].landmarks)


def test_min_face_drops_small_faces(detector, group):
    canvas, _ = group
    assert FaceCropper("always", detector=detector, min_face=200).crops(canvas) == []


def test_crop_near_border_slides_inside_or_pads():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (200, 300, 3)).astype(np.uint8)
    im = Image.fromarray(arr)
    face = Face(box=(-10.0, 150.0, 50.0, 230.0), confidence=1.0, landmarks=None)
    # a square that fits the image is moved inside it: original pixels, no resampling
    crop = crop_face(im, face, margin=1.5)
    assert crop.size == (120, 120)
    assert np.array_equal(np.asarray(crop), arr[80:200, 0:120])
    # a square taller than the image: x slides inside, y is padded with repeated edge rows
    crop = np.asarray(crop_face(im, face, margin=3.0))
    side = 240
    y0 = round(190 - side / 2)  # 70: rows 70..199 are real, the rest repeat row 199
    assert crop.shape == (side, side, 3)
    assert np.array_equal(crop[: 200 - y0], arr[y0:, :side])
    assert np.array_equal(crop[-1], arr[-1, :side])


def eye_angle(face: Face) -> float:
    (lx, ly), (rx, ry) = face.landmarks[:2]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def test_align_levels_the_eyes(detector):
    im = Image.open(ffhq(1)[0]).convert("RGB")
    tilted = im.rotate(25, resample=Image.BICUBIC, expand=True, fillcolor=(128, 128, 128))
    (face,) = detector.detect(tilted)
    assert abs(eye_angle(face)) > 15
    aligned = crop_face(tilted, face, margin=1.3, align=True)
    side = round(1.3 * max(face.width, face.height))
    assert aligned.size == (side, side)
    (again,) = detector.detect(aligned)
    assert abs(eye_angle(again)) < 6


def test_training_crop(detector, group):
    face_path = ffhq(1)[0]
    im = Image.open(face_path).convert("RGB")
    auto = FaceCropper("auto", detector=detector)
    assert auto.training_crop(im, face_path) is im

    always = FaceCropper("always", detector=detector)
    first = always.training_crop(im, face_path)
    (face, crop), *_ = always.crops(im)
    assert np.array_equal(np.asarray(first), np.asarray(crop))
    # the second call is served from the cache, and gives the same pixels
    assert str(face_path) in always._cache
    assert np.array_equal(np.asarray(always.training_crop(im, face_path)), np.asarray(first))

    blank = no_face_images()[0]
    assert always.training_crop(blank, "blank.png") is blank

    canvas, _ = group
    best = always.training_crop(canvas, "group.png")
    assert best.size == always.crops(canvas)[0][1].size


def test_bad_mode_and_describe():
    with pytest.raises(FakescopeError, match="sometimes"):
        FaceCropper("sometimes")
    d = FaceCropper("always", margin=1.5).describe()
    assert d == {"mode": "always", "margin": 1.5, "align": False, "detector": "mtcnn"}


def test_detector_loads_lazily():
    assert MTCNNDetector()._net is None
    code = "import sys, fakescope.data.faces; assert 'facenet_pytorch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_quick_test_answers_most_face_crops_and_no_group_photo(group):
    """It must carry the load on face crops (else it only adds its own cost) and must not take
    a group photo for one face's crop."""
    from fakescope.data.faces import QuickTightTest

    q = QuickTightTest()
    crops = [Image.open(p).convert("RGB") for p in ffhq(4, "real") + ffhq(4, "fake")]
    assert sum(q.tight_face(im) is not None for im in crops) >= 6
    assert q.tight_face(group[0]) is None
    assert all(q.tight_face(im) is None for im in no_face_images())
    # faces just over the rule's size bound, one of them central: a group, not a crop (the
    # web page's test photo, which Haar's larger boxes once passed off as a crop)
    canvas = Image.new("RGB", (1100, 520), (128, 128, 128))
    for i, p in enumerate(ffhq(2, "real") + ffhq(2, "fake")):
        face = Image.open(p).convert("RGB").resize((200, 200), Image.BICUBIC)
        canvas.paste(face, (40 + i * 265, 60 + (i % 2) * 200))
    assert q.tight_face(canvas) is None


def test_the_quick_test_answers_a_big_photo_of_a_crop_as_the_crop_itself():
    """A photo many times the test's side is shrunk by a whole factor first (for speed): its
    answer and face are those of the same picture at crop size: the same centre, and a box at
    most one step of the cascades' pyramid (1.3) bigger or smaller."""
    from fakescope.data.faces import QuickTightTest

    q = QuickTightTest()
    answered = 0
    for p in ffhq(6, "fake"):
        crop = Image.open(p).convert("RGB")
        small = q.tight_face(crop)
        big = q.tight_face(crop.resize((3072, 3072), Image.BICUBIC))
        assert (small is None) == (big is None)
        if small is not None:
            answered += 1
            a, b = [v * 12 for v in small.box], big.box
            for i in (0, 1):  # x, then y: centres within 5 % of the side
                assert abs((a[i] + a[i + 2]) - (b[i] + b[i + 2])) / 2 < 0.05 * 3072
            assert 1 / 1.31 < (b[2] - b[0]) / (a[2] - a[0]) < 1.31
    assert answered >= 5


def test_the_second_cascade_answers_where_the_first_found_nothing():
    """A tilted face (sg-ffhq real 00005) that the first, faster cascade misses is answered by
    the second."""
    from fakescope.data.faces import QuickTightTest

    im = Image.open(ffhq(6, "real")[5]).convert("RGB")
    both, first = QuickTightTest(lbp=False), QuickTightTest(lbp=False)
    first.CASCADES = QuickTightTest.CASCADES[:1]
    assert first.tight_face(im) is None
    assert both.tight_face(im) is not None


def test_the_third_pass_answers_where_the_first_two_found_nothing():
    """FFHQ photos that neither of the first two cascades finds a face in (sg-ffhq real 00036,
    00061, 00063) are answered by the finer third pass, each with a central box, where MTCNN
    would have had to decide."""
    from fakescope.data.faces import QuickTightTest

    all3, two = QuickTightTest(lbp=False), QuickTightTest(lbp=False)
    two.CASCADES = QuickTightTest.CASCADES[:2]
    for name in ("00036.jpg", "00061.jpg", "00063.jpg"):
        im = Image.open(FFHQ_REAL / name).convert("RGB")
        assert two.tight_face(im) is None, name
        face = all3.tight_face(im)
        assert face is not None, name
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        assert abs(cx / im.width - 0.5) < 0.25 and abs(cy / im.height - 0.5) < 0.25


def test_the_quick_test_leaves_a_face_on_the_edge_of_its_bound_to_mtcnn(detector):
    """A face crop pasted onto one half of a wide canvas has its centre a quarter of the width
    off centre, the rule's own bound: MTCNN's box lies just outside it, so "auto" crops the
    face. The Haar box, a little off MTCNN's, lay just inside, and the quick test used to call
    the whole canvas a crop; its own bound is now 0.2."""
    from fakescope.data.faces import QuickTightTest

    cropper = FaceCropper("auto", detector=detector, quick_test=False)
    for name, x in (("00002.jpg", 0), ("00003.jpg", 300)):
        canvas = Image.new("RGB", (600, 400), (30, 60, 90))
        canvas.paste(Image.open(FFHQ_REAL / name).convert("RGB").resize((300, 300)), (x, 50))
        assert cropper.tight_face(canvas, cropper.faces(canvas)) is None, name
        for lbp in (False, True):
            assert QuickTightTest(lbp=lbp).tight_face(canvas) is None, (name, lbp)


class Asked:
    """The real MTCNN (through the memo), noting how big a face each search looked for."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    def detect(self, im: Image.Image, min_face: int | None = None) -> list[Face]:
        self.asked.append(min_face)
        return self.inner.detect(im, min_face)


def test_auto_asks_mtcnn_for_a_big_face_first_and_the_whole_search_decides_the_rest(
    detector, group
):
    """Where the quick test has no answer, MTCNN looks first only for a face as big as the
    big-face pass's bound (a short pyramid); a face crop is answered there, anything else is
    searched whole. Its decisions are the whole search's: on face crops, on a group photo, and
    on a row of three faces whose middle one lies near the rule's size bound (the middle face
    is about a quarter of the canvas's short side)."""
    from fakescope.data.faces import BIG_FACE_MIN_RATIO

    face = Image.open(ffhq(1, "fake")[0]).convert("RGB")
    asked = Asked(detector)
    found = FaceCropper("auto", detector=asked, quick_test=False).crops(face)
    assert len(found) == 1 and found[0][1] is face
    assert asked.asked == [math.floor(BIG_FACE_MIN_RATIO * min(face.size))]

    canvas, _ = group
    asked.asked.clear()
    auto = FaceCropper("auto", detector=asked, quick_test=False).crops(canvas)
    assert asked.asked == [math.floor(BIG_FACE_MIN_RATIO * min(canvas.size)), None]
    always = FaceCropper("always", detector=detector).crops(canvas)
    assert [f.box for f, _ in auto] == [f.box for f, _ in always]

    row = Image.new("RGB", (768, 300), (200, 200, 200))
    for j, p in enumerate(ffhq(3, "real")):
        row.paste(Image.open(p).convert("RGB").resize((220, 220)), (j * 256 + 18, 40))
    whole = FaceCropper("auto", detector=detector, quick_test=False)
    for im in (*(Image.open(p).convert("RGB") for p in ffhq(3, "fake")), canvas, row):
        rule = whole.tight_face(im, whole.faces(im)) is not None
        crops = whole.crops(im)
        assert (len(crops) == 1 and crops[0][1] is im) == rule


def test_the_lbp_pass_answers_most_face_crops_alone_and_no_group_photo(group):
    """The LBP cascade, where one is installed (CI installs Debian's opencv-data), is asked
    first: on its own it must answer most face crops, or it only adds its cost, and it must not
    take a group photo or a faceless image for a crop."""
    from fakescope.data.faces import QuickTightTest, lbp_cascade_file

    if lbp_cascade_file() is None:
        if os.environ.get("CI"):
            pytest.fail("no LBP cascade installed: .ci/run installs Debian's opencv-data")
        pytest.skip("no LBP cascade installed (Debian: apt install opencv-data)")
    lbp_only = QuickTightTest()
    lbp_only.CASCADES = ()
    assert lbp_only.describe() == "LBP, then Haar cascades"
    crops = [Image.open(p).convert("RGB") for p in ffhq(8, "real") + ffhq(8, "fake")]
    answered = [lbp_only.tight_face(im) for im in crops]
    assert sum(f is not None for f in answered) >= 12
    haar = QuickTightTest(lbp=False)
    for im, f in zip(crops, answered, strict=True):
        if f is not None:  # the same answer as the Haar passes, about the same face
            h = haar.tight_face(im)
            assert h is not None and iou(f.box, h.box) > 0.5
    assert lbp_only.tight_face(group[0]) is None
    assert all(lbp_only.tight_face(im) is None for im in no_face_images())


def test_the_lbp_cascade_is_named_turned_off_or_refused(tmp_path, monkeypatch):
    from fakescope.data.faces import LBP_CASCADE_ENV, QuickTightTest, lbp_cascade_file

    monkeypatch.setenv(LBP_CASCADE_ENV, "")
    assert lbp_cascade_file() is None and QuickTightTest().lbp is None
    assert QuickTightTest().describe() == "Haar cascades"
    bad = tmp_path / "cascade.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    monkeypatch.setenv(LBP_CASCADE_ENV, str(bad))
    with pytest.raises(FakescopeError, match="cascade.xml: not a cascade file"):
        FaceCropper("auto")
    monkeypatch.setenv(LBP_CASCADE_ENV, str(tmp_path / "missing.xml"))
    with pytest.raises(FakescopeError, match="missing.xml: not a cascade file"):
        QuickTightTest()
    assert "quick_test" not in FaceCropper("never").describe()


def test_one_opencv_thread_is_put_back():
    import cv2

    from fakescope.data.faces import one_opencv_thread

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with one_opencv_thread():
            assert cv2.getNumThreads() == 1
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
