"""Plot data for DVC (CSV tables) and figures for the report (PNG), from scored test pairs.

Tables are what ``dvc plots show`` / ``dvc plots diff`` render and compare across
experiments; the PNG figures are for reading one run: ROC on a logarithmic FAR axis and
DET on normal-deviate axes (the forms face-recognition papers use, which DVC's linear
templates cannot draw), and a sheet of the worst errors with their images.

Scored pairs are the classify stage's tables: ``path_a``, ``path_b``, ``identity_a``,
``identity_b``, ``label`` (1 = same person), ``pair_type``, ``score``, ``cosine``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from PIL import Image

from maskface.imageio import load_rgb
from maskface.evaluation.metrics import det_points, roc_points
from maskface.text import printable

logger = logging.getLogger(__name__)

CLASS_NAMES = np.array(["different", "same"])
_EPS = 1e-4  # clip rates off 0 and 1 before log/probit axes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_table(scores: Any, labels: Any, threshold: float) -> pd.DataFrame:
    """One row per pair: ``actual`` and ``predicted`` as "same"/"different" (DVC confusion template)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    predicted = (s >= threshold).astype(int)
    return pd.DataFrame({"actual": CLASS_NAMES[y], "predicted": CLASS_NAMES[predicted]})


def roc_table(scores: Any, labels: Any, max_points: int) -> pd.DataFrame:
    """ROC points: float columns ``fpr``, ``tpr`` (at most ``max_points`` rows)."""
    return roc_points(scores, labels, max_points=max_points)[["fpr", "tpr"]]


def det_table(scores: Any, labels: Any, max_points: int) -> pd.DataFrame:
    """DET points: float columns ``fpr`` (false accept rate), ``fnr`` (false reject rate)."""
    return det_points(scores, labels, max_points=max_points)[["fpr", "fnr"]]


