"""Figure 2: training throughput reading the crop stage's arrays vs decoding files each epoch.

Same model, same batches, same optimiser step; only where the pixels come from differs:
- memmap: uint8 (N, 3, S, S) rows of data/crops/<b>/images.npy (what finetune does);
- decode: open, convert and resize each image file for every batch (what a naive
  Dataset over image paths does every epoch).
The share of step time spent loading shows whether loading is the bottleneck; CPU
utilisation (process CPU time over wall time and cores) shows whether both cores stay busy.

    .venv/bin/python benchmarks/train_loading.py --images 256 --backbone alexnet --size 112
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import machine, real_face_paths
from PIL import Image

from maskface.models.backbones import create_model
from maskface.config import CropConfig
from maskface.face.crop import crop_dataset, open_crops
from maskface.training.losses import ArcFaceLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbone", default="alexnet")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    paths = real_face_paths(args.images)
    labels = torch.arange(len(paths)) % 16
    model = create_model(args.backbone, input_size=args.size)
    loss_fn = ArcFaceLoss(128, 16)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)
    manifest = pd.DataFrame({"path": [str(p) for p in paths], "identity": "x", "masked": False, "split": "train"})

    def step(pixels: torch.Tensor, batch_labels: torch.Tensor) -> None:
        loss = loss_fn(model(pixels), batch_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def run(load) -> tuple[float, float, float]:
        model.train()
        loading = 0.0
        start, cpu = time.perf_counter(), time.process_time()
        for begin in range(0, len(paths), args.batch_size):
            tick = time.perf_counter()
            pixels = load(begin, min(begin + args.batch_size, len(paths)))
            loading += time.perf_counter() - tick
            step(pixels, labels[begin : begin + len(pixels)])
        wall = time.perf_counter() - start
        return wall, loading, (time.process_time() - cpu) / wall / (os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as folder:
        crop_dataset(manifest, CropConfig(), args.size, Path(folder))
        images, _ = open_crops(Path(folder))

        def from_memmap(begin, end):
            return torch.from_numpy(np.ascontiguousarray(images[begin:end]))

        def from_files(begin, end):
            batch = [
                np.asarray(Image.open(p).convert("RGB").resize((args.size, args.size))).transpose(2, 0, 1)
                for p in paths[begin:end]
            ]
            return torch.from_numpy(np.stack(batch))

        run(from_memmap)  # warm-up: first-touch allocations and oneDNN kernel selection
        memmap_time, memmap_loading, memmap_cpu = run(from_memmap)
        decode_time, decode_loading, decode_cpu = run(from_files)
    print(f"machine: {machine()}")
    print(f"{args.backbone} {args.size} px, {len(paths)} real images, batch {args.batch_size}, one epoch each")
    print(f"memmap : {len(paths) / memmap_time:6.1f} img/s, loading {memmap_loading / memmap_time:5.1%} of the epoch, CPU {memmap_cpu:.0%}")
    print(f"decode : {len(paths) / decode_time:6.1f} img/s, loading {decode_loading / decode_time:5.1%} of the epoch, CPU {decode_cpu:.0%}")
    print(f"ratio  : {decode_time / memmap_time:.2f}x faster from the crop stage's arrays")


if __name__ == "__main__":
    main()
