"""DVC stage `finetune@<backbone>`: ArcFace fine-tuning on the training identities.

Runs as ``python stages/finetune.py ...`` on one device, or as
``torchrun --nproc_per_node=N stages/finetune.py ...`` with one process per GPU (rank 0
writes the outputs). An interrupted run resumes from ``--checkpoint-dir`` when rerun
with the same params and data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import ArcFaceConfig, FinetuneConfig, backbone_config, load_params, section
from maskface.training.train import finetune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--crops", type=Path, required=True)
    parser.add_argument("--val-pairs", type=Path, required=True)
    parser.add_argument(
        "--cross-val-pairs", type=Path, default=None,
        help="pairs of another collection (data.validation_sources; empty file = none)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder")
    parser.add_argument("--live-dir", type=Path, required=True, help="DVCLive output folder")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="per-epoch checkpoint folder, outside DVC's outs (default: models/.checkpoints/<backbone>)",
    )
    parser.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints (and resume none)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    checkpoint_dir = None if args.no_checkpoints else (args.checkpoint_dir or Path("models/.checkpoints") / args.backbone)
    finetune(
        args.backbone,
        args.crops,
        args.val_pairs,
        args.out,
        args.live_dir,
        backbone_config(params, args.backbone),
        section(params, ArcFaceConfig, "arcface"),
        section(params, FinetuneConfig, "finetune"),
        checkpoint_dir=checkpoint_dir,
        cross_val_pairs_path=args.cross_val_pairs,
    )


if __name__ == "__main__":
    _common.run(main)
