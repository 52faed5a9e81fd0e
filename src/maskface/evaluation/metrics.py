"""Face-verification metrics over scored pairs: pure functions, no I/O.

Conventions everywhere:

* ``scores``: shape (N,), float, higher means "more likely the same person"
  (a cosine similarity or a classifier probability, never a distance).
* ``labels``: shape (N,), bool or 0/1 ints, 1 = genuine pair (same person),
  0 = impostor pair.
* A pair is predicted "same" when ``score >= threshold``.
* Rates (accuracy, FPR, TPR, FAR, TAR, EER) are fractions in [0, 1], not percent.

Every function returns plain Python numbers so its results can go straight into
``json.dumps(..., allow_nan=False)``; quantities that the data cannot define are
``None``, never NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from tqdm.auto import tqdm

from maskface.config import THRESHOLD_RULES

logger = logging.getLogger(__name__)

Statistic = Callable[[np.ndarray, np.ndarray], float]


@runtime_checkable
class ResampledStatistic(Protocol):
    """A statistic that evaluates many bootstrap resamples in one call.

    ``resampled(s (N,), y (N,) bool, weights (B, N)) -> (B,)``: pairs come sorted by score
    and row b of ``weights`` says how many times resample b holds each pair (0, 1, 2, ...);
    the result is, per row, what the plain call gives on each pair repeated that many
    times. The statistic must not depend on the order of pairs (the bootstrap sorts them
    by score).
    """

    def __call__(self, s: np.ndarray, y: np.ndarray) -> float: ...

    def resampled(self, s: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- inputs


def _as_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(scores float64 (N,), labels bool (N,))``."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D arrays of shape (N,); got shapes {s.shape} and {y.shape}"
        )
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.shape[0] == 0:
        raise ValueError("scores and labels are empty; at least one pair is needed")
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scores must be numeric; got dtype {s.dtype}") from None
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"scores contain {bad} non-finite value(s) (NaN or inf); all must be finite")
    if y.dtype == bool:
        return s, y
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 or bool; got values {sorted(values, key=str)[:10]}")
    return s, y.astype(bool)


def _as_per_pair(values: Any, n: int, name: str) -> np.ndarray:
    """A per-pair annotation (fold id, group id, pair type) of shape (N,)."""
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one entry per pair; got shape {array.shape}")
    return array


def _require_both_classes(labels: np.ndarray, what: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(
            f"{what} needs both genuine (1) and impostor (0) pairs; "
            f"got {n_pos} genuine and {labels.size - n_pos} impostor"
        )


def json_ready(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into JSON-ready Python, non-finite floats into None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _accept_nothing_threshold(scores: np.ndarray) -> float:
    # A finite stand-in for sklearn's +inf first ROC threshold: nothing scores >= it,
    # and it survives strict JSON.
    return float(np.nextafter(scores.max(), np.inf))


# --------------------------------------------------------------------------- threshold


def choose_threshold(scores: Any, labels: Any, rule: str = "max_accuracy") -> float:
    """The decision threshold chosen on these (validation) pairs.

    Accuracy only changes when the threshold crosses a score, so the candidates are
    one threshold per gap between adjacent distinct scores, placed at the gap's
    midpoint (the point farthest from both neighbouring scores, so the choice is
    robust to small score shifts on new data), plus one below all scores (accept
    everything) and one above (reject everything), set half the neighbouring gap
    away (one unit when there is a single distinct score).

    Rules:
        ``max_accuracy``: the accuracy-maximising candidate; when several reach the same
        best accuracy the middle one in score order is taken (the lower of the two middle
        ones for an even count), so the result is deterministic.
        ``one_se``: the highest candidate whose accuracy is within one binomial standard
        error, ``sqrt(best (1 - best) / n)``, of the best (the one-standard-error rule).
        Accuracies that close cannot be told apart on ``n`` pairs, and the highest of them
        accepts the fewest impostors: the choice for target collections whose masked photos
        are easier than the validation pairs' (simulated masks), where genuine scores rise
        while impostor scores stay.
        ``eer``: the candidate where the false accept rate (impostors at or above) and the
        false reject rate (genuines below) are closest, the equal error rate's threshold;
        ties: the middle one, as for ``max_accuracy``. It depends on neither the share of
        genuine pairs nor on one lucky gap, and on collections as hard as the validation
        pairs (real masks) its accuracy stays closest to the target's own best
        (docs/evaluation.md has the measurements). With one class only it accepts (all
        genuine) or rejects (all impostor) everything, as the other rules do.

    Args:
        scores: (N,) float similarity scores.
        labels: (N,) bool/0-1, 1 = same person.
        rule: one of ``THRESHOLD_RULES``.

    Returns:
        The threshold (same units as ``scores``); predict same when ``score >= threshold``.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
    s, y = _as_scores_labels(scores, labels)
    distinct, inverse = np.unique(s, return_inverse=True)
    k = distinct.size
    pos_per_value = np.bincount(inverse, weights=y, minlength=k)
    neg_per_value = np.bincount(inverse, weights=~y, minlength=k)
    cum_pos = np.concatenate(([0.0], np.cumsum(pos_per_value)))
    cum_neg = np.concatenate(([0.0], np.cumsum(neg_per_value)))
    # Candidate c puts the first c distinct values below the threshold: those are
    # predicted different (correct for impostors), the rest same (correct for genuines).
    correct = cum_neg + (cum_pos[-1] - cum_pos)
    if rule == "eer" and 0 < cum_pos[-1] < s.size:
        false_reject = cum_pos / cum_pos[-1]
        false_accept = 1.0 - cum_neg / cum_neg[-1]
        imbalance = np.abs(false_accept - false_reject)
        closest = np.flatnonzero(imbalance == imbalance.min())
        c = int(closest[(closest.size - 1) // 2])
    elif rule == "one_se":
        best_accuracy = correct.max() / s.size
        tolerance = np.sqrt(best_accuracy * (1.0 - best_accuracy) / s.size) * s.size
        c = int(np.flatnonzero(correct >= correct.max() - tolerance)[-1])
    else:
        best = np.flatnonzero(correct == correct.max())
        c = int(best[(best.size - 1) // 2])
    return _candidate_threshold(distinct, c)


def _candidate_threshold(distinct: np.ndarray, c: int) -> float:
    """The threshold of candidate ``c``: below the first ``c`` distinct scores' gap midpoint."""
    k = distinct.size
    if c == 0:
        half_gap = (distinct[1] - distinct[0]) / 2 if k > 1 else 1.0
        return float(distinct[0] - half_gap)
    if c == k:
        half_gap = (distinct[-1] - distinct[-2]) / 2 if k > 1 else 1.0
        above = distinct[-1] + half_gap
        return float(above if above > distinct[-1] else np.nextafter(distinct[-1], np.inf))
    low, high = distinct[c - 1], distinct[c]
    mid = low + (high - low) / 2
    # Adjacent floats have no representable midpoint; the upper score still splits them.
    return float(mid if low < mid <= high else high)


def confusion_at_threshold(scores: Any, labels: Any, threshold: float) -> dict:
    """Confusion counts and rates when predicting same for ``score >= threshold``.

    Returns:
        dict with ``tp, fp, tn, fn`` (int pair counts), ``accuracy, precision, recall,
        f1`` (float fractions; precision/recall/f1 are 0.0 where their denominator
        is zero, never NaN) and ``threshold`` (float, as given).
    """
    s, y = _as_scores_labels(scores, labels)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite float; got {threshold!r}")
    predicted = s >= threshold
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[False, True]).ravel())
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / n,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "threshold": threshold,
    }


# --------------------------------------------------------------------------- curves


def _roc(s: np.ndarray, y: np.ndarray, drop_intermediate: bool) -> tuple[np.ndarray, ...]:
    _require_both_classes(y, "a ROC curve")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=drop_intermediate)
    thresholds = thresholds.astype(np.float64, copy=True)
    thresholds[0] = _accept_nothing_threshold(s)
    return fpr, tpr, thresholds


