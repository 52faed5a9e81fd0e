"""The split stage's work, from params to the tables it writes (:func:`prepare_data`).

Its own module: the classify stage imports :mod:`maskface.data.split` for the pair builder, and
must not depend on the dataset readers and the face detector this calls (a change there
would rerun it; tests/stages/test_dvc_deps.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pandas as pd

from maskface.config import CropConfig, SplitConfig
from maskface.data.datasets import DataConfig, ManifestResult, build_manifest, build_validation_manifest, source_specs
from maskface.face.geometry import FILTER_REASONS, detection_rates, face_filter, landmark_table
from maskface.data.split import make_pairs, split_dataset


@dataclasses.dataclass
class PreparedData:
    """What the split stage writes (:func:`prepare_data`).

    ``manifest``: every kept image with its ``split`` (train, val, test; xval for the
    validation sources); ``rejected``: every file left out and why; ``landmarks``: the
    landmark table of every image found (the validation sources' included); ``pairs``: val,
    test and xval (empty without validation sources); ``dropped``: the images the occlusion
    filter drops (with the filter off: would drop), and ``filter_note`` the title of their
    sheet; ``report``: metrics/data.json.
    """

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    landmarks: pd.DataFrame
    pairs: dict[str, pd.DataFrame]
    dropped: pd.DataFrame
    filter_note: str
    report: dict


def prepare_data(
    data: DataConfig, split: SplitConfig, crop: CropConfig, synthetic_dir: Path, landmark_cache: Optional[Path] = None
) -> PreparedData:
    """The split stage: read and validate the images, find their faces, apply the occlusion
    filter, assign the splits and build the pairs.

    Faces are found once here, before the split, so that a filtered image never enters a
    pair; the manifest holds each file's SHA-256, the landmark cache's key
    (``landmark_cache``, see :func:`maskface.face.geometry.cached_detect_table`).
    """
    crop = crop.for_source(data.source)
    result = build_manifest(data, synthetic_dir)
    validation = build_validation_manifest(data)
    found = [result.manifest] if validation is None else [result.manifest, validation.manifest]
    landmarks = landmark_table(
        [path for table in found for path in table["path"].tolist()], crop, landmark_cache,
        [digest for table in found for digest in table["sha256"].tolist()],
    )
    dropped, kept, note = _occlusion_filter(result.manifest, landmarks, crop)
    # data.extra_sources are more people to train on: in val or test they would move the
    # threshold and the metrics away from the collection the user named in data.root.
    extra = kept["source"] != source_specs(data)[0].label
    manifest, pairs = split_dataset(
        kept, split.ratios, split.seed, split.by, split.pair_types, split.max_genuine_per_identity, train_only=extra
    )
    # Cross-collection validation pairs (finetune reads them; nothing trains or tests on them).
    # The table always exists, empty without data.validation_sources, so the stages' deps are fixed.
    pairs["xval"] = pairs["val"].iloc[0:0]
    if validation is not None:
        other = validation.manifest
        if crop.filter:
            other = other[~other["path"].isin(set(dropped["path"]))]
        other = other.assign(split="xval").reset_index(drop=True)
        pairs["xval"] = make_pairs(other, split.pair_types, split.max_genuine_per_identity, split.seed + 3)
        manifest = pd.concat([manifest, other], ignore_index=True)
    rejected = result.rejected if validation is None else pd.concat([result.rejected, validation.rejected], ignore_index=True)
    if crop.filter and len(dropped):
        rejected = pd.concat([rejected, dropped], ignore_index=True).sort_values(["path", "reason"], kind="mergesort", ignore_index=True)
    masked = [flag for table in found for flag in table["masked"].tolist()]  # in the landmark table's order
    report = _data_report(result.report, validation, manifest, pairs, (landmarks, masked), dropped, len(kept), crop)
    return PreparedData(manifest, rejected, landmarks, pairs, dropped, note, report)


def _occlusion_filter(manifest: pd.DataFrame, landmarks: pd.DataFrame, crop: CropConfig) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(images the filter drops, or would drop with it off; the manifest it keeps; the sheet's note)."""
    dropped = face_filter(landmarks, crop.min_confidence)
    if crop.filter:
        kept = manifest[~manifest["path"].isin(set(dropped["path"]))].reset_index(drop=True)
        return dropped, kept, f"crop.filter: {len(dropped)} of {len(landmarks)} images dropped (min_confidence {crop.min_confidence})"
    if crop.landmarks == "mtcnn":
        note = f"crop.filter is off: nothing dropped; {len(dropped)} image(s) shown here would be (min_confidence {crop.min_confidence})"
        return dropped, manifest, note
    return dropped.iloc[0:0], manifest, "crop.filter is off and no MTCNN detection ran: nothing dropped"


def _data_report(
    sources: dict,
    validation: Optional[ManifestResult],
    manifest: pd.DataFrame,
    pairs: dict[str, pd.DataFrame],
    faces: tuple[pd.DataFrame, list[bool]],
    dropped: pd.DataFrame,
    images_kept: int,
    crop: CropConfig,
) -> dict:
    """metrics/data.json: the sources' report, images and identities per split, pairs, and
    ``faces`` (the landmark table and each of its images' masked flag): detection and filter."""
    report = dict(sources)
    if validation is not None:
        report.update(validation.report)
    report["split"] = {
        name: {
            "images": int((manifest["split"] == name).sum()),
            "identities": int(manifest.loc[manifest["split"] == name, "identity"].nunique()),
        }
        for name in ("train", "val", "test", "xval")
    }
    report["pairs"] = {name: {"total": len(table), "genuine": int(table["label"].sum())} for name, table in pairs.items()}
    landmarks, masked = faces
    sources_of_landmarks = landmarks["landmark_source"].value_counts()
    report["faces"] = {
        "landmark_source": {str(k): int(v) for k, v in sources_of_landmarks.items()},
        "detection": detection_rates(landmarks, masked) if sources_of_landmarks.get("mtcnn", 0) else None,
        "filter": {
            "enabled": crop.filter,
            "min_confidence": crop.min_confidence,
            "dropped": {reason: int((dropped["reason"] == reason).sum()) if crop.filter else 0 for reason in FILTER_REASONS},
            "images_kept": int(images_kept),
        },
    }
    return report
