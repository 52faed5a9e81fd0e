"""Crop modes side by side on real masked faces: pretrained FaceNet (CASIA-WebFace) on rmfrd-dev.

For every crop mode (with and without alignment) and with the occlusion filter off and on,
masked-to-unmasked verification of the *test* identities of ``rmfrd-dev`` with FaceNet's
own 512-d embedding, no fine-tuning: cosine similarity, the accuracy-maximising threshold
chosen on the val pairs and applied to the test pairs, and the test ROC AUC.

Everything goes through the pipeline's functions: ``build_manifest`` -> landmarks
(``maskface.face.geometry``, MTCNN once for all images) -> optional ``face_filter`` ->
``split_dataset`` (identity-disjoint 0.7/0.1/0.2, masked-unmasked pairs, seed 0) ->
``crop_details`` (the crop stage's transform) -> ``embed_array`` -> ``maskface.evaluation.metrics``.
With the filter on, as in the pipeline, dropped images are removed *before* the split, so
the test pairs differ slightly; their counts are in the table.

Also reported: MTCNN detection rates with and without the detection border, and how often
a mask is found. About 10 minutes on 2 CPU cores (detection dominates; the landmark
tables are cached in ``--work``). Writes ``results.json`` and ``results.md`` to ``--work``.

Usage:
    python benchmarks/crop_modes_rmfrd.py --datasets ../shared/datasets --work /tmp/maskface-crop-modes
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

from maskface.models.backbones import create_model
from maskface.config import CropConfig
from maskface.face.crop import crop_details
from maskface.data.datasets import DataConfig, build_manifest
from maskface.inference.embed import embed_array
from maskface.face.geometry import FaceDetector, detect_table, detection_rates, face_filter, read_landmark_table, table_landmarks
from maskface.imageio import load_rgb
from maskface.evaluation.metrics import choose_threshold, confusion_at_threshold, roc_auc
from maskface.data.split import split_dataset
from maskface.tables import write_csv
from maskface.models.weights import resolve_weights

logger = logging.getLogger("crop_modes_rmfrd")

INPUT_SIZE = 160
# (label, crop settings): the modes of crop.mode, each without and with alignment.
VARIANTS = (
    ("none", {"mode": "none"}),
    ("none + align", {"mode": "none", "align": True}),
    ("ratio 0.5 (the study)", {"mode": "ratio", "keep_ratio": 0.5}),
    ("ratio 0.5 + align", {"mode": "ratio", "keep_ratio": 0.5, "align": True}),
    ("eyes", {"mode": "eyes"}),
    ("eyes + align", {"mode": "eyes", "align": True}),
    ("mask", {"mode": "mask"}),
    ("mask + align", {"mode": "mask", "align": True}),
)
# Detection settings compared for the detection-rate table: name -> (border, thresholds).
DETECTORS = {
    "MTCNN defaults, no border": (0.0, (0.6, 0.7, 0.7)),
    "low thresholds, no border": (0.0, (0.2, 0.3, 0.3)),
    "low thresholds + 0.3 border (default)": (0.3, (0.2, 0.3, 0.3)),
}
DEFAULT_DETECTOR = "low thresholds + 0.3 border (default)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.environ.get("MASKFACE_DATASETS", str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--datasets", type=Path, default=Path(default_root), help="folder holding rmfrd-dev/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-crop-modes"), help="scratch folder (landmark cache, results)")
    parser.add_argument("--min-confidence", type=float, default=CropConfig().min_confidence, help="crop.min_confidence for the filter")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def landmark_tables(paths: list[str], work: Path, device: str) -> dict[str, pd.DataFrame]:
    """One landmark table per detector setting, cached as CSV in ``work``."""
    tables = {}
    for index, (name, (pad, thresholds)) in enumerate(DETECTORS.items()):
        cache = work / f"landmarks_{index}.csv"
        if cache.is_file():
            table = read_landmark_table(cache)
            if list(table["path"]) == paths:
                tables[name] = table
                continue
        start = time.time()
        table = detect_table(paths, FaceDetector(device=device, pad=pad, thresholds=thresholds), desc=name)
        write_csv(table, cache)
        logger.info("%s: %.0f s", name, time.time() - start)
        tables[name] = read_landmark_table(cache)
    return tables


def evaluate_variant(
    model, settings: dict, images: pd.DataFrame, points: dict, pairs: dict[str, pd.DataFrame], device, cache: dict
) -> dict:
    """Crop + embed the val/test images; cosine threshold from val, accuracy and AUC on test.

    ``cache`` maps path -> (embedding, mask found) for this variant: an image's crop does not
    depend on the filter, so the filtered run embeds only images the unfiltered one did not.
    """
    paths = images["path"].tolist()
    masked = images["masked"].to_numpy()
    todo = [row for row, path in enumerate(paths) if path not in cache]
    faces = np.empty((len(todo), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    flags = []
    for slot, row in enumerate(todo):
        face = crop_details(load_rgb(paths[row]), points.get(paths[row]), settings, INPUT_SIZE, bool(masked[row]))
        faces[slot] = face.image.transpose(2, 0, 1)
        flags.append(bool(face.mask_found))
    if todo:
        new = embed_array(model, faces, batch_size=32, device=device, progress=False)
        cache.update({paths[row]: (new[slot], flags[slot]) for slot, row in enumerate(todo)})
    embeddings = np.stack([cache[path][0] for path in paths])
    found = np.array([cache[path][1] for path in paths], dtype=bool)
    position = {path: row for row, path in enumerate(paths)}

    def scores(table: pd.DataFrame) -> np.ndarray:
        a = embeddings[table["path_a"].map(position).to_numpy()]
        b = embeddings[table["path_b"].map(position).to_numpy()]
        return (a * b).sum(axis=1)

    val, test = pairs["val"], pairs["test"]
    threshold = choose_threshold(scores(val), val["label"].to_numpy())
    test_scores = scores(test)
    confusion = confusion_at_threshold(test_scores, test["label"].to_numpy(), threshold)
    result = {
        "accuracy": round(float(confusion["accuracy"]), 4),
        "auc": round(float(roc_auc(test_scores, test["label"].to_numpy())), 4),
        "threshold": round(float(threshold), 4),
        "test_pairs": int(len(test)),
    }
    if settings["mode"] == "mask":
        # Share of the val/test images where a mask was found, by their true label.
        result["mask_found"] = {
            "masked": round(float(found[masked].mean()), 4),
            "unmasked": round(float(found[~masked].mean()), 4),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.datasets / "rmfrd-dev"
    if not root.is_dir():
        print(f"crop_modes_rmfrd: error: {root} does not exist (set --datasets or MASKFACE_DATASETS)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))

    manifest = build_manifest(DataConfig(source="rmfrd", root=str(root))).manifest
    paths = manifest["path"].tolist()
    tables = landmark_tables(paths, args.work, str(device))
    rates = {name: detection_rates(table, manifest["masked"]) for name, table in tables.items()}
    table = tables[DEFAULT_DETECTOR]
    points = table_landmarks(table)
    dropped = face_filter(table, args.min_confidence)

    resolve_weights("facenet:casia-webface", download=False)
    model = create_model("facenet", weights="casia-webface", embedding_size=512, input_size=INPUT_SIZE)
    model.init_head_identity()
    model.to(device).eval()

    results: dict = {"detection": rates, "filter": {}, "variants": {}}
    caches: dict[str, dict] = {label: {} for label, _ in VARIANTS}
    for filtered in (False, True):
        kept = manifest[~manifest["path"].isin(set(dropped["path"]))] if filtered else manifest
        split_manifest, pairs = split_dataset(kept.reset_index(drop=True), (0.7, 0.1, 0.2), args.split_seed, "identity", ["masked-unmasked"], 20)
        used = sorted(set(pd.concat([p[c] for p in pairs.values() for c in ("path_a", "path_b")])))
        images = split_manifest[split_manifest["path"].isin(used)].reset_index(drop=True)
        key = "filter" if filtered else "no filter"
        results["filter"][key] = {
            "images": int(len(kept)),
            "dropped": {reason: int((dropped["reason"] == reason).sum()) for reason in ("no_face", "low_confidence")} if filtered else {},
            "dropped_masked": int(manifest.loc[manifest["path"].isin(set(dropped["path"])), "masked"].sum()) if filtered else 0,
        }
        for label, settings in VARIANTS:
            crop = {**settings}
            start = time.time()
            result = evaluate_variant(model, crop, images, points, pairs, device, caches[label])
            results["variants"].setdefault(label, {})[key] = result
            logger.info("%s / %s: %s (%.0f s)", label, key, result, time.time() - start)
    results["seconds"] = round(time.time() - started)
    results["settings"] = {
        "min_confidence": args.min_confidence,
        "split_seed": args.split_seed,
        "device": str(device),
        "weights": "facenet:casia-webface (no fine-tuning, 512-d)",
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (args.work / "results.md").write_text(markdown)
    print(markdown)
    return 0


def render(results: dict) -> str:
    lines = ["| crop mode | accuracy | AUC | test pairs | accuracy, filter on | AUC, filter on | test pairs, filter on |", "|---|---|---|---|---|---|---|"]
    for label, by_filter in results["variants"].items():
        off, on = by_filter["no filter"], by_filter["filter"]
        lines.append(
            f"| {label} | {off['accuracy']:.3f} | {off['auc']:.3f} | {off['test_pairs']} | "
            f"{on['accuracy']:.3f} | {on['auc']:.3f} | {on['test_pairs']} |"
        )
    lines += ["", "| detector | all | masked | unmasked |", "|---|---|---|---|"]
    for name, rate in results["detection"].items():
        lines.append(
            f"| {name} | {rate['rate']:.3f} ({rate['detected']}/{rate['images']}) | "
            f"{rate['masked']['rate']:.3f} ({rate['masked']['detected']}/{rate['masked']['images']}) | "
            f"{rate['unmasked']['rate']:.3f} ({rate['unmasked']['detected']}/{rate['unmasked']['images']}) |"
        )
    flt = results["filter"]["filter"]
    lines += [
        "",
        f"Filter (min_confidence {results['settings']['min_confidence']}): {flt['dropped'].get('no_face', 0)} no_face + "
        f"{flt['dropped'].get('low_confidence', 0)} low_confidence of {results['filter']['no filter']['images']} images dropped "
        f"({flt['dropped_masked']} of them masked).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
