"""Figure 1: embedding throughput of the project's path against a naive loop.

The same real images, facenet (InceptionResnetV1, casia-webface weights) at 160 px:
- naive: for each file, open with PIL, resize, to tensor, one fp32 forward pass;
- project: the crop stage's decode into a uint8 memory map, then batched embedding with
  the embed stage's defaults (precision auto, channels-last) on the model as the embed stage
  loads it (batch norms folded), whole path against whole loop.
Both timed in this process from the files to the embeddings (interpreter start-up and model
load excluded on both sides). And the same images through the ``maskface embed`` command
as a user runs it (a subprocess, so interpreter start-up, imports and model load included)
against the same naive loop, in the same alternating rounds; then the command on one image
(its fixed cost: start-up, imports, model load, writing).
Also: FLOPs per image (torch.utils.flop_counter), sustained matmul GFLOP/s in fp32 and bf16
measured in the same run, and the achieved share at each batch size.

    .venv/bin/python benchmarks/embed_throughput.py --images 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
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
from maskface.device import inference_dtype
from maskface.inference.embed import embed_array, save_model


def matmul_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def flops_per_image(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(pixels)
    return counter.get_total_flops()


def naive_loop(model, paths: list[Path], size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path).convert("RGB").resize((size, size))
            pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()
            model(pixels)
    return time.perf_counter() - start


def project_path(model, paths: list[Path], size: int, batch_size: int) -> float:
    manifest = pd.DataFrame({"path": [str(p) for p in paths], "identity": "x", "masked": False, "split": "test"})
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        crop_dataset(manifest, CropConfig(), size, Path(folder))
        images, _ = open_crops(Path(folder))
        embed_array(model, images, batch_size=batch_size, progress=False, precision="auto", channels_last=True)
        return time.perf_counter() - start


def model_folder(model, size: int, root: Path) -> Path:
    """This model as a model folder (no crop: the faces are pre-cropped, as the naive loop reads them)."""
    save_model(model, root / "backbone", {"weights": "casia-webface"})
    (root / "backbone" / "preprocess.json").write_text(json.dumps({"input_size": size, "crop": {"mode": "none", "keep_ratio": 1.0}}))
    (root / "classifier").mkdir()
    (root / "classifier" / "classifier.json").write_text(json.dumps({"classifier": "cosine", "settings": {}, "threshold": 0.5}))
    return root


def cli_command(folder: Path, paths: list[Path]) -> float:
    """``maskface embed`` over the files, as a user runs it: a fresh interpreter, timed from its start to its exit."""
    command = [sys.executable, "-m", "maskface.cli", "embed", "--model", str(folder), "--device", "cpu",
               "--no-progress", "--overwrite", "--out", str(folder.parent / "embeddings.npy"), *map(str, paths)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"maskface embed failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def model_only(model, size: int, batch_size: int, precision: str, batches: int = 4) -> float:
    images = np.random.default_rng(0).integers(0, 256, (batch_size * batches, 3, size, size), dtype=np.uint8)
    embed_array(model, images[:batch_size], batch_size=batch_size, progress=False, precision=precision, channels_last=True)
    start = time.perf_counter()
    embed_array(model, images, batch_size=batch_size, progress=False, precision=precision, channels_last=True)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating naive/project rounds")
    args = parser.parse_args()
    paths = real_face_paths(args.images)
    model = create_model("facenet", weights="casia-webface", embedding_size=512).eval()
    size = 160
    # The loop and the in-process path run on torch's defaults, as a user's script does; the
    # command sets its own OpenMP wait policy (maskface.cli.main).
    print(f"machine: {machine()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print(f"images: {len(paths)} real faces (rmfrd-dev, lfw-gray-20), facenet {size} px")
    # What maskface.inference.embed.load_model hands the embed stage, the API and the CLI.
    deployed = copy.deepcopy(model).fold_batch_norm()
    # Alternating rounds, so that a slow spell of the machine hits every side alike.
    ratios, command_ratios = [], []
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(model, size, Path(scratch) / "model")
        print(f"command      : {sys.executable} -m maskface.cli embed --model MODEL --device cpu --no-progress --overwrite --out OUT.npy FILE...")
        for round_ in range(1, args.rounds + 1):
            naive = naive_loop(model, paths, size)
            project = project_path(deployed, paths, size, args.batch_size)
            command = cli_command(folder, paths)
            ratios.append(naive / project)
            command_ratios.append(naive / command)
            print(f"round {round_}: naive loop {len(paths) / naive:6.1f} img/s ({naive:.1f} s), "
                  f"project path {len(paths) / project:6.1f} img/s ({project:.1f} s): {naive / project:.2f}x, "
                  f"`maskface embed` {len(paths) / command:6.1f} img/s ({command:.1f} s): {naive / command:.2f}x")
        fixed = min(cli_command(folder, paths[:1]) for _ in range(2))
    print(f"speed-up     : project path {float(np.median(ratios)):.2f}x, `maskface embed` command (start-up, imports, "
          f"model load included) {float(np.median(command_ratios)):.2f}x, medians of {len(ratios)} rounds (target >= 4x)")
    print(f"load average {os.getloadavg()[0]:.1f} after the rounds")
    print(f"`maskface embed` on 1 image (its fixed cost: start-up, imports, model load, writing): {fixed:.2f} s, best of 2")
    flops = flops_per_image(deployed, size)
    fp32_peak, bf16_peak = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"FLOPs/image  : {flops / 1e9:.2f} GFLOP")
    print(f"matmul peak  : fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s")
    auto = inference_dtype(torch.device("cpu"), "auto")
    print(f"auto precision on this machine: {auto or torch.float32}")
    for precision, peak in (("fp32", fp32_peak), ("bf16", bf16_peak)):
        for batch_size in (1, 16, 64):
            rate = model_only(deployed, size, batch_size, precision)
            share = rate * flops / 1e9 / peak
            print(f"model only {precision} batch {batch_size:3d}: {rate:7.1f} img/s, {rate * flops / 1e9:6.0f} GFLOP/s = {share:5.1%} of {precision} matmul")


if __name__ == "__main__":
    main()
