"""Evaluate a trained model folder on another dataset (``maskface eval``).

The usual way to train on one dataset and test on another (SMFRD to RMFRD, RMFRD to
LFW): every identity of the target dataset is a test identity, pairs are built with the
split stage's own rules (:func:`maskface.data.split.make_pairs`, fold per identity), every
paired image is embedded through the model folder, and pairs are scored with its
classifier.

The decision threshold is the model folder's own (chosen on the *source* dataset's
validation pairs): nothing of the target dataset tunes it, so the confusion metrics show
how the model transfers as deployed. ``kfold`` (LFW protocol: each fold judged at a
threshold chosen on the other folds) shows what re-tuning the threshold on the target
would give, and ``oracle_threshold`` its optimistic upper bound.

Output folder (``out_dir``): ``metrics.json``, ``pairs.csv`` (scored pairs), the evaluate
stage's plot data and figures (``confusion.csv``, ``roc.csv``, ``det.csv``, ``scores.csv``,
``curves.png``, ``worst_pairs.png``; see :mod:`maskface.evaluation.plots`), ``manifest.csv``,
``rejected.csv`` and ``data.json`` (what the dataset reader accepted and refused) and
``failed.csv`` (images that could not be embedded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from maskface.config import PAIR_TYPES, parse_section
from maskface.data.datasets import EXTRA_SOURCES
from maskface.errors import InputError
from maskface.evaluation.metrics import (
    AccuracyStatistic,
    AucStatistic,
    bootstrap_interval,
    choose_threshold,
    confusion_at_threshold,
    equal_error_rate,
    far_key,
    json_ready,
    kfold_accuracy,
    roc_auc,
    tar_at_far,
)
from maskface.evaluation.plots import confusion_table, curves_figure, det_table, natural_range, roc_table, score_histogram, worst_pairs_sheet
from maskface.data.split import make_pairs
from maskface.tables import read_csv, write_csv

logger = logging.getLogger(__name__)

EVAL_SOURCES = EXTRA_SOURCES  # every data source but the synthetic demo
DEFAULT_FARS = (1e-2, 1e-3)


@dataclass
class Dataset:
    """A target dataset read by :func:`maskface.data.datasets.build_manifest` (paths relative to the cwd)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    report: dict


def read_dataset(
    source: str,
    root: str,
    unmasked_root: Optional[str] = None,
    masked_pattern: str = "mask",
    workers: int = 2,
    max_identities: Optional[int] = None,
    max_images_per_identity: Optional[int] = None,
    seed: int = 0,
) -> Dataset:
    """Read ``root`` as the ``source`` layout; optionally a seeded subsample for quick runs.

    ``max_identities`` keeps that many identities (seeded choice), ``max_images_per_identity``
    that many images of each (seeded choice, masked and unmasked kept in proportion).
    """
    from maskface.data.datasets import DataConfig, build_manifest

    if source not in EVAL_SOURCES:
        raise InputError(f"--source {source!r} is invalid; valid: {', '.join(EVAL_SOURCES)}")
    for name, value in (("--max-identities", max_identities), ("--max-images-per-identity", max_images_per_identity)):
        if value is not None and value < 2:
            raise InputError(f"{name} {value!r} is invalid; valid: an integer >= 2")
    raw = {"source": source, "root": str(root), "unmasked_root": unmasked_root, "masked_pattern": masked_pattern, "workers": workers}
    config = parse_section(DataConfig, raw, "data")
    result = build_manifest(config, None)
    manifest = result.manifest
    rng = np.random.default_rng(seed)
    if max_identities is not None:
        identities = np.array(sorted(manifest["identity"].unique()))
        if len(identities) > max_identities:
            keep = set(rng.choice(identities, size=max_identities, replace=False).tolist())
            manifest = manifest[manifest["identity"].isin(keep)]
    if max_images_per_identity is not None:
        kept = []
        for _, group in manifest.groupby("identity", sort=True):
            if len(group) > max_images_per_identity:
                # Sorting by the masked flag first, then taking evenly spaced rows, keeps both sides.
                group = group.sort_values(["masked", "path"], kind="mergesort")
                rows = np.unique(np.round(np.linspace(0, len(group) - 1, max_images_per_identity)).astype(int))
                group = group.iloc[rows]
            kept.append(group)
        manifest = pd.concat(kept) if kept else manifest.iloc[:0]
    manifest = manifest.sort_values("path", kind="mergesort").reset_index(drop=True)
    return Dataset(manifest, result.rejected, result.report)


