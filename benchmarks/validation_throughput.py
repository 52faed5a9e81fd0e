"""Figure 5: validation and detection throughput of the split stage on real images.

Validation: every file is opened and fully decoded once (maskface.data.datasets.build_manifest),
with 1 and 2 worker processes on the same folder.

Detection: the face-geometry step of the split stage (maskface.face.geometry.detect_table,
facenet-pytorch MTCNN on CPU with torch's intra-op threads on both cores) over real faces,
one image per MTCNN call against the default batch of 16 (same-size images share a batch).
CPU utilisation is the process's CPU time over wall time and cores: near 100 % means both
cores are busy.

    .venv/bin/python benchmarks/validation_throughput.py
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import datasets_root, machine, real_face_paths

from maskface.data.datasets import DataConfig, build_manifest
from maskface.face.geometry import FaceDetector, detect_table


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, wall, cpu / wall / (os.cpu_count() or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="lfw")
    parser.add_argument("--folder", default="lfw-gray-20")
    parser.add_argument("--detect-images", type=int, default=400, help="real faces for the detection figure (rmfrd-dev first)")
    args = parser.parse_args()
    root = datasets_root() / args.folder
    print(f"machine: {machine()}")
    for workers in (1, 2):
        config = DataConfig(source=args.source, root=str(root), workers=workers)
        result, wall, _ = timed(lambda config=config: build_manifest(config))
        files = len(result.manifest) + len(result.rejected)
        # Parent CPU time misses the worker processes, so no utilisation figure here.
        print(f"validation {args.folder}: {files} files, workers={workers}: {files / wall:7.1f} files/s ({wall:.1f} s)")
    paths = [str(p) for p in real_face_paths(args.detect_images)]
    rmfrd = sum("rmfrd-dev" in p for p in paths)
    print(f"detection: {len(paths)} real faces ({rmfrd} rmfrd-dev 160 px, {len(paths) - rmfrd} lfw-gray-20 250 px), "
          f"MTCNN on CPU, {torch.get_num_threads()} torch threads")
    for batch_size in (1, 16):
        detector = FaceDetector(device="cpu", batch_size=batch_size)
        detect_table(paths[:8], detector, desc="warm-up")
        table, wall, utilisation = timed(lambda detector=detector: detect_table(paths, detector))
        found = int(table["detected"].sum())
        print(f"detection batch {batch_size:2d}: {len(paths) / wall:6.1f} img/s ({wall:.1f} s), CPU {utilisation:.0%} of "
              f"{os.cpu_count()} cores, faces found in {found} of {len(paths)}")


if __name__ == "__main__":
    main()
