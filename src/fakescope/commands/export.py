"""`fakescope export`."""

from __future__ import annotations

import argparse

from . import HelpFormatter


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="the run's network as ONNX or OpenVINO (optionally int8), checked before kept",
        description="Write RUN/export/<runtime>-<fp32|int8>.* and a JSON beside it. The exported "
        "graph takes the normalised image batch (dynamic batch size) and holds the network, the "
        "mirror-image average when the run uses it, and the sigmoid. int8 is static quantisation "
        "calibrated on the run's training images; OpenVINO int8 is then fine-tuned with its "
        "quantisers in place to reproduce the fp32 network's logits (--finetune). Every export "
        "scores the validation split and "
        "is kept only if its AUC is within 0.002 of the torch model's (the validation splits of "
        "every data set the run was trained on); its own threshold is recalibrated on those "
        "scores: the one at which it gives the torch model's verdicts most often (--confirm: "
        "and the network confirms those near it). An OpenVINO int8 model that misses is "
        "quantised again with NNCF's accuracy "
        "control (the most harmful operations back in fp32) and checked again. predict, "
        "evaluate and serve then use it (--runtime).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="run folder made by `fakescope train`")
    p.add_argument("--to", choices=["onnx", "openvino"], default="onnx")
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantisation calibrated on the run's training images (OpenVINO: then "
        "fine-tuned towards the fp32 logits, see --finetune)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="one data folder to check and calibrate on (default: every one the run stored)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="validation images per class for the check, shared out between the data sets (0: all)",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=32,
        help="training images per class to calibrate int8, shared out between the data sets",
    )
    p.add_argument(
        "--finetune",
        type=int,
        default=None,
        metavar="BATCHES",
        help="OpenVINO int8: batches of training images to fine-tune the quantised network on "
        "(default: one pass over the training split, at most 300; 0: post-training "
        "quantisation alone, faster to export, further from the fp32 scores)",
    )
    p.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,  # on for --int8, off otherwise: said in the help
        help="have the run's own network score again the images whose exported score lies "
        "near the threshold (as far out as the export moved any validation logit from the "
        "network's, and 1.5x as far as its verdict differed from the network's on the "
        "validation split), so that the verdicts are the "
        "network's while most images take the export's speed; the check measures it so. "
        "Default: on with --int8 (int8 alone changed verdicts on every run measured), off for "
        "fp32; --no-confirm keeps int8's own verdicts at its full speed",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    from ..scoring.engines import describe_reach
    from ..scoring.export import export_run

    art = export_run(
        a.run,
        a.to,
        a.int8,
        a.data,
        a.limit,
        a.calibration,
        finetune=a.finetune,
        confirm=getattr(a, "confirm", None),
    )
    c = art.info["check"]
    print(f"kept {art.model_file} ({art.info['quantisation']})")
    if art.info.get("finetune"):
        f = art.info["finetune"]
        print(
            f"  fine-tuned {f['steps']} batches: int8 logits off fp32's by "
            f"{f['logit_rmse_before']:.3f} RMS calibrated, {f['logit_rmse_after']:.3f} fine-tuned "
            f"(closest after {f.get('best_step', f['steps'])} batches; calibration images); kept "
            f"the {f['kept']} network"
        )
    print(
        f"  val AUC {c['auc']:.4f} (torch {c['auc_torch']:.4f}), threshold {art.threshold:.4f} "
        f"(torch {c['threshold_torch']:.4f}), F1 {c['f1_at_own_threshold']:.4f} "
        f"(torch {c['f1_torch_at_its_threshold']:.4f})"
    )
    band = art.confirmation
    if band:
        print(
            f"  the network confirms verdicts {describe_reach(band)} the threshold: "
            f"{100 * c['confirmed_share']:.1f} % of the validation images; "
            f"verdicts unlike torch's there: {c['verdicts_unlike_torch']} of {c['n']}"
        )
    else:
        print(f"  verdicts unlike torch's on the validation split: {c['verdicts_unlike_torch']}")
    d = c["auc_difference_95"]
    print(
        f"  AUC difference {d['difference']:+.4f}; on other images like these (95 % paired "
        f"bootstrap over the {c['n']}) between {d['low']:+.4f} and {d['high']:+.4f}"
    )
    print(
        f"  model only: {c['img_per_s']:.1f} img/s (torch {c['torch_img_per_s']:.1f}) "
        f"on {art.info['cpu']}"
    )
    return 0


def add(sub) -> None:
    _add_export(sub)
