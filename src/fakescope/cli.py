"""The `fakescope` command line: a thin layer over the Python API (see fakescope/__init__.py)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from .config import DEFAULT_FACE_MARGIN, TrainConfig
from .errors import FakescopeError

DEFAULT_DATA = TrainConfig.data


def _csv_list(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _epochs(s: str) -> int | tuple[int, ...]:
    v = _int_list(s)
    return v[0] if len(v) == 1 else v


def _int_list(s: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in _csv_list(s))
    except ValueError:
        v = ()
    if not v:
        raise argparse.ArgumentTypeError(f"{s!r}: expected comma-separated whole numbers, e.g. 1,3")
    return v


def _config_type(f):
    """The argparse type of a TrainConfig field, from its default."""
    if f.name == "epochs":
        return _epochs
    d = f.default
    if isinstance(d, tuple):
        return _csv_list if f.name == "exclude" else _int_list
    return type(d)


def add_config_options(p, config_cls) -> None:
    """One option per field of a config dataclass, with the field's default and help text."""
    from dataclasses import fields

    for f in fields(config_cls):
        meta = dict(f.metadata)
        help_text = meta.pop("help", None)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            p.add_argument(flag, dest=f.name, action=action, help=help_text)
            continue
        p.add_argument(
            flag, dest=f.name, type=_config_type(f), default=f.default, help=help_text, **meta
        )


def _add_train(sub):
    from .config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a detector (and evaluate it on the test split)",
        description="Fine-tune an ImageNet CNN to tell real from fake faces, as in Kroiss & "
        "Reschke (arXiv 2503.11389): Flatten head with one sigmoid unit, Adam, BCE, up to three "
        "steps of progressive freezing. Writes a run folder (weights in safetensors, "
        "fakescope.json, logs, split) and, when the data has a test split, evaluates on it. "
        "Runs under torchrun as well (one model trained by all its processes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from .config import TrainConfig
    from .training.distributed import Ranks
    from .training.loop import train

    keys = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in keys})
    run = train(cfg, resume=a.resume)
    if a.no_eval or not Ranks.from_env().lead:  # under torchrun only one process evaluates
        return 0
    from .data.folders import load_samples

    samples, _ = load_samples(cfg.data, seed=cfg.seed, exclude=cfg.exclude)
    if any(s.split == "test" for s in samples):
        return _evaluate_and_print(run, cfg.data, "test", None, cfg.batch_size, cfg.device, 24)
    return 0


def _evaluate_and_print(
    run, data, split, out, batch_size, device, explain=0, faces=None, reencode=None
) -> int:
    from .evaluation.evaluator import evaluate, headline

    m = evaluate(
        run,
        data,
        split=split,
        out=out,
        batch_size=batch_size,
        device=device,
        explain=explain,
        faces=faces,
        reencode=reencode,
    )
    out = Path(out) if out else Path(run) / f"eval-{Path(data).name}-{m['split']}"
    print(headline(m))
    k = m["kde"]
    if "main_intersection" in k:
        print(
            f"  KDE intersection {k['main_intersection']:.4f} vs ROC threshold "
            f"{m['threshold']:.4f} ({k['distance_to_roc_threshold']:+.4f})"
        )
    print(f"  report: {out / 'report.html'}   metrics: {out / 'metrics.json'}")
    return 0


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="metrics, plots and an HTML report for a run on a data set",
        description="Score a data set with a trained run at its stored threshold (chosen on the "
        "validation split during training) and write metrics.json, PNG plots and report.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder made by `fakescope train`")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument(
        "--split",
        choices=["test", "val", "all"],
        default=None,
        help="default: test when the data has splits.csv (or is the run's own data), else all",
    )
    p.add_argument("--out", default=None, help="default: RUN/eval-<data>-<split>")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--explain",
        type=int,
        default=24,
        metavar="N",
        help="Grad-CAM section: mean map over N correct faces per class and the ten most "
        "confident mistakes (0 turns it off)",
    )
    p.add_argument(
        "--faces",
        default=None,
        choices=["auto", "always", "never"],
        help="face stage before scoring (default: as the run was trained)",
    )
    p.add_argument(
        "--reencode",
        type=int,
        default=None,
        metavar="Q",
        help="re-save every image as JPEG quality Q first (a compression-shortcut test)",
    )
    p.set_defaults(
        func=lambda a: _evaluate_and_print(
            a.run, a.data, a.split, a.out, a.batch_size, a.device, a.explain, a.faces, a.reencode
        )
    )


def _add_predict(sub):
    p = sub.add_parser(
        "predict",
        help="score images, folders and videos",
        description="Print one row per file (per face with --faces, per frame for videos) with "
        "the score P(fake) and the verdict at the run's stored threshold. Bad files get an "
        "error row and the rest go on; exit status 1 when any file failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run")
    p.add_argument("paths", nargs="+", help="images, videos or folders (searched recursively)")
    p.add_argument("--csv", help="also write rows to this CSV file (written as it goes)")
    p.add_argument("--json", help="also write rows to this JSON file")
    p.add_argument(
        "--faces",
        default="auto",
        choices=["auto", "always", "never"],
        help="auto: detect faces unless the image is already a face crop",
    )
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    p.add_argument(
        "--face-margin",
        type=float,
        default=None,
        help="crop side / face box side; unset: the margin stored in the run",
    )
    p.add_argument("--threshold", type=float, default=None, help="override the stored one")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--explain", action="store_true", help="write Grad-CAM overlays next to the results"
    )
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    p.set_defaults(func=cmd_predict)


