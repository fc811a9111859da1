"""Train (fixture), evaluate and predict on real sg-ffhq images, through the real CLI."""

import argparse
import csv
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from fakescope.evaluation.evaluator import evaluate
from fakescope.runs import load_run

from .conftest import SG, sg_images


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fakescope.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_run_folder_holds_everything_and_no_pickle(small_run):
    names = {p.name for p in small_run.iterdir()}
    assert {"fakescope.json", "model.safetensors", "split.csv", "log.csv", "tb"} <= names
    assert not list(small_run.rglob("*.pt*")) and not list(small_run.rglob("*.pkl"))
    meta = json.loads((small_run / "fakescope.json").read_text())
    assert meta["model"]["backbone"] == "mobilenet_v2" and meta["model"]["input_size"] == 160
    assert meta["threshold"]["computed_on"] == "val" and meta["threshold"]["criterion"] == "youden"
    assert 0 <= meta["threshold"]["value"] <= 1
    assert meta["format"] == 2 and meta["model"]["precision"] == "auto"
    (source,) = meta["data"]["sources"]
    assert len(source["sha256"]) == 64 and meta["versions"]["torch"]
    assert source["root"] == str(SG.resolve())  # absolute: the same from any directory
    assert [s["frozen_stages"] for s in meta["steps"]] == [0, 3]
    rows = list(csv.DictReader(open(small_run / "log.csv")))
    assert [r["step"] for r in rows] == ["1", "2"]
    split = list(csv.DictReader(open(small_run / "split.csv")))
    assert {r["split"] for r in split} == {"train", "val", "test"}
    assert list((small_run / "tb").iterdir())


def test_evaluate_writes_metrics_plots_and_report(small_run, tmp_path):
    m = evaluate(small_run, SG, split="test", out=tmp_path, progress=False, explain=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for k in (
        "auc",
        "ap",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "eer",
        "threshold",
        "n_real",
        "n_fake",
    ):
        assert k in saved
    assert saved["n_real"] == 165 and saved["n_fake"] == 165
    assert saved["threshold"] == load_run(small_run).threshold  # stored, not tuned on test
    assert m["auc"] > 0.6  # a short run, but it learned something
    assert len(saved["sweep"]) == 13 and "intersections" in saved["kde"]
    for png in ("roc", "pr", "kde", "threshold_sweep", "confusion", "training_curves"):
        assert (tmp_path / f"{png}.png").stat().st_size > 5000
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "Threshold stability" in html


def test_cli_evaluate_prints_headline(small_run, tmp_path):
    r = cli("evaluate", small_run, "--data", SG, "--split", "val", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AUC" in r.stdout and "F1" in r.stdout.upper() and "report:" in r.stdout


@pytest.fixture
def mixed_folder(tmp_path):
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    good = {}
    for label in ("real", "fake"):
        for p in sg_images(label, n=2):
            shutil.copy(p, d / f"{label}_{p.name}")
            good[f"{label}_{p.name}"] = label
    # good but awkward: CMYK JPEG and RGBA PNG in a sub-folder
    Image.open(sg_images("real", n=3)[2]).convert("CMYK").save(d / "sub" / "cmyk.jpg")
    good["cmyk.jpg"] = "real"
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    data = sg_images("fake", n=3)[2].read_bytes()
    (d / "sub" / "cut.jpg").write_bytes(data[: len(data) // 4])
    (d / "gone.jpg").symlink_to(d / "deleted-long-ago.jpg")  # dangling link: a row, not silence
    shutil.copy(sg_images("real", n=4)[3], d / "two\nlines.jpg")  # a newline in a file name
    good["two\nlines.jpg"] = "real"
    return d, good


def test_cli_predict_mixed_folder(small_run, mixed_folder, tmp_path):
    folder, good = mixed_folder
    out_csv, out_json = tmp_path / "rows.csv", tmp_path / "rows.json"
    r = cli("predict", small_run, folder, "--csv", out_csv, "--json", out_json)
    assert r.returncode == 1, "a failed file must show in the exit status"
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 10 == len(json.loads(out_json.read_text()))
    by_name = {r["path"].split("/")[-1]: r for r in rows}
    for bad, problem in (
        ("empty.jpg", "empty file"),
        ("notes.txt", "not an image"),
        ("cut.jpg", "corrupt or truncated"),
        ("gone.jpg", "broken symbolic link"),
    ):
        assert problem in by_name[bad]["error"] and bad in by_name[bad]["error"]
        assert by_name[bad]["verdict"] == ""
        assert "ERROR" in r.stdout and bad in r.stdout
    # one printed row per file: the newline in a name is shown escaped, not acted on
    table = r.stdout.split("verdict ", 1)[1].strip().splitlines()[1:]
    assert len(table) == 10
    assert "two\\nlines.jpg" in r.stdout
    thr = load_run(small_run).threshold
    for name in good:
        row = by_name[name]
        assert row["error"] == "" and row["verdict"] == (
            "fake" if float(row["score"]) >= thr else "real"
        )


def test_predict_same_score_as_evaluation(small_run):
    """Prediction and evaluation preprocess identically: same image, same score."""
    from fakescope.scoring.predictor import Predictor

    p = Predictor(small_run, progress=False)
    img = sg_images("fake", n=1)[0]
    a = p.scorer.score_images([Image.open(img).convert("RGB")])[0]
    b = next(iter(p.predict([img]))).score
    assert a == pytest.approx(b, abs=1e-5)


def test_cli_options_must_be_spelt_out(capsys):
    """No prefix matching: `predict --run RUN` (bench's spelling) once became `--runtime RUN`
    and failed with a list of runtimes that had nothing to do with the mistake."""
    from fakescope.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "runs/x", "photo.jpg", "--runtime", "torch"])
    assert args.runtime == "torch"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "runs/x", "photo.jpg", "--run", "torch"])
    assert "unrecognized arguments: --run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--epoch", "2"])


