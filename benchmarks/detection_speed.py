"""Figure 8: landmark detection speed of the split stage, before and after, on real faces.

The split stage's MTCNN (``maskface.face.geometry.detect_table``) on all of ``rmfrd-dev`` (883
pre-cropped 160 px faces, or ``--images N`` of them, every k-th) and on a mixed-size set
(``--mixed N`` images of ``lfw-masktheface``: 250 px photos and 128 px masked crops), side
by side in one run:

* **before**: the path before this change (commit 22f4346), reproduced here: images in
  path order, ``batch_size`` at a time (only equal sizes share an MTCNN call, so mixed sizes
  make small batches), the full scale pyramid (``min_face_share: 0``), one process with
  torch's threads on every core;
* ``crop.detect_min_face_share: 0.25`` alone (fewer pyramid levels), one process, and 0.36
  (one level fewer again on 160 px faces; not the default);
* ``crop.detect_workers: 0`` alone (one process per core, one thread each), full pyramid;
* **after**: the defaults (both, and batches grouped by image size);
* on the mixed set, each image alone through the full pyramid, as inference detects a photo.

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
from maskface.face.geometry import FaceDetector, _numbers, _table, detect_table, process_count
from maskface.imageio import load_rgb
from maskface.data.synthetic import LANDMARK_COLUMNS

DEFAULTS = CropConfig()


def before(paths: list[str], detector: FaceDetector) -> pd.DataFrame:
    """detect_table as it was: path-order chunks of batch_size, in this process."""
    detected, numbers = [], []
    for start in range(0, len(paths), detector.batch_size):
        found = detector.detect([load_rgb(p) for p in paths[start : start + detector.batch_size]])
        detected += [d.detected for d in found]
        numbers.append(_numbers(found))
    return _table(paths, np.array(detected, dtype=bool), np.concatenate(numbers), "mtcnn")


def one_at_a_time(paths: list[str], detector: FaceDetector) -> pd.DataFrame:
    """Each image alone, as inference detects a new photo."""
    found = [detector.detect_one(load_rgb(p)) for p in paths]
    return _table(paths, np.array([d.detected for d in found], dtype=bool), _numbers(found), "mtcnn")


BEFORE, ALONE = "before", "alone"


def settings() -> dict:
    """name -> (min_face_share, workers, path: BEFORE, ALONE or None for detect_table)."""
    share = DEFAULTS.detect_min_face_share
    return {
        "before (path order, full pyramid, 1 process)": (0.0, 1, BEFORE),
        f"min_face_share {share} only": (share, 1, None),
        # 0.36 x 160 px reaches the next level: 160 px faces lose a third pyramid level.
        "min_face_share 0.36 only (not the default)": (0.36, 1, None),
        "processes only (workers 0, full pyramid)": (0.0, 0, None),
        f"after (defaults: share {share}, workers 0)": (share, 0, None),
        "one image at a time, full pyramid (what inference does)": (0.0, 1, ALONE),
    }


def measure(name: str, paths: list[str], share: float, workers: int, path: str | None) -> tuple[pd.DataFrame, float]:
    detector = FaceDetector(
        device="cpu", pad=DEFAULTS.detect_pad, thresholds=DEFAULTS.detect_thresholds,
        min_face_size=DEFAULTS.detect_min_face, batch_size=DEFAULTS.detect_batch_size, min_face_share=share,
    )
    start = time.perf_counter()
    if path == BEFORE:
        table = before(paths, detector)
    elif path == ALONE:
        table = one_at_a_time(paths, detector)
    else:
        table = detect_table(paths, detector, desc=name, workers=workers)
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


def run_set(label: str, paths: list[str], only: list[str]) -> None:
    masked = np.array([os.sep + "AFDB_masked_face_dataset" + os.sep in p or "crop_" in Path(p).name for p in paths])
    sizes = sorted({load_rgb(p).size for p in paths[:: max(1, len(paths) // 50)]})
    print(f"\n{label}: {len(paths)} images ({int(masked.sum())} masked), sizes e.g. {sizes[:4]}; "
          f"{process_count(0, len(paths), 'cpu')} process(es) for workers 0")
    print("| setting | images/s | s | rate | masked | unmasked | detected flag changed | landmarks vs before: median px | max px | > 0.5 px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    reference, reference_speed = None, None
    for name, (share, workers, path) in settings().items():
        if name not in only and path != BEFORE:
            continue
        table, seconds = measure(name, paths, share, workers, path)
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

    names = list(settings())
    run_set("rmfrd-dev", every_kth(args.datasets / "rmfrd-dev", args.images), [n for n in names if not n.startswith("one image")])
    if args.mixed:
        # Mixed sizes: what batching by size is for; 250 px photos also lose a third pyramid level.
        run_set("lfw-masktheface (mixed sizes)", every_kth(args.datasets / "lfw-masktheface", args.mixed),
                [n for n in names if n.startswith(("after", "one image"))])
    print(f"\ntorch threads in this process: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