def masked_share_count(n_unmasked: int, share: float) -> int:
    """How many of an identity's ``n_unmasked`` photos are shown masked: round(share * n), at
    least one and never all of them (0 for a single photo)."""
    return min(max(1, round(share * n_unmasked)), n_unmasked - 1)


def choose_masked(manifest: pd.DataFrame, share: float, seed: int = 0) -> list[str]:
    """The unmasked photos to mask: :func:`masked_share_count` of each identity's, seeded."""
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for _, group in manifest[~manifest["masked"].astype(bool)].groupby("identity", sort=True):
        count = masked_share_count(len(group), share)
        if count > 0:
            chosen.extend(sorted(rng.choice(sorted(group["path"]), size=count, replace=False).tolist()))
    return chosen


def with_masked_copy(dataset: Dataset, data_root: str, copy_dir: str, share: float = 0.5, seed: int = 0) -> Dataset:
    """Swap a share of each identity's unmasked photos for their simulated-mask copies.

    ``copy_dir`` is the output of ``maskface simulate-masks`` over ``data_root``: masked
    copies at the same relative paths, listed in ``copy_dir/manifest.csv``. Of each
    identity's unmasked photos that have a copy, ``round(share * n)`` (seeded, at least one,
    and never all of its unmasked photos) are replaced by their copy, so every photo
    appears once: no pair compares a masked copy with its own original.
    """
    from maskface.data.simulate import MANIFEST_FILE

    if not 0.0 < share < 1.0:
        raise InputError(f"--mask-share {share!r} is invalid; valid: a fraction in (0, 1)")
    listing = Path(copy_dir) / MANIFEST_FILE
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing; --masked-copy takes the output folder of maskface simulate-masks")
    copies = read_csv(listing)
    if "path" not in copies.columns:
        raise InputError(f"{listing}: no path column; not a maskface simulate-masks manifest")
    copy_of = {str(relative): os.path.join(copy_dir, str(relative)) for relative in copies["path"]}
    base = os.path.abspath(os.path.dirname(data_root) if os.path.isfile(data_root) else data_root)
    rng = np.random.default_rng(seed)
    manifest = dataset.manifest.copy()
    relative = manifest["path"].map(lambda p: Path(os.path.relpath(os.path.abspath(p), base)).as_posix())
    swapped = 0
    for _, group in manifest[~manifest["masked"].astype(bool)].groupby("identity", sort=True):
        candidates = [row for row in group.index if relative[row] in copy_of]
        count = min(masked_share_count(len(group), share), len(candidates))
        if count < 1:
            continue
        for row in sorted(rng.choice(candidates, size=count, replace=False).tolist()):
            manifest.at[row, "path"] = copy_of[relative[row]]
            manifest.at[row, "masked"] = True
            if "source" in manifest.columns:
                manifest.at[row, "source"] = f"{manifest.at[row, 'source']}+simulated-mask"
            swapped += 1
    if swapped == 0:
        raise InputError(
            f"{copy_dir}: none of the {len(manifest)} images of {data_root} has a masked copy there; "
            "was it made by maskface simulate-masks from this dataset?"
        )
    logger.info("%d photos replaced by their simulated-mask copies from %s", swapped, copy_dir)
    report = {**dataset.report, "simulated_masks": {"copy_dir": str(copy_dir), "share": share, "replaced": swapped}}
    manifest = manifest.sort_values("path", kind="mergesort").reset_index(drop=True)
    return Dataset(manifest, dataset.rejected, report)


def default_pair_types(manifest: pd.DataFrame) -> list[str]:
    """masked-unmasked when the dataset has both sides, else the one side it has."""
    masked = manifest["masked"].astype(bool)
    if masked.any() and (~masked).any():
        return ["masked-unmasked"]
    return ["masked-masked"] if masked.any() else ["unmasked-unmasked"]


def build_pairs(manifest: pd.DataFrame, pair_types: Sequence[str], max_genuine_per_identity: int, seed: int) -> pd.DataFrame:
    """The split stage's pairs over all identities (label-noise images excluded, as there)."""
    for pair_type in pair_types:
        if pair_type not in PAIR_TYPES:
            raise InputError(f"pair type {pair_type!r} is invalid; valid: {', '.join(PAIR_TYPES)}")
    if max_genuine_per_identity < 1:
        raise InputError(f"--max-genuine-per-identity {max_genuine_per_identity!r} is invalid; valid: an integer >= 1")
    pairable = manifest
    if "label_noise" in manifest:
        pairable = manifest[~manifest["label_noise"].astype(bool)]
    pairs = make_pairs(pairable, list(pair_types), max_genuine_per_identity, seed)
    if pairs.empty or pairs["label"].nunique() < 2:
        sides = f"{int(pairable['masked'].sum())} masked, {int((~pairable['masked'].astype(bool)).sum())} unmasked"
        raise InputError(
            f"no usable {'/'.join(pair_types)} pairs in this dataset ({pairable['identity'].nunique()} identities, "
            f"{sides} images); choose other --pair-types"
        )
    return pairs


