"""DVC stage `crop@<backbone>`: align, crop and resize every image to the backbone's input size."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.models.backbones import get_spec
from maskface.config import CropConfig, backbone_config, load_params, section
from maskface.face.crop import crop_dataset, preview_sheet
from maskface.data.datasets import read_manifest
from maskface.errors import InputError
from maskface.face.geometry import read_landmark_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--landmarks", type=Path, required=True, help="the split stage's landmark table (CSV)")
    parser.add_argument("--out", type=Path, required=True, help="folder for images.npy, index.csv, preprocess.json")
    parser.add_argument("--preview", type=Path, required=True, help="sheet of the crop modes side by side (PNG)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    crop_config = section(params, CropConfig, "crop")
    spec = get_spec(args.backbone)
    input_size = backbone_config(params, args.backbone).input_size or spec.input_size

    manifest = read_manifest(args.manifest)
    landmarks = read_landmark_table(args.landmarks)
    if crop_config.needs_landmarks and (landmarks["landmark_source"] == "none").all():
        raise InputError(
            f"{args.landmarks} has no landmarks (the split stage skipped detection) but crop settings need them; "
            "rerun the split stage (dvc repro split) with the same crop params"
        )
    crop_dataset(manifest, crop_config, input_size, args.out, landmarks=landmarks, template=spec.template)
    preview_sheet(manifest, args.out, args.preview, crop_config.preview_images, landmarks=landmarks)


if __name__ == "__main__":
    _common.run(main)
