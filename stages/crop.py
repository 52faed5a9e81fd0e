"""DVC stage `crop@<backbone>`: crop every image and resize it to the backbone's input size."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common
import pandas as pd

from maskface.backbones import get_spec
from maskface.config import CropConfig, backbone_config, load_params, section
from maskface.crop import crop_dataset, preview_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for images.npy, index.csv, preprocess.json")
    parser.add_argument("--preview", type=Path, required=True, help="before/after sheet (PNG)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    crop_config = section(params, CropConfig, "crop")
    input_size = backbone_config(params, args.backbone).input_size or get_spec(args.backbone).input_size

    manifest = pd.read_csv(args.manifest, keep_default_na=False)
    crop_dataset(manifest, crop_config, input_size, args.out)
    preview_sheet(manifest, args.out, args.preview, crop_config.preview_images)


if __name__ == "__main__":
    _common.run(main)