def score_histogram(scores: Any, labels: Any, bins: int, value_range: Optional[tuple[float, float]] = None) -> pd.DataFrame:
    """Genuine and impostor score distributions on shared bins.

    Args:
        scores: (N,) float; labels: (N,) 1 = genuine.
        bins: number of equal-width bins over ``value_range`` (default: min..max score).

    Returns:
        DataFrame with ``score`` (bin centre) and ``genuine``, ``impostor``: the fraction
        of that class's pairs in the bin (each column sums to 1 when the class exists).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.size == 0:
        raise ValueError("score_histogram needs at least one score")
    low, high = value_range if value_range is not None else (float(s.min()), float(s.max()))
    if high <= low:  # a single distinct score still gets a bin around it
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, int(bins) + 1)
    table = {"score": (edges[:-1] + edges[1:]) / 2}
    for name, mask in (("genuine", y), ("impostor", ~y)):
        counts, _ = np.histogram(s[mask], bins=edges)
        table[name] = counts / max(int(mask.sum()), 1)
    return pd.DataFrame(table)


def natural_range(scores: Any) -> tuple[float, float]:
    """Histogram range: probabilities live in [0, 1], cosines in [-1, 1]; else min..max."""
    s = np.asarray(scores, dtype=np.float64)
    if s.min() >= 0.0 and s.max() <= 1.0:
        return 0.0, 1.0
    if s.min() >= -1.0 and s.max() <= 1.0:
        return -1.0, 1.0
    return float(s.min()), float(s.max())


def _curves_by_type(test: pd.DataFrame, column: str, max_points: int) -> dict[str, pd.DataFrame]:
    """ROC points per pair type that holds both classes, plus ``all``."""
    curves: dict[str, pd.DataFrame] = {}
    groups = [("all", test)] + [(str(t), group) for t, group in test.groupby("pair_type", sort=True)]
    if test["pair_type"].nunique() < 2:
        groups = groups[:1]
    for name, group in groups:
        if 0 < int(group["label"].sum()) < len(group):
            curves[name] = roc_points(group[column].to_numpy(), group["label"].to_numpy(), max_points=max_points)
    return curves


def curves_figure(
    test: pd.DataFrame,
    threshold: float,
    destination: Path,
    title: str,
    max_points: int = 400,
    cmc: Optional[pd.DataFrame] = None,
) -> None:
    """ROC (log FAR), DET (normal-deviate axes) and score histograms in one PNG.

    ROC and DET show every pair type and all pairs together (solid: the classifier's
    score; dashed grey: cosine similarity, when the classifier is not cosine itself).
    ``cmc`` (``rank``, ``rate``) adds a cumulative-match panel for identification.
    """
    from scipy.stats import norm

    plt = _pyplot()
    panels = 4 if cmc is not None else 3
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.0))
    curves = _curves_by_type(test, "score", max_points)
    is_cosine = np.allclose(test["score"].to_numpy(), test["cosine"].to_numpy())
    cosine_curve = None if is_cosine else _curves_by_type(test, "cosine", max_points).get("all")
    ticks = np.array([1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
    for name, curve in curves.items():
        width = 2.0 if name == "all" else 1.2
        fpr = np.clip(curve["fpr"].to_numpy(), _EPS, 1 - _EPS)
        fnr = np.clip(1 - curve["tpr"].to_numpy(), _EPS, 1 - _EPS)
        axes[0].plot(fpr, curve["tpr"], label=name, linewidth=width)
        axes[1].plot(norm.ppf(fpr), norm.ppf(fnr), label=name, linewidth=width)
    if cosine_curve is not None:
        fpr = np.clip(cosine_curve["fpr"].to_numpy(), _EPS, 1 - _EPS)
        fnr = np.clip(1 - cosine_curve["tpr"].to_numpy(), _EPS, 1 - _EPS)
        axes[0].plot(fpr, cosine_curve["tpr"], "--", color="grey", label="all, cosine")
        axes[1].plot(norm.ppf(fpr), norm.ppf(fnr), "--", color="grey", label="all, cosine")
    axes[0].set_xscale("log")
    axes[0].set_xlim(_EPS * 5, 1)
    axes[0].set_ylim(0, 1.01)
    axes[0].set_xlabel("false accept rate (log)")
    axes[0].set_ylabel("true accept rate")
    axes[0].set_title("ROC")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].grid(alpha=0.3)
    axes[1].set_xticks(norm.ppf(ticks))
    axes[1].set_xticklabels([f"{t:g}" for t in ticks])
    axes[1].set_yticks(norm.ppf(ticks))
    axes[1].set_yticklabels([f"{t:g}" for t in ticks])
    # Up to 0.95, not the usual 0.5: weak (from-scratch) models live in the upper corner.
    axes[1].set_xlim(norm.ppf(5e-4), norm.ppf(0.95))
    axes[1].set_ylim(norm.ppf(5e-4), norm.ppf(0.95))
    axes[1].set_xlabel("false accept rate")
    axes[1].set_ylabel("false reject rate")
    axes[1].set_title("DET (normal deviate scale)")
    axes[1].grid(alpha=0.3)

    histogram = score_histogram(test["score"], test["label"], 40, natural_range(test["score"]))
    width = float(histogram["score"].diff().iloc[1]) if len(histogram) > 1 else 1.0
    axes[2].bar(histogram["score"], histogram["genuine"], width=width, alpha=0.55, label="genuine")
    axes[2].bar(histogram["score"], histogram["impostor"], width=width, alpha=0.55, label="impostor")
    axes[2].axvline(threshold, color="black", linestyle=":", label=f"threshold {threshold:.3g}")
    axes[2].set_xlabel("score")
    axes[2].set_ylabel("fraction of pairs")
    axes[2].set_title("score distributions")
    axes[2].legend(fontsize=7)
    if cmc is not None:
        axes[3].plot(cmc["rank"], cmc["rate"], marker="o")
        axes[3].set_ylim(0, 1.01)
        axes[3].set_xlabel("rank")
        axes[3].set_ylabel("identification rate")
        axes[3].set_title("CMC (closed set)")
        axes[3].grid(alpha=0.3)
    figure.suptitle(title)
    # Fixed margins, not tight_layout: the panels are always the same, and measuring them
    # cost ~0.3 s a figure in the stage a classifier experiment reruns.
    figure.subplots_adjust(left=0.06 if panels == 3 else 0.045, right=0.99, bottom=0.13, top=0.86, wspace=0.28)
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=90)
    plt.close(figure)


def worst_pairs(test: pd.DataFrame, threshold: float, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``count`` highest-scoring impostor pairs and lowest-scoring genuine pairs.

    These are the worst false accepts and false rejects; when there are fewer errors
    than ``count`` the rest are the hardest correct decisions (column ``error`` False).
    """
    impostors = test[test["label"] == 0].sort_values("score", ascending=False, kind="stable").head(count).copy()
    impostors["error"] = impostors["score"] >= threshold
    genuines = test[test["label"] == 1].sort_values("score", ascending=True, kind="stable").head(count).copy()
    genuines["error"] = genuines["score"] < threshold
    return impostors, genuines


