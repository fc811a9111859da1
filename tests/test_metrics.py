import numpy as np
import pytest
from sklearn import metrics as skm

from fakescope.evaluation import metrics as M


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(500), np.ones(500)].astype(int)
    s = np.r_[rng.beta(2, 6, 500), rng.beta(6, 2, 500)]
    return y, s


def test_summary_has_flat_headline_keys(scores):
    y, s = scores
    m = M.summarize(y, s, 0.5)
    for k in (
        "auc",
        "ap",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "eer",
        "threshold",
        "n_real",
        "n_fake",
    ):
        assert k in m
    assert 0.9 < m["auc"] < 1.0 and m["n_real"] == m["n_fake"] == 500
    c = m["confusion"]
    assert c["tn"] + c["fp"] == 500 and c["tp"] + c["fn"] == 500
    assert m["tpr_at_fpr"]["0.1%"] <= m["tpr_at_fpr"]["1%"] <= 1


def test_perfect_and_inverted():
    y = np.array([0, 0, 1, 1])
    assert M.threshold_free(y, np.array([0.1, 0.2, 0.8, 0.9]))["auc"] == 1.0
    assert M.threshold_free(y, np.array([0.1, 0.2, 0.8, 0.9]))["eer"] == 0.0
    assert M.threshold_free(y, np.array([0.9, 0.8, 0.2, 0.1]))["auc"] == 0.0


def test_ideal_thresholds_separate_classes():
    y = np.array([0] * 50 + [1] * 50)
    s = np.r_[np.linspace(0.0, 0.6, 50), np.linspace(0.65, 1.0, 50)]
    t = M.ideal_thresholds(y, s)
    assert 0.6 < t["youden"] <= 0.65 and t["youden_j"] == pytest.approx(1.0)
    assert 0.6 < t["f1"] <= 0.65 and t["f1_max"] == pytest.approx(1.0)


def test_kde_intersection_of_symmetric_classes(scores):
    y, s = scores  # beta(2,6) and beta(6,2) mirror each other about 0.5
    k = M.kde_analysis(y, s, roc_threshold=0.55)
    assert k["main_intersection"] == pytest.approx(0.5, abs=0.03)
    assert k["distance_to_roc_threshold"] == pytest.approx(k["main_intersection"] - 0.55)


def test_sweep_covers_030_to_090(scores):
    rows = M.sweep(*scores)
    assert rows[0]["threshold"] == 0.3 and rows[-1]["threshold"] == 0.9 and len(rows) == 13
    recalls = [r["recall"] for r in rows]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never finds more


def test_youden_nearest_keeps_a_preferred_threshold_that_ties():
    from fakescope.evaluation.metrics import ideal_thresholds, youden_nearest

    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])  # every t in (0.3, 0.7] separates perfectly
    assert ideal_thresholds(y, s)["youden"] == pytest.approx(0.7)
    assert youden_nearest(y, s, 0.5) == 0.5
    # within one image of the best J counts as a tie; two images worse never does
    rng = np.random.default_rng(0)
    y2 = np.repeat([0, 1], 50)
    s2 = np.clip(rng.normal(0.35 + 0.3 * y2, 0.15), 0, 1)
    for prefer in (0.0, 0.3, 0.5, 0.7, 1.0):
        t = youden_nearest(y2, s2, prefer)
        pred = s2 >= t
        j = pred[y2 == 1].mean() - pred[y2 == 0].mean()
        best = max((s2[y2 == 1] >= u).mean() - (s2[y2 == 0] >= u).mean() for u in s2)
        assert best - j <= 1 / 50 + 1e-9


def test_auc_difference_has_a_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 150)
    ref = np.clip(y * 0.3 + rng.normal(0.35, 0.15, len(y)), 0, 1)
    same = M.auc_difference(y, ref, ref)
    assert same["difference"] == same["low"] == same["high"] == 0.0  # paired: no spread
    noisy = np.clip(ref + rng.normal(0, 0.1, len(y)), 0, 1)
    d = M.auc_difference(y, noisy, ref)
    want = skm.roc_auc_score(y, noisy) - skm.roc_auc_score(y, ref)
    assert d["difference"] == pytest.approx(want) and d["difference"] < 0
    assert d["low"] < d["difference"] < d["high"] and d["high"] - d["low"] > 0.005
    # fewer images, a wider interval; the same seed, the same interval
    few = np.r_[0:40, 150:190]
    d_few = M.auc_difference(y[few], noisy[few], ref[few])
    assert d_few["high"] - d_few["low"] > d["high"] - d["low"]
    assert M.auc_difference(y, noisy, ref) == d


def test_auc_difference_draws_score_as_sklearn_does_with_ties():
    """The interval's AUCs come from ranks (all draws at once); with tied scores they must be
    sklearn's roc_auc_score on the same draws."""
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], [60, 40])
    s, ref = np.round(rng.random(100) + 0.3 * y, 1), rng.random(100) + 0.2 * y
    d = M.auc_difference(y, s, ref, rounds=200, seed=5)
    draw = np.random.default_rng(5)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    idx = np.concatenate([draw.choice(neg, (200, 60)), draw.choice(pos, (200, 40))], 1)
    want = [skm.roc_auc_score(y[i], s[i]) - skm.roc_auc_score(y[i], ref[i]) for i in idx]
    assert [d["low"], d["high"]] == pytest.approx(list(np.percentile(want, [2.5, 97.5])))
