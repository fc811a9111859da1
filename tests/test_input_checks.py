"""A bad command fails before any work, in one line, and leaves nothing behind (issue 14,
findings 3 and 6)."""

from __future__ import annotations

import pytest

from fakescope.cli import main

from .conftest import SG, sg_images

TRAIN = ["train", "--backbone", "mobilenet_v2", "--weights", "none", "--no-tensorboard"]


def _fails(capsys, argv, message, out):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists(), "a refused command must not leave a run folder"


def _data_copy(tmp_path, with_fake=True):
    """sg-ffhq's folders linked into a new data folder (its images stay in ../shared)."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "real").symlink_to(SG / "real")
    if with_fake:
        (d / "fake").symlink_to(SG / "fake")
    return d


def test_a_splits_file_naming_a_missing_image_fails_before_training(tmp_path, capsys):
    d = _data_copy(tmp_path)
    lines = (SG / "splits.csv").read_text().splitlines()
    (d / "splits.csv").write_text("\n".join([*lines, "real/deleted.png,real,train"]) + "\n")
    out = tmp_path / "run"
    _fails(capsys, [*TRAIN, "--data", str(d), "--out", str(out)],
           "1 listed file(s) not found", out)  # fmt: skip


def test_excluding_a_generator_that_is_not_there_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, [*TRAIN, "--data", str(SG), "--out", str(out), "--exclude", "stargan"],
           "--exclude stargan: no generator of that name in the data", out)  # fmt: skip


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--lr", "-1", "--lr -1.0: must be a number of at least 0"),
        ("--lr", "nan", "--lr nan: must be a number of at least 0"),
        ("--batch-size", "0", "--batch-size 0: must be a whole number of at least 1"),
        ("--epochs", "0", "--epochs 0: must be a whole number of at least 1"),
        ("--jpeg-prob", "2", "--jpeg-prob 2.0: must be a probability"),
        ("--jpeg-quality", "90,10", "--jpeg-quality 90,10: must be LOW,HIGH"),
    ],
)
def test_out_of_range_options_are_one_line(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    _fails(capsys, [*TRAIN, "--data", str(SG), "--out", str(out), flag, value], message, out)


def test_an_out_folder_that_cannot_be_written_is_refused_up_front(tmp_path, capsys):
    assert main([*TRAIN, "--data", str(SG), "--out", "/proc/fakescope-x"]) == 2
    assert "--out /proc/fakescope-x: cannot write there" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if _writable(ro):
            return  # root writes anywhere: /proc above is the case that holds for every user
        out = ro / "run"
        _fails(capsys, [*TRAIN, "--data", str(SG), "--out", str(out)], "cannot write there", out)
    finally:
        ro.chmod(0o700)


def _writable(folder) -> bool:
    try:
        (folder / ".t").write_bytes(b"")
        (folder / ".t").unlink()
        return True
    except OSError:
        return False


def test_a_data_folder_without_fakes_says_what_is_missing(tmp_path, capsys):
    d = _data_copy(tmp_path, with_fake=False)
    out = tmp_path / "run"
    message = f"no fake images in the train split (there is no {d.resolve() / 'fake'} folder)"
    _fails(capsys, [*TRAIN, "--data", str(d), "--out", str(out)], message, out)


def test_evaluate_refuses_a_splits_file_with_missing_images_too(small_run, tmp_path, capsys):
    d = _data_copy(tmp_path)
    lines = (SG / "splits.csv").read_text().splitlines()
    (d / "splits.csv").write_text("\n".join([*lines, "fake/gone.png,fake,test"]) + "\n")
    assert main(["evaluate", str(small_run), "--data", str(d), "--out", str(tmp_path / "e")]) == 2
    assert "listed file(s) not found" in capsys.readouterr().err
    assert sg_images("fake", n=1)  # the shared data itself is untouched
