"""Recipe variants measured across collections: do they beat the default recipe where it was not trained?

For one backbone, the untouched pretrained network and the model folder of a real-data run
(``dvc repro`` on rmfrd-dev), on the collections of ``generalization.py`` (rmfrd-test,
lfw-masktheface, orl-sim: same pairs, same 10 person-disjoint folds), each variant against
the default recipe (aligned, nose-greyed, flip, cosine):

- ``nose_line=X``: the grey starts X eye distances below the aligned nose tip (default 0);
- ``border=B``: the aligned frame beyond the photo filled the other way (edge or grey) than
  the run's ``crop.border``;
- ``tta+shift`` / ``tta+scale``: the flip embedding averaged with those of the aligned face
  shifted by 3 px in four directions / scaled by 0.93 and 1.07;
- ``snorm``: symmetric score normalisation, each score standardised by the mean and
  standard deviation of both faces' scores against a cohort (the run's training identities),
  threshold chosen on the run's validation pairs (best accuracy), so its own-threshold
  accuracy says whether it transfers;
- ``mask-direction``: the embeddings with the direction from the training identities' mean
  unmasked to their mean masked embedding projected out, then cosine;
- ``cosine``: the default, with the same best-accuracy threshold on the same val pairs.

Nothing here is tuned on the collections it reports: cohorts, directions and thresholds come
from the run's own training and validation identities.

    # a real-data run: data.source rmfrd, data.root rmfrd-dev, MASKFACE_WEIGHTS_DIR set
    python benchmarks/recipe_variants.py --run /tmp/run --backbone edgeface
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalization as gen  # noqa: E402
from _common import datasets_root, machine  # noqa: E402

from maskface.inference.embed import embed_array, load_model  # noqa: E402
from maskface.tables import read_csv, write_csv  # noqa: E402
from maskface.training.train import mask_direction  # noqa: E402

logger = logging.getLogger("recipe_variants")

SHIFTS = [(3, 0, 1.0), (-3, 0, 1.0), (0, 3, 1.0), (0, -3, 1.0)]
SCALES = [(0, 0, 0.93), (0, 0, 1.07)]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def warp(images: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """(N, 3, S, S) uint8 shifted by (dx, dy) pixels and scaled about the centre, border pixels repeated."""
    pixels = torch.from_numpy(np.array(images)).float()  # a copy: crops may be a read-only memory map
    size = pixels.shape[-1]
    theta = torch.tensor([[1 / scale, 0, -2 * dx / size], [0, 1 / scale, -2 * dy / size]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(len(pixels), 2, 3), list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels, grid, padding_mode="border", align_corners=False)
    return moved.round().clamp(0, 255).to(torch.uint8).numpy()


def symmetric_norm(a: np.ndarray, b: np.ndarray, cohort: np.ndarray) -> np.ndarray:
    """S-norm of the cosines of unit rows a[i], b[i]: the mean of the score standardised by
    a[i]'s and by b[i]'s scores against every cohort row."""
    raw = np.sum(a * b, axis=1)
    against_a, against_b = a @ cohort.T, b @ cohort.T
    return 0.5 * ((raw - against_a.mean(1)) / against_a.std(1) + (raw - against_b.mean(1)) / against_b.std(1))


def without_direction(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    direction = direction / np.linalg.norm(direction)
    return unit(vectors - np.outer(vectors @ direction, direction))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.unique(scores)
    accuracy = [(np.mean((scores >= t) == labels), t) for t in candidates]
    return float(max(accuracy)[1])


def row(variant: str, model: str, collection: gen.Collection, scores: np.ndarray, threshold: float | None) -> dict:
    return {"variant": variant, "model": model, "collection": collection.name, **gen.evaluate_scores(collection, scores, threshold, 0)}


class RunData:
    """The run's crops of rmfrd-dev (training cohort, mask direction) and its val pairs."""

    def __init__(self, run: Path, backbone: str):
        crops = run / "data" / "crops" / backbone
        self.index = read_csv(crops / "index.csv")
        self.images = np.load(crops / "images.npy", mmap_mode="r")
        self.val = read_csv(run / "data" / "pairs" / "val.csv")
        self.preprocess = json.loads((run / "models" / backbone / "backbone" / "preprocess.json").read_text())
        self.model_dir = run / "models" / backbone / "backbone"

    def embed(self, model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(training cohort, mask direction, val a, val b) for this model."""
        vectors = embed_array(model, np.asarray(self.images), batch_size=64, progress=False, flip=True)
        train = (self.index["split"] == "train").to_numpy()
        masked = self.index["masked"].astype(bool).to_numpy()
        direction = mask_direction(vectors[train], masked[train])
        position = {path: k for k, path in enumerate(self.index["path"])}
        val_a = vectors[[position[p] for p in self.val["path_a"]]]
        val_b = vectors[[position[p] for p in self.val["path_b"]]]
        return vectors[train], direction, val_a, val_b


def measure(run: RunData, collections: list[gen.Collection], models: dict, nose_lines: list[float], work: Path) -> list[dict]:
    crop, size = run.preprocess["crop"], int(run.preprocess["input_size"])
    val_labels = run.val["label"].astype(bool).to_numpy()
    rows = []
    for name, model in models.items():
        cohort, direction, val_a, val_b = run.embed(model)
        thresholds = {
            "cosine": best_threshold(np.sum(val_a * val_b, axis=1), val_labels),
            "snorm": best_threshold(symmetric_norm(val_a, val_b, cohort), val_labels),
            "mask-direction": best_threshold(
                np.sum(without_direction(val_a, direction) * without_direction(val_b, direction), axis=1), val_labels),
        }
        for collection in collections:
            images = np.asarray(gen.crops_for(collection, crop, size, work))
            base = embed_array(model, images, batch_size=64, progress=False, flip=True)
            pairs = collection.pairs
            rows.append(row("cosine (default)", name, collection, gen.pair_scores(pairs, base), thresholds["cosine"]))
            a, b = base[pairs["a"].to_numpy()], base[pairs["b"].to_numpy()]
            rows.append(row("snorm", name, collection, symmetric_norm(a, b, cohort), thresholds["snorm"]))
            projected = without_direction(base, direction)
            rows.append(row("mask-direction", name, collection, gen.pair_scores(pairs, projected), thresholds["mask-direction"]))
            for variant, moves in (("tta+shift", SHIFTS), ("tta+scale", SCALES)):
                total = base.copy()
                for move in moves:
                    total += embed_array(model, warp(images, *move), batch_size=64, progress=False, flip=True)
                rows.append(row(variant, name, collection, gen.pair_scores(pairs, unit(total)), None))
            for border in [b for b in ("edge", "grey") if b != crop.get("border", "edge")]:
                moved = np.asarray(gen.crops_for(collection, dict(crop, border=border), size, work))
                vectors = embed_array(model, moved, batch_size=64, progress=False, flip=True)
                rows.append(row(f"border={border}", name, collection, gen.pair_scores(pairs, vectors), None))
            for nose_line in nose_lines:
                moved = np.asarray(gen.crops_for(collection, dict(crop, nose_line=nose_line), size, work))
                vectors = embed_array(model, moved, batch_size=64, progress=False, flip=True)
                rows.append(row(f"nose_line={nose_line:+.1f}", name, collection, gen.pair_scores(pairs, vectors), None))
            logger.info("%s on %s: done", name, collection.name)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a real-data project run on rmfrd-dev (its data/ and models/)")
    parser.add_argument("--backbone", default="edgeface")
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-generalization"))
    parser.add_argument("--collections", nargs="*", default=["rmfrd-test", "lfw-masktheface", "orl-sim"])
    parser.add_argument("--nose-lines", nargs="*", type=float, default=[-0.4, -0.2, 0.2, 0.4])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    datasets = args.datasets or datasets_root()
    roots = {"rmfrd-test": datasets / "rmfrd-dev", "lfw-masktheface": datasets / "lfw-masktheface", "orl-sim": datasets / "orl"}
    collections = [gen.load_collection(name, roots[name], args.work) for name in args.collections]
    run = RunData(args.run, args.backbone)
    models = {"untouched": gen.pretrained_models([args.backbone])[args.backbone], "trained": load_model(run.model_dir)}
    table = pd.DataFrame(measure(run, collections, models, args.nose_lines, args.work))
    write_csv(table, args.work / "recipe_variants.csv")
    wide = table.pivot_table(index=["model", "variant"], columns="collection", values="kfold_accuracy", sort=False)
    print(wide.round(3).to_string())
    print(f"{machine()}; {time.perf_counter() - started:.0f} s; every row: {args.work / 'recipe_variants.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
