"""Data layout, splits and preprocessing on real folders (DFFD-like layout built from links)."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from fakescope.data import folders as D
from fakescope.data import transforms as T
from fakescope.errors import FakescopeError

from .conftest import SG, sg_images


@pytest.fixture
def dffd_like(tmp_path):
    """real/ plus fake/<generator>/ made of links to sg-ffhq images; no splits.csv."""
    (tmp_path / "real").mkdir()
    for p in sg_images("real", split="train", n=20):
        (tmp_path / "real" / p.name).symlink_to(p)
    fakes = sg_images("fake", split="train", n=30)
    for gen, chunk in (("stylegan", fakes[:20]), ("faceswap", fakes[20:])):
        (tmp_path / "fake" / gen).mkdir(parents=True)
        for p in chunk:
            (tmp_path / "fake" / gen / p.name).symlink_to(p)
    return tmp_path


def test_stratified_split_is_fixed_and_per_generator(dffd_like):
    a, origin = D.load_samples(dffd_like, seed=3)
    b, _ = D.load_samples(dffd_like, seed=3)
    c, _ = D.load_samples(dffd_like, seed=4)
    assert a == b and a != c and "seed 3" in origin
    assert {s.source for s in a if s.label} == {"stylegan", "faceswap"}
    for src in ("stylegan", "faceswap"):
        splits = [s.split for s in a if s.source == src]
        assert splits.count("train") == round(len(splits) * 0.7)
        assert "val" in splits and "test" in splits


def test_exclude_drops_generators(dffd_like, tmp_path):
    kept, _ = D.load_samples(dffd_like, exclude=("FaceSwap",))
    assert {s.source for s in kept if s.label} == {"stylegan"}
    assert sum(1 for s in kept if not s.label) == 20
    D.write_splits(kept, tmp_path / "s.csv")
    assert D.read_splits(tmp_path / "s.csv") == kept


def test_shared_splits_csv_is_used():
    samples, origin = D.load_samples(SG)
    assert origin.endswith("splits.csv") and len(samples) == 2200
    fp = D.fingerprint(SG, samples)
    assert fp["counts"]["test/fake"] == 165 and len(fp["sha256"]) == 64


def test_bad_folders(tmp_path):
    with pytest.raises(FakescopeError, match="not found"):
        D.load_samples(tmp_path / "nope")
    with pytest.raises(FakescopeError, match="no images under real/ or fake/"):
        D.load_samples(tmp_path)


def test_fit_resize_and_pad():
    im = Image.open(sg_images("real", n=1)[0]).convert("RGB")  # 256x256
    assert T.fit_square(im, 299).size == (299, 299)
    padded = T.fit_square(im, 299, "pad")
    a = np.asarray(padded)
    assert np.array_equal(a[21:277, 21:277], np.asarray(im))  # pixels untouched
    t = T.to_tensor(im, 299, fit="pad")
    assert abs(float(t[:, 0, 0].abs().max())) < 0.02  # the canvas normalises to ~0
    wide = im.resize((400, 200))
    assert T.fit_square(wide, 128).size == (128, 128)


def test_to_tensor_is_pils_resize_and_torchvisions_normalisation():
    """The network input: PIL's bicubic resize and crop (``fit_square``) with torchvision's
    ToTensor + Normalize, up to the resampler's rounding (at most 2 of 255 in a pixel)."""
    from torchvision.transforms import functional as F

    im = Image.open(sg_images("fake", n=1)[0]).convert("RGB")
    for source, size in ((im, 299), (im.resize((400, 300)), 299), (im, 128)):
        want = F.normalize(F.to_tensor(T.fit_square(source, size)), T.IMAGENET_MEAN, T.IMAGENET_STD)
        got = T.to_tensor(source, size)
        assert got.shape == (3, size, size) and got.dtype == want.dtype and got.is_contiguous()
        diff = (got - want).abs() * torch.tensor(T.IMAGENET_STD).view(3, 1, 1) * 255
        assert float(diff.max()) <= 2.01 and float(diff.mean()) < 0.1
    # at the input size no resampling at all: the pixels as they are, normalised
    want = F.normalize(F.to_tensor(im), T.IMAGENET_MEAN, T.IMAGENET_STD)
    assert torch.allclose(T.to_tensor(im, 256), want, atol=1e-5)


def test_pixels_of_undoes_normalise_exactly():
    """A model that takes pixels can be handed a normalised batch (a loader's): every pixel
    value of every channel comes back as it was, for ImageNet's statistics and odd ones."""
    p = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 1).view(2, 3, 16, 16)
    for mean, std in ((T.IMAGENET_MEAN, T.IMAGENET_STD), ((0.5,) * 3, (0.5,) * 3),
                      ((0.1, 0.9, 0.3), (0.01, 0.7, 0.05))):  # fmt: skip
        back = T.pixels_of(T.normalise(p, mean, std), mean, std)
        assert back.dtype == torch.uint8 and torch.equal(back, p)


def test_augment_is_deterministic_per_seed_and_keeps_size():
    im = Image.open(sg_images("fake", n=1)[0]).convert("RGB")
    aug = T.Augment(hflip=True, jpeg_prob=1.0, blur_prob=0.5, resize_prob=0.5, crop_scale=0.8)
    a = np.asarray(aug(im, random.Random(7)))
    b = np.asarray(aug(im, random.Random(7)))
    assert np.array_equal(a, b)
    outs = [aug(im, random.Random(i)) for i in range(6)]
    assert all(o.width == o.height and 0.8 * 256 - 1 <= o.width <= 256 for o in outs)
    assert len({o.tobytes() for o in outs}) == 6
