"""Figure 6: embedding and training images/s per backbone, mixed precision + channels-last vs fp32.

For every registered backbone at its own input size (random uint8 pixels: speed does not
depend on the weights), on the chosen device:
- embedding: maskface.inference.embed.embed_array with ``precision="fp32"``, NCHW, against the embed
  stage's defaults (``precision="auto"``: bf16 where native, else fp16 on CUDA; channels-last);
- training: one full ArcFace step (forward, loss, backward, AdamW) in fp32 NCHW against the
  finetune stage's CUDA path (autocast in ``maskface.training.train.training_precision``'s dtype, a
  gradient scaler only for fp16, channels-last).
The GPU is named in the output. On a CPU the script runs the same code (small sizes make a
smoke run: ``--device cpu --batch-size 8 --steps 2``), which is how tests keep it working.

    .venv/bin/python benchmarks/gpu_throughput.py --device cuda

Expected on one H100/H200 (not yet measured; from the FLOP counts, assuming 10-20 % of the
~1,000 dense bf16 TFLOP/s that small convolutional networks reach at batch 256): embedding
FaceNet (2.8 GFLOP/image at 160 px) 10,000-30,000 images/s in bf16, about 3-5x its fp32;
EdgeFace-XS and MobileFaceNet (0.15-0.25 GFLOP at 112 px) are bound by kernel launches, not
arithmetic, at 20,000-50,000 images/s; a training step costs about three forward passes, so
training runs at a quarter to a third of the embedding rate. A figure far below these points
to the input pipeline (``finetune.loader_workers``) or a missing autocast, not the GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import machine

from maskface.models.backbones import available_backbones, create_model, get_spec
from maskface.device import autocast, inference_dtype, resolve_device
from maskface.inference.embed import embed_array
from maskface.training.losses import ArcFaceLoss
from maskface.training.train import training_precision

IDENTITIES = 64


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_rate(model, images: np.ndarray, device: torch.device, precision: str, channels_last: bool, batch_size: int) -> float:
    embed_array(model, images[:batch_size], batch_size=batch_size, device=device, progress=False, precision=precision, channels_last=channels_last)
    synchronize(device)
    start = time.perf_counter()
    embed_array(model, images, batch_size=batch_size, device=device, progress=False, precision=precision, channels_last=channels_last)
    synchronize(device)
    return len(images) / (time.perf_counter() - start)


def training_rate(name: str, size: int, device: torch.device, mixed: bool, batch_size: int, steps: int) -> float:
    model = create_model(name, input_size=size).to(device).train()
    loss_fn = ArcFaceLoss(model.embedding_size, IDENTITIES).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)
    dtype, use_scaler = training_precision(device, amp=mixed)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    if mixed:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, IDENTITIES, (batch_size,), generator=generator).to(device)
    if mixed:
        pixels = pixels.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(device, dtype):
            loss = loss_fn(model(pixels), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up: kernel selection and allocator growth
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--backbones", nargs="+", default=None, help=f"default: all ({', '.join(available_backbones())})")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embed-images", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = resolve_device(args.device)
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    print(f"device: {name_of_device}; torch {torch.__version__}")
    print(f"mixed precision here: embed {inference_dtype(device, 'auto') or torch.float32}, "
          f"train {training_precision(device, amp=True)[0] or torch.float32}")
    rng = np.random.default_rng(0)
    for name in args.backbones or available_backbones():
        size = get_spec(name).input_size
        images = rng.integers(0, 256, (max(args.embed_images, args.batch_size), 3, size, size), dtype=np.uint8)
        model = create_model(name, input_size=size).to(device).eval()
        fp32 = embedding_rate(model, images, device, "fp32", False, args.batch_size)
        mixed = embedding_rate(model, images, device, "auto", True, args.batch_size)
        del model
        train_fp32 = training_rate(name, size, device, False, args.batch_size, args.steps)
        train_mixed = training_rate(name, size, device, True, args.batch_size, args.steps)
        print(f"{name:8s} {size:3d} px  embed: fp32 {fp32:8.1f} img/s, mixed+channels-last {mixed:8.1f} img/s ({mixed / fp32:4.2f}x)"
              f"  train: fp32 {train_fp32:7.1f} img/s, mixed+channels-last {train_mixed:7.1f} img/s ({train_mixed / train_fp32:4.2f}x)")
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
