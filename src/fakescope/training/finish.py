"""What training leaves behind once the epochs are over: the threshold calibrated on the
validation split (the test split is never looked at), the face framing prediction should use,
the weights and the run's description."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import DEFAULT_FACE_MARGIN, TrainConfig
from ..evaluation import metrics as M
from ..faults import crash_point
from ..runs import WEIGHTS, new_meta, save_weights, write_meta

log = logging.getLogger(__name__)


def face_framing(cfg: TrainConfig, train_ds, n: int = 32) -> dict:
    """The face-crop margin prediction should use. Training on whole images (faces "never"),
    it is measured on training images, so crops cut from group photos look like what the
    model learnt from; training through the face stage, it is the margin that stage used."""
    if cfg.face_margin > 0 or cfg.faces != "never":
        margin = cfg.face_margin if cfg.face_margin > 0 else DEFAULT_FACE_MARGIN
        return {"mode": cfg.faces, "margin": margin, "margin_source": "configured"}
    from ..data.faces import framing_margin

    picked = train_ds.framing_images(n)
    try:
        m = framing_margin(picked)
    except ImportError as e:  # facenet-pytorch missing: prediction without faces still works
        log.warning("face detector unavailable (%s); face margin left at the default", e)
        m = None
    if m is None:
        return {
            "mode": "never",
            "margin": DEFAULT_FACE_MARGIN,
            "margin_source": "default (no face found)",
        }
    return {
        "mode": "never",
        "margin": round(m, 3),
        "margin_source": f"median framing of {len(picked)} training images",
    }


def finish_run(cfg: TrainConfig, model, best_val, train_ds, sources, summaries, runtime,
               world: int, extra: dict) -> None:  # fmt: skip
    """Calibrate on the validation scores of the kept weights and write the run folder."""
    out = Path(cfg.out)
    s, yv = best_val
    thr = M.ideal_thresholds(yv, s)
    # the paper's open question, asked on the split the threshold came from
    thr["kde_intersection"] = M.kde_analysis(yv, s).get("main_intersection")
    model.freeze(0)
    save_weights(model, out / WEIGHTS)
    crash_point("finish")
    meta = new_meta(
        cfg,
        {**thr, "n_val": int(len(yv))},
        face_framing(cfg, train_ds),
        [src.describe() for src in sources],
        model.head_names,
        steps=summaries,
        runtime=runtime.describe() + (f", {world} processes" if world > 1 else ""),
        model={
            "feature_shape": list(model.feature_shape),
            "head_parameters": model.head_parameters(),
            "output": "one logit; sigmoid gives P(fake)"
            + ("; the highest of the heads' logits" if model.head_names else ""),
        },
        **extra,
    )
    write_meta(out, meta)
    log.info(f"fakescope: run saved to {out} (threshold {thr['youden']:.4f}, Youden's J on val)")
