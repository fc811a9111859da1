"""Robustness-curve perturbations, checked on real sample faces from sg-ffhq."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from fakescope.data.perturb import (
    PERTURBATIONS,
    blur,
    downscale,
    jpeg,
    noise,
    parse_perturbations,
    social,
)
from fakescope.errors import FakescopeError

from .conftest import sg_images

NAMES = list(PERTURBATIONS)


@pytest.fixture(scope="module")
def faces() -> list[Image.Image]:
    # both classes: GAN faces are smoother than photos, and a sweep must behave on either
    paths = sg_images("real", n=2) + sg_images("fake", n=2)
    assert len(paths) == 4
    return [Image.open(p).convert("RGB") for p in paths]


def mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_registry_levels_and_labels():
    assert NAMES == ["jpeg", "blur", "downscale", "noise", "social"]
    expected = {
        "jpeg": (100, 90, 70, 50, 30),
        "blur": (0, 0.5, 1, 2, 3),
        "downscale": (1, 0.75, 0.5, 0.35, 0.25),
        "noise": (0, 2, 5, 10, 20),
        "social": (0, 1, 2, 3, 4),
    }
    for name, p in PERTURBATIONS.items():
        assert p.name == name
        assert tuple(p.levels) == expected[name]
        assert p.clean == p.levels[0]
        assert p.unit


@pytest.mark.parametrize("name", NAMES)
def test_clean_level_leaves_image_alone(name, faces):
    p = PERTURBATIONS[name]
    for im in faces:
        out = p.apply(im, p.clean, seed=0)
        assert out is not im
        if name == "jpeg":
            # quality 100 is still a lossy round trip, only a very mild one
            assert mad(out, im) < 1.0
        else:
            assert np.array_equal(np.asarray(out), np.asarray(im))


@pytest.mark.parametrize("name", NAMES)
def test_severity_grows_with_level(name, faces):
    p = PERTURBATIONS[name]
    dist = [np.mean([mad(p.apply(im, lv, seed=0), im) for im in faces]) for lv in p.levels]
    steps = zip(dist, dist[1:], strict=False)
    assert all(b > a for a, b in steps), dict(zip(p.levels, dist, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_size_and_mode_kept_and_input_untouched(name, faces):
    p = PERTURBATIONS[name]
    # odd, non-square sizes catch rounding in the down-and-up resizes
    odd = faces[0].crop((3, 5, 200, 250))
    gray = faces[1].convert("L").resize((101, 77))
    for im in (faces[2], odd, gray):
        before = np.asarray(im).copy()
        for lv in p.levels:
            out = p.apply(im, lv, seed=3)
            assert out.size == im.size
            assert out.mode == "RGB"
        assert np.array_equal(np.asarray(im), before)


def test_noise_is_seeded(faces):
    im = faces[0]
    a, b, c = noise(im, 10, seed=1), noise(im, 10, seed=1), noise(im, 10, seed=2)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    p = PERTURBATIONS["noise"]
    assert np.array_equal(np.asarray(p.apply(im, 5, seed=7)), np.asarray(p.apply(im, 5, seed=7)))
    assert not np.array_equal(np.asarray(p.apply(im, 5, seed=7)), np.asarray(p.apply(im, 5, 8)))
    # a shared generator advances, so successive images get fresh noise
    rng = np.random.default_rng(0)
    assert not np.array_equal(np.asarray(noise(im, 5, rng)), np.asarray(noise(im, 5, rng)))


def test_deterministic_ones_ignore_seed(faces):
    im = faces[3]
    for name in ("jpeg", "blur", "downscale", "social"):
        p = PERTURBATIONS[name]
        lv = p.levels[2]
        assert np.array_equal(np.asarray(p.apply(im, lv, 1)), np.asarray(p.apply(im, lv, 2)))


def test_functions_match_registry(faces):
    im = faces[0]
    pairs = [(jpeg(im, 50), "jpeg", 50), (blur(im, 2), "blur", 2)]
    pairs += [(downscale(im, 0.5), "downscale", 0.5), (social(im, 3), "social", 3)]
    for direct, name, lv in pairs:
        assert np.array_equal(np.asarray(direct), np.asarray(PERTURBATIONS[name].apply(im, lv)))


@pytest.mark.parametrize(
    "fn, level",
    [
        (jpeg, 0),
        (jpeg, 101),
        (blur, -1),
        (downscale, 0),
        (downscale, 1.5),
        (noise, -2),
        (social, 5),
        (social, 1.5),
    ],
)
def test_out_of_range_levels_rejected(fn, level, faces):
    with pytest.raises(ValueError):
        fn(faces[0], level)


def test_parse_perturbations():
    assert [p.name for p in parse_perturbations("jpeg,blur")] == ["jpeg", "blur"]
    assert [p.name for p in parse_perturbations(" Noise , jpeg,noise,")] == ["noise", "jpeg"]
    assert [p.name for p in parse_perturbations("all")] == NAMES


@pytest.mark.parametrize("spec", ["jpeg,sepia", "", " , "])
def test_parse_rejects_unknown_naming_known(spec):
    with pytest.raises(FakescopeError) as exc:
        parse_perturbations(spec)
    msg = str(exc.value)
    assert all(name in msg for name in NAMES)
    if "sepia" in spec:
        assert "sepia" in msg


def test_perturbation_pickles(faces):
    # evaluation may hand a perturbation to DataLoader worker processes
    p = pickle.loads(pickle.dumps(PERTURBATIONS["noise"]))
    assert np.array_equal(
        np.asarray(p.apply(faces[0], 5, 1)),
        np.asarray(PERTURBATIONS["noise"].apply(faces[0], 5, 1)),
    )
