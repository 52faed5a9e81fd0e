"""Metrics, DVC plot data, figures and the report from the classify stage's scored pairs.

Per backbone, on the test pairs, at the model's own threshold (classifier.json, chosen on
pairs of the validation identities; the val-optimal one for score folders without it):
``maskface.evaluation.metrics.verification_report`` of the classifier's score (confusion counts,
accuracy, precision, recall, F1, ROC AUC, EER, TAR@FAR with its impostor count, the
10-fold LFW protocol, bootstrap intervals over identities), overall and per pair type;
the same for plain cosine similarity (``cosine_baseline``) unless the classifier is
cosine itself; and closed-set identification (rank-1/rank-5) when classify wrote it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from PIL import Image

from maskface.artifacts import CLASSIFIER_META_FILE, IDENTIFICATION_FILE
from maskface.config import EvaluateConfig
from maskface.imageio import load_rgb
from maskface.evaluation.metrics import cmc_curve, identification_report, roc_auc, verification_report
from maskface.evaluation.plots import (
    confusion_table,
    curves_figure,
    det_table,
    natural_range,
    roc_table,
    score_histogram,
    worst_pairs_sheet,
)
from maskface.evaluation.report import write_report
from maskface.tables import read_csv, write_csv

logger = logging.getLogger(__name__)

HEADLINE = ("tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1", "roc_auc", "eer")
# plots/<kind>/<backbone>.<ext>: every kind is written for every backbone, so each folder is
# a stable DVC output.
PLOT_KINDS = {
    "confusion": "csv",
    "roc": "csv",
    "det": "csv",
    "scores": "csv",
    "curves": "png",
    "worst_pairs": "png",
}
CMC_MAX_RANK = 10


def read_scores(scores_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The classify stage's ``val.csv`` and ``test.csv`` of one backbone."""
    tables = []
    for name in ("val", "test"):
        path = scores_dir / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run the classify stage for {scores_dir.name}")
        tables.append(read_csv(path))
    return tables[0], tables[1]


def read_classifier_meta(scores_dir: Path) -> dict:
    """What classify wrote beside the scores (classifier name, threshold); {} if absent."""
    path = scores_dir / CLASSIFIER_META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_identification(scores_dir: Path) -> Optional[pd.DataFrame]:
    path = scores_dir / IDENTIFICATION_FILE
    if not path.is_file():
        return None
    table = read_csv(path)
    table["masked"] = table["masked"].astype(str).str.lower().isin(["true", "1"])
    return table


def _report_for(
    val: pd.DataFrame, test: pd.DataFrame, column: str, config: EvaluateConfig, threshold: Optional[float] = None
) -> dict:
    return verification_report(
        val[column].to_numpy(),
        val["label"].to_numpy(),
        test[column].to_numpy(),
        test["label"].to_numpy(),
        test_pair_types=test["pair_type"].to_numpy(),
        test_folds=test["fold"].to_numpy(),
        # Two-way bootstrap: both identities of every pair are resampled.
        test_groups=test[["identity_a", "identity_b"]].to_numpy(),
        fars=config.fars,
        bootstrap=config.bootstrap,
        seed=config.seed,
        threshold=threshold,
    )


def identification_metrics(identification: pd.DataFrame, config: EvaluateConfig) -> dict:
    """Rank-1 and rank-5 overall and for masked / unmasked query images, with intervals."""
    query_types = np.where(identification["masked"].to_numpy(), "masked", "unmasked")
    report = identification_report(
        identification["rank"].to_numpy(),
        identification["identity"].to_numpy(),
        query_types,
        ks=(1, 5),
        bootstrap=config.bootstrap,
        seed=config.seed,
    )
    report["cmc"] = cmc_curve(identification["rank"].to_numpy(), CMC_MAX_RANK)["rate"].tolist()
    return report


