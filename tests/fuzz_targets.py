"""What users hand fakescope, as fuzz targets: each takes generated input and must end in a
result or a FakescopeError (one line, naming the file); anything else is a finding.

Shared by the short run in the test suite (tests/test_fuzz.py) and the long campaign
(scripts/fuzz.py). Inputs are mutations of real seeds (a face from ../shared in every image
format Pillow writes, a real video, a real run's JSON and weights, a real splits.csv) plus
raw bytes, so that the fuzzer spends its time near valid inputs, where parsers are deepest.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from PIL import Image

from fakescope.errors import FakescopeError

from .conftest import SG, sg_images

# every format this Pillow both writes and reads back (EPS needs Ghostscript; PALM and BLP
# cannot be read back in these modes); the 1-bit and float formats get their own mode
FORMATS = ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "ICO", "PPM", "TGA", "PCX", "SGI",
           "IM", "JPEG2000", "DDS", "ICNS", "QOI", "SPIDER", "XBM", "MSP", "AVIF", "MPO",
           "DIB"]  # fmt: skip
_MODES = {"XBM": "1", "MSP": "1", "SPIDER": "F"}


def _face(size=48) -> Image.Image:
    return Image.open(sg_images("fake", n=1)[0]).convert("RGB").resize((size, size))


def image_seeds() -> list[bytes]:
    out = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        try:
            _face().convert(_MODES.get(fmt, "RGB")).save(buf, format=fmt)
        except (OSError, KeyError, ValueError):  # a codec this Pillow was built without
            continue
        out.append(buf.getvalue())
    return out


def video_seed(folder: Path) -> bytes:
    from .videos import write_video

    return write_video(folder / "seed.mp4", [_face(64)] * 4).read_bytes()


@dataclass(frozen=True)
class Mutation:
    """How to damage a seed, not the damaged bytes: hypothesis keeps every example it makes,
    and keeping megabytes of weights per example grew the campaign by 1.5 MB an input."""

    seeds: tuple[bytes, ...]  # shared by every example, never copied
    seed: int
    ops: tuple  # (kind, position, value) applied in order
    raw: bytes | None = None  # instead of a seed: these bytes

    def bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        data = bytearray(self.seeds[self.seed])
        for kind, at, value in self.ops:
            at = at % max(len(data), 1)
            if kind == "flip" and data:
                data[at] = value
            elif kind == "insert":
                data[at:at] = value
            elif kind == "delete":
                del data[at : at + value]
            elif kind == "cut":
                data = data[:at]
        return bytes(data)


def as_bytes(x) -> bytes:
    return x.bytes() if isinstance(x, Mutation) else x


@st.composite
def mutated(draw, seeds: list[bytes]) -> Mutation:
    """A seed with byte flips (often in the header), splices, deletions or a cut; one in ten
    inputs raw bytes."""
    seeds = tuple(seeds)
    if draw(st.integers(0, 9)) == 0:
        return Mutation(seeds, 0, (), draw(st.binary(max_size=4096)))
    ops = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, 256) | st.integers(0, 2**31))  # headers first
        value = {"flip": st.integers(0, 255), "insert": st.binary(min_size=1, max_size=64),
                 "delete": st.integers(1, 512), "cut": st.just(0)}[kind]  # fmt: skip
        ops.append((kind, at, draw(value)))
    return Mutation(seeds, draw(st.integers(0, len(seeds) - 1)), tuple(ops))


# ------------------------------------------------------------------------------- the targets


def check_image(data: bytes, folder: Path) -> str:
    from fakescope.data.images import load_rgb

    data = as_bytes(data)
    f = folder / "input.img"
    f.write_bytes(data)
    try:
        im = load_rgb(f)
    except FakescopeError as e:
        assert str(f) in str(e) and "\n" not in str(e), str(e)
        return "error"
    assert im.mode == "RGB" and im.width > 0 and im.height > 0
    return "ok"


def check_video(data: bytes, folder: Path) -> str:
    from fakescope.data.video import sample_frames

    data = as_bytes(data)
    f = folder / "input.mp4"
    f.write_bytes(data)
    try:
        frames = sample_frames(f, 4)
    except FakescopeError as e:
        assert str(f) in str(e), str(e)
        return "error"
    assert all(im.mode == "RGB" for _, _, im in frames)
    return "ok"


def splits_text() -> st.SearchStrategy[bytes]:
    real = (SG / "splits.csv").read_text().splitlines()
    line = st.one_of(
        st.sampled_from(real[1:40]),
        st.builds(
            lambda *c: ",".join(c),
            st.sampled_from(["real/x.png", "fake/y.png", "", "a,b"]),
            st.sampled_from(["real", "fake", "REAL", "", "2"]),
            st.sampled_from(["train", "val", "test", "", "dev"]),
        ),  # fmt: skip
        st.text(max_size=80),
    )
    header = st.sampled_from([real[0], "path,label", "label,split,path", "", "\ufeff" + real[0]])
    text = st.builds(lambda h, ls: "\n".join([h, *ls]), header, st.lists(line, max_size=12))
    return st.one_of(text.map(str.encode), mutated([(SG / "splits.csv").read_bytes()[:2000]]))


def check_splits(data: bytes, folder: Path) -> str:
    from fakescope.data.folders import load_samples

    data = as_bytes(data)
    f = folder / "splits.csv"
    f.write_bytes(data)
    try:
        samples, _ = load_samples(SG, splits_file=f)
    except FakescopeError as e:
        assert str(f) in str(e) and "\n" not in str(e), str(e)
        return "error"
    assert all(s.split in ("train", "val", "test") and s.label in (0, 1) for s in samples)
    return "ok"


_JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.just("resnet50"), st.just("gap"), st.just("hflip"),
)  # fmt: skip
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def run_json(draw, valid: dict) -> bytes:
    """The real run's JSON with fields replaced, dropped or added, or its text mutated."""
    if draw(st.integers(0, 4)) == 0:
        return draw(mutated([json.dumps(valid).encode()])).bytes()
    d = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(d)))
        node = d
        if isinstance(d.get(section), dict) and d[section] and draw(st.booleans()):
            node, section = d[section], draw(st.sampled_from(sorted(d[section])))
        if draw(st.integers(0, 3)) == 0:
            node.pop(section, None)
        else:
            node[section] = draw(_JSON)
    return json.dumps(d, allow_nan=True).encode()