def _thumbnail(path: str, loader: Callable[[str], Image.Image], size: int) -> np.ndarray:
    try:
        # Decoding can be lazy (the loader may return an unread Image), so convert and resize
        # belong inside the guard too.
        return np.asarray(loader(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, decompression bombs, ...
        # The sheet is a diagnostic: one unreadable file must not fail the whole evaluation.
        logger.warning("worst-pairs sheet: cannot read %s (%s: %s); drawn blank", path, type(error).__name__, error)
        return np.full((size, size, 3), 200, dtype=np.uint8)


def worst_pairs_sheet(
    test: pd.DataFrame,
    threshold: float,
    destination: Path,
    count: int,
    loader: Callable[[str], Image.Image] = load_rgb,
    thumbnail: int = 96,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PNG sheet: top half the worst false accepts, bottom half the worst false rejects.

    Each column shows one pair (image a above image b) with its score, the threshold
    and the two identities. Returns the two tables shown (see :func:`worst_pairs`).
    """
    plt = _pyplot()
    accepts, rejects = worst_pairs(test, threshold, count)
    columns = max(len(accepts), len(rejects), 1)
    # One mosaic in one axes: a grid of 4 x columns axes cost ~1 s a sheet in layout alone,
    # most of the evaluate stage a classifier experiment reruns (benchmarks, figure 3).
    cell = thumbnail + 24
    title_band, label_band, pair_band = 46, 14, 30
    block_height = title_band + thumbnail + label_band + thumbnail + pair_band
    width, height = columns * cell, 2 * block_height
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    texts: list[tuple[float, float, str, str, int]] = []  # x, y, text, colour, font size
    for block, (table, kind) in enumerate(((accepts, "false accept"), (rejects, "false reject"))):
        top = block * block_height
        for column, row in enumerate(table.itertuples(index=False)):
            left = column * cell + (cell - thumbnail) // 2
            image_a, image_b = top + title_band, top + title_band + thumbnail + label_band
            mosaic[image_a : image_a + thumbnail, left : left + thumbnail] = _thumbnail(row.path_a, loader, thumbnail)
            mosaic[image_b : image_b + thumbnail, left : left + thumbnail] = _thumbnail(row.path_b, loader, thumbnail)
            centre = column * cell + cell / 2
            verdict = kind if row.error else "correct"
            colour = "tab:red" if row.error else "tab:green"
            texts.append((centre, image_a - 3, f"{verdict}\nscore {row.score:.4g}", colour, 8))
            texts.append((centre, image_b - 2, printable(row.identity_a)[-18:], "black", 7))
            texts.append((centre, image_b + thumbnail + pair_band - 3, f"{printable(row.identity_b)[-18:]}\n{row.pair_type}", "black", 7))
        if table.empty:
            texts.append((width / 2, top + block_height / 2, f"no {kind}s to show", "grey", 9))
    # At least as wide as the title line (~400 px at 80 dpi), even for one or two columns.
    figure = plt.figure(figsize=(max(width, 480) / 80, (height + 40) / 80), dpi=80)
    axis = figure.add_axes((0.0, 0.0, 1.0, height / (height + 40)))
    axis.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    axis.set_axis_off()
    for x, y, text, colour, size in texts:
        axis.text(x, y, text, ha="center", va="bottom", fontsize=size, color=colour, linespacing=1.1)
    for block, kind in enumerate(("false accepts", "false rejects")):
        axis.text(2, block * block_height + 2, kind, ha="left", va="top", fontsize=8, weight="bold")
    figure.suptitle(f"worst pairs at threshold {threshold:.4g} (accepted when score >= threshold)", fontsize=10, y=0.995)
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=80)
    plt.close(figure)
    return accepts, rejects
