"""DVC stage `split`: validate the images, find faces, filter, assign train/val/test, build val/test pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common
import pandas as pd

from maskface.config import CropConfig, SplitConfig, load_params, section
from maskface.data.datasets import DataConfig, build_manifest, build_validation_manifest
from maskface.face.geometry import detection_rates, face_filter, filtered_sheet, landmark_table
from maskface.data.split import make_pairs, split_dataset
from maskface.tables import write_csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--synthetic-dir", type=Path, required=True, help="where data.source=synthetic renders its images")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--rejected", type=Path, required=True)
    parser.add_argument("--pairs-dir", type=Path, required=True)
    parser.add_argument("--data-metrics", type=Path, required=True)
    parser.add_argument("--landmarks", type=Path, required=True, help="landmark table (CSV) of every accepted image")
    parser.add_argument("--filtered-preview", type=Path, required=True, help="sheet of the images crop.filter dropped (PNG)")
    parser.add_argument(
        "--landmark-cache", type=Path, default=None,
        help="MTCNN detections of earlier runs by file SHA-256 and settings (not an output: only saves time)",
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    data_config = section(params, DataConfig, "data")
    split_config = section(params, SplitConfig, "split")
    crop_config = section(params, CropConfig, "crop").for_source(data_config.source)

    result = build_manifest(data_config, args.synthetic_dir)
    if not args.synthetic_dir.exists():
        # The folder is a declared output of this stage whatever the source.
        args.synthetic_dir.mkdir(parents=True)
        (args.synthetic_dir / "README.txt").write_text(
            f"Unused: data.source is {data_config.source!r}; synthetic images are rendered here only for 'synthetic'.\n"
        )

    validation = build_validation_manifest(data_config)
    every_image = result.manifest if validation is None else pd.concat([result.manifest, validation.manifest], ignore_index=True)
    # Faces are found once here, before the split, so that filtered images never enter a pair;
    # the manifest already holds each file's SHA-256, the landmark cache's key.
    landmarks = landmark_table(every_image["path"].tolist(), crop_config, args.landmark_cache, every_image["sha256"].tolist())
    dropped = face_filter(landmarks, crop_config.min_confidence)
    kept = result.manifest
    if crop_config.filter:
        kept = result.manifest[~result.manifest["path"].isin(set(dropped["path"]))].reset_index(drop=True)
        note = f"crop.filter: {len(dropped)} of {len(landmarks)} images dropped (min_confidence {crop_config.min_confidence})"
    elif crop_config.landmarks == "mtcnn":
        note = f"crop.filter is off: nothing dropped; {len(dropped)} image(s) shown here would be (min_confidence {crop_config.min_confidence})"
    else:
        note = "crop.filter is off and no MTCNN detection ran: nothing dropped"
        dropped = dropped.iloc[0:0]

    manifest, pairs = split_dataset(
        kept,
        split_config.ratios,
        split_config.seed,
        split_config.by,
        split_config.pair_types,
        split_config.max_genuine_per_identity,
    )
    # Cross-collection validation pairs (finetune reads them; nothing trains or tests on them).
    # The file always exists, empty without data.validation_sources, so the stages' deps are fixed.
    pairs["xval"] = pairs["val"].iloc[0:0]
    if validation is not None:
        other = validation.manifest
        if crop_config.filter:
            other = other[~other["path"].isin(set(dropped["path"]))]
        other = other.assign(split="xval").reset_index(drop=True)
        pairs["xval"] = make_pairs(other, split_config.pair_types, split_config.max_genuine_per_identity, split_config.seed + 3)
        manifest = pd.concat([manifest, other], ignore_index=True)
    rejected = result.rejected if validation is None else pd.concat([result.rejected, validation.rejected], ignore_index=True)
    if crop_config.filter and len(dropped):
        rejected = pd.concat([rejected, dropped], ignore_index=True).sort_values(["path", "reason"], kind="mergesort", ignore_index=True)
    write_csv(manifest, args.manifest)
    write_csv(rejected, args.rejected)
    write_csv(landmarks, args.landmarks)
    filtered_sheet(dropped, landmarks, args.filtered_preview, note)
    for name, table in pairs.items():
        write_csv(table, args.pairs_dir / f"{name}.csv")

    report = dict(result.report)
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
    sources = landmarks["landmark_source"].value_counts()
    report["faces"] = {
        "landmark_source": {str(k): int(v) for k, v in sources.items()},
        "detection": detection_rates(landmarks, result.manifest["masked"]) if sources.get("mtcnn", 0) else None,
        "filter": {
            "enabled": crop_config.filter,
            "min_confidence": crop_config.min_confidence,
            "dropped": {reason: int((dropped["reason"] == reason).sum()) for reason in ("no_face", "low_confidence")}
            if crop_config.filter
            else {"no_face": 0, "low_confidence": 0},
            "images_kept": int(len(kept)),
        },
    }
    args.data_metrics.parent.mkdir(parents=True, exist_ok=True)
    args.data_metrics.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    _common.run(main)