def check_run_json(data: bytes, folder: Path) -> str:
    from fakescope.runs import read_meta

    (folder / "fakescope.json").write_bytes(data)
    try:
        meta = read_meta(folder)
    except FakescopeError as e:
        assert "fakescope.json" in str(e) and "\n" not in str(e), str(e)
        return "error"
    assert 0 <= meta.threshold <= 1 and meta.spec.input_size > 0
    meta.config  # noqa: B018  (the training config must parse or fail as FakescopeError)
    return "ok"


def check_weights(data: bytes, folder: Path, meta, want: dict) -> str:
    from fakescope.runs import read_weights

    data = as_bytes(data)
    f = folder / "model.safetensors"
    f.write_bytes(data)
    try:
        state = read_weights(f, meta, want)
    except FakescopeError as e:
        assert str(f) in str(e) and "\n" not in str(e), str(e)
        return "error"
    assert state.keys() == want.keys()
    return "ok"


_FLAGS = ["--data", "--out", "--epochs", "--lr", "--batch-size", "--input-size", "--exclude",
          "--jpeg-quality", "--jpeg-prob", "--freeze-stages", "--steps", "--head", "--sbi",
          "--time-budget", "--procs", "--real-only", "--tta", "--face-margin",
          "--seed"]  # fmt: skip
_VALUES = ["0", "-1", "1", "3", "1e-3", "nan", "inf", "1,2", "1,a", "", "x", "99999999999999999999",
           "gap", str(SG), "/proc/x", "0.5", "--", "-", "\x00", "é"]  # fmt: skip


def command_lines() -> st.SearchStrategy[list[str]]:
    """Mostly well-formed option/value pairs (so that checks past argparse are reached), with
    stray tokens mixed in."""
    value = st.one_of(*[st.sampled_from(_VALUES)] * 4, st.text(max_size=8))
    pair = st.tuples(st.sampled_from(_FLAGS), value)
    stray = st.sampled_from(_FLAGS + _VALUES) | st.text(max_size=12)
    item = st.one_of(*[pair] * 8, stray.map(lambda t: (t,)))
    return st.lists(item, max_size=5).map(lambda items: [t for it in items for t in it])


def check_command_line(argv: list[str], folder: Path) -> str:
    """`fakescope train ARGV` up to the point where training would start: parsed, checked and
    its data loaded, or refused with one line (argparse's usage error counts as one)."""
    import contextlib

    from fakescope.cli import build_parser
    from fakescope.commands.train import config_from_args
    from fakescope.data.sources import load_sources

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["train", *argv])
    except SystemExit as e:
        assert e.code == 2 and "Traceback" not in err.getvalue()
        return "usage"
    try:
        cfg = config_from_args(args)
        cfg.check()
        load_sources(cfg.data, cfg.seed, cfg.exclude, cfg.limit_per_class)
    except FakescopeError as e:
        assert "\n" not in str(e).strip(), str(e)
        return "error"
    return "ok"


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="fakescope-fuzz-")


TARGETS = ["image", "video", "splits", "run_json", "weights", "command_line"]


def target(name: str, folder: Path, run_dir: Path | None = None):
    """(strategy, check) for one target, ``check(input)`` bound to the scratch ``folder``;
    ``run_dir`` (a real run) seeds the run_json and weights targets."""
    if name == "image":
        return mutated(image_seeds()), lambda d: check_image(d, folder)
    if name == "video":
        return mutated([video_seed(folder)]), lambda d: check_video(d, folder)
    if name == "splits":
        return splits_text(), lambda d: check_splits(d, folder)
    if name == "run_json":
        valid = json.loads((run_dir / "fakescope.json").read_text())
        return run_json(valid), lambda d: check_run_json(d, folder)
    if name == "weights":
        from fakescope.runs import load_run

        r = load_run(run_dir)
        want, seed = r.model.state_dict(), (run_dir / "model.safetensors").read_bytes()
        r.meta.weights_sha256 = None  # else the checksum alone catches every mutation
        strategy = mutated([seed[:4096] + seed[-4096:], seed])
        return strategy, lambda d: check_weights(d, folder, r.meta, want)
    return command_lines(), lambda argv: check_command_line(argv, folder)