def _downsample_index(n: int, max_points: int) -> np.ndarray:
    if max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2; got {max_points!r}")
    if n <= max_points:
        return np.arange(n)
    # Evenly spaced along the curve's point order; rounding can collide, unique keeps order.
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def roc_points(scores: Any, labels: Any, max_points: int = 200) -> pd.DataFrame:
    """ROC curve points for plotting, at most ``max_points`` rows.

    Rows are in decreasing-threshold order, from (fpr 0, tpr 0) to (1, 1); the first
    and last point are always kept and the rest are taken evenly by index. The first
    row's threshold is the smallest float above the top score (sklearn uses +inf,
    which strict JSON cannot hold).

    Returns:
        DataFrame with float columns ``fpr``, ``tpr``, ``threshold``.
    """
    s, y = _as_scores_labels(scores, labels)
    fpr, tpr, thresholds = _roc(s, y, drop_intermediate=True)
    keep = _downsample_index(fpr.size, int(max_points))
    return pd.DataFrame({"fpr": fpr[keep], "tpr": tpr[keep], "threshold": thresholds[keep]})


def det_points(scores: Any, labels: Any, max_points: int = 200) -> pd.DataFrame:
    """Detection-error-tradeoff points: false positive rate vs false negative rate.

    Same points, order and downsampling as :func:`roc_points`, with ``fnr = 1 - tpr``.

    Returns:
        DataFrame with float columns ``fpr``, ``fnr``, ``threshold``.
    """
    roc = roc_points(scores, labels, max_points=max_points)
    return pd.DataFrame({"fpr": roc["fpr"], "fnr": 1.0 - roc["tpr"], "threshold": roc["threshold"]})


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve in [0, 1] (ties between a genuine and an impostor count half)."""
    s, y = _as_scores_labels(scores, labels)
    _require_both_classes(y, "ROC AUC")
    return float(roc_auc_score(y, s))


def equal_error_rate(scores: Any, labels: Any) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs.

    Walks the full (undropped) ROC from the strictest threshold down; FPR rises and
    FNR falls, and the EER is where the straight segment between the two ROC points
    either side of the crossing has FPR == FNR. The threshold is interpolated
    linearly between those two points' thresholds with the same weight.

    Returns:
        ``(eer, threshold)``: eer a fraction in [0, 1], threshold in score units.
    """
    s, y = _as_scores_labels(scores, labels)
    fpr, tpr, thresholds = _roc(s, y, drop_intermediate=False)
    gap = fpr - (1.0 - tpr)  # -1 at the first point, +1 at the last, non-decreasing
    i = int(np.argmax(gap >= 0))
    if i == 0:  # unreachable (gap[0] == -1) but keeps the indexing below safe
        return float(fpr[0]), float(thresholds[0])
    weight = -gap[i - 1] / (gap[i] - gap[i - 1])
    eer = fpr[i - 1] + weight * (fpr[i] - fpr[i - 1])
    threshold = thresholds[i - 1] + weight * (thresholds[i] - thresholds[i - 1])
    return float(eer), float(threshold)


