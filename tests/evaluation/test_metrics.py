"""Verification metrics against scikit-learn, brute force and hand-computed cases."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    det_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from maskface.evaluation import metrics
from maskface.evaluation.metrics import (
    bootstrap_interval,
    choose_threshold,
    confusion_at_threshold,
    det_points,
    equal_error_rate,
    kfold_accuracy,
    roc_auc,
    roc_points,
    tar_at_far,
    verification_report,
)

SEEDS = [0, 1, 2, 3, 4]

# The hand case used below. Sorted by score, G = genuine, I = impostor:
#   0.9 G | 0.8 I | 0.7 G | 0.6 I | 0.4 I | 0.2 I      (2 genuine, 4 impostor)
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
HAND_LABELS = np.array([1, 0, 1, 0, 0, 0])


def random_pairs(seed: int, n: int = 400, separation: float = 1.0, quantise: bool = False):
    """Genuine scores ~ N(separation, 1), impostor ~ N(0, 1); optionally rounded to create ties."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(0.0, 1.0, n) + separation * labels
    if quantise:
        scores = np.round(scores, 1)
    return scores, labels.astype(int)


def brute_force_rates(scores, labels, threshold):
    labels = np.asarray(labels).astype(bool)
    accepted = np.asarray(scores) >= threshold
    return accepted[~labels].mean(), 1.0 - accepted[labels].mean()  # fpr, fnr


def brute_force_best_accuracy(scores, labels):
    """Best accuracy over every threshold that can matter (each score and one above all)."""
    candidates = np.append(np.unique(scores), np.max(scores) + 1.0)
    return max(np.mean((scores >= t) == labels.astype(bool)) for t in candidates)


# ---------------------------------------------------------------- hand-computed


def test_hand_case_confusion():
    # At t = 0.5: accepted 0.9 G, 0.8 I, 0.7 G, 0.6 I; rejected 0.4 I, 0.2 I
    # tp = 2, fp = 2, tn = 2, fn = 0; accuracy 4/6; precision 2/4; recall 2/2; f1 = 2*2/(4+2+0)
    c = confusion_at_threshold(HAND_SCORES, HAND_LABELS, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 2, 2, 0)
    assert all(type(c[k]) is int for k in ("tp", "fp", "tn", "fn"))
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["precision"] == pytest.approx(0.5)
    assert c["recall"] == pytest.approx(1.0)
    assert c["f1"] == pytest.approx(2 / 3)
    assert c["threshold"] == 0.5


def test_hand_case_threshold():
    # Correct pairs per gap (threshold at the gap's midpoint):
    #   below 0.2: 2 | 0.3: 3 | 0.5: 4 | 0.65: 5 | 0.75: 4 | 0.85: 5 | above 0.9: 4
    # Best is 5/6, reached at 0.65 and 0.85; the lower of the two middle ties is 0.65.
    assert choose_threshold(HAND_SCORES, HAND_LABELS) == pytest.approx(0.65)


def test_tie_break_takes_middle_gap_midpoint():
    # 0.1 I | 0.2 G | 0.3 I | 0.4 G | 0.5 I | 0.6 G: gaps 0.15, 0.35, 0.55 all give 4/6 correct;
    # the middle one wins.
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert choose_threshold(scores, labels) == pytest.approx(0.35)
    # Input order must not matter.
    perm = np.random.default_rng(0).permutation(6)
    assert choose_threshold(scores[perm], labels[perm]) == pytest.approx(0.35)


def test_hand_case_eer():
    # Full ROC from the strictest threshold, (threshold: fpr, fnr):
    #   0.9: 0, 1/2 | 0.8: 1/4, 1/2 | 0.7: 1/4, 0 | ...
    # fpr - fnr goes from -1/4 at 0.8 to +1/4 at 0.7, so the crossing is half way:
    # eer = 1/4 + 0.5 * 0 = 1/4 (fnr: 1/2 + 0.5 * (0 - 1/2) = 1/4); threshold = 0.75.
    eer, threshold = equal_error_rate(HAND_SCORES, HAND_LABELS)
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.75)


def test_hand_case_tar_at_far():
    # 4 impostors (0.8, 0.6, 0.4, 0.2). FAR <= 0.25 allows 1 false accept, so the threshold
    # sits above the 2nd-highest impostor 0.6, half way to the next score 0.7 -> 0.65;
    # genuines 0.9 and 0.7 both pass: TAR = 1. 4 impostors >= 1/0.25, so achievable.
    r = tar_at_far(HAND_SCORES, HAND_LABELS, 0.25)
    assert r["tar"] == pytest.approx(1.0)
    assert r["threshold"] == pytest.approx(0.65)
    assert r["n_impostors"] == 4 and r["achievable"] is True
    assert r["far_observed"] == pytest.approx(0.25)
    # FAR <= 0.1 allows 0 false accepts: above 0.8, half way to 0.9 -> 0.85; TAR = 1/2.
    # 4 impostors < 1/0.1 = 10, so flagged as not achievable but still reported.
    r = tar_at_far(HAND_SCORES, HAND_LABELS, 0.1)
    assert r["tar"] == pytest.approx(0.5)
    assert r["threshold"] == pytest.approx(0.85)
    assert r["achievable"] is False
    assert r["far_observed"] == 0.0


