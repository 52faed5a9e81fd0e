"""DVC stage `finetune@<backbone>`: ArcFace fine-tuning on the training identities."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import ArcFaceConfig, FinetuneConfig, backbone_config, load_params, section
from maskface.train import finetune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--crops", type=Path, required=True)
    parser.add_argument("--val-pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="model folder")
    parser.add_argument("--live-dir", type=Path, required=True, help="DVCLive output folder")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    finetune(
        args.backbone,
        args.crops,
        args.val_pairs,
        args.out,
        args.live_dir,
        backbone_config(params, args.backbone),
        section(params, ArcFaceConfig, "arcface"),
        section(params, FinetuneConfig, "finetune"),
    )


if __name__ == "__main__":
    _common.run(main)
