"""Every plot fakescope draws, in one place. Each function writes one PNG and returns its path."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc(y, s, threshold: float, path: Path) -> Path:
    fpr, tpr, thr = skm.roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {skm.roc_auc_score(y, s):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    i = int(np.argmin(np.abs(np.minimum(thr, 1.0) - threshold)))
    ax.plot(fpr[i], tpr[i], "ro", label=f"stored threshold {threshold:.3f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def precision_recall(y, s, path: Path) -> Path:
    p, r, _ = skm.precision_recall_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot(r, p, lw=2, label=f"AP = {skm.average_precision_score(y, s):.4f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save(fig, path)


def kde(k: dict, threshold: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    if "real" in k:
        ax.fill_between(k["grid"], k["real"], alpha=0.4, label="real", color="tab:blue")
        ax.fill_between(k["grid"], k["fake"], alpha=0.4, label="fake", color="tab:red")
    for x in k.get("intersections", []):
        ax.axvline(x, color="k", ls=":", lw=1)
    if "main_intersection" in k:
        ax.axvline(
            k["main_intersection"],
            color="k",
            ls=":",
            lw=1.5,
            label=f"KDE intersection {k['main_intersection']:.3f}",
        )
    ax.axvline(threshold, color="g", lw=1.5, label=f"ROC threshold {threshold:.3f}")
    ax.set(xlabel="score P(fake)", ylabel="density", title="Score density per class (KDE)")
    ax.legend()
    return _save(fig, path)


def threshold_sweep(rows: list[dict], threshold: float, path: Path) -> Path:
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("accuracy", "precision", "recall", "f1"):
        ax.plot(t, [r[key] for r in rows], marker="o", ms=3, label=key)
    ax.axvspan(threshold - 0.1, threshold + 0.1, color="g", alpha=0.1, label="stored ±0.1")
    ax.axvline(threshold, color="g", lw=1)
    ax.set(xlabel="threshold", ylabel="metric", title="Metrics over thresholds")
    ax.legend(loc="lower left")
    return _save(fig, path)


def confusion(c: dict, threshold: float, path: Path) -> Path:
    m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > m.max() / 2 else "black",
            fontsize=13,
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["real", "fake"],
        yticklabels=["real", "fake"],
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion at {threshold:.3f}",
    )
    return _save(fig, path)


def training_curves(log_csv: Path, path: Path) -> Path | None:
    if not Path(log_csv).exists():
        return None
    with open(log_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    x = np.arange(1, len(rows) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.plot(x, [float(r["train_loss"]) for r in rows], marker="o", label="train")
    a.plot(x, [float(r["val_loss"]) for r in rows], marker="o", label="val")
    a.set(xlabel="epoch (all steps)", ylabel="BCE loss", title="Loss", yscale="log")
    a.legend()
    b.plot(x, [float(r["val_auc"]) for r in rows], marker="o", color="tab:green")
    b.set(xlabel="epoch (all steps)", ylabel="val AUC", title="Validation AUC")
    for i in range(1, len(rows)):
        if rows[i]["step"] != rows[i - 1]["step"]:
            for ax in (a, b):
                ax.axvline(i + 0.5, color="k", ls=":", lw=0.8)
    return _save(fig, path)


def heatmap_grid(images: list, titles: list[str], path: Path, cols: int = 5) -> Path:
    """A grid of RGB arrays/PIL images (Grad-CAM overlays) with titles."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im, t in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(im)
        ax.set_title(t, fontsize=8)
    return _save(fig, path)


def cross_matrix(runs: list[str], data: list[str], auc, f1, path: Path) -> Path:
    """Heatmaps of cross-set AUC and F1 (rows = runs, columns = data sets), values written in."""
    auc, f1 = np.asarray(auc, float), np.asarray(f1, float)
    w = 1.6 + 1.1 * len(data)
    fig, axes = plt.subplots(1, 2, figsize=(2 * w + 1.5, 2.2 + 0.5 * len(runs)), squeeze=False)
    for ax, m, title in zip(axes[0], (auc, f1), ("AUC", "F1 at stored threshold"), strict=True):
        # a fixed 0..1 scale so that colours compare across panels and across matrices
        im = ax.imshow(np.ma.masked_invalid(m), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            text = "n/a" if np.isnan(v) else f"{v:.3f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="black" if np.isnan(v) or 0.25 < v < 0.85 else "white",
            )
        ax.set_xticks(range(len(data)), data, rotation=30, ha="right")
        ax.set_yticks(range(len(runs)), runs)
        ax.set(xlabel="data set", title=title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    axes[0][0].set_ylabel("run")
    return _save(fig, path)


def robustness(curves: dict, clean: dict, path: Path) -> Path:
    """One small panel per perturbation: AUC and F1 (stored threshold) against its level, the
    x axis running from clean (left) to most severe (right), with the unperturbed scores as
    dotted lines. ``curves``: name -> {unit, levels, auc, f1}; ``clean``: {auc, f1}."""
    n = len(curves)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.ravel(), curves.items(), strict=False):
        x = np.asarray(c["levels"], float)
        ax.plot(x, c["auc"], marker="o", label="AUC", color="tab:blue")
        ax.plot(x, c["f1"], marker="s", label="F1", color="tab:orange")
        ax.axhline(clean["auc"], color="tab:blue", ls=":", lw=1)
        ax.axhline(clean["f1"], color="tab:orange", ls=":", lw=1)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        if len(x) > 1 and x[-1] < x[0]:
            ax.invert_xaxis()  # JPEG quality and downscale factor fall as severity grows
        ax.set(xlabel=c["unit"], title=name, ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("AUC, F1")
    axes[0][0].legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def variants(labels: list[str], series: dict, title: str, path: Path) -> Path:
    """Grouped bars with error bars: ``series`` maps a name to (means, stds), one per label
    (issue 15's checks: test AUC and F1 of each variant over seeds)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 2), 4.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for k, (name, (mean, std)) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, mean, width, yerr=std, capsize=3,
               label=name)  # fmt: skip
    low = np.nanmin([m for mean, _ in series.values() for m in mean] + [1.0])
    ax.set(xticks=x, ylim=(max(0.0, low - 0.1), 1.0), ylabel="test metric", title=title)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def imbalance(curves: dict, thresholds: list[float], stored: float, path: Path) -> Path:
    """F1 across thresholds for each real:fake ratio of the test split (mean and spread over
    runs and draws), with the stored threshold marked."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for name, runs in curves.items():
        v = np.asarray(runs, float)
        ax.errorbar(thresholds, v.mean(0), yerr=v.std(0), capsize=3, marker="o", label=name)
    ax.axvline(stored, color="k", ls="--", lw=0.8, label=f"stored threshold {stored:.3f}")
    ax.set(xlabel="threshold", ylabel="F1", title="F1 by real:fake ratio of the test split")
    ax.legend(fontsize=8)
    return _save(fig, path)