def test_hand_case_auc():
    # Genuine-impostor orderings: 0.9 beats all 4, 0.7 beats 3 of 4 -> 7/8.
    assert roc_auc(HAND_SCORES, HAND_LABELS) == pytest.approx(7 / 8)


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matches_sklearn(seed):
    scores, labels = random_pairs(seed, quantise=seed % 2 == 1)
    rng = np.random.default_rng(seed + 100)
    for threshold in [*rng.normal(0.5, 1.0, 5), float(scores[3]), scores.max() + 1, scores.min() - 1]:
        c = confusion_at_threshold(scores, labels, threshold)
        predicted = (scores >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
        assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (tp, fp, tn, fn)
        assert c["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
        p, r, f, _ = precision_recall_fscore_support(
            labels, predicted, average="binary", zero_division=0.0
        )
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p, r, f))


@pytest.mark.parametrize("seed", SEEDS)
def test_chosen_threshold_reaches_best_accuracy(seed):
    scores, labels = random_pairs(seed, n=300, quantise=seed % 2 == 0)
    threshold = choose_threshold(scores, labels)
    accuracy = confusion_at_threshold(scores, labels, threshold)["accuracy"]
    assert accuracy == pytest.approx(brute_force_best_accuracy(scores, labels))
    # The midpoint rule: never on a score, half way between its two neighbours.
    below, above = scores[scores < threshold].max(), scores[scores >= threshold].min()
    assert threshold == pytest.approx((below + above) / 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_se_threshold_is_the_highest_within_one_standard_error(seed):
    scores, labels = random_pairs(seed, n=300, quantise=seed % 2 == 0)
    threshold = choose_threshold(scores, labels, "one_se")
    # Brute force: every threshold that splits the sorted scores, its accuracy by counting.
    ordered = np.unique(scores)
    cuts = np.concatenate(([ordered[0] - 1.0], (ordered[1:] + ordered[:-1]) / 2, [ordered[-1] + 1.0]))
    accuracy = np.array([np.mean((scores >= cut) == labels.astype(bool)) for cut in cuts])
    best = accuracy.max()
    within = cuts[accuracy >= best - np.sqrt(best * (1 - best) / scores.size) - 1e-12]
    # Same gap of the sorted scores as the brute-force highest qualifying cut.
    assert np.sum(scores < threshold) == np.sum(scores < within.max())
    assert threshold >= choose_threshold(scores, labels)
    far = lambda t: np.mean(scores[~labels.astype(bool)] >= t)  # noqa: E731
    assert far(threshold) <= far(choose_threshold(scores, labels))


@pytest.mark.parametrize("seed", SEEDS)
def test_eer_threshold_balances_false_accepts_and_false_rejects(seed):
    scores, labels = random_pairs(seed, n=300, quantise=seed % 2 == 0)
    # Unbalanced on purpose: the equal error rate does not depend on the share of genuines.
    keep = (labels == 1) | (np.arange(labels.size) % 3 == 0)
    scores, labels = scores[keep], labels[keep]
    threshold = choose_threshold(scores, labels, "eer")
    genuine = labels.astype(bool)
    false_accept = np.mean(scores[~genuine] >= threshold)
    false_reject = np.mean(scores[genuine] < threshold)
    # Oracle: scikit-learn's ROC, every operating point; none is closer to equal error rates.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert abs(false_accept - false_reject) == pytest.approx(np.min(np.abs(fpr - (1 - tpr))))
    # The midpoint rule as for the other rules: never on a score.
    below, above = scores[scores < threshold].max(), scores[scores >= threshold].min()
    assert threshold == pytest.approx((below + above) / 2)


def test_eer_threshold_with_one_class_accepts_or_rejects_everything():
    scores = np.array([0.2, 0.5, 0.9])
    assert choose_threshold(scores, [1, 1, 1], "eer") < 0.2
    assert choose_threshold(scores, [0, 0, 0], "eer") > 0.9


def test_unknown_threshold_rule_names_the_choices():
    with pytest.raises(ValueError, match="'median' is not one of eer, max_accuracy, one_se"):
        choose_threshold([0.1, 0.9], [0, 1], "median")


def test_threshold_degenerate_inputs():
    # One class: accept everything (all genuine) / reject everything (all impostor).
    scores = np.array([0.2, 0.5, 0.9])
    t = choose_threshold(scores, [1, 1, 1])
    assert t < 0.2 and confusion_at_threshold(scores, [1, 1, 1], t)["accuracy"] == 1.0
    t = choose_threshold(scores, [0, 0, 0])
    assert t > 0.9 and confusion_at_threshold(scores, [0, 0, 0], t)["accuracy"] == 1.0
    # Adjacent floats: no midpoint exists, the split must still be correct.
    a = 1.0
    b = float(np.nextafter(a, 2.0))
    t = choose_threshold([a, b], [0, 1])
    assert a < t <= b


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed):
    scores, labels = random_pairs(seed, quantise=seed % 2 == 1)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_and_det_points(seed):
    scores, labels = random_pairs(seed, n=2000)
    full_fpr, full_tpr, _ = roc_curve(labels, scores)
    roc = roc_points(scores, labels, max_points=50)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert 2 <= len(roc) <= 50
    assert (roc.iloc[0]["fpr"], roc.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (roc.iloc[-1]["fpr"], roc.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert np.all(np.isfinite(roc["threshold"]))
    assert np.all(np.diff(roc["threshold"]) < 0)
    # Every kept point is a true operating point: recompute its rates by brute force.
    for row in roc.itertuples():
        fpr, fnr = brute_force_rates(scores, labels, row.threshold)
        assert (row.fpr, row.tpr) == pytest.approx((fpr, 1.0 - fnr))
    # ... and lies on sklearn's curve.
    on_curve = {(round(f, 12), round(t, 12)) for f, t in zip(full_fpr, full_tpr)}
    assert all((round(f, 12), round(t, 12)) in on_curve for f, t in zip(roc["fpr"], roc["tpr"]))

    det = det_points(scores, labels, max_points=50)
    assert list(det.columns) == ["fpr", "fnr", "threshold"]
    np.testing.assert_allclose(det["fnr"], 1.0 - roc["tpr"])
    # sklearn's own DET curve passes through the same (fpr, fnr) at each of our thresholds.
    sk_fpr, sk_fnr, sk_thr = det_curve(labels, scores)
    for row in det.itertuples():
        match = np.flatnonzero(np.isclose(sk_thr, row.threshold))
        if match.size:
            assert (sk_fpr[match[0]], sk_fnr[match[0]]) == pytest.approx((row.fpr, row.fnr))


def test_roc_points_small_curve_is_not_padded():
    roc = roc_points(HAND_SCORES, HAND_LABELS, max_points=200)
    full_fpr, _, _ = roc_curve(HAND_LABELS, HAND_SCORES)
    assert len(roc) == len(full_fpr)


@pytest.mark.parametrize("seed", SEEDS)
def test_eer_is_where_fpr_meets_fnr(seed):
    scores, labels = random_pairs(seed, n=3000)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    eer, threshold = equal_error_rate(scores, labels)
    # At the interpolated threshold the brute-force rates are within one pair of the EER.
    fpr, fnr = brute_force_rates(scores, labels, threshold)
    assert abs(fpr - eer) <= 1.0 / n_neg + 1e-12
    assert abs(fnr - eer) <= 1.0 / n_pos + 1e-12
    # Independent oracle: the discrete EER, min over all thresholds of max(FPR, FNR).
    discrete = min(max(brute_force_rates(scores, labels, t)) for t in np.unique(scores))
    assert eer == pytest.approx(discrete, abs=1.0 / min(n_pos, n_neg))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("far", [0.1, 0.01, 1e-3])
def test_tar_at_far_matches_roc(seed, far):
    scores, labels = random_pairs(seed, n=2000, quantise=seed % 2 == 1)
    r = tar_at_far(scores, labels, far)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores)
    # Best TAR among operating points within the FAR limit.
    assert r["tar"] == pytest.approx(sk_tpr[sk_fpr <= far + 1e-12].max())
    fpr, fnr = brute_force_rates(scores, labels, r["threshold"])
    assert fpr <= far + 1e-12
    assert r["far_observed"] == pytest.approx(fpr)
    assert r["tar"] == pytest.approx(1.0 - fnr)
    assert r["n_impostors"] == int((labels == 0).sum())
    assert r["achievable"] == (r["n_impostors"] >= 1.0 / far)


def test_tar_at_far_rejects_bad_far():
    with pytest.raises(ValueError, match="far"):
        tar_at_far(HAND_SCORES, HAND_LABELS, 0.0)
    with pytest.raises(ValueError, match="far"):
        tar_at_far(HAND_SCORES, HAND_LABELS, 1.5)


# ---------------------------------------------------------------- reference scorers


def test_perfect_scorer():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.5
    scores = np.where(labels, rng.uniform(0.6, 1.0, 500), rng.uniform(-1.0, 0.4, 500))
    t = choose_threshold(scores, labels)
    assert 0.4 < t < 0.6
    assert confusion_at_threshold(scores, labels, t)["accuracy"] == 1.0
    assert roc_auc(scores, labels) == 1.0
    assert equal_error_rate(scores, labels)[0] == 0.0
    assert tar_at_far(scores, labels, 1e-3)["tar"] == 1.0


def test_random_scorer_auc_near_half():
    rng = np.random.default_rng(1)
    labels = rng.random(20000) < 0.5
    scores = rng.random(20000)
    assert roc_auc(scores, labels) == pytest.approx(0.5, abs=0.02)
    assert equal_error_rate(scores, labels)[0] == pytest.approx(0.5, abs=0.02)


def test_inverted_scorer():
    rng = np.random.default_rng(2)
    labels = rng.random(500) < 0.5
    scores = np.where(labels, rng.uniform(-1.0, 0.4, 500), rng.uniform(0.6, 1.0, 500))
    assert roc_auc(scores, labels) == 0.0
    assert equal_error_rate(scores, labels)[0] == 1.0


def test_input_validation_names_the_problem():
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        choose_threshold([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="0/1 or bool"):
        confusion_at_threshold([0.1, 0.2], [0, 2], 0.5)
    with pytest.raises(ValueError, match="both genuine"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        choose_threshold([], [])
    with pytest.raises(ValueError, match="max_points"):
        roc_points(HAND_SCORES, HAND_LABELS, max_points=1)


# ---------------------------------------------------------------- k-fold (LFW protocol)


def test_kfold_never_sees_its_own_fold(monkeypatch):
    scores, labels = random_pairs(0, n=300)
    folds = np.arange(300) % 10
    seen: list[set] = []
    real = metrics.choose_threshold

    def spy(s, y):
        seen.append(set(np.asarray(s).tolist()))
        return real(s, y)

    monkeypatch.setattr(metrics, "choose_threshold", spy)
    result = kfold_accuracy(scores, labels, folds)
    assert len(seen) == 10 and result["fold_ids"] == list(range(10))
    for fold, scores_seen in zip(range(10), seen):
        # Scores are continuous, so each value identifies its pair.
        assert scores_seen == set(scores[folds != fold].tolist())
    for fold, (accuracy, threshold) in enumerate(zip(result["per_fold"], result["thresholds"])):
        held = folds == fold
        assert threshold == real(scores[~held], labels[~held])
        assert accuracy == pytest.approx(np.mean((scores[held] >= threshold) == labels[held]))
    assert result["mean"] == pytest.approx(np.mean(result["per_fold"]))
    assert result["std"] == pytest.approx(np.std(result["per_fold"]))


def test_kfold_threshold_would_differ_on_own_fold():
    rng = np.random.default_rng(3)
    # Folds 1-3: separable at 0.5 (impostors < 0.45, genuines > 0.55), 30 pairs each.
    # Fold 0: separable at 0.85 (impostors 0.6-0.8, genuines 0.9-1.0), 200 pairs; with its
    # own pairs in the selection the threshold would move above 0.6.
    other = rng.random(90) < 0.5
    other_scores = np.where(other, rng.uniform(0.55, 1.0, 90), rng.uniform(0.0, 0.45, 90))
    own = np.arange(200) % 2 == 0
    own_scores = np.where(own, rng.uniform(0.9, 1.0, 200), rng.uniform(0.6, 0.8, 200))
    scores = np.concatenate([own_scores, other_scores])
    labels = np.concatenate([own, other])
    folds = np.concatenate([np.zeros(200, int), 1 + np.arange(90) % 3])
    assert choose_threshold(scores, labels) > 0.6  # what a leaky protocol would use
    result = kfold_accuracy(scores, labels, folds)
    assert 0.45 < result["thresholds"][0] < 0.55
    assert result["per_fold"][0] == 0.5  # all of fold 0 accepted: only its genuines are right


def test_kfold_needs_two_folds():
    with pytest.raises(ValueError, match="at least 2"):
        kfold_accuracy(HAND_SCORES, HAND_LABELS, np.zeros(6))


# ---------------------------------------------------------------- bootstrap


def grouped_pairs(n_groups: int, pairs_per_group: int, seed: int):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), pairs_per_group)
    labels = rng.random(groups.size) < 0.5
    # A per-group offset makes pairs within a group correlated, as with real identities.
    scores = rng.normal(0.0, 1.0, groups.size) + 1.5 * labels + rng.normal(0.0, 0.5, n_groups)[groups]
    return scores, labels, groups


def auc_statistic(s, y):
    return roc_auc_score(y, s)


def test_bootstrap_contains_estimate_and_narrows():
    small = bootstrap_interval(*grouped_pairs(15, 8, 0), auc_statistic, n_resamples=300, seed=0)
    large = bootstrap_interval(*grouped_pairs(300, 8, 0), auc_statistic, n_resamples=300, seed=0)
    for result in (small, large):
        assert result["low"] <= result["estimate"] <= result["high"]
        assert result["n_used"] + result["n_skipped"] == 300
    scores, labels, groups = grouped_pairs(15, 8, 0)
    assert small["estimate"] == pytest.approx(roc_auc_score(labels, scores))
    assert small["n_groups"] == 15
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])