COLUMNS = [
    "path",
    "kind",
    "frame",
    "face",
    "box",
    "face_confidence",
    "score",
    "verdict",
    "error",
    "explanation",
]


def cmd_predict(a) -> int:
    from .runs import write_json
    from .scoring.predictor import Predictor

    pred = Predictor(
        a.run,
        device=a.device,
        batch_size=a.batch_size,
        faces=a.faces,
        face_margin=a.face_margin,
        frames=a.frames,
        threshold=a.threshold,
    )
    explain_dir = None
    if a.explain:
        base = Path(a.csv or a.json or "predictions").with_suffix("")
        explain_dir = Path(f"{base}-explanations")
    rows, failed = [], 0
    csv_fh = open(a.csv, "w", newline="") if a.csv else None  # noqa: SIM115
    writer = csv.DictWriter(csv_fh, COLUMNS, extrasaction="ignore") if csv_fh else None
    if writer:
        writer.writeheader()
    if not a.quiet:
        print(f"{'verdict':8} {'score':>8}  path")
    try:
        for row in pred.predict(a.paths, explain_dir=explain_dir):
            d = row.as_dict()
            rows.append(d)
            failed += d["error"] is not None and d["kind"] != "face"
            if writer:
                writer.writerow(d)
                csv_fh.flush()
            if not a.quiet:
                print(_format_row(d), flush=True)
            if a.json and len(rows) % 50 == 0:
                write_json(Path(a.json), rows)
    finally:
        if csv_fh:
            csv_fh.close()
        if a.json:
            write_json(Path(a.json), rows)
    n_files = len({r["path"] for r in rows})
    print(f"{n_files} file(s), {failed} failed; threshold {pred.threshold:.4f}", file=sys.stderr)
    return 1 if failed else 0


def _format_row(d: dict) -> str:
    if d["error"]:
        return f"{'ERROR':8} {'':>8}  {d['error']}"
    where = d["path"]
    if d["kind"] == "frame":
        where += f" [frame {d['frame']}" + (
            f", face {d['face']}]" if d["face"] is not None else "]"
        )
    elif d["face"] is not None:
        where += f" [face {d['face']} at {d['box']}, conf {d['face_confidence']}]"
    elif d["kind"] == "video":
        where += f" [video, {d.get('frames_scored')} frames]"
    return f"{d['verdict']:8} {d['score']:8.4f}  {where}"


def _add_bench(sub):
    p = sub.add_parser(
        "bench",
        help="training and inference speed against the fp32 eager baseline",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--input-size", type=int, default=299)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    from .bench import run_bench

    run_bench(a.backbone, a.input_size, a.batch_size, a.iters, a.device)
    return 0


def _add_explain(sub):
    p = sub.add_parser(
        "explain",
        help="Grad-CAM heatmaps of what drives each verdict",
        description="Write a Grad-CAM overlay per image (per face with --faces) into --out: red "
        "regions push the score toward the verdict the model gave.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True, help="folder for the overlays")
    p.add_argument("--faces", default="auto", choices=["auto", "always", "never"])
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain)


def cmd_explain(a) -> int:
    from .scoring.predictor import Predictor

    pred = Predictor(a.run, device=a.device, faces=a.faces)
    failed = 0
    for row in pred.predict(a.paths, explain_dir=Path(a.out)):
        d = row.as_dict()
        failed += d["error"] is not None
        print(_format_row(d) + (f"  -> {d['explanation']}" if d["explanation"] else ""))
    return 1 if failed else 0


def _add_faces(sub):
    p = sub.add_parser("faces", help="face tools: extract crops for training")
    fsub = p.add_subparsers(dest="faces_command", required=True, metavar="SUBCOMMAND")
    e = fsub.add_parser(
        "extract",
        help="turn photos/videos into a real/ fake/ folder of face crops",
        description="Detect every face (MTCNN) in the images and sampled video frames under SRC "
        "and save square crops into DST/real or DST/fake[/GENERATOR], with DST/manifest.csv "
        "saying where each crop came from (file, frame, box). The label is read from a real/ or "
        "fake/ folder under SRC, or given with --label.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("src")
    e.add_argument("dst")
    e.add_argument("--label", choices=["real", "fake"], default=None)
    e.add_argument("--generator", default=None, help="put fakes under fake/GENERATOR/")
    e.add_argument(
        "--margin", type=float, default=DEFAULT_FACE_MARGIN, help="crop side / face box side"
    )
    e.add_argument("--align", action="store_true", help="rotate so the eyes are level")
    e.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    e.add_argument("--max-faces", type=int, default=10, help="per image or frame")
    e.set_defaults(func=cmd_faces_extract)


def cmd_faces_extract(a) -> int:
    from .data.extract import extract_faces

    r = extract_faces(
        a.src,
        a.dst,
        label=a.label,
        generator=a.generator,
        margin=a.margin,
        align=a.align,
        frames=a.frames,
        max_faces=a.max_faces,
    )
    for err in r["errors"]:
        print(f"  {err}", file=sys.stderr)
    print(
        f"{r['files']} file(s): {r['crops']} face crop(s) written, {r['no_face']} without a "
        f"face, {r['failed']} failed; manifest {r['manifest']}"
    )
    return 1 if r["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fakescope",
        description="Deepfake detection of face images with a fine-tuned CNN. "
        "Start with `fakescope train --help` or `fakescope predict --help`.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_predict, _add_explain, _add_faces, _add_bench):
        add(sub)
    return p


def _version() -> str:
    from . import __version__

    return f"fakescope {__version__}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .messages import show_messages

    show_messages()
    try:
        return int(args.func(args) or 0)
    except FakescopeError as e:
        print(f"fakescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fakescope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
