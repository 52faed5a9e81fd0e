"""Face embeddings from a trained model folder over the crop stage's arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from maskface.models.backbones import FaceEmbedder, create_model
from maskface.device import autocast, inference_dtype, resolve_device
from maskface.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
MODEL_CONFIG_FILE = "model.json"


@torch.inference_mode()
def embed_array(
    model: FaceEmbedder,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
    flip: bool = False,
    shift: float = 0.0,
) -> np.ndarray:
    """Embed uint8 images (N, 3, S, S) (a memory map is fine) -> float32 (N, E), unit rows.

    ``precision``: fp32, bf16 or auto (see :func:`maskface.device.inference_dtype`);
    ``channels_last`` lays activations out NHWC, which oneDNN and cuDNN convolve faster;
    ``flip``: each embedding is that of the image plus its mirror image (twice the compute);
    ``shift`` > 0: plus four copies moved by that share of the side (five times the compute,
    see :meth:`FaceEmbedder.forward`).
    """
    device = device or next(model.parameters()).device
    dtype = inference_dtype(device, precision)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    was_training = model.training
    model.eval()
    out = np.empty((len(rows), model.embedding_size), dtype=np.float32)
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="embed", unit="batch", disable=not progress):
        batch_rows = rows[start : start + batch_size]
        pixels = torch.from_numpy(np.ascontiguousarray(images[batch_rows])).to(device, non_blocking=True)
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            out[start : start + len(batch_rows)] = model(pixels, flip=flip, shift=shift).float().cpu().numpy()
    model.train(was_training)
    return out


def save_model(model: FaceEmbedder, out_dir: Path, extra: dict) -> None:
    """Weights plus everything needed to rebuild the model without params.yaml."""
    if model.batch_norm_folded:
        raise ValueError("cannot save a model whose batch norms are folded for inference: its weights no longer match the backbone's layers")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / MODEL_FILE)
    config = {
        "backbone": model.spec.name,
        "embedding_size": model.embedding_size,
        "input_size": model.input_size,
        **extra,
    }
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model(model_dir: Path, device: torch.device | str = "cpu", fold_batch_norm: bool = True) -> FaceEmbedder:
    """Rebuild a model saved by :func:`save_model` for inference (weights loaded with weights_only=True).

    ``fold_batch_norm``: fold the batch norms into the layers before them (same embeddings
    up to float rounding, faster); False keeps a model that can be trained further.
    """
    config_path = model_dir / MODEL_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {model_dir} is not a maskface model folder")
    config = json.loads(config_path.read_text())
    # Building, loading and folding are hundreds of small tensor copies, each a parallel region
    # on the CPU: one thread does them as fast, and on a busy machine ~4x faster (no thread
    # team to wait for; facenet 0.4 s instead of 1.6 s with the 2 cores shared).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Weights come from the checkpoint; building with weights='none' avoids needless downloads.
        model = create_model(config["backbone"], weights="none", embedding_size=config["embedding_size"], input_size=config["input_size"])
        state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model = model.to(device).eval()
        return model.fold_batch_norm() if fold_batch_norm else model
    finally:
        torch.set_num_threads(threads)


def embed_crops(
    crops_dir: Path,
    model_dir: Path,
    out_dir: Path,
    batch_size: int,
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    flip: bool = False,
    shift: float = 0.0,
) -> pd.DataFrame:
    """Embed every cropped image; writes ``embeddings.npy`` (N, E) float32, ``index.csv`` and
    ``embed.json`` (``{"flip": bool, "shift": float}``: inference must embed the same way)."""
    # Here rather than at the top: the API and the CLI load models through this module and
    # need neither pandas nor the crop stage's tables in their process.
    from maskface.artifacts import EMBED_SETTINGS_FILE, save_embeddings
    from maskface.face.crop import open_crops

    torch_device = resolve_device(device)
    model = load_model(model_dir, torch_device)
    images, index = open_crops(crops_dir)
    if images.shape[-1] != model.input_size:
        raise InputError(
            f"crops in {crops_dir} are {images.shape[-1]} px but the model in {model_dir} expects {model.input_size} px"
        )
    embeddings = embed_array(
        model, images, batch_size=batch_size, device=torch_device, precision=precision, channels_last=channels_last,
        flip=flip, shift=shift,
    )
    logger.info("embedding precision %s (%s requested)", inference_dtype(torch_device, precision) or torch.float32, precision)
    save_embeddings(embeddings, index, out_dir)
    model_config = json.loads((Path(model_dir) / MODEL_CONFIG_FILE).read_text())
    settings = {"flip": bool(flip), "shift": float(shift), "started_from": model_config.get("started_from")}
    (Path(out_dir) / EMBED_SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    logger.info("embedded %d images -> %s", len(index), out_dir)
    return index