def test_bootstrap_resamples_whole_groups():
    # Group g has g + 1 pairs with distinct scores, so each score names its group.
    sizes = np.arange(1, 9)
    groups = np.repeat(np.arange(8), sizes)
    scores = np.arange(groups.size, dtype=float)
    labels = scores % 2 == 0
    draws: list[Counter] = []

    def record(s, y):
        draws.append(Counter(s.tolist()))
        return float(np.mean(y))

    result = bootstrap_interval(scores, labels, groups, record, n_resamples=50, seed=1)
    # One call per usable resample, then one on the full data for the estimate.
    assert len(draws) == result["n_used"] + 1 and result["n_used"] > 0
    first_of_group = scores[np.r_[0, np.cumsum(sizes)[:-1]]]
    for counts in draws[:-1]:
        times_drawn = [counts[first] for first in first_of_group]
        for g in range(8):
            # Every pair of a drawn group comes along, as often as the group was drawn.
            assert {counts[m] for m in scores[groups == g]} == {times_drawn[g]}
        assert sum(times_drawn) == 8  # as many draws as there are groups
        assert sum(counts.values()) == int(np.dot(times_drawn, sizes))


def test_bootstrap_skips_single_class_resamples_and_is_deterministic():
    # Two groups, one all genuine and one all impostor: a resample is degenerate whenever it
    # draws the same group twice (probability 1/2).
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b"])
    r = bootstrap_interval(scores, labels, groups, auc_statistic, n_resamples=400, seed=5)
    assert r["n_used"] + r["n_skipped"] == 400
    assert 120 < r["n_skipped"] < 280
    assert r["low"] == r["high"] == r["estimate"] == 1.0
    assert r == bootstrap_interval(scores, labels, groups, auc_statistic, n_resamples=400, seed=5)
    # With only genuine pairs every resample is degenerate: no interval, but no crash, no NaN.
    r = bootstrap_interval(scores, np.ones(4), groups, lambda s, y: float(np.mean(y)), n_resamples=20)
    assert r["n_used"] == 0 and r["low"] is None and r["high"] is None
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------- report