def tar_at_far(scores: Any, labels: Any, far: float) -> dict:
    """True accept rate at the loosest threshold whose false accept rate is <= ``far``.

    Of all thresholds meeting the FAR limit, this takes the one accepting the most
    pairs (hence the best TAR): with ``k = floor(far * n_impostors)`` allowed false
    accepts, it sits just above the (k+1)-th highest impostor score, at the midpoint
    to the next distinct score above it (as :func:`choose_threshold` does).

    ``achievable`` is False when ``n_impostors < 1 / far``: the data then cannot
    show a single false accept at that rate, so the figure is really TAR at FAR 0
    and is reported flagged rather than dropped.

    Returns:
        dict with ``tar`` (fraction of genuine pairs accepted), ``threshold``,
        ``n_impostors`` (int), ``achievable`` (bool), ``far`` (the requested limit)
        and ``far_observed`` (the impostor accept fraction at ``threshold``).
    """
    s, y = _as_scores_labels(scores, labels)
    far = float(far)
    if not 0.0 < far <= 1.0:
        raise ValueError(f"far must be a fraction in (0, 1]; got {far!r}")
    _require_both_classes(y, "TAR at FAR")
    impostors = np.sort(s[~y])[::-1]
    n_impostors = int(impostors.size)
    # The epsilon keeps e.g. 0.001 * 3000 = 2.9999999999999996 from losing a false accept.
    allowed = int(math.floor(far * n_impostors + 1e-9))
    if allowed >= n_impostors:
        threshold = float(s.min())
    else:
        boundary = impostors[allowed]
        above = s[s > boundary]
        if above.size:
            nxt = above.min()
            mid = boundary + (nxt - boundary) / 2
            threshold = float(mid if boundary < mid <= nxt else nxt)
        else:
            threshold = float(np.nextafter(boundary, np.inf))
    accepted = s >= threshold
    return {
        "tar": float(np.mean(accepted[y])),
        "threshold": threshold,
        "n_impostors": n_impostors,
        "achievable": bool(far * n_impostors >= 1.0 - 1e-9),
        "far": far,
        "far_observed": float(np.mean(accepted[~y])),
    }


# --------------------------------------------------------------------------- protocols


def kfold_accuracy(scores: Any, labels: Any, folds: Any) -> dict:
    """LFW-protocol accuracy: each fold is scored at a threshold chosen on the other folds.

    For every fold id (in sorted order) :func:`choose_threshold` sees only the pairs
    of the other folds, and accuracy is then measured on the held-out fold, as in
    insightface ``eval/verification.py`` (10 folds there).

    Args:
        scores, labels: (N,) as everywhere.
        folds: (N,) fold id per pair (ints or strings); at least two distinct ids.

    Returns:
        dict with ``mean`` and ``std`` (population std, ddof=0, as insightface) of the
        per-fold accuracies, ``per_fold`` and ``thresholds`` (lists, one per fold) and
        ``fold_ids`` (the ids in the same order).
    """
    s, y = _as_scores_labels(scores, labels)
    f = _as_per_pair(folds, s.size, "folds")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError(f"kfold_accuracy needs at least 2 distinct fold ids; got {fold_ids.tolist()}")
    per_fold: list[float] = []
    thresholds: list[float] = []
    for fold in fold_ids:
        held_out = f == fold
        threshold = choose_threshold(s[~held_out], y[~held_out])
        predicted = s[held_out] >= threshold
        per_fold.append(float(np.mean(predicted == y[held_out])))
        thresholds.append(threshold)
    return {
        "mean": float(np.mean(per_fold)),
        "std": float(np.std(per_fold)),
        "per_fold": per_fold,
        "thresholds": thresholds,
        "fold_ids": json_ready(fold_ids.tolist()),
    }