def test_cli_help_gives_defaults_but_no_empty_ones():
    """Every subcommand's --help gives each option's default, except the options without one,
    whose help says what unset means: "(default: None)" after it only contradicted that."""
    from fakescope.cli import build_parser

    def commands(parser, name="fakescope"):
        yield name, parser
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, p in a.choices.items():
                    yield from commands(p, f"{name} {sub}")

    found = dict(commands(build_parser()))
    assert {"fakescope export", "fakescope faces extract"} <= set(found)
    for name, parser in found.items():
        assert "(default: None)" not in parser.format_help(), name
    export = found["fakescope export"].format_help()
    assert "(default: 32)" in export and "--confirm, --no-confirm" in export
    assert "Default: on with --int8" in " ".join(export.split())


def test_cli_errors_are_one_line(tmp_path):
    r = cli("evaluate", tmp_path / "nope")
    assert r.returncode == 2 and "not a fakescope run folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_finishes_an_interrupted_run(small_run, tmp_path):
    """Drop the final files as if the process died after the last epoch: --resume completes
    the run without training again."""
    from fakescope.config import TrainConfig
    from fakescope.training.loop import train

    run = tmp_path / "resumed"
    shutil.copytree(small_run, run)
    (run / "fakescope.json").unlink()
    (run / "model.safetensors").unlink()
    meta = json.loads((small_run / "fakescope.json").read_text())
    cfg = TrainConfig.from_dict({**meta["train"], "out": str(run)})
    train(cfg, progress=False, resume=True)
    assert len(list(csv.DictReader(open(run / "log.csv")))) == 2  # no extra epochs
    assert load_run(run).threshold == pytest.approx(meta["threshold"]["value"], abs=1e-6)


def test_cli_bad_number_lists_are_clear_errors(tmp_path):
    for flag, value in (("--epochs", "x"), ("--freeze-stages", "1,a")):
        r = cli("train", "--data", SG, "--out", tmp_path / "never", flag, value)
        assert r.returncode == 2
        assert f"argument {flag}: '{value}': expected comma-separated whole numbers" in r.stderr
        assert "Traceback" not in r.stderr
