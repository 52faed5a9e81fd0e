"""DVC stage `split`: validate the images, assign train/val/test, build val/test pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common

from maskface.config import SplitConfig, load_params, section
from maskface.datasets import DataConfig, build_manifest
from maskface.split import split_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--synthetic-dir", type=Path, required=True, help="where data.source=synthetic renders its images")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--rejected", type=Path, required=True)
    parser.add_argument("--pairs-dir", type=Path, required=True)
    parser.add_argument("--data-metrics", type=Path, required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    data_config = section(params, DataConfig, "data")
    split_config = section(params, SplitConfig, "split")

    result = build_manifest(data_config, args.synthetic_dir)
    if not args.synthetic_dir.exists():
        # The folder is a declared output of this stage whatever the source.
        args.synthetic_dir.mkdir(parents=True)
        (args.synthetic_dir / "README.txt").write_text(
            f"Unused: data.source is {data_config.source!r}; synthetic images are rendered here only for 'synthetic'.\n"
        )
    manifest, pairs = split_dataset(
        result.manifest,
        split_config.ratios,
        split_config.seed,
        split_config.by,
        split_config.pair_types,
        split_config.max_genuine_per_identity,
    )
    args.manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(args.manifest, index=False)
    result.rejected.to_csv(args.rejected, index=False)
    args.pairs_dir.mkdir(parents=True, exist_ok=True)
    for name, table in pairs.items():
        table.to_csv(args.pairs_dir / f"{name}.csv", index=False)
    report = dict(result.report)
    report["split"] = {
        name: {
            "images": int((manifest["split"] == name).sum()),
            "identities": int(manifest.loc[manifest["split"] == name, "identity"].nunique()),
        }
        for name in ("train", "val", "test")
    }
    report["pairs"] = {name: {"total": len(table), "genuine": int(table["label"].sum())} for name, table in pairs.items()}
    args.data_metrics.parent.mkdir(parents=True, exist_ok=True)
    args.data_metrics.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    _common.run(main)
