"""Shared fixtures: the sample data in ../shared (read in place), a TORCH_HOME seeded with the
MobileNetV2 ImageNet file so torchvision's real loading path works offline, and one small
trained run that the end-to-end tests share."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FAKESCOPE_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
SG = DATA / "sg-ffhq"
LFW = DATA / "lfw-faceswap"
MOBILENET_FILE = SHARED / "weights" / "mobilenet_v2-b0353104.pth"


@contextmanager
def threads_per_process(procs: int):
    """torch's thread count, for the duration, set to what each of ``procs`` training processes
    on this machine gets (its cores divided among them). Tests that compare one process with
    several run the one process so: the thread count sets the order of the sums, and Adam's
    first step, lr * sign(gradient), flips for gradients within rounding of zero (2 threads
    against 1 put 519 of 2.26 million weights 2 * lr apart, session 14)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // procs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def xdist_worker() -> bool:
    """Whether this process is one of pytest-xdist's workers (scripts/test.sh starts two)."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def pytest_configure(config):
    if not SG.is_dir():
        raise pytest.UsageError(f"sample data not found at {SG}; set FAKESCOPE_SHARED")
    if xdist_worker():
        # Two workers on two cores: each keeps torch (and what it starts) to one thread. With
        # torch's default of one thread per core in both, the suite was no faster than one
        # worker (OpenMP threads waiting on each other across a busy machine; session 26).
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def torch_home(tmp_path_factory):
    """A private TORCH_HOME holding only the ImageNet file ../shared provides."""
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copy(MOBILENET_FILE, ckpt / MOBILENET_FILE.name)
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    import torch

    torch.hub.set_dir(str(home / "hub"))
    yield home
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


def sg_images(label: str, split: str = "test", n: int = 4) -> list[Path]:
    rows = [line.split(",") for line in (SG / "splits.csv").read_text().splitlines()[1:]]
    return [SG / p for p, lab, sp in rows if lab == label and sp.strip() == split][:n]


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)``, once for the whole test session, and a private copy of what it made.

    Under pytest-xdist every worker process has a session of its own: the first worker to
    get here makes ``name`` in the directory the workers share, under a file lock, and the
    others wait for it; each then works on a copy, as tests write into what they are given."""
    mine = tmp_path_factory.mktemp(name) / name
    if not xdist_worker():
        make(mine)
        return mine
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{shared}.lock"):
        if not (shared / ".complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            make(shared)
            (shared / ".complete").touch()
    shutil.copytree(shared, mine, ignore=shutil.ignore_patterns(".complete"))
    return mine


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, torch_home):
    """mobilenet_v2 from ImageNet weights, fine-tuned briefly at 160 px on a slice of sg-ffhq,
    two steps (the second with frozen stages) so the whole schedule runs. Weak but real."""
    return made_once(tmp_path_factory, "small", _train_small_run)


def _train_small_run(out: Path) -> None:
    from fakescope.config import TrainConfig
    from fakescope.training.loop import train

    cfg = TrainConfig(
        data=str(SG),
        out=str(out),
        backbone="mobilenet_v2",
        weights="imagenet",
        input_size=160,
        lr=1e-4,
        batch_size=16,
        epochs=1,
        steps=2,
        limit_per_class=48,
        jpeg_prob=0.3,
        tensorboard=True,
    )
    train(cfg, progress=False)


def pytest_addoption(parser):
    parser.addoption(
        "--page-screenshot",
        default=None,
        help="where test_page saves a screenshot of the page with a group photo (for the docs)",
    )


# The files that take longest, slowest first (one serial run on 2 AVX2 cores: 510 s down to
# 76 s; docs/benchmarks.md, session 26). scripts/test.sh runs the suite on two pytest-xdist
# workers, each taking whole files; handing these out first keeps one worker from finishing
# alone on a long file.
SLOWEST_FILES = [
    "test_export.py",
    "test_crash.py",
    "test_training_options.py",
    "test_paper_checks.py",
    "test_ensemble.py",
    "test_in_the_wild.py",
]


def pytest_collection_modifyitems(config, items):
    if not xdist_worker():
        return  # a serial run keeps the files in their order

    def rank(item) -> int:
        name = item.path.name
        return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays
