"""`fakescope predict` and `fakescope explain`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from . import HelpFormatter, add_runtime_option


def _add_predict(sub):
    p = sub.add_parser(
        "predict",
        help="score images, folders and videos",
        description="Print one row per file (per face with --faces, per frame for videos) with "
        "the score P(fake) and the verdict at the run's stored threshold. Bad files get an "
        "error row and the rest go on; exit status 1 when any file failed.",
        formatter_class=HelpFormatter,
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
    p.add_argument(
        "--workers", type=int, default=2, help="threads decoding and cropping files ahead"
    )
    p.add_argument("--device", default="auto")
    add_runtime_option(p)
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
    from ..runs import write_json
    from ..scoring.predictor import Predictor

    pred = Predictor(
        a.run,
        device=a.device,
        batch_size=a.batch_size,
        faces=a.faces,
        face_margin=a.face_margin,
        frames=a.frames,
        threshold=a.threshold,
        runtime=a.runtime,
        workers=a.workers,
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
    print(
        f"{n_files} file(s), {failed} failed; threshold {pred.threshold:.4f} "
        f"({pred.scorer.engine})",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _format_row(d: dict) -> str:
    from ..messages import one_line

    if d["error"]:
        return f"{'ERROR':8} {'':>8}  {one_line(d['error'])}"
    where = d["path"]
    if d["kind"] == "frame":
        where += f" [frame {d['frame']}" + (
            f", face {d['face']}]" if d["face"] is not None else "]"
        )
    elif d["face"] is not None:
        where += f" [face {d['face']} at {d['box']}, conf {d['face_confidence']}]"
    elif d["kind"] == "video":
        where += f" [video, {d.get('frames_scored')} frames]"
    return f"{d['verdict']:8} {d['score']:8.4f}  {one_line(where)}"


def _add_explain(sub):
    p = sub.add_parser(
        "explain",
        help="Grad-CAM heatmaps of what drives each verdict",
        description="Write a Grad-CAM overlay per image (per face with --faces) into --out: red "
        "regions push the score toward the verdict the model gave.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True, help="folder for the overlays")
    p.add_argument("--faces", default="auto", choices=["auto", "always", "never"])
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain)


def cmd_explain(a) -> int:
    from ..scoring.predictor import Predictor

    pred = Predictor(a.run, device=a.device, faces=a.faces)
    failed = 0
    for row in pred.predict(a.paths, explain_dir=Path(a.out)):
        d = row.as_dict()
        failed += d["error"] is not None
        print(_format_row(d) + (f"  -> {d['explanation']}" if d["explanation"] else ""))
    return 1 if failed else 0


def add(sub) -> None:
    _add_predict(sub)
    _add_explain(sub)