def make_report_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    val_scores, val_labels = random_pairs(seed, n=400)
    n = 600
    types = np.array(["masked-unmasked", "masked-masked", "unmasked-unmasked"])[np.arange(n) % 3]
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(0.0, 1.0, n) + labels * np.where(types == "masked-masked", 0.5, 2.0)
    folds = np.arange(n) % 10
    groups = rng.integers(0, 60, n)
    return val_scores, val_labels, scores, labels, types, folds, groups


def test_report_threshold_from_validation_and_values_match():
    val_scores, val_labels, scores, labels, types, folds, groups = make_report_data()
    report = verification_report(
        val_scores, val_labels, scores, labels, types, folds, groups, bootstrap=100, seed=0
    )
    threshold = choose_threshold(val_scores, val_labels)
    assert report["threshold"] == threshold
    assert threshold != choose_threshold(scores, labels)  # the test set's own optimum differs
    expected = confusion_at_threshold(scores, labels, threshold)
    for key, value in expected.items():
        assert report[key] == value
    assert report["validation"]["accuracy"] == confusion_at_threshold(val_scores, val_labels, threshold)["accuracy"]
    assert report["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert (report["eer"], report["eer_threshold"]) == equal_error_rate(scores, labels)
    assert report["tar_at_far_1e-02"] == tar_at_far(scores, labels, 1e-2)
    assert report["tar_at_far_1e-03"] == tar_at_far(scores, labels, 1e-3)
    assert report["tar_at_far_1e-03"]["achievable"] is False  # 360-odd impostors < 1000
    assert report["kfold"] == kfold_accuracy(scores, labels, folds)
    for name in ("accuracy", "roc_auc"):
        interval = report["bootstrap"][name]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert report["bootstrap"]["accuracy"]["estimate"] == pytest.approx(expected["accuracy"])

    by_type = report["by_pair_type"]
    assert set(by_type) == set(types.tolist())
    for pair_type, block in by_type.items():
        mask = types == pair_type
        assert block["n_pairs"] == int(mask.sum())
        assert block["threshold"] == threshold  # the validation threshold, not re-chosen
        assert block["accuracy"] == confusion_at_threshold(scores[mask], labels[mask], threshold)["accuracy"]
        assert block["roc_auc"] == pytest.approx(roc_auc_score(labels[mask], scores[mask]))
        assert "kfold" in block and "bootstrap" in block
    assert by_type["masked-masked"]["roc_auc"] < by_type["unmasked-unmasked"]["roc_auc"]


def assert_plain_json(value):
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)
        if type(value) is float:
            assert math.isfinite(value)


