"""The one scoring path (Scorer) and the in-memory prediction API, on the small real run."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fakescope.data.dataset import ImageDataset, make_loader
from fakescope.data.folders import read_splits
from fakescope.runs import load_run
from fakescope.scoring.explain import png_bytes
from fakescope.scoring.predictor import Predictor
from fakescope.scoring.scorer import Scorer

from .conftest import ROOT, SG, sg_images


def test_images_and_loaders_score_alike(small_run):
    """A data set's loader and a list of PIL images go through the same scorer: same scores."""
    run = load_run(small_run)
    scorer = Scorer.of_run(run, batch_size=4)
    samples = [s for s in read_splits(SG / "splits.csv") if s.split == "test"][:6]
    ds = ImageDataset(SG, samples, run.input_size, mean=run.mean, std=run.std, fit=run.fit)
    s_loader, y, loss = scorer.score_loader(make_loader(ds, 4))
    s_images = scorer.score_images([Image.open(SG / s.path).convert("RGB") for s in samples])
    np.testing.assert_allclose(s_loader, s_images, atol=1e-6)
    assert list(y) == [s.label for s in samples] and loss > 0


def test_predict_image_in_memory(small_run):
    """A PIL image or an array in, one row per face out, with a Grad-CAM overlay on request;
    the same score as the file path gives."""
    pred = Predictor(small_run, faces="never", progress=False)
    path = sg_images("fake", n=1)[0]
    im = Image.open(path).convert("RGB")
    (row,) = pred.predict_image(im, explain=True)
    (from_array,) = pred.predict_image(np.asarray(im))
    (from_file,) = list(pred.predict([path]))
    assert row.score == from_array.score == pytest.approx(from_file.score, abs=1e-6)
    assert row.verdict == ("fake" if row.score >= pred.threshold else "real")
    overlay = row.extra["overlay"]
    assert overlay.dtype == np.uint8 and overlay.shape == (160, 160, 3)
    png = png_bytes(overlay)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), overlay)


def test_predict_image_finds_faces(small_run):
    pred = Predictor(small_run, faces="always", progress=False)
    im = Image.open(sg_images("real", n=1)[0]).convert("RGB")
    canvas = Image.new("RGB", (700, 400), (30, 30, 30))
    canvas.paste(im, (40, 60))
    canvas.paste(im, (400, 80))
    rows = pred.predict_image(canvas)
    assert len(rows) >= 2 and all(r.box is not None and r.score is not None for r in rows)
    assert pred.predict_image(Image.new("RGB", (300, 200), (200, 200, 200)))[0].error


def test_the_pipeline_scores_files_as_one_at_a_time_and_puts_opencv_back(small_run):
    """Two worker threads with the face stage give the rows one thread gives, in input order;
    OpenCV runs on one thread only while the pipeline does (one_opencv_thread)."""
    import cv2

    files = sg_images("real", n=6) + sg_images("fake", n=6)
    before = cv2.getNumThreads()
    piped = list(Predictor(small_run, faces="auto", progress=False, workers=2).predict(files))
    assert cv2.getNumThreads() == before
    inline = list(Predictor(small_run, faces="auto", progress=False, workers=0).predict(files))
    assert [r.path for r in piped] == [r.path for r in inline] == [str(f) for f in files]
    assert [r.score for r in piped] == pytest.approx([r.score for r in inline], abs=1e-5)


def test_faces_never_decodes_big_jpegs_small_and_scores_them_alike(small_run, tmp_path):
    """Whole-image scoring needs twice the input on the short side (320 px at 160): a big JPEG
    is decoded at reduced scale, and the score stays that of the full decode."""
    from fakescope.data.images import load_rgb

    pred = Predictor(small_run, device="cpu", faces="never", progress=False)
    paths = []
    for i, src in enumerate(sg_images("fake", n=2) + sg_images("real", n=2)):
        paths.append(tmp_path / f"big{i}.jpg")
        Image.open(src).convert("RGB").resize((2048, 2048), Image.BICUBIC).save(paths[-1])
    assert pred.prepare_file(paths[0]).units[0].image.size == (512, 512)
    full = pred.scorer.score_images([load_rgb(p) for p in paths])
    rows = list(pred.predict(paths))
    assert np.abs(np.array([r.score for r in rows]) - full).max() < 0.01


def test_one_scoring_path():
    """evaluation imports neither training nor the Predictor; every caller scores through
    the Scorer (no second model call outside scoring/ and the training steps themselves: int8
    fine-tuning's teacher is the folded network, a training target, not a score)."""
    src = ROOT / "src" / "fakescope"
    imports = [
        line
        for line in (src / "evaluation" / "evaluator.py").read_text().splitlines()
        if "import " in line
    ]
    assert imports and not [i for i in imports if "training" in i or "predictor" in i]
    hits = sorted(
        p.relative_to(src).as_posix()
        for p in src.rglob("*.py")
        if "inference_model(" in p.read_text()
    )
    assert hits == ["model/detector.py", "scoring/finetune.py", "scoring/scorer.py"]