def fixed_threshold_report(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    folds: Optional[np.ndarray] = None,
    groups: Optional[np.ndarray] = None,
    fars: Sequence[float] = DEFAULT_FARS,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """The evaluate stage's test block at a threshold fixed in advance.

    Keys as :func:`maskface.evaluation.metrics.verification_report`'s test block: n_pairs, n_genuine,
    n_impostor, tp/fp/tn/fn, accuracy, precision, recall, f1, threshold, roc_auc, eer,
    eer_threshold, ``tar_at_far_*``, ``kfold`` (when >= 2 folds), ``bootstrap`` (when
    requested with groups). Ranking metrics are None, with a ``note``, for a single class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    block: dict[str, Any] = {"n_pairs": int(labels.size), "n_genuine": n_pos, "n_impostor": int(labels.size) - n_pos}
    block.update(confusion_at_threshold(scores, labels, threshold))
    if not 0 < n_pos < labels.size:
        block.update({"roc_auc": None, "eer": None, "eer_threshold": None, **{far_key(f): None for f in fars}})
        block["note"] = "these pairs hold a single class: ROC AUC, EER, TAR@FAR and k-fold undefined"
        return block
    block["roc_auc"] = roc_auc(scores, labels)
    block["eer"], block["eer_threshold"] = equal_error_rate(scores, labels)
    for far in fars:
        block[far_key(far)] = tar_at_far(scores, labels, far)
    if folds is not None and np.unique(folds).size >= 2:
        block["kfold"] = kfold_accuracy(scores, labels, folds)
    if bootstrap > 0 and groups is not None:
        block["bootstrap"] = {
            "accuracy": bootstrap_interval(scores, labels, groups, AccuracyStatistic(threshold), bootstrap, seed=seed),
            "roc_auc": bootstrap_interval(scores, labels, groups, AucStatistic(), bootstrap, seed=seed),
        }
    return block


def embed_and_score_pairs(model, pairs: pd.DataFrame, progress: Optional[bool] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embed every paired image once and score the pairs.

    Returns the scored pairs (``score``, ``cosine``, ``predicted`` columns; pairs with an
    image that failed are dropped) and the failed images (path, reason).
    """
    paths = sorted(set(pairs["path_a"]) | set(pairs["path_b"]))
    result = model.embed_many(paths, progress=progress)
    row_of = {source: row for row, source in enumerate(result.sources)}
    failed = pd.DataFrame([f.to_dict() for f in result.failures], columns=["source", "reason"]).rename(columns={"source": "path"})
    usable = pairs["path_a"].isin(row_of) & pairs["path_b"].isin(row_of)
    if not usable.all():
        logger.warning("%d of %d pairs dropped: an image could not be embedded", int((~usable).sum()), len(pairs))
    scored = pairs[usable].reset_index(drop=True).copy()
    a = result.embeddings[scored["path_a"].map(row_of).to_numpy(dtype=int)]
    b = result.embeddings[scored["path_b"].map(row_of).to_numpy(dtype=int)]
    scored["score"] = model.score(a, b)
    scored["cosine"] = np.einsum("ij,ij->i", a, b)
    scored["predicted"] = (scored["score"] >= model.threshold).astype(int)
    return scored, failed


def metrics_of(
    scored: pd.DataFrame,
    threshold: float,
    fars: Sequence[float] = DEFAULT_FARS,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """The whole report of scored pairs: overall block, per pair type, cosine baseline, oracle."""
    scores = scored["score"].to_numpy()
    labels = scored["label"].to_numpy().astype(bool)
    folds = scored["fold"].to_numpy()
    groups = scored[["identity_a", "identity_b"]].to_numpy()
    report = fixed_threshold_report(scores, labels, threshold, folds, groups, fars, bootstrap, seed)
    report["threshold_source"] = "model folder (chosen on the training dataset's validation pairs)"
    if "kfold" in report:
        # Does the model's own threshold transfer? The 10-fold figure picks a threshold on these
        # very pairs (nine folds at a time); a deployed model cannot, so the gap is what a user loses.
        report["threshold_transfer"] = {
            "own_threshold_accuracy": report["accuracy"],
            "kfold_accuracy": report["kfold"]["mean"],
            "gap": report["accuracy"] - report["kfold"]["mean"],
        }
    if 0 < labels.sum() < labels.size:
        oracle = choose_threshold(scores, labels)
        report["oracle_threshold"] = {
            "threshold": oracle,
            "accuracy": confusion_at_threshold(scores, labels, oracle)["accuracy"],
            "note": "chosen on these same pairs: an optimistic upper bound, not a test result",
        }
        cosine = scored["cosine"].to_numpy()
        report["cosine_baseline"] = {"roc_auc": roc_auc(cosine, labels)}
        if np.unique(folds).size >= 2:
            report["cosine_baseline"]["kfold_accuracy"] = kfold_accuracy(cosine, labels, folds)["mean"]
    report["by_pair_type"] = {
        str(pair_type): fixed_threshold_report(
            group["score"].to_numpy(), group["label"].to_numpy(), threshold, group["fold"].to_numpy(), None, fars
        )
        for pair_type, group in scored.groupby("pair_type", sort=True)
    }
    return json_ready(report)


def plot_tables(scored: pd.DataFrame, threshold: float, roc_max_points: int, histogram_bins: int) -> dict[str, pd.DataFrame]:
    """The evaluate stage's DVC plot tables: confusion, roc, det and scores (histograms)."""
    scores, labels = scored["score"].to_numpy(), scored["label"].to_numpy()
    return {
        "confusion": confusion_table(scores, labels, threshold),
        "roc": roc_table(scores, labels, roc_max_points),
        "det": det_table(scores, labels, roc_max_points),
        "scores": score_histogram(scores, labels, histogram_bins, natural_range(scores)),
    }


def evaluate_model_on(
    model,
    dataset: Dataset,
    out_dir: Path,
    pair_types: Optional[Sequence[str]] = None,
    max_genuine_per_identity: int = 20,
    seed: int = 0,
    roc_max_points: int = 200,
    fars: Sequence[float] = DEFAULT_FARS,
    bootstrap: int = 0,
    histogram_bins: int = 40,
    worst_pairs: int = 6,
    progress: Optional[bool] = None,
    description: Optional[dict] = None,
) -> dict:
    """Pairs over all of ``dataset``, scored by ``model`` (a :class:`maskface.api.FaceModel`).

    Writes the output folder described in the module docstring and returns the metrics
    (also in ``metrics.json``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dataset.manifest
    pair_types = list(pair_types) if pair_types else default_pair_types(manifest)
    pairs = build_pairs(manifest, pair_types, max_genuine_per_identity, seed)
    logger.info("%d pairs (%d genuine) of types %s", len(pairs), int(pairs["label"].sum()), ", ".join(pair_types))
    scored, failed = embed_and_score_pairs(model, pairs, progress)
    if scored.empty or scored["label"].nunique() < 2:
        raise InputError(
            f"after dropping pairs with images that could not be embedded ({len(failed)}), "
            f"{len(scored)} pairs remain without both classes; see the failures listed"
        )
    report = metrics_of(scored, model.threshold, fars, bootstrap, seed)
    report["model"] = model.summary()
    report["dataset"] = {
        **(description or {}),
        "images": int(len(manifest)),
        "identities": int(manifest["identity"].nunique()),
        "masked_images": int(manifest["masked"].astype(bool).sum()),
        "rejected_files": int(len(dataset.rejected)),
        "failed_images": int(len(failed)),
        "pair_types": pair_types,
        "max_genuine_per_identity": max_genuine_per_identity,
        "seed": seed,
    }
    write_csv(scored, out_dir / "pairs.csv")  # full precision: metrics recompute exactly from it
    for name, table in plot_tables(scored, model.threshold, roc_max_points, histogram_bins).items():
        write_csv(table, out_dir / f"{name}.csv", float_format="%.6g")
    write_csv(manifest, out_dir / "manifest.csv")
    write_csv(dataset.rejected, out_dir / "rejected.csv")
    write_csv(failed, out_dir / "failed.csv")
    (out_dir / "data.json").write_text(json.dumps(dataset.report, indent=2, sort_keys=True, default=str) + "\n")
    title = f"{model.backbone} ({model.folder.classifier}) on {(description or {}).get('source', 'dataset')}: all identities"
    curves_figure(scored, model.threshold, out_dir / "curves.png", title)
    if worst_pairs > 0:
        worst_pairs_sheet(scored, model.threshold, out_dir / "worst_pairs.png", worst_pairs)
    elif (out_dir / "worst_pairs.png").exists():
        (out_dir / "worst_pairs.png").unlink()  # a stale sheet from an earlier run into --out
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    logger.info("metrics -> %s", out_dir / "metrics.json")
    return report