def evaluate_backbone(
    val: pd.DataFrame,
    test: pd.DataFrame,
    config: EvaluateConfig,
    classifier: Optional[str] = None,
    identification: Optional[pd.DataFrame] = None,
    threshold: Optional[float] = None,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Metrics of one backbone's scored pairs and its DVC plot tables.

    Returns:
        ``(report, tables)``: ``report`` is JSON-ready (see the module docstring), with
        ``classifier`` when known; ``tables`` maps ``confusion`` (actual, predicted),
        ``roc`` (fpr, tpr), ``det`` (fpr, fnr) and ``scores`` (score, genuine,
        impostor: histogram fractions) to DataFrames.
    """
    # The model's own threshold (classifier.json), so that these metrics are what the model
    # folder does; the cosine baseline below has none stored and chooses its own on val.
    report = _report_for(val, test, "score", config, threshold)
    # What picks the recommended model: val pairs only, never test (verification_report has
    # already refused a val set without both classes).
    report["val_roc_auc"] = roc_auc(val["score"].to_numpy(), val["label"].to_numpy())
    if classifier is not None:
        report["classifier"] = classifier
    if classifier != "cosine":
        report["cosine_baseline"] = _report_for(val, test, "cosine", config)
    if identification is not None:
        report["identification"] = identification_metrics(identification, config)
    threshold = report["threshold"]
    scores, labels = test["score"].to_numpy(), test["label"].to_numpy()
    both_classes = 0 < int(labels.sum()) < len(labels)
    empty_curve = pd.DataFrame({"fpr": [], "tpr": []})
    tables = {
        "confusion": confusion_table(scores, labels, threshold),
        "roc": roc_table(scores, labels, config.roc_points) if both_classes else empty_curve,
        "det": det_table(scores, labels, config.roc_points) if both_classes else empty_curve.rename(columns={"tpr": "fnr"}),
        "scores": score_histogram(scores, labels, config.histogram_bins, natural_range(scores)),
    }
    return report, tables


def plot_paths(plots_dir: Path, backbone: str) -> dict[str, Path]:
    """Where every plot of ``backbone`` goes: ``plots_dir/<kind>/<backbone>.<ext>``."""
    return {kind: plots_dir / kind / f"{backbone}.{ext}" for kind, ext in PLOT_KINDS.items()}


def evaluate(
    backbones: list[str],
    scores_root: Path,
    metrics_path: Path,
    plots_dir: Path,
    config: EvaluateConfig,
    *,
    report_path: Optional[Path] = None,
    data_metrics_path: Optional[Path] = None,
    settings: Optional[dict[str, dict[str, Any]]] = None,
    crop: Optional[dict[str, Any]] = None,
    links: Optional[dict[str, dict[str, Path]]] = None,
    image_loader: Callable[[str], Image.Image] = load_rgb,
) -> dict:
    """Evaluate every backbone; write metrics, plots and (optionally) the markdown report.

    Args:
        backbones: names; ``scores_root/<backbone>/{val,test}.csv`` must exist.
        metrics_path: JSON nested by backbone.
        plots_dir: receives ``<kind>/<backbone>.<ext>`` for every kind in ``PLOT_KINDS``.
        report_path: where to write the markdown report (None: no report).
        data_metrics_path: the split stage's ``metrics/data.json`` (counts for the report).
        settings: per backbone, what the report states about it (weights, input size...).
        crop: the crop settings, stated in the report.
        links: per backbone, more files the report links to when they exist (e.g. the
            DVCLive training curves and the crop preview, written by earlier stages).
        image_loader: reads an image path for the worst-pairs sheet.

    Returns:
        The metrics dict written to ``metrics_path``.
    """
    results: dict[str, dict] = {}
    for backbone in backbones:
        scores_dir = scores_root / backbone
        val, test = read_scores(scores_dir)
        meta = read_classifier_meta(scores_dir)
        identification = read_identification(scores_dir)
        report, tables = evaluate_backbone(val, test, config, meta.get("classifier"), identification, meta.get("threshold"))
        # What the network started from (pretrained file with its sha256, or random), as the
        # embed stage found it in model.json and classify passed it on.
        if "embedding" in meta:
            report["started_from"] = meta["embedding"].get("started_from")
        results[backbone] = report
        paths = plot_paths(plots_dir, backbone)
        for name, table in tables.items():
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            write_csv(table, paths[name], float_format="%.6g")
        cmc = None
        if "identification" in report:
            rates = report["identification"]["cmc"]
            cmc = pd.DataFrame({"rank": np.arange(1, len(rates) + 1), "rate": rates})
        label = f"{backbone}: {meta.get('classifier', 'classifier')} on test pairs"
        curves_figure(test, report["threshold"], paths["curves"], label, cmc=cmc)
        paths["worst_pairs"].parent.mkdir(parents=True, exist_ok=True)
        if config.worst_pairs > 0:
            worst_pairs_sheet(test, report["threshold"], paths["worst_pairs"], config.worst_pairs, loader=image_loader)
        elif paths["worst_pairs"].exists():
            paths["worst_pairs"].unlink()
        logger.info(
            "%s: accuracy %.4f auc %s eer %s",
            backbone,
            report["accuracy"],
            "n/a" if report.get("roc_auc") is None else f"{report['roc_auc']:.4f}",
            "n/a" if report.get("eer") is None else f"{report['eer']:.4f}",
        )
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    recommended = recommend(results, config.recommend_tolerance)
    output = {**results, "recommended": recommended}
    metrics_path.write_text(json.dumps(output, indent=2, sort_keys=True, allow_nan=False) + "\n")
    if report_path is not None:
        data = None
        if data_metrics_path is not None and data_metrics_path.is_file():
            data = json.loads(data_metrics_path.read_text())
        write_report(
            report_path,
            results,
            data=data,
            settings=settings,
            crop=crop,
            plots={backbone: {**plot_paths(plots_dir, backbone), **(links or {}).get(backbone, {})} for backbone in backbones},
            bootstrap=config.bootstrap,
            recommended=recommended,
        )
    return output


def recommend(results: dict[str, dict], tolerance: float = 0.0) -> Optional[dict]:
    """The backbone to use, chosen on the *validation* pairs (test pairs stay untouched by
    every choice): the first entry of ``results`` (the order of ``backbones`` in params.yaml)
    whose val ROC AUC is within ``tolerance`` of the best. Differences smaller than a val set
    can resolve are no evidence, so the order of ``backbones`` (strongest network first in the
    defaults) decides them.

    Returns ``{"backbone", "model_folder", "val_roc_auc", "best_val_roc_auc", "by"}`` or None
    when no backbone has a val AUC (a val split with one class).
    """
    scored = [(name, report["val_roc_auc"]) for name, report in results.items() if report.get("val_roc_auc") is not None]
    if not scored:
        return None
    best = max(auc for _, auc in scored)
    name, auc = next((name, auc) for name, auc in scored if auc >= best - tolerance)
    return {
        "backbone": name,
        "model_folder": f"models/{name}",
        "val_roc_auc": auc,
        "best_val_roc_auc": best,
        "by": f"first of backbones within {tolerance:g} of the best val_roc_auc",
    }
