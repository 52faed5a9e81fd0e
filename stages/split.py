"""DVC stage `split`: validate the images, find faces, filter, assign train/val/test, build val/test pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common

from maskface.config import CropConfig, SplitConfig, load_params, section
from maskface.data.datasets import DataConfig
from maskface.face.geometry import filtered_sheet
from maskface.data.prepare import prepare_data
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
    crop_config = section(params, CropConfig, "crop")
    prepared = prepare_data(data_config, split_config, crop_config, args.synthetic_dir, args.landmark_cache)

    if not args.synthetic_dir.exists():
        # The folder is a declared output of this stage whatever the source.
        args.synthetic_dir.mkdir(parents=True)
        (args.synthetic_dir / "README.txt").write_text(
            f"Unused: data.source is {data_config.source!r}; synthetic images are rendered here only for 'synthetic'.\n"
        )
    write_csv(prepared.manifest, args.manifest)
    write_csv(prepared.rejected, args.rejected)
    write_csv(prepared.landmarks, args.landmarks)
    filtered_sheet(prepared.dropped, prepared.landmarks, args.filtered_preview, prepared.filter_note)
    for name, table in prepared.pairs.items():
        write_csv(table, args.pairs_dir / f"{name}.csv")
    args.data_metrics.parent.mkdir(parents=True, exist_ok=True)
    args.data_metrics.write_text(json.dumps(prepared.report, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    _common.run(main)