# Elements of one (resamples x pairs) block: AUC keeps ~5 float64 arrays of this size, so the
# vectorised bootstrap's working memory stays under ~100 MiB whatever the number of pairs.
_BOOTSTRAP_BLOCK_ELEMENTS = 1 << 21


def _check_resampling(n_resamples: Any, confidence: Any) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be an integer >= 1; got {n_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")


def _draw_count_blocks(rng: np.random.Generator, n_groups: int, n_resamples: int, block: int) -> Iterator[np.ndarray]:
    """Cluster-bootstrap resamples in blocks: (count, n_groups) float64, how often each group was drawn.

    Each resample draws ``n_groups`` groups with replacement. The draws leave ``rng`` in the
    same order as one ``rng.integers(0, n_groups, size=n_groups)`` call per resample, so a
    block size never changes the result.
    """
    done = 0
    while done < n_resamples:
        count = min(block, n_resamples - done)
        drawn = rng.integers(0, n_groups, size=(count, n_groups))
        # Row-wise bincount: offset each row's group ids into a range of its own.
        times = np.bincount((drawn + n_groups * np.arange(count)[:, None]).ravel(), minlength=count * n_groups)
        yield times.reshape(count, n_groups).astype(np.float64)
        done += count


class _PairClusters(NamedTuple):
    """Each pair's two identities as indices ``0..n_clusters-1`` (equal for a one-identity pair)."""

    first: np.ndarray
    second: np.ndarray
    n_clusters: int
    two_way: bool


def _pair_clusters(groups: Any, n: int) -> _PairClusters:
    """``groups`` (N,): one cluster per pair; (N, 2): the identities of a pair's two images."""
    g = np.asarray(groups)
    if g.ndim == 1 and g.shape[0] == n:
        names, index = np.unique(g, return_inverse=True)
        index = index.reshape(-1)
        return _PairClusters(index, index, int(names.size), False)
    if g.ndim == 2 and g.shape == (n, 2):
        names, index = np.unique(g.reshape(-1), return_inverse=True)
        index = index.reshape(n, 2)
        return _PairClusters(index[:, 0].copy(), index[:, 1].copy(), int(names.size), True)
    raise ValueError(
        f"groups must have shape ({n},), one cluster per pair, or ({n}, 2), the identities of both "
        f"images of each pair; got shape {g.shape}"
    )


def _pair_weights(times: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(B, N) how often each pair is in each resample, from identity draw counts ``times`` (B, G).

    Drawing an identity k times puts k distinct "people" with its photos into the
    resample. A pair within one person (genuine) exists once per copy of that person:
    weight ``k``, not ``k**2`` (squaring would also invent pairs between two copies of one
    person, i.e. impostor pairs of identical photos, and overweight genuine pairs against
    impostors). A pair between two people a != b exists for every copy of a with every copy
    of b: weight ``k_a * k_b``, zero unless both were drawn. This is the usual two-way
    (both-sides) bootstrap for pair comparisons; with one cluster per pair (first == second)
    it reduces to the one-way cluster bootstrap.
    """
    weights = times[:, first]
    across = first != second
    if across.any():
        weights[:, across] *= times[:, second[across]]
    return weights


def _looped_bootstrap(
    s: np.ndarray,
    y: np.ndarray,
    clusters: _PairClusters,
    statistic: Statistic,
    n_resamples: int,
    rng: np.random.Generator,
) -> tuple[list[float], int]:
    """One call of an arbitrary ``statistic`` per resample, on the pairs repeated by their weights."""
    n_groups = clusters.n_clusters
    values: list[float] = []
    skipped = 0
    for _ in tqdm(range(n_resamples), desc="bootstrap", leave=False, disable=None):
        drawn = rng.integers(0, n_groups, size=n_groups)
        times = np.bincount(drawn, minlength=n_groups)[None, :]
        index = np.repeat(np.arange(s.size), _pair_weights(times, clusters.first, clusters.second)[0])
        ys = y[index]
        if ys.all() or not ys.any():
            skipped += 1
            continue
        value = float(statistic(s[index], ys))
        if not math.isfinite(value):
            skipped += 1
            continue
        values.append(value)
    return values, skipped


def _vectorised_bootstrap(
    s: np.ndarray,
    y: np.ndarray,
    clusters: _PairClusters,
    statistic: ResampledStatistic,
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """All resamples in blocks, as pair weights; NaN marks a degenerate resample.

    A resample is fully described by its row of identity draw counts, hence of pair
    weights (:func:`_pair_weights`). Draws come from ``rng`` in the same order as
    :func:`_looped_bootstrap`'s, so both paths give the same interval.
    """
    by_score = np.argsort(s, kind="stable")
    s, y = s[by_score], y[by_score]
    first, second = clusters.first[by_score], clusters.second[by_score]
    n_groups = clusters.n_clusters
    genuine = y.astype(np.float64)
    block = max(1, min(n_resamples, _BOOTSTRAP_BLOCK_ELEMENTS // max(s.size, n_groups)))
    values = np.empty(n_resamples)
    done = 0
    with tqdm(total=n_resamples, desc="bootstrap", leave=False, disable=None) as progress:
        for times in _draw_count_blocks(rng, n_groups, n_resamples, block):
            weights = _pair_weights(times, first, second)
            n_genuine = weights @ genuine
            degenerate = (n_genuine == 0) | (n_genuine == weights.sum(axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                chunk = np.asarray(statistic.resampled(s, y, weights), dtype=np.float64)
            chunk[degenerate] = np.nan
            values[done : done + len(times)] = chunk
            done += len(times)
            progress.update(len(times))
    return values


def bootstrap_interval(
    scores: Any,
    labels: Any,
    groups: Any,
    statistic: Statistic,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile confidence interval of ``statistic`` by a bootstrap over identities.

    Pairs sharing an identity are not independent, so each resample draws as many
    identities as there are, with replacement, and keeps the pairs whose identities were
    drawn. With ``groups`` of shape (N, 2), the identities of both images of each pair
    (two-way): a pair within one identity comes along once per draw of it, a pair of two
    identities ``a``, ``b`` ``draws(a) * draws(b)`` times (see :func:`_pair_weights`), so
    an impostor pair needs both its people drawn. With ``groups`` of shape (N,), one
    cluster per pair (one-way): every pair of a drawn group, once per draw. Resamples
    holding a single class, or where ``statistic`` is not finite, are skipped and counted.

    Args:
        scores, labels: (N,) as everywhere.
        groups: (N, 2) identities of each pair's two images (e.g. columns identity_a,
            identity_b), or (N,) one group id per pair.
        statistic: ``f(scores (M,), labels (M,) bool) -> float``; a
            :class:`ResampledStatistic` (:class:`AccuracyStatistic`, :class:`AucStatistic`)
            is evaluated on blocks of resamples at once, with the same result.
        n_resamples: bootstrap resamples drawn (>= 1).
        confidence: interval coverage in (0, 1).
        seed: seed of the numpy Generator; same inputs and seed give the same result.

    Returns:
        dict with ``estimate`` (statistic on all pairs), ``low``, ``high`` (None when no
        resample was usable), ``n_used``, ``n_skipped``, ``n_groups`` (identities drawn
        from), ``resampling`` ("two-way" or "one-way") and ``confidence``.
    """
    s, y = _as_scores_labels(scores, labels)
    clusters = _pair_clusters(groups, s.size)
    _check_resampling(n_resamples, confidence)

    rng = np.random.default_rng(seed)
    if isinstance(statistic, ResampledStatistic):
        values_array = _vectorised_bootstrap(s, y, clusters, statistic, int(n_resamples), rng)
        usable = np.isfinite(values_array)
        values = values_array[usable].tolist()
        skipped = int(values_array.size - usable.sum())
    else:
        values, skipped = _looped_bootstrap(s, y, clusters, statistic, int(n_resamples), rng)

    estimate = float(statistic(s, y))
    if skipped:
        logger.info("bootstrap: skipped %d of %d degenerate resamples", skipped, n_resamples)
    if values:
        alpha = (1.0 - float(confidence)) / 2
        low, high = (float(v) for v in np.quantile(values, [alpha, 1.0 - alpha]))
    else:
        logger.warning("bootstrap: all %d resamples were degenerate; no interval", n_resamples)
        low = high = None
    return json_ready(
        {
            "estimate": estimate,
            "low": low,
            "high": high,
            "n_used": len(values),
            "n_skipped": skipped,
            "n_groups": clusters.n_clusters,
            "resampling": "two-way" if clusters.two_way else "one-way",
            "confidence": float(confidence),
        }
    )


# --------------------------------------------------------------------------- report


def far_key(far: float) -> str:
    """Report key for a FAR level: 1e-2 -> ``"tar_at_far_1e-02"`` (more digits only if needed)."""
    for digits in range(0, 16):
        text = f"{far:.{digits}e}"
        if float(text) == far:
            return f"tar_at_far_{text}"
    return f"tar_at_far_{far!r}"


class AccuracyStatistic:
    """Accuracy at a fixed threshold (score >= threshold means same person)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, s: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean((s >= self.threshold) == y))

    def resampled(self, s: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        correct = ((s >= self.threshold) == y).astype(np.float64)
        return weights @ correct / weights.sum(axis=1)


class AucStatistic:
    """ROC AUC as the Mann-Whitney U statistic (ties count half, as ``roc_auc_score``).

    Equal to ``roc_auc_score(y, s)`` but several times faster, which matters for the
    thousands of calls a bootstrap makes.
    """

    def __call__(self, s: np.ndarray, y: np.ndarray) -> float:
        from scipy.stats import rankdata

        n_pos = int(y.sum())
        n_neg = y.size - n_pos
        ranks = rankdata(s)  # average ranks for tied scores
        return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

    def resampled(self, s: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if s.size > 1 and np.any(s[1:] < s[:-1]):  # the bootstrap sorts; other callers may not
            order = np.argsort(s, kind="stable")
            s, y, weights = s[order], y[order], weights[:, order]
        positive = weights * y
        negative = weights - positive
        tie_starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        if tie_starts.size < s.size:  # pool equal scores: a tie counts half a win
            positive = np.add.reduceat(positive, tie_starts, axis=1)
            negative = np.add.reduceat(negative, tie_starts, axis=1)
        negative_below = np.cumsum(negative, axis=1)
        negative_below -= negative
        negative_below += 0.5 * negative
        wins = np.einsum("ij,ij->i", positive, negative_below)
        return wins / (positive.sum(axis=1) * negative.sum(axis=1))


def _check_test_extras(
    pair_types: Any, folds: Any, groups: Any, n_test: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The optional per-test-pair arrays of :func:`verification_report`, shapes checked."""
    types = None if pair_types is None else _as_per_pair(pair_types, n_test, "test_pair_types")
    folds = None if folds is None else _as_per_pair(folds, n_test, "test_folds")
    if groups is not None:
        groups = np.asarray(groups)
        _pair_clusters(groups, n_test)  # refuses a bad shape here, not deep in a bootstrap
    return types, folds, groups


def _holds_both_classes(labels: np.ndarray) -> bool:
    n_pos = int(labels.sum())
    return 0 < n_pos < labels.size


def _counts(labels: np.ndarray) -> dict:
    n_pos = int(labels.sum())
    return {"n_pairs": int(labels.size), "n_genuine": n_pos, "n_impostor": int(labels.size) - n_pos}


def _single_class_block(s: np.ndarray, y: np.ndarray, threshold: float, fars: Sequence[float]) -> dict:
    """The test metrics of pairs with one class: the confusion counts stay meaningful, the
    ranking metrics are None, and a ``note`` says why."""
    block: dict[str, Any] = _counts(y)
    block.update(confusion_at_threshold(s, y, threshold))
    block.update({"roc_auc": None, "eer": None, "eer_threshold": None})
    block.update({far_key(far): None for far in fars})
    block["note"] = "test pairs hold a single class: ROC AUC, EER, TAR@FAR, k-fold and bootstrap undefined"
    return block


def _counts_only(labels: np.ndarray) -> dict:
    """A pair type with one class: its counts and a ``note``, no metrics."""
    return {**_counts(labels), "note": "skipped: this pair type holds a single class, so its metrics are undefined"}


def _test_block(
    s: np.ndarray,
    y: np.ndarray,
    threshold: float,
    fars: Sequence[float],
    folds: np.ndarray | None,
    groups: np.ndarray | None,
    bootstrap: int,
    seed: int,
) -> dict:
    """All test metrics on one set of pairs that holds both classes."""
    block: dict[str, Any] = _counts(y)
    block.update(confusion_at_threshold(s, y, threshold))
    block["roc_auc"] = roc_auc(s, y)
    block["eer"], block["eer_threshold"] = equal_error_rate(s, y)
    for far in fars:
        block[far_key(far)] = tar_at_far(s, y, far)
    if folds is not None:
        if np.unique(folds).size >= 2:
            block["kfold"] = kfold_accuracy(s, y, folds)
        else:
            block["kfold"] = None
            block.setdefault("notes", []).append("k-fold skipped: fewer than 2 folds in these pairs")
    if bootstrap > 0 and groups is not None:
        block["bootstrap"] = {
            "accuracy": bootstrap_interval(s, y, groups, AccuracyStatistic(threshold), bootstrap, seed=seed),
            "roc_auc": bootstrap_interval(s, y, groups, AucStatistic(), bootstrap, seed=seed),
        }
    return block


def verification_report(
    val_scores: Any,
    val_labels: Any,
    test_scores: Any,
    test_labels: Any,
    test_pair_types: Any = None,
    test_folds: Any = None,
    test_groups: Any = None,
    fars: Sequence[float] = (1e-2, 1e-3),
    bootstrap: int = 0,
    seed: int = 0,
    threshold: float | None = None,
) -> dict:
    """The evaluate stage's metrics: threshold from validation, everything else on test.

    The threshold is the model's own (``threshold``: the one the classify stage chose on
    pairs of the validation identities and wrote into classifier.json), or, when None, the
    accuracy-maximising one on the validation pairs (:func:`choose_threshold`). Either way
    it is applied unchanged to the test set and to every pair type, so no test pair
    influences it.

    Args:
        val_scores, val_labels: (N_val,) validation pairs; both classes required.
        test_scores, test_labels: (N_test,) test pairs.
        test_pair_types: optional (N_test,) pair type per test pair (e.g. "masked-masked").
        test_folds: optional (N_test,) fold ids for the k-fold (LFW protocol) accuracy.
        test_groups: optional identities for the bootstrap: (N_test, 2), both images' identities
            (two-way, see :func:`bootstrap_interval`), or (N_test,) one group per pair.
        fars: FAR levels for TAR@FAR, each keyed as :func:`far_key` gives.
        bootstrap: resamples for the accuracy and ROC AUC intervals (0 = none; needs groups).
        seed: bootstrap seed.
        threshold: the decision threshold to judge test pairs at (None: chosen on val).

    Returns:
        A JSON-serialisable dict (plain ints/floats/bools/strings/None, no NaN):
        ``threshold``, ``validation`` {n_pairs, accuracy}, the test confusion metrics
        (tp, fp, tn, fn, accuracy, precision, recall, f1), ``n_pairs``, ``n_genuine``,
        ``n_impostor``, ``roc_auc``, ``eer``, ``eer_threshold``, one ``tar_at_far_*``
        dict per FAR, ``kfold`` (if folds), ``bootstrap`` {accuracy, roc_auc} (if
        requested), and ``by_pair_type`` {type: same block} (if pair types). Metrics
        that need both classes are None, with a ``note``, when the test set lacks one;
        a pair type with a single class holds only its counts and a ``note``.
    """
    vs, vy = _as_scores_labels(val_scores, val_labels)
    _require_both_classes(vy, "choosing the threshold on validation pairs")
    ts, ty = _as_scores_labels(test_scores, test_labels)
    types, folds, groups = _check_test_extras(test_pair_types, test_folds, test_groups, ts.size)
    fars = tuple(float(f) for f in fars)
    bootstrap = int(bootstrap)
    if bootstrap > 0 and groups is None:
        logger.warning("bootstrap=%d requested but no test_groups given; skipping intervals", bootstrap)

    threshold = choose_threshold(vs, vy) if threshold is None else float(threshold)
    report: dict[str, Any] = {
        "threshold": threshold,
        "validation": {
            "n_pairs": int(vs.size),
            "accuracy": confusion_at_threshold(vs, vy, threshold)["accuracy"],
        },
    }

    def block_for(mask: np.ndarray | None) -> dict:
        pick = (lambda a: a) if mask is None else (lambda a: None if a is None else a[mask])
        return _test_block(pick(ts), pick(ty), threshold, fars, pick(folds), pick(groups), bootstrap, seed)

    if _holds_both_classes(ty):
        report.update(block_for(None))
    else:
        report.update(_single_class_block(ts, ty, threshold, fars))
        logger.warning("verification_report: %s", report["note"])
    if types is not None:
        by_type: dict[str, Any] = {}
        for pair_type in np.unique(types):
            mask = types == pair_type
            by_type[str(pair_type)] = block_for(mask) if _holds_both_classes(ty[mask]) else _counts_only(ty[mask])
        report["by_pair_type"] = by_type
    return json_ready(report)


# --------------------------------------------------------------------------- identification


def identification_ranks(class_scores: Any, true_class: Any) -> np.ndarray:
    """Rank of the true identity among all gallery identities, per query.

    Args:
        class_scores: (N, C) float, higher = more likely that class (probabilities,
            votes or similarities).
        true_class: (N,) int column of the true identity in ``class_scores``, or -1
            when the query's identity is not in the gallery at all.

    Returns:
        (N,) int64 ranks, 1 = the true identity scored highest. Ties count against the
        true identity (a class tied with it ranks ahead), so a classifier that gives
        many identities the same score, as KNN votes do, is never credited by luck.
        Queries absent from the gallery get rank 0: no rank-k rate counts them as hits.
    """
    scores = np.asarray(class_scores, dtype=np.float64)
    truth = np.asarray(true_class)
    if scores.ndim != 2:
        raise ValueError(f"class_scores must have shape (N, C); got shape {scores.shape}")
    if truth.ndim != 1 or truth.shape[0] != scores.shape[0]:
        raise ValueError(f"true_class must have shape ({scores.shape[0]},), one entry per query; got shape {truth.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no queries: class_scores is empty")
    if not np.issubdtype(truth.dtype, np.integer):
        raise ValueError(f"true_class must hold integer column indices; got dtype {truth.dtype}")
    n_classes = scores.shape[1]
    if np.any((truth < -1) | (truth >= n_classes)):
        raise ValueError(f"true_class must be in [-1, {n_classes - 1}] (-1: not in the gallery)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("class_scores contain non-finite values (NaN or inf); all must be finite")
    known = truth >= 0
    ranks = np.zeros(truth.shape[0], dtype=np.int64)
    rows = np.flatnonzero(known)
    own = scores[rows, truth[rows]][:, None]
    # Every other class at or above the true one's score ranks ahead of it.
    ahead = (scores[rows] >= own).sum(axis=1) - 1
    ranks[rows] = ahead + 1
    return ranks


def rank_k_rate(ranks: Any, k: int) -> float:
    """Fraction of queries whose true identity is within the top ``k`` (rank-k identification rate).

    Rank 0 (identity absent from the gallery) is a miss at every k.
    """
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array; got shape {r.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    return float(np.mean((r >= 1) & (r <= int(k))))


def cmc_curve(ranks: Any, max_rank: int) -> pd.DataFrame:
    """Cumulative match characteristic: rank-k rate for k = 1..max_rank.

    Returns:
        DataFrame with int column ``rank`` and float column ``rate`` (non-decreasing).
    """
    r = np.asarray(ranks)
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be an integer >= 1; got {max_rank!r}")
    ks = np.arange(1, int(max_rank) + 1)
    return pd.DataFrame({"rank": ks, "rate": [rank_k_rate(r, k) for k in ks]})


def bootstrap_mean_interval(
    values: Any,
    groups: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Cluster-bootstrap percentile interval of the mean of per-item ``values``.

    The identification counterpart of :func:`bootstrap_interval`: each resample draws
    as many groups (identities) as there are, with replacement, and averages the values
    of every item of every drawn group, so items of one identity move together.

    Args:
        values: (N,) float, e.g. 1.0 for a rank-1 hit and 0.0 for a miss.
        groups: (N,) group id per item.

    Returns:
        dict with ``estimate`` (mean of all values), ``low``, ``high``, ``n_used``,
        ``n_skipped`` (always 0: no resample is degenerate), ``n_groups``, ``confidence``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array; got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain non-finite entries (NaN or inf); all must be finite")
    g = _as_per_pair(groups, v.size, "groups")
    _check_resampling(n_resamples, confidence)
    _, group_index = np.unique(g, return_inverse=True)
    sums = np.bincount(group_index, weights=v)
    counts = np.bincount(group_index).astype(np.float64)
    n_groups = sums.size
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // n_groups)
    means = np.concatenate(
        [times @ sums / (times @ counts) for times in _draw_count_blocks(rng, n_groups, int(n_resamples), block)]
    )
    alpha = (1.0 - float(confidence)) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return json_ready(
        {
            "estimate": float(v.mean()),
            "low": float(low),
            "high": float(high),
            "n_used": int(n_resamples),
            "n_skipped": 0,
            "n_groups": int(n_groups),
            "confidence": float(confidence),
        }
    )


def identification_report(
    ranks: Any,
    groups: Any,
    query_types: Any = None,
    ks: Sequence[int] = (1, 5),
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Closed-set identification metrics: rank-k rates, overall and per query type.

    Args:
        ranks: (N,) from :func:`identification_ranks`.
        groups: (N,) the query's identity (bootstrap clusters).
        query_types: optional (N,) label per query (e.g. "masked"/"unmasked").
        ks: ranks to report, keyed ``rank_<k>``.
        bootstrap: resamples for a 95 % interval of every rank-k rate (0 = none).

    Returns:
        JSON-ready dict: ``n_queries``, ``n_identities``, ``rank_<k>`` per k, optional
        ``bootstrap`` {rank_<k>: interval} and ``by_query_type`` {type: same block}.
    """
    r = np.asarray(ranks)
    g = _as_per_pair(groups, r.size, "groups")
    types = None if query_types is None else _as_per_pair(query_types, r.size, "query_types")

    def block(mask: np.ndarray) -> dict:
        out: dict[str, Any] = {"n_queries": int(mask.sum()), "n_identities": int(np.unique(g[mask]).size)}
        for k in ks:
            out[f"rank_{int(k)}"] = rank_k_rate(r[mask], k)
        if bootstrap > 0:
            out["bootstrap"] = {
                f"rank_{int(k)}": bootstrap_mean_interval(((r[mask] >= 1) & (r[mask] <= int(k))).astype(float), g[mask], bootstrap, seed=seed)
                for k in ks
            }
        return out

    report = block(np.ones(r.size, dtype=bool))
    if types is not None:
        report["by_query_type"] = {str(t): block(types == t) for t in np.unique(types)}
    return json_ready(report)
