"""`fakescope bench`, `fakescope faces extract` and `fakescope shards`."""

from __future__ import annotations

import sys

from ..config import DEFAULT_FACE_MARGIN
from . import HelpFormatter


def _add_bench(sub):
    p = sub.add_parser(
        "bench",
        help="training and inference speed against the fp32 eager baseline",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--input-size", type=int, default=299)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--data",
        default=None,
        help="instead: the training loader's images/s on this data folder or shards (decoding, "
        "augmentation, resizing) beside the model's training rate, to see a starved GPU",
    )
    p.add_argument("--workers", default="0,2", help="with --data: loader worker counts to time")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the fast path through torch.compile (compiling is not timed); with "
        "--data, the model training beside the loader is compiled",
    )
    p.add_argument(
        "--e2e",
        default=None,
        metavar="DIR",
        help="instead: images/s from the files in DIR to verdicts with --run, for torch and "
        "each checked export, beside each one's model-only rate (one batch of DIR's images, "
        "repeated) and the fp32 eager baseline",
    )
    p.add_argument("--run", default=None, help="with --e2e: the run folder to score with")
    p.add_argument("--faces", default="auto", choices=["auto", "always", "never"])
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="with --e2e: at most this many files, spread evenly over the sorted list "
        "(so a folder of real/ and fake/ gives both)",
    )
    p.add_argument(
        "--prepare-workers", type=int, default=2, help="with --e2e: threads preparing files"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --e2e: time every runtime this many times, taking turns, and report the "
        "medians (a shared machine's speed drifts within minutes)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    from ..bench import run_bench, run_loader_bench
    from ..errors import FakescopeError

    if a.e2e is not None:
        from ..bench import run_e2e_bench

        if a.run is None:
            raise FakescopeError("--e2e needs --run RUN (the run whose model scores the files)")
        run_e2e_bench(
            a.run, a.e2e, a.faces, a.limit, a.batch_size, a.prepare_workers, a.iters, a.rounds
        )
        return 0
    if a.data is None:
        run_bench(a.backbone, a.input_size, a.batch_size, a.iters, a.device, a.compile)
        return 0
    try:
        workers = tuple(int(w) for w in a.workers.split(","))
    except ValueError:
        raise FakescopeError(f"--workers {a.workers!r}: give counts such as 0,2,4") from None
    run_loader_bench(
        a.data, a.input_size, a.batch_size, workers, 20, a.device, a.backbone, a.compile
    )
    return 0


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
        formatter_class=HelpFormatter,
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
    from ..data.extract import extract_faces

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


def _add_shards(sub):
    p = sub.add_parser(
        "shards",
        help="pack a data folder into tar shards (WebDataset) for streamed training",
        description="Write DIR's images into OUT/{train,val,test}-NNNNNN.tar of about "
        "--shard-size MB each (the split: DIR/splits.csv, else the seeded 70/15/15 that "
        "training draws), with OUT/shards.json and OUT/splits.csv. Each sample is the "
        "image's original bytes, a json (path, label, split, generator) and a cls (0 real, "
        "1 fake), readable by any WebDataset loader. `fakescope train --data OUT` and "
        "`fakescope evaluate RUN --data OUT` stream them, in memory that does not grow with "
        "the data; a glob such as 'OUT/train-00000[0-4].tar' picks some of them.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DIR", help="data folder with real/ and fake/")
    p.add_argument("out", metavar="OUT", help="new folder for the shards")
    p.add_argument("--shard-size", type=float, default=256, metavar="MB")
    p.add_argument("--seed", type=int, default=0, help="the split's seed when DIR has none")
    p.set_defaults(func=cmd_shards)


def cmd_shards(a) -> int:
    from ..data.shards import pack

    r = pack(a.data, a.out, a.shard_size, a.seed)
    for err in r["errors"]:
        print(f"  skipped {err}", file=sys.stderr)
    n = sum(e["count"] for e in r["shards"])
    size = sum(e["bytes"] for e in r["shards"]) / 1e6
    print(
        f"{n} images in {len(r['shards'])} shard(s), {size:.1f} MB, under {a.out} "
        f"({len(r['errors'])} unreadable file(s) left out)"
    )
    return 1 if r["errors"] else 0


def add(sub) -> None:
    _add_faces(sub)
    _add_bench(sub)
    _add_shards(sub)
