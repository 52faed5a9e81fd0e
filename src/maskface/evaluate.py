"""Verification metrics and DVC plot data from the classify stage's scored pairs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from maskface.config import EvaluateConfig
from maskface.metrics import choose_threshold, roc_points, verification_report

logger = logging.getLogger(__name__)

HEADLINE = ("tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "roc_auc")


def read_scores(scores_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(scores_dir / "val.csv"), pd.read_csv(scores_dir / "test.csv")


def evaluate_backbone(val: pd.DataFrame, test: pd.DataFrame, config: EvaluateConfig) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Metrics of one backbone's classifier plus its confusion rows and ROC points.

    The threshold is chosen on val and applied to test, as the classify stage did.
    """
    report = verification_report(
        val["score"].to_numpy(),
        val["label"].to_numpy(),
        test["score"].to_numpy(),
        test["label"].to_numpy(),
        test_pair_types=test["pair_type"].to_numpy(),
        test_folds=test["fold"].to_numpy(),
        test_groups=test["identity_a"].to_numpy(),
    )
    cosine = verification_report(
        val["cosine"].to_numpy(), val["label"].to_numpy(), test["cosine"].to_numpy(), test["label"].to_numpy()
    )
    report["cosine_baseline"] = {key: cosine[key] for key in ("accuracy", "roc_auc", "threshold") if key in cosine}
    threshold = choose_threshold(val["score"].to_numpy(), val["label"].to_numpy())
    predicted = (test["score"].to_numpy() >= threshold).astype(int)
    names = np.array(["different", "same"])
    confusion = pd.DataFrame({"actual": names[test["label"].to_numpy()], "predicted": names[predicted]})
    roc = roc_points(test["score"].to_numpy(), test["label"].to_numpy(), max_points=config.roc_points)[["fpr", "tpr"]]
    return report, confusion, roc


def evaluate(backbones: list[str], scores_root: Path, metrics_path: Path, plots_dir: Path, config: EvaluateConfig) -> dict:
    """Write ``metrics_path`` (nested by backbone) and per-backbone confusion/ROC CSVs."""
    results = {}
    for backbone in backbones:
        scores_dir = scores_root / backbone
        if not (scores_dir / "test.csv").is_file():
            raise FileNotFoundError(f"{scores_dir / 'test.csv'} is missing; run the classify stage for {backbone}")
        report, confusion, roc = evaluate_backbone(*read_scores(scores_dir), config)
        results[backbone] = report
        for name, table in (("confusion", confusion), ("roc", roc)):
            destination = plots_dir / name / f"{backbone}.csv"
            destination.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(destination, index=False, float_format="%.6g")
        logger.info(
            "%s: accuracy %.4f auc %.4f",
            backbone,
            report["accuracy"],
            report["roc_auc"] if report["roc_auc"] is not None else float("nan"),
        )
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
