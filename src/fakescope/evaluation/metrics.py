"""The metric set, defined once: what every evaluation, report and test reads.

Scores are probabilities of "fake" (label 1). Thresholds: a score >= threshold is called fake.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import gaussian_kde, rankdata
from sklearn import metrics as skm

SWEEP = np.round(np.arange(0.30, 0.9001, 0.05), 2)


def at_threshold(y, s, threshold: float) -> dict:
    y, pred = np.asarray(y), (np.asarray(s) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "fpr": float(fp / max(fp + tn, 1)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def _both_classes(y) -> bool:
    return len(np.unique(y)) == 2


def threshold_free(y, s) -> dict:
    if not _both_classes(y):
        nan = float("nan")
        return {"auc": nan, "ap": nan, "eer": nan, "tpr_at_fpr_1pct": nan, "tpr_at_fpr_0.1pct": nan}
    fpr, tpr, _ = skm.roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return {
        "auc": float(skm.roc_auc_score(y, s)),
        "ap": float(skm.average_precision_score(y, s)),
        "eer": float((fpr[i] + fnr[i]) / 2),
        # best TPR reachable while keeping FPR at or below the target
        "tpr_at_fpr_1pct": float(tpr[fpr <= 0.01].max(initial=0.0)),
        "tpr_at_fpr_0.1pct": float(tpr[fpr <= 0.001].max(initial=0.0)),
    }


def auc_difference(y, s, reference, rounds: int = 1000, seed: int = 0) -> dict:
    """AUC of scores ``s`` minus that of ``reference`` on the same images, with a 95 % paired
    bootstrap interval: images are drawn again with replacement, within each class, and both
    AUCs taken on each draw. An export's check on a few hundred validation images says how far
    its AUC lies from the torch model's; the interval says how far it could lie on other images
    of the same kind (a test split), which the difference alone does not."""
    y, s, reference = np.asarray(y), np.asarray(s), np.asarray(reference)
    diff = float(skm.roc_auc_score(y, s) - skm.roc_auc_score(y, reference))
    rng = np.random.default_rng(seed)
    neg, pos = (np.flatnonzero(y == c) for c in (0, 1))
    # every draw at once, negatives first: AUC is then the Mann-Whitney statistic of the
    # positives' (tie-averaged) ranks, as roc_auc_score computes it, 50x faster than calling it
    idx = np.concatenate(
        [rng.choice(neg, (rounds, len(neg))), rng.choice(pos, (rounds, len(pos)))], 1
    )

    def aucs(scores):
        ranks = rankdata(scores[idx], axis=1)[:, len(neg) :].sum(1)
        return (ranks - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))

    low, high = np.percentile(aucs(s) - aucs(reference), [2.5, 97.5])
    return {"difference": diff, "low": float(low), "high": float(high), "rounds": rounds}


def ideal_thresholds(y, s) -> dict:
    """The paper's ROC "ideal threshold", made explicit: Youden's J (max TPR - FPR); and the
    threshold that maximises F1. Computed on validation scores only."""
    fpr, tpr, thr = skm.roc_curve(y, s)
    j = tpr - fpr
    i = int(np.argmax(j))
    youden = float(min(thr[i], 1.0))  # roc_curve's first threshold is +inf
    prec, rec, pthr = skm.precision_recall_curve(y, s)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    k = int(np.argmax(f1))
    return {"youden": youden, "youden_j": float(j[i]), "f1": float(pthr[k]), "f1_max": float(f1[k])}


def agreeing_threshold(s, reference, prefer: float) -> tuple[float, int]:
    """The threshold at which scores ``s`` call fake the images ``reference`` (booleans: another
    model's verdicts on the same images) calls fake, as often as any threshold can; and how many
    verdicts still differ there. An export recalibrated next to its source model stands in for
    that model, so its threshold should reproduce the model's verdicts, not re-optimise its own:
    int8 shifts scores unevenly, and a Youden's J chosen afresh on a few hundred validation
    images jumps between near-ties and changes verdicts for nothing (docs/benchmarks.md,
    sessions 22-24). Of the best thresholds, the middle of the gap between two neighbouring
    scores, the gap nearest ``prefer``: as far from both as it can lie."""
    s, ref = np.asarray(s, dtype=float), np.asarray(reference, dtype=bool)
    v = np.unique(s)  # sorted; a threshold in (v[k-1], v[k]] calls fake the scores >= v[k]
    at = np.searchsorted(v, s)

    def below(mask):  # per k = 0..len(v): how many of mask score under v[k]
        return np.concatenate([[0], np.cumsum(np.bincount(at[mask], minlength=len(v)))])

    disagree = below(ref) + (int((~ref).sum()) - below(~ref))
    lo = np.concatenate([[min(0.0, v[0])], v])
    hi = np.concatenate([v, [max(1.0, v[-1])]])
    mid = (lo + hi) / 2
    best = np.flatnonzero(disagree == disagree.min())
    k = best[np.argmin(np.abs(mid[best] - prefer))]
    t = float(mid[k])
    if not lo[k] < t <= hi[k]:  # a zero-width gap: every score 0 is fake, or none of 1 is
        t = float(np.nextafter(v[-1], np.inf)) if k == len(v) else float(hi[k])
    return t, int(disagree[k])


def sweep(y, s, thresholds=SWEEP) -> list[dict]:
    return [at_threshold(y, s, t) for t in thresholds]


def kde_analysis(y, s, roc_threshold: float | None = None, grid_size: int = 2001) -> dict:
    """Kernel density of each class's scores (scipy, Scott's bandwidth) and where they cross."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    grid = np.linspace(0.0, 1.0, grid_size)
    out: dict = {"grid": grid}
    dens = {}
    for name, label in (("real", 0), ("fake", 1)):
        v = s[y == label]
        if len(v) < 2 or np.ptp(v) == 0:
            return {**out, "intersections": [], "note": f"too few distinct {name} scores"}
        dens[name] = gaussian_kde(v)(grid)
    out.update(dens)
    diff = dens["fake"] - dens["real"]
    sign_change = np.nonzero(np.diff(np.sign(diff)) != 0)[0]
    xs = []
    for i in sign_change:  # linear interpolation between grid points
        x0, x1, d0, d1 = grid[i], grid[i + 1], diff[i], diff[i + 1]
        xs.append(float(x0 - d0 * (x1 - x0) / (d1 - d0)) if d1 != d0 else float(x0))
    out["intersections"] = xs
    # The decision-relevant crossing lies between the two class modes
    lo, hi = sorted((grid[np.argmax(dens["real"])], grid[np.argmax(dens["fake"])]))
    between = [x for x in xs if lo <= x <= hi]
    if between:
        # where more than one, the one with the most density mass on it matters most
        main = max(between, key=lambda x: np.interp(x, grid, dens["real"]))
        out["main_intersection"] = main
        if roc_threshold is not None:
            out["distance_to_roc_threshold"] = float(main - roc_threshold)
    return out


def summarize(y, s, threshold: float) -> dict:
    """Flat headline keys at the given threshold, the rest nested."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    free = threshold_free(y, s)
    at = at_threshold(y, s, threshold)
    return {
        "auc": free["auc"],
        "ap": free["ap"],
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "accuracy": at["accuracy"],
        "eer": free["eer"],
        "threshold": float(threshold),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "tpr_at_fpr": {"1%": free["tpr_at_fpr_1pct"], "0.1%": free["tpr_at_fpr_0.1pct"]},
        "confusion": at["confusion"],
        "at_0.5": at_threshold(y, s, 0.5),
    }


def per_source_auc(s, y, names, everyone: str = "") -> dict:
    """AUC of each source's fakes against that source's reals; the fakes of source
    ``everyone`` (pseudo-fakes made from every source's reals) against all reals."""
    names = np.asarray(names)
    out = {}
    for name in sorted(set(names[y == 1])):
        m = (y == 0) & ((names == name) | (name == everyone))
        m |= (y == 1) & (names == name)
        if len(set(y[m])) == 2:
            out[name] = threshold_free(y[m], s[m])["auc"]
    return out