def test_report_is_plain_json_with_single_class_type_noted():
    val_scores, val_labels, scores, labels, types, folds, groups = make_report_data(1)
    types = types.copy()
    only_genuine = (labels == 1) & (np.arange(labels.size) < 40)
    types[only_genuine] = "genuine-only"
    report = verification_report(
        val_scores, val_labels, scores, labels, types, folds, groups, fars=(0.05, 1e-3), bootstrap=30
    )
    assert_plain_json(report)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert "tar_at_far_5e-02" in report
    skipped = report["by_pair_type"]["genuine-only"]
    assert "note" in skipped and "single class" in skipped["note"]
    assert skipped["n_pairs"] == int(only_genuine.sum()) and skipped["n_impostor"] == 0
    assert "roc_auc" not in skipped


def test_report_minimal_and_single_class_test():
    val_scores, val_labels, scores, labels, *_ = make_report_data(2)
    report = verification_report(val_scores, val_labels, scores, labels)
    assert "kfold" not in report and "bootstrap" not in report and "by_pair_type" not in report
    json.dumps(report, allow_nan=False)
    ones = np.ones_like(labels)
    report = verification_report(val_scores, val_labels, scores, ones)
    assert report["roc_auc"] is None and report["eer"] is None and "note" in report
    assert report["recall"] == confusion_at_threshold(scores, ones, report["threshold"])["recall"]
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match="validation"):
        verification_report(val_scores, np.ones_like(val_labels), scores, labels)


