"""Issue 3 end to end through the real CLI: group photos, videos, face extraction, Grad-CAM.
Uses the small mobilenet_v2 run of conftest and a resnet50 run made here."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fakescope.data.faces import FaceCropper
from fakescope.evaluation.evaluator import evaluate
from fakescope.scoring.predictor import Predictor, video_score

from .conftest import SG, sg_images
from .test_faces import iou
from .videos import write_video


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fakescope.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory):
    """Four test faces (two real, two fake) pasted at 200 px onto a 1100x520 canvas; the true
    box of each is MTCNN's box on the face image alone, moved and scaled onto the canvas."""
    d = tmp_path_factory.mktemp("group")
    tiles = sg_images("real", n=2) + sg_images("fake", n=2)
    canvas = Image.new("RGB", (1100, 520), (128, 128, 128))
    cropper = FaceCropper(mode="always")
    truth = []
    for i, p in enumerate(tiles):
        im = Image.open(p).convert("RGB")
        face = cropper.faces(im)[0]
        s, (x, y) = 200 / im.width, (40 + i * 265, 60 + (i % 2) * 200)
        canvas.paste(im.resize((200, 200), Image.BICUBIC), (x, y))
        b = face.box
        truth.append({"path": p, "box": (x + b[0] * s, y + b[1] * s, x + b[2] * s, y + b[3] * s)})
    path = d / "group.jpg"
    canvas.save(path, quality=95)
    return path, truth


def test_group_photo_one_row_per_face(small_run, group_photo, tmp_path):
    path, truth = group_photo
    r = cli(
        "predict", small_run, path, "--faces", "always", "--json", tmp_path / "r.json", "--explain"
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "r.json").read_text())
    # one FFHQ portrait has a bystander in its background: MTCNN rightly finds it too
    assert len(rows) >= 4 and all(r["kind"] == "face" for r in rows)
    assert len({tuple(r["box"]) for r in rows}) == len(rows)
    # --explain: one Grad-CAM overlay per face, next to the results
    assert len(list((tmp_path / "r-explanations").glob("*_face*_gradcam.png"))) == len(rows)
    assert all(r["explanation"].endswith("_gradcam.png") for r in rows)
    pred = Predictor(small_run, progress=False)
    for t in truth:
        match = max(rows, key=lambda r: iou(r["box"], t["box"]))
        assert iou(match["box"], t["box"]) >= 0.5
        # the face cut from the group photo scores like the face image scored on its own: the
        # crop is framed the way the training images were (margin measured at training time)
        direct = float(pred.scorer.score_images([Image.open(t["path"]).convert("RGB")])[0])
        assert abs(match["score"] - direct) < 0.2, (match, direct)
        if abs(direct - pred.threshold) > 0.2:
            assert match["verdict"] == pred.verdict(direct)


def test_face_modes_on_single_faces_and_no_face(small_run, tmp_path):
    Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))).save(
        tmp_path / "gradient.png"
    )
    face = sg_images("fake", n=1)[0]
    rows = {
        r.path.split("/")[-1]: r
        for r in Predictor(small_run, faces="auto", progress=False).predict(
            [face, tmp_path / "gradient.png"]
        )
    }
    assert rows["gradient.png"].error and "no face found" in rows["gradient.png"].error
    direct = Predictor(small_run, progress=False).predict([face])
    # auto: an already tight face crop is scored as it is
    assert rows[face.name].score == pytest.approx(next(iter(direct)).score, abs=1e-5)
    assert rows[face.name].box is not None


def test_face_stage_keeps_auc_on_face_crops(small_run, tmp_path):
    data = tmp_path / "subset"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        for p in sg_images(label, n=20):
            (data / label / p.name).symlink_to(p)
    direct = evaluate(small_run, data, out=tmp_path / "a", faces="never", progress=False, explain=0)
    staged = evaluate(small_run, data, out=tmp_path / "b", faces="auto", progress=False, explain=0)
    assert direct["split"] == "all" and direct["n_real"] == 20
    assert abs(direct["auc"] - staged["auc"]) <= 0.01


