"""Figure 5: validation throughput of the split stage's scan on real images.

Every file is opened and fully decoded once (maskface.datasets.build_manifest); measured
with 1 and 2 worker processes on the same folder.

    .venv/bin/python benchmarks/validation_throughput.py
"""

from __future__ import annotations

import argparse
import time

from _common import datasets_root, machine

from maskface.datasets import DataConfig, build_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="lfw")
    parser.add_argument("--folder", default="lfw-gray-20")
    args = parser.parse_args()
    root = datasets_root() / args.folder
    print(f"machine: {machine()}")
    for workers in (1, 2):
        start = time.perf_counter()
        result = build_manifest(DataConfig(source=args.source, root=str(root), workers=workers))
        elapsed = time.perf_counter() - start
        files = len(result.manifest) + len(result.rejected)
        print(f"{args.folder}: {files} files, workers={workers}: {files / elapsed:7.1f} files/s ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