def test_single_class_block_has_the_two_class_keys_with_ranking_metrics_none():
    scores, labels = random_pairs(7)
    fars = (1e-2, 0.05)
    threshold = 0.5
    impostors = labels == 0
    block = metrics._single_class_block(scores[impostors], labels[impostors], threshold, fars)
    full = metrics._test_block(scores, labels, threshold, fars, None, None, 0, 0)
    # What reads a report (the markdown report, the plots) finds every key of a normal block.
    assert set(block) == set(full) | {"note"} and "single class" in block["note"]
    ranking = {"roc_auc", "eer", "eer_threshold", *(metrics.far_key(far) for far in fars)}
    assert all(block[key] is None for key in ranking)
    tn, fp, fn, tp = confusion_matrix(labels[impostors], scores[impostors] >= threshold, labels=[0, 1]).ravel()
    assert (block["tn"], block["fp"], block["fn"], block["tp"]) == (tn, fp, fn, tp)
    assert (block["n_pairs"], block["n_genuine"], block["n_impostor"]) == (int(impostors.sum()), 0, int(impostors.sum()))


# ---------------------------------------------------------------- identification


def test_identification_ranks_hand_case_with_ties():
    # Query 0: true class 1 scores highest -> rank 1.
    # Query 1: true class 0 (0.5) below class 2 (0.7) -> rank 2.
    # Query 2: true class 2 ties class 0 at 0.4 -> the tie counts against it: rank 2.
    # Query 3: every class 0 (KNN with no vote for anyone) -> rank 3 (last).
    # Query 4: identity not in the gallery (-1) -> rank 0, a miss at every k.
    scores = np.array(
        [[0.1, 0.8, 0.1], [0.5, 0.0, 0.7], [0.4, 0.2, 0.4], [0.0, 0.0, 0.0], [0.9, 0.05, 0.05]]
    )
    truth = np.array([1, 0, 2, 1, -1])
    ranks = metrics.identification_ranks(scores, truth)
    assert ranks.tolist() == [1, 2, 2, 3, 0]
    assert metrics.rank_k_rate(ranks, 1) == pytest.approx(1 / 5)
    assert metrics.rank_k_rate(ranks, 2) == pytest.approx(3 / 5)
    cmc = metrics.cmc_curve(ranks, 4)
    assert cmc["rate"].tolist() == pytest.approx([0.2, 0.6, 0.8, 0.8])  # never 1: query 4 stays a miss


@pytest.mark.parametrize("seed", SEEDS)
def test_identification_rates_match_sklearn_top_k(seed):
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(seed)
    scores = rng.random((200, 15))  # continuous: no ties, where sklearn's tie order does not matter
    truth = rng.integers(0, 15, 200)
    scores[np.arange(200), truth] += rng.random(200) * 0.6  # better than chance
    ranks = metrics.identification_ranks(scores, truth)
    for k in (1, 3, 5):
        assert metrics.rank_k_rate(ranks, k) == pytest.approx(top_k_accuracy_score(truth, scores, k=k, labels=range(15)))
    # Brute force: position of the true class after sorting each row, best first.
    expected = [int(np.flatnonzero(np.argsort(-row) == t)[0]) + 1 for row, t in zip(scores, truth)]
    assert ranks.tolist() == expected


def test_identification_perfect_and_random_extremes():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 20, 2000)
    perfect = np.zeros((2000, 20))
    perfect[np.arange(2000), truth] = 1.0
    assert metrics.rank_k_rate(metrics.identification_ranks(perfect, truth), 1) == 1.0
    random_ranks = metrics.identification_ranks(rng.random((2000, 20)), truth)
    assert metrics.rank_k_rate(random_ranks, 1) == pytest.approx(1 / 20, abs=0.02)
    assert metrics.rank_k_rate(random_ranks, 5) == pytest.approx(5 / 20, abs=0.03)


