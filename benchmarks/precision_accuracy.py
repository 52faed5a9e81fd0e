"""Figure 1, second half: does the bf16 default change verification accuracy?

The reduced-precision path is the default on CPUs with native bf16 only if its embeddings
agree with fp32 (tested: cosine >= 0.999 on real faces, tests/inference/test_embed.py) and verification
accuracy is unchanged. This embeds the same real faces (rmfrd-dev, then lfw-gray-20) with
facenet (casia-webface, 160 px) in fp32 and bf16 through the project's crop + embed path,
scores balanced same/different pairs by cosine (masked-unmasked, masked-masked and
unmasked-unmasked where the data holds them), and compares 10-fold accuracy (thresholds
chosen on the other folds), ROC AUC and how many decisions flip.

    .venv/bin/python benchmarks/precision_accuracy.py --images 1000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine, real_face_paths

from maskface.models.backbones import create_model
from maskface.config import PAIR_TYPES, CropConfig
from maskface.face.crop import crop_dataset, open_crops
from maskface.inference.embed import embed_array
from maskface.evaluation.metrics import kfold_accuracy, roc_auc
from maskface.data.split import make_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pairs-per-identity", type=int, default=20, help="genuine pairs per identity and pair type, at most")
    args = parser.parse_args()
    paths = real_face_paths(args.images)
    manifest = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            # rmfrd-dev keeps one person's masked and unmasked photos in two trees, same folder name.
            "identity": [("rmfrd/" if "rmfrd-dev" in p.parts else "lfw/") + p.parent.name for p in paths],
            "masked": [p.parent.parent.name == "AFDB_masked_face_dataset" for p in paths],
            "split": "test",
        }
    )
    # The pretrained embedding itself (identity head, not a random projection, so every run
    # scores the same model), as maskface.inference.embed.load_model hands it on: batch norms folded.
    model = create_model("facenet", weights="casia-webface", embedding_size=512)
    model.init_head_identity()
    model.eval().fold_batch_norm()
    with tempfile.TemporaryDirectory() as folder:
        crop_dataset(manifest, CropConfig(), 160, Path(folder))
        images, index = open_crops(Path(folder))
        embeddings = {
            precision: embed_array(model, images, batch_size=64, progress=False, precision=precision, channels_last=True)
            for precision in ("fp32", "bf16")
        }
    row_of = {path: row for row, path in enumerate(index["path"])}
    pairs = make_pairs(manifest, PAIR_TYPES, args.pairs_per_identity, seed=0)
    a = pairs["path_a"].map(row_of).to_numpy()
    b = pairs["path_b"].map(row_of).to_numpy()
    labels = pairs["label"].to_numpy().astype(bool)
    folds = pairs["fold"].to_numpy()
    agreement = np.einsum("ij,ij->i", embeddings["fp32"], embeddings["bf16"])
    print(f"machine: {machine()}")
    print(f"images: {len(paths)} real faces, {manifest['identity'].nunique()} identities; {len(pairs)} pairs "
          f"({int(labels.sum())} same person), pair types: {', '.join(sorted(pairs['pair_type'].unique()))}")
    print(f"fp32 vs bf16 embedding cosine: min {agreement.min():.5f}, mean {agreement.mean():.5f}")
    results = {}
    for precision, vectors in embeddings.items():
        scores = np.einsum("ij,ij->i", vectors[a], vectors[b])
        results[precision] = (scores, kfold_accuracy(scores, labels, folds), roc_auc(scores, labels))
        _, kfold, auc = results[precision]
        print(f"{precision}: 10-fold accuracy {kfold['mean']:.4f} (std {kfold['std']:.4f}), ROC AUC {auc:.4f}")
    fp32_scores, fp32_kfold, _ = results["fp32"]
    bf16_scores, bf16_kfold, _ = results["bf16"]
    # Decisions at the fp32 thresholds of each fold, applied to both precisions' scores.
    flips = 0
    same_threshold_accuracy = []
    for fold, threshold in zip(fp32_kfold["fold_ids"], fp32_kfold["thresholds"]):
        held_out = folds == fold
        flips += int(np.sum((fp32_scores[held_out] >= threshold) != (bf16_scores[held_out] >= threshold)))
        same_threshold_accuracy.append(float(np.mean((bf16_scores[held_out] >= threshold) == labels[held_out])))
    print(f"accuracy change bf16 - fp32, each choosing its own thresholds: {bf16_kfold['mean'] - fp32_kfold['mean']:+.4f}")
    print(f"bf16 scores at the fp32 thresholds: 10-fold accuracy {np.mean(same_threshold_accuracy):.4f} "
          f"({np.mean(same_threshold_accuracy) - fp32_kfold['mean']:+.4f}); decisions flipped: {flips} of {len(pairs)} "
          f"({flips / len(pairs):.2%})")
    print(f"max |score difference|: {np.abs(fp32_scores - bf16_scores).max():.5f}")


if __name__ == "__main__":
    main()