def test_video_gets_video_and_frame_scores(small_run, tmp_path):
    video = write_video(
        tmp_path / "clip.mp4", [Image.open(p).convert("RGB") for p in sg_images("fake", n=8)], fps=4
    )
    (tmp_path / "fake.mp4").write_text("not a video at all")
    r = cli(
        "predict",
        small_run,
        video,
        tmp_path / "fake.mp4",
        "--faces",
        "auto",
        "--frames",
        "4",
        "--csv",
        tmp_path / "rows.csv",
    )
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert r.returncode == 1  # the fake .mp4 failed, and says so
    bad = [x for x in rows if x["path"].endswith("fake.mp4")]
    assert len(bad) == 1 and "not a readable video" in bad[0]["error"]
    assert bad[0]["kind"] == "video"
    vid = [x for x in rows if x["kind"] == "video" and not x["error"]]
    frames = [x for x in rows if x["kind"] == "frame"]
    assert len(vid) == 1 and len(frames) == 4
    assert len({x["frame"] for x in frames}) == 4
    expected = video_score([float(x["score"]) for x in frames])
    assert float(vid[0]["score"]) == pytest.approx(expected, abs=1e-5)


def test_faces_extract_makes_a_training_folder(group_photo, tmp_path):
    path, truth = group_photo
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "fake").mkdir()
    (src / "real" / "group.jpg").write_bytes(path.read_bytes())
    write_video(
        src / "fake" / "clip.mp4",
        [Image.open(p).convert("RGB") for p in sg_images("fake", n=6)],
        fps=3,
    )
    (src / "fake" / "broken.jpg").write_bytes(b"")
    r = cli("faces", "extract", src, tmp_path / "dst", "--frames", "3")
    assert r.returncode == 1 and "broken.jpg: empty file" in r.stderr
    rows = list(csv.DictReader(open(tmp_path / "dst" / "manifest.csv")))
    assert sum(x["label"] == "real" for x in rows) >= 4  # four pasted faces (+ a bystander)
    assert len({x["frame"] for x in rows if x["label"] == "fake" and x["frame"] != ""}) == 3
    for x in rows:
        crop = Image.open(tmp_path / "dst" / x["crop"])
        assert crop.width == crop.height > 50 and x["source"].startswith(str(src))
        assert float(x["x2"]) > float(x["x1"])


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("r50") / "run"
    r = cli(
        "train",
        "--data",
        SG,
        "--out",
        out,
        "--backbone",
        "resnet50",
        "--weights",
        "none",
        "--steps",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--limit-per-class",
        "4",
        "--max-train-batches",
        "1",
        "--no-eval",
        "--no-tensorboard",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "204,801" in r.stdout  # the paper head at 299 px
    return out


@pytest.mark.parametrize("which", ["small_run", "resnet_run"])
def test_explain_writes_heatmaps(which, request, tmp_path):
    run = request.getfixturevalue(which)
    imgs = [sg_images("fake", n=1)[0], sg_images("real", n=1)[0]]
    r = cli("explain", run, *imgs, "--out", tmp_path / "maps", "--faces", "never")
    assert r.returncode == 0, r.stderr[-2000:]
    pngs = sorted((tmp_path / "maps").glob("*_gradcam.png"))
    assert len(pngs) == 2
    a = np.asarray(Image.open(pngs[0]))
    size = json.loads((run / "fakescope.json").read_text())["model"]["input_size"]
    assert a.shape == (size, size, 3) and a.std() > 5


def test_report_has_mean_gradcam_maps(small_run, tmp_path):
    m = evaluate(small_run, SG, split="val", out=tmp_path, explain=4, progress=False)
    assert (tmp_path / "gradcam_mean.png").exists()
    mean_real = np.load(tmp_path / "gradcam_mean_real.npy")
    assert mean_real.shape == (160, 160) and mean_real.max() > 0
    shares = m["explanations"]["mean_fake"]
    assert sum(shares[k] for k in ("top_third", "middle_third", "bottom_third")) == pytest.approx(
        1.0
    )
    html = (tmp_path / "report.html").read_text()
    assert "Explanations (Grad-CAM)" in html and "mean map" in html.lower()
