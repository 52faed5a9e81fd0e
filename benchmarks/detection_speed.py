"""Figure 8: landmark detection speed of the split stage, before and after, on real faces.

The split stage's MTCNN (``maskface.geometry.detect_table``) on all of ``rmfrd-dev`` (883
pre-cropped 160 px faces, or ``--images N`` of them, every k-th) and on a mixed-size set
(``--mixed N`` images of ``lfw-masktheface``: 250 px photos and 128 px masked crops), side
by side in one run:

* **before**: the path of 2026-11-30, reproduced here: images in path order, ``batch_size``
  at a time (only equal sizes share an MTCNN call, so mixed sizes make small batches), the
  full scale pyramid (``min_face_share: 0``), one process with torch's threads on every core;
* ``crop.detect_min_face_share: 0.25`` alone (fewer pyramid levels), one process;
* ``crop.detect_workers: 0`` alone (one process per core, one thread each), full pyramid;
* **after**: the defaults (both, and batches grouped by image size).

Per setting: images/s (decoding, batching and process start-up included), the detection rate
(overall, masked, unmasked) and agreement with *before*: images whose detected flag differs,
and over images both found a face in, the median and largest landmark distance (pixels, the
largest of the 5 points per image) and how many moved by more than 0.5 px. Wall times on a
shared machine vary; the settings run one after another in the same process.

    .venv/bin/python benchmarks/detection_speed.py --datasets ../shared/datasets
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import machine

from maskface.config import CropConfig
from maskface.geometry import FaceDetector, _numbers, _table, detect_table, process_count
from maskface.imageio import load_rgb
from maskface.synthetic import LANDMARK_COLUMNS

DEFAULTS = CropConfig()


def before(paths: list[str], detector: FaceDetector) -> pd.DataFrame:
    """detect_table as it was: path-order chunks of batch_size, in this process."""
    detected, numbers = [], []
    for start in range(0, len(paths), detector.batch_size):
        found = detector.detect([load_rgb(p) for p in paths[start : start + detector.batch_size]])
        detected += [d.detected for d in found]
        numbers.append(_numbers(found))
    return _table(paths, np.array(detected, dtype=bool), np.concatenate(numbers), "mtcnn")


def settings() -> dict:
    """name -> (min_face_share, workers, before's path?)."""
    return {
        "before (path order, full pyramid, 1 process)": (0.0, 1, True),
        f"min_face_share {DEFAULTS.detect_min_face_share} only": (DEFAULTS.detect_min_face_share, 1, False),
        "processes only (workers 0, full pyramid)": (0.0, 0, False),
        f"after (defaults: share {DEFAULTS.detect_min_face_share}, workers 0)": (DEFAULTS.detect_min_face_share, 0, False),
    }


def measure(name: str, paths: list[str], share: float, workers: int, old_path: bool) -> tuple[pd.DataFrame, float]:
    detector = FaceDetector(
        device="cpu", pad=DEFAULTS.detect_pad, thresholds=DEFAULTS.detect_thresholds,
        min_face_size=DEFAULTS.detect_min_face, batch_size=DEFAULTS.detect_batch_size, min_face_share=share,
    )
    start = time.perf_counter()
    table = before(paths, detector) if old_path else detect_table(paths, detector, desc=name, workers=workers)
    return table, time.perf_counter() - start


def agreement(table: pd.DataFrame, reference: pd.DataFrame, masked: np.ndarray) -> dict:
    found, was = table["detected"].to_numpy(bool), reference["detected"].to_numpy(bool)
    both = found & was
    points = table[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(-1, 5, 2)
    old = reference[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(-1, 5, 2)
    distance = np.linalg.norm(points[both] - old[both], axis=2).max(axis=1)
    return {
        "rate": found.mean(),
        "masked": found[masked].mean() if masked.any() else float("nan"),
        "unmasked": found[~masked].mean() if (~masked).any() else float("nan"),
        "flag_changed": int((found != was).sum()),
        "median_px": float(np.median(distance)) if len(distance) else float("nan"),
        "max_px": float(distance.max()) if len(distance) else float("nan"),
        "moved": int((distance > 0.5).sum()),
    }


def run_set(label: str, paths: list[str], only: tuple[str, ...] | None) -> None:
    masked = np.array([os.sep + "AFDB_masked_face_dataset" + os.sep in p or "crop_" in Path(p).name for p in paths])
    sizes = sorted({load_rgb(p).size for p in paths[:: max(1, len(paths) // 50)]})
    print(f"\n{label}: {len(paths)} images ({int(masked.sum())} masked), sizes e.g. {sizes[:4]}; "
          f"{process_count(0, len(paths), 'cpu')} process(es) for workers 0")
    print("| setting | images/s | s | rate | masked | unmasked | detected flag changed | landmarks vs before: median px | max px | > 0.5 px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    reference, reference_speed = None, None
    for name, (share, workers, old_path) in settings().items():
        if only is not None and not old_path and name not in only:
            continue
        table, seconds = measure(name, paths, share, workers, old_path)
        if reference is None:
            reference, reference_speed = table, len(paths) / seconds
        row = agreement(table, reference, masked)
        speed = len(paths) / seconds
        print(f"| {name} | {speed:.1f} ({speed / reference_speed:.2f}x) | {seconds:.1f} | {row['rate']:.4f} | {row['masked']:.4f} | "
              f"{row['unmasked']:.4f} | {row['flag_changed']} | {row['median_px']:.2f} | {row['max_px']:.2f} | {row['moved']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.environ.get("MASKFACE_DATASETS", str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--datasets", type=Path, default=Path(default_root), help="folder holding rmfrd-dev/ and lfw-masktheface/")
    parser.add_argument("--images", type=int, default=0, help="rmfrd-dev images, every k-th (0 = all 883)")
    parser.add_argument("--mixed", type=int, default=256, help="lfw-masktheface images of mixed sizes, every k-th (0 = none)")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    def every_kth(folder: Path, count: int) -> list[str]:
        found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not found:
            raise SystemExit(f"no images under {folder}; set --datasets")
        return found if count <= 0 or count >= len(found) else found[:: len(found) // count][:count]

    run_set("rmfrd-dev", every_kth(args.datasets / "rmfrd-dev", args.images), None)
    if args.mixed:
        # Mixed sizes: what batching by size is for; the one-change rows add nothing new here.
        after = [name for name in settings() if name.startswith("after")]
        run_set("lfw-masktheface (mixed sizes)", every_kth(args.datasets / "lfw-masktheface", args.mixed), tuple(after))
    print(f"\ntorch threads in this process: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
