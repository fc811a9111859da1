"""Grad-CAM explanations with pytorch-grad-cam: which image regions push a score toward "fake"
(or, for faces called real, toward "real"). The target layer is the backbone's last stage."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.transforms import fit_square


def cams(model, x: torch.Tensor, categories: list[int], batch_size: int = 8) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1]; category 1 explains "fake", 0 explains "real"."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    model.eval()
    out = []
    # fp32, no autocast: gradients of bf16 activations make noisy maps
    with GradCAM(model=model, target_layers=model.target_layers) as cam:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(next(model.parameters()).device)
            targets = [BinaryClassifierOutputTarget(c) for c in categories[i : i + batch_size]]
            out.append(cam(input_tensor=xb, targets=targets))
    return np.concatenate(out) if out else np.zeros((0,) + tuple(x.shape[2:]))


def overlay(image: Image.Image, cam: np.ndarray, size: int, fit: str = "resize") -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(fit_square(image, size, fit), dtype=np.float32) / 255.0
    return show_cam_on_image(rgb, cam, use_rgb=True)


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[-120:]


def unit_overlays(predictor, units) -> list[np.ndarray]:
    """Grad-CAM overlays (HxWx3 uint8) of scored units, each explaining its own verdict."""
    spec = predictor.scorer.spec
    x = predictor.scorer.tensors([u.image for u in units], pixels=False)  # for torch's network
    cats = [int(u.row.verdict == "fake") for u in units]
    maps = cams(predictor.model, x, cats, predictor.batch_size)
    pairs = zip(units, maps, strict=True)
    return [overlay(u.image, m, spec.input_size, spec.fit) for u, m in pairs]


def png_bytes(image: np.ndarray) -> bytes:
    """An overlay (or any HxWx3 uint8 array) as PNG bytes, for a web page or an API."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_overlays(predictor, units, out_dir: Path) -> None:
    """Grad-CAM overlay PNGs for scored units (predict --explain); sets ``row.explanation``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for u, ov in zip(units, unit_overlays(predictor, units), strict=True):
        r = u.row
        name = _safe_name(r.path)
        if r.frame is not None:
            name += f"_frame{r.frame}"
        if r.face is not None:
            name += f"_face{r.face}"
        path = out_dir / f"{name}_gradcam.png"
        path.write_bytes(png_bytes(ov))
        r.explanation = str(path)


def region_shares(mean_map: np.ndarray) -> dict:
    """Share of Grad-CAM mass in horizontal thirds and in the central box vs the border, so the
    maps can be compared with numbers, not only by eye."""
    m = mean_map / max(mean_map.sum(), 1e-12)
    h, w = m.shape
    t = [m[: h // 3].sum(), m[h // 3 : 2 * h // 3].sum(), m[2 * h // 3 :].sum()]
    centre = m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].sum()
    return {
        "top_third": float(t[0]),
        "middle_third": float(t[1]),
        "bottom_third": float(t[2]),
        "central_box": float(centre),
        "border": float(1 - centre),
    }


def explanation_figures(model, threshold, ds, y, s, out: Path, per_class: int = 24) -> dict:
    """Mean Grad-CAM of correctly classified real and fake images of an ImageDataset ``ds``
    scored ``s``, and the ten most confident mistakes with their maps. ``model`` is the
    unfolded detector on its device. Returns figure paths and a numeric summary."""
    from ..evaluation import plots

    thr = threshold
    pred = (s >= thr).astype(int)
    summary, figures = {}, {}
    means, titles = [], []
    size = ds.size
    for label, name in ((0, "real"), (1, "fake")):
        idx = np.nonzero((y == label) & (pred == label))[0][:per_class]
        if len(idx) == 0:
            continue
        x = torch.stack([ds[int(i)][0] for i in idx])
        mean = cams(model, x, [label] * len(idx)).mean(axis=0)
        np.save(out / f"gradcam_mean_{name}.npy", mean)
        mean_img = np.mean(
            [np.asarray(fit_square(ds_image(ds, int(i)), size, ds.fit), np.float32) for i in idx],
            axis=0,
        ).astype(np.uint8)
        means.append(
            overlay(Image.fromarray(mean_img), mean / max(mean.max(), 1e-12), size, "resize")
        )
        titles.append(f"mean map, correct {name} (n={len(idx)})")
        summary[f"mean_{name}"] = {"n": int(len(idx)), **region_shares(mean)}
    if means:
        figures["Grad-CAM: mean map per class"] = plots.heatmap_grid(
            means, titles, out / "gradcam_mean.png", cols=2
        )
    wrong = np.nonzero(pred != y)[0]
    if len(wrong):
        conf = np.abs(s[wrong] - thr)
        top = wrong[np.argsort(-conf)][:10]
        x = torch.stack([ds[int(i)][0] for i in top])
        maps = cams(model, x, [int(pred[i]) for i in top])
        ims = [
            overlay(ds_image(ds, int(i)), m, size, ds.fit) for i, m in zip(top, maps, strict=True)
        ]
        tt = [
            f"{'fake' if y[i] else 'real'} scored {s[i]:.3f}\n{Path(ds.samples[i].path).name}"
            for i in top
        ]
        figures["Grad-CAM: the ten most confident mistakes"] = plots.heatmap_grid(
            ims, tt, out / "gradcam_mistakes.png"
        )
        summary["mistakes"] = [ds.samples[i].path for i in top]
    parts = []
    for name in ("real", "fake"):
        r = summary.get(f"mean_{name}")
        if r:
            parts.append(
                f"{name}: {r['top_third']:.0%} of the map in the top third, "
                f"{r['middle_third']:.0%} middle, {r['bottom_third']:.0%} bottom; "
                f"{r['central_box']:.0%} in the central box"
            )
    summary["text"] = "Mean Grad-CAM mass — " + "; ".join(parts) + "."
    return {"figures": figures, "summary": summary}


def ds_image(ds, i: int) -> Image.Image:
    """The image the model saw for sample i of an ImageDataset (after the face stage)."""
    im = ds.load(i)
    return ds.prepare(im, ds.path_of(i)) if ds.prepare else im
