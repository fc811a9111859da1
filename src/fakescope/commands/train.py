"""`fakescope train`, `fakescope ensemble` and `fakescope evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import FUSIONS, TrainConfig
from . import HelpFormatter, add_runtime_option

DEFAULT_DATA = TrainConfig().data[0]


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
        if meta.pop("repeat", False):  # --data A --data B
            p.add_argument(flag, dest=f.name, action="append", type=str, help=help_text)
            continue
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            p.add_argument(flag, dest=f.name, action=action, help=help_text)
            continue
        p.add_argument(
            flag, dest=f.name, type=_config_type(f), default=f.default, help=help_text, **meta
        )


def config_from_args(a, config_cls=TrainConfig):
    """The config the parsed options describe (a repeatable option left out keeps its
    default)."""
    from dataclasses import fields

    kw = {}
    for f in fields(config_cls):
        v = getattr(a, f.name)
        if f.metadata.get("repeat"):
            v = tuple(v) if v else f.default
        kw[f.name] = v
    return config_cls(**kw)


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a detector (and evaluate it on the test split)",
        description="Fine-tune an ImageNet CNN to tell real from fake faces, as in Kroiss & "
        "Reschke (arXiv 2503.11389): Flatten head with one sigmoid unit, Adam, BCE, up to three "
        "steps of progressive freezing. Writes a run folder (weights in safetensors, "
        "fakescope.json, logs, split) and, when the data has a test split, evaluates on it. "
        "Runs under torchrun as well (one model trained by all its processes).",
        formatter_class=HelpFormatter,
    )
    add_config_options(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from ..data.folders import load_samples
    from ..data.shards import ShardSet, is_shards
    from ..training.distributed import Ranks
    from ..training.loop import train

    cfg = config_from_args(a)
    run = train(cfg, resume=a.resume)
    if a.no_eval or not Ranks.from_env().lead:  # under torchrun only one process evaluates
        return 0
    for data in cfg.data:  # each source that has a test split
        if is_shards(data):
            has_test = ShardSet.open(data).count("test") > 0
        else:
            samples, _ = load_samples(data, seed=cfg.seed, exclude=cfg.exclude)
            has_test = any(s.split == "test" for s in samples)
        if has_test:
            _evaluate_and_print(run, data, "test", None, cfg.batch_size, cfg.device, 24)
    return 0


def _evaluate_and_print(
    run, data, split, out, batch_size, device, explain=0, faces=None, reencode=None, runtime="auto"
) -> int:
    from ..evaluation.evaluator import data_name, evaluate, headline

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
        runtime=runtime,
    )
    out = Path(out) if out else Path(run) / f"eval-{data_name(data)}-{m['split']}"
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
        formatter_class=HelpFormatter,
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
    add_runtime_option(p)
    p.set_defaults(
        func=lambda a: _evaluate_and_print(
            a.run,
            a.data,
            a.split,
            a.out,
            a.batch_size,
            a.device,
            a.explain,
            a.faces,
            a.reencode,
            a.runtime,
        )  # fmt: skip
    )


def _add_ensemble(sub):
    p = sub.add_parser(
        "ensemble",
        help="combine trained runs into one run (experts on different kinds of fake, or seeds)",
        description="Write a run whose network is the ensemble of RUNs: each member's logit is "
        "centred on its own stored threshold and the highest counts (--fusion max), so the "
        "ensemble says fake when some member would; or the mean counts (--fusion mean, for "
        "one recipe's seeds). Its threshold is calibrated on the validation splits of every "
        "member's data (Youden's J), and the test splits are scored as after training. The "
        "result is used like any run (evaluate, predict, serve, matrix, export). Members must "
        "share input size, fit, normalisation, TTA and face stage.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `fakescope train`")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default="max",
        help="max: the highest centred vote (experts on different kinds of fake); mean: the "
        "mean vote (one recipe trained with several seeds)",
    )
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(a) -> int:
    from ..training.ensemble import combine_runs

    run = combine_runs(a.runs, a.out, a.batch_size, a.device, fusion=a.fusion)
    print(f"ensemble of {len(a.runs)} runs: {a.out} (threshold {run.threshold:.4f} on val)")
    if a.no_eval:
        return 0
    for src in run.meta.sources:  # the same data sets the threshold's validation came from
        _evaluate_and_print(a.out, src["root"], "test", None, a.batch_size, a.device, 0)
    return 0


def add(sub) -> None:
    _add_train(sub)
    _add_ensemble(sub)
    _add_evaluate(sub)
