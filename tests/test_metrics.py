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


def test_agreeing_threshold_reproduces_another_models_verdicts():
    from fakescope.evaluation.metrics import agreeing_threshold

    ref = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    # every t in (0.3, 0.7] agrees; the gap's middle, not the end nearest the preference
    t, unlike = agreeing_threshold([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], ref, prefer=0.35)
    assert (t, unlike) == (pytest.approx(0.5), 0)
    # scores shifted down as int8 shifts them: the threshold follows, whatever Youden says
    rng = np.random.default_rng(0)
    teacher = rng.uniform(0, 1, 400)
    student = np.clip(teacher - 0.1 + rng.normal(0, 0.01, 400), 0, 1)
    t, unlike = agreeing_threshold(student, teacher >= 0.6, prefer=0.6)
    assert 0.47 < t < 0.53 and unlike <= 6

    # brute force: no threshold among the scores agrees more often
    def differ(u):
        return int(((student >= u) != (teacher >= 0.6)).sum())

    assert unlike == differ(t) == min(differ(u) for u in [*student, 1.01])
    # ties between distant gaps go to the one nearest the preference
    s, r = [0.2, 0.4, 0.6, 0.8], np.array([0, 1, 0, 1], dtype=bool)
    assert agreeing_threshold(s, r, 0.25)[0] == pytest.approx(0.3)
    assert agreeing_threshold(s, r, 0.75)[0] == pytest.approx(0.7)
    # every verdict "fake", or none, at the ends
    assert agreeing_threshold([0.0, 0.5], np.array([1, 1], dtype=bool), 0.5)[0] <= 0.0
    assert agreeing_threshold([0.5, 1.0], np.array([0, 0], dtype=bool), 0.5)[0] > 1.0


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