def test_identification_inputs_are_checked():
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        metrics.identification_ranks(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        metrics.identification_ranks(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        metrics.identification_ranks(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="k must be"):
        metrics.rank_k_rate([1, 2], 0)


def test_bootstrap_mean_interval_equals_explicit_group_resampling():
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 12, 90)
    values = (rng.random(90) < 0.7).astype(float)
    result = metrics.bootstrap_mean_interval(values, groups, n_resamples=200, seed=9)
    # Oracle: the same draws, but concatenating every item of each drawn group explicitly.
    names = np.unique(groups)
    oracle_rng = np.random.default_rng(9)
    means = []
    for _ in range(200):
        drawn = oracle_rng.integers(0, names.size, size=names.size)
        means.append(np.concatenate([values[groups == names[d]] for d in drawn]).mean())
    assert result["low"] == pytest.approx(np.quantile(means, 0.025))
    assert result["high"] == pytest.approx(np.quantile(means, 0.975))
    assert result["estimate"] == pytest.approx(values.mean())
    assert result["n_groups"] == 12 and result["low"] <= result["estimate"] <= result["high"]


def test_identification_report_blocks_by_query_type():
    ranks = np.array([1, 1, 2, 6, 1, 3])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    types = np.array(["masked", "unmasked"] * 3)
    report = metrics.identification_report(ranks, groups, types, ks=(1, 5), bootstrap=50)
    assert report["n_queries"] == 6 and report["n_identities"] == 3
    assert report["rank_1"] == pytest.approx(3 / 6) and report["rank_5"] == pytest.approx(5 / 6)
    masked = report["by_query_type"]["masked"]  # ranks 1, 2, 1
    assert masked["rank_1"] == pytest.approx(2 / 3) and masked["rank_5"] == 1.0
    unmasked = report["by_query_type"]["unmasked"]  # ranks 1, 6, 3
    assert unmasked["rank_1"] == pytest.approx(1 / 3) and unmasked["rank_5"] == pytest.approx(2 / 3)
    assert report["bootstrap"]["rank_1"]["low"] <= 0.5 <= report["bootstrap"]["rank_1"]["high"]
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_auc_statistic_equals_sklearn(seed):
    # The report's fast AUC (rank statistic) against roc_auc_score, ties included.
    for quantise in (False, True):
        scores, labels = random_pairs(seed, n=300, quantise=quantise)
        assert metrics.AucStatistic()(scores, labels.astype(bool)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_resampled_statistics_equal_sklearn_with_sample_weights(seed):
    # A row of pair weights is a row of sample weights, sklearn's oracle.
    for quantise in (False, True):
        scores, labels = random_pairs(seed, n=200, quantise=quantise)
        y = labels.astype(bool)
        weights = np.random.default_rng(seed).integers(0, 4, size=(5, scores.size)).astype(float)
        aucs = metrics.AucStatistic().resampled(scores, y, weights)
        accuracies = metrics.AccuracyStatistic(0.3).resampled(scores, y, weights)
        for row, auc, accuracy in zip(weights, aucs, accuracies):
            assert auc == pytest.approx(roc_auc_score(y, scores, sample_weight=row), abs=1e-12)
            assert accuracy == pytest.approx(np.average((scores >= 0.3) == y, weights=row), abs=1e-12)


def uneven_tied_groups(seed: int):
    """Groups of 1 to 12 pairs, scores on a coarse grid (many ties), correlated within a group."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(15), rng.integers(1, 13, 15))
    labels = rng.random(groups.size) < 0.4
    scores = np.round(rng.normal(0.0, 1.0, groups.size) + labels + rng.normal(0.0, 0.5, 15)[groups], 1)
    return scores, labels.astype(int), groups


@pytest.mark.parametrize("statistic", [metrics.AucStatistic(), metrics.AccuracyStatistic(0.5)], ids=["auc", "accuracy"])
@pytest.mark.parametrize("data", [lambda: grouped_pairs(12, 5, 3), lambda: uneven_tied_groups(4)], ids=["even", "uneven-tied"])
def test_vectorised_bootstrap_equals_resampling_loop(statistic, data, monkeypatch):
    # A plain function hides `resampled`, forcing the one-resample-at-a-time path: the oracle.
    scores, labels, groups = data()
    plain = lambda s, y: statistic(s, y)  # noqa: E731
    # A small block that does not divide the resample count: several blocks, a ragged last one.
    monkeypatch.setattr(metrics, "_BOOTSTRAP_BLOCK_ELEMENTS", 7 * labels.size)
    fast = bootstrap_interval(scores, labels, groups, statistic, n_resamples=300, seed=11)
    slow = bootstrap_interval(scores, labels, groups, plain, n_resamples=300, seed=11)
    assert fast["n_used"] == slow["n_used"] and fast["n_skipped"] == slow["n_skipped"]
    for key in ("estimate", "low", "high"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_vectorised_bootstrap_skips_degenerate_resamples_like_the_loop():
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b"])
    fast = bootstrap_interval(scores, labels, groups, metrics.AucStatistic(), n_resamples=400, seed=5)
    slow = bootstrap_interval(scores, labels, groups, auc_statistic, n_resamples=400, seed=5)
    assert fast == slow


# ---------------------------------------------------------------- two-way bootstrap


def two_identity_pairs(seed: int):
    """Genuine pairs within and impostor pairs across 9 named identities; tied, correlated scores."""
    rng = np.random.default_rng(seed)
    names = np.array(["zoe", "al", "mo", "kim", "bo", "lee", "ann", "ty", "eve"])
    offset = dict(zip(names, rng.normal(0.0, 0.6, names.size)))
    first, second = [], []
    for name in names:
        first += [name] * int(rng.integers(1, 5))
        second += [name] * (len(first) - len(second))
    for _ in range(30):
        a, b = rng.choice(names, size=2, replace=False)
        first.append(a)
        second.append(b)
    first, second = np.array(first), np.array(second)
    labels = (first == second).astype(int)
    noise = rng.normal(0.0, 1.0, labels.size) + 1.2 * labels
    scores = np.round(noise + [offset[a] + offset[b] for a, b in zip(first, second)], 1)
    return scores, labels, first, second


def brute_force_two_way(scores, labels, first, second, statistic, n_resamples, seed):
    """The resampled pair list built person by person, as the definition reads.

    Each resample draws as many people as there are identities, with replacement, from the
    sorted identities with the same generator calls as the library. Every draw (a slot) is
    a person of its own: a pair within an identity comes along once per slot holding it; a
    pair between identities a != b once per ordered pair of slots (one holding a, another b).
    """
    names = np.unique(np.concatenate([first, second]))
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(n_resamples):
        slots = names[rng.integers(0, names.size, size=names.size)]
        picked = []
        for k, person in enumerate(slots):
            picked += [i for i in range(labels.size) if first[i] == person and second[i] == person]
            for other_slot, other in enumerate(slots):
                if other_slot != k and other != person:
                    picked += [i for i in range(labels.size) if first[i] == person and second[i] == other]
        y = labels[picked]
        if y.all() or not y.any():
            skipped += 1
            continue
        values.append(statistic(y, scores[picked]))
    low, high = np.quantile(values, [0.025, 0.975])
    return low, high, len(values), skipped


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["accuracy", "roc_auc"])
def test_two_way_bootstrap_equals_brute_force_resampled_pair_lists(seed, name, monkeypatch):
    scores, labels, first, second = two_identity_pairs(seed)
    threshold = 0.55
    oracle = {
        "accuracy": lambda y, s: accuracy_score(y, s >= threshold),
        "roc_auc": lambda y, s: roc_auc_score(y, s),
    }[name]
    fast_statistic = {"accuracy": metrics.AccuracyStatistic(threshold), "roc_auc": metrics.AucStatistic()}[name]
    low, high, n_used, n_skipped = brute_force_two_way(scores, labels, first, second, oracle, 120, seed)
    assert n_used > 100
    groups = np.stack([first, second], axis=1)
    # Several blocks with a ragged last one.
    monkeypatch.setattr(metrics, "_BOOTSTRAP_BLOCK_ELEMENTS", 7 * labels.size)
    fast = bootstrap_interval(scores, labels, groups, fast_statistic, n_resamples=120, seed=seed)
    looped = bootstrap_interval(scores, labels, groups, lambda s, y: oracle(y, s), n_resamples=120, seed=seed)
    for result in (fast, looped):
        assert (result["n_used"], result["n_skipped"]) == (n_used, n_skipped)
        assert result["low"] == pytest.approx(low, abs=1e-12)
        assert result["high"] == pytest.approx(high, abs=1e-12)
        assert result["n_groups"] == 9 and result["resampling"] == "two-way"
        assert result["estimate"] == pytest.approx(oracle(labels, scores), abs=1e-12)


def test_two_way_bootstrap_resamples_the_second_identity():
    # Every impostor pair's first identity is "a"; its second varies. Resampling by the first
    # identity alone (the old way) would keep all impostors or none; two-way resampling keeps
    # only those whose second identity was drawn too.
    first = np.array(["a", "a", "b", "c", "a", "a"])
    second = np.array(["a", "a", "b", "c", "b", "c"])
    labels = (first == second).astype(int)
    scores = np.arange(6, dtype=float)
    seen: list[Counter] = []

    def record(s, y):
        seen.append(Counter(s.tolist()))
        return float(np.mean(y))

    bootstrap_interval(scores, labels, np.stack([first, second], axis=1), record, n_resamples=200, seed=3)
    seen.pop()  # the estimate's call on all pairs
    impostor_sets = set()
    for counts in seen:
        # Genuine scores name their identity: 0 and 1 are a's, 2 is b's, 3 is c's.
        draws = {"a": counts[0.0], "b": counts[2.0], "c": counts[3.0]}
        assert counts[1.0] == draws["a"] and sum(draws.values()) <= 3
        for score, other in ((4.0, "b"), (5.0, "c")):
            assert counts[score] == draws["a"] * draws[other]
        impostor_sets.add((counts[4.0] > 0, counts[5.0] > 0))
    assert (True, False) in impostor_sets and (False, True) in impostor_sets


def test_two_way_bootstrap_is_wider_than_resampling_first_identities_only():
    # Impostor scores depend on the second identity only: resampling first identities alone
    # never varies that source of spread, so its interval is too narrow.
    rng = np.random.default_rng(0)
    names = np.arange(40)
    offset = rng.normal(0.0, 1.5, names.size)
    first = np.concatenate([np.repeat(names, 3), rng.choice(names, 120)])
    second = np.concatenate([np.repeat(names, 3), (first[120:] + rng.integers(1, 40, 120)) % 40])
    labels = (first == second).astype(int)
    scores = rng.normal(0.0, 0.3, labels.size) + 2.0 * labels + np.where(labels == 1, 0.0, offset[second])
    two_way = bootstrap_interval(scores, labels, np.stack([first, second], 1), metrics.AucStatistic(), 400, seed=1)
    one_way = bootstrap_interval(scores, labels, first, metrics.AucStatistic(), 400, seed=1)
    assert one_way["resampling"] == "one-way"
    assert two_way["high"] - two_way["low"] > 1.3 * (one_way["high"] - one_way["low"])


def test_bootstrap_refuses_groups_of_another_shape():
    with pytest.raises(ValueError, match=r"shape \(4,\).*\(4, 2\).*got shape \(4, 3\)"):
        bootstrap_interval([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], np.zeros((4, 3)), metrics.AucStatistic(), 10)
    with pytest.raises(ValueError, match="test_groups|groups must have shape"):
        verification_report([0.1, 0.9], [0, 1], [0.1, 0.9], [0, 1], test_groups=np.zeros((3, 2)), bootstrap=5)
