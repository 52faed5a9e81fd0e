"""Remove the part of the face a mask hides, and resize to a backbone's input.

Output of the crop stage, per backbone (``data/crops/<backbone>/``):
- ``images.npy``: uint8 (N, 3, S, S), written through a memory map so that memory stays
  flat however many images there are, and read back the same way by finetune and embed;
- ``index.csv``: one row per array row (path, identity, masked, split);
- ``preprocess.json``: the crop settings and input size, copied into the model folder so
  inference repeats exactly this preprocessing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from maskface.config import CropConfig
from maskface.imageio import load_rgb

logger = logging.getLogger(__name__)

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
PREPROCESS_FILE = "preprocess.json"
INDEX_COLUMNS = ["path", "identity", "masked", "split"]


def crop_face(image: Image.Image, mode: str, keep_ratio: float, size: int) -> np.ndarray:
    """One RGB face -> uint8 (size, size, 3) after removing what ``mode`` removes.

    ``none``: the whole face. ``ratio``: the top ``keep_ratio`` of the height (the study's
    half-crop at 0.5), stretched back to a square as the study fed it to its networks.
    """
    if mode == "ratio":
        width, height = image.size
        kept = max(1, round(height * keep_ratio))
        image = image.crop((0, 0, width, kept))
    elif mode != "none":
        raise ValueError(f"crop.mode {mode!r} is invalid; valid: none, ratio")
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def crop_dataset(
    manifest: pd.DataFrame,
    config: CropConfig,
    input_size: int,
    out_dir: Path,
) -> pd.DataFrame:
    """Crop every manifest image into ``out_dir`` (see module docstring); returns the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = manifest[INDEX_COLUMNS].reset_index(drop=True)
    images = np.lib.format.open_memmap(
        out_dir / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(index), 3, input_size, input_size)
    )
    for row, path in enumerate(tqdm(index["path"], desc=f"crop {input_size}px", unit="img")):
        face = crop_face(load_rgb(path), config.mode, config.keep_ratio, input_size)
        images[row] = face.transpose(2, 0, 1)
    images.flush()
    del images
    index.to_csv(out_dir / INDEX_FILE, index=False)
    preprocess = {"input_size": input_size, "crop": asdict(config)}
    preprocess["crop"].pop("preview_images", None)
    (out_dir / PREPROCESS_FILE).write_text(json.dumps(preprocess, indent=2, sort_keys=True) + "\n")
    logger.info("cropped %d images (mode=%s) to %s", len(index), config.mode, out_dir)
    return index


def open_crops(crops_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The crop stage's output: a read-only memory map (N, 3, S, S) and its index."""
    images = np.load(crops_dir / IMAGES_FILE, mmap_mode="r")
    index = pd.read_csv(crops_dir / INDEX_FILE, keep_default_na=False)
    index["masked"] = index["masked"].astype(str).str.lower().isin(["true", "1"])
    if len(index) != len(images):
        raise ValueError(f"{crops_dir}: {len(images)} images but {len(index)} index rows; rerun the crop stage")
    return images, index


def preview_sheet(
    manifest: pd.DataFrame,
    crops_dir: Path,
    destination: Path,
    count: int,
    seed: int = 0,
) -> None:
    """Before/after sheet for ``count`` images (masked and unmasked mixed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, index = open_crops(crops_dir)
    rng = np.random.default_rng(seed)
    masked_rows = np.flatnonzero(index["masked"].to_numpy())
    plain_rows = np.flatnonzero(~index["masked"].to_numpy())
    half = count // 2
    rows = np.concatenate(
        [
            rng.choice(masked_rows, size=min(half, len(masked_rows)), replace=False),
            rng.choice(plain_rows, size=min(count - half, len(plain_rows)), replace=False),
        ]
    ).astype(int)
    figure, axes = plt.subplots(2, len(rows), figsize=(1.6 * len(rows), 3.6), squeeze=False)
    for column, row in enumerate(rows):
        axes[0, column].imshow(load_rgb(index.at[row, "path"]))
        axes[0, column].set_title(("masked" if index.at[row, "masked"] else "unmasked"), fontsize=7)
        axes[1, column].imshow(images[row].transpose(1, 2, 0))
        for axis in axes[:, column]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("network input", fontsize=8)
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=90)
    plt.close(figure)
