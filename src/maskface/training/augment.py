"""Training-time augmentation of uint8 crop batches: simulated masks, low resolution, flips, colour jitter.

Everything works on the crop stage's layout, uint8 (N, 3, S, S), and returns the same
layout, so augmented batches feed :class:`maskface.models.backbones.FaceEmbedder` unchanged.

Simulated masks need the 5 face landmarks (left eye, right eye, nose tip, left and right
mouth corner; "left" = image-left) of every training crop, in pixels of the S x S crop.
:func:`crop_landmarks` takes them, per row, from the first source that has them:

1. ``index``: landmark columns :data:`LANDMARK_COLUMNS` in the crop index (written by an
   aligning crop stage, already in crop pixels);
2. ``ground_truth``: the synthetic dataset's ``ground_truth.csv`` beside the identity
   folders (landmarks in source-image pixels, mapped through the crop);
3. ``template``: the canonical 5-point ArcFace template (insightface's 112 x 112
   ``arcface_src``) scaled to the face, for pre-cropped faces without landmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from maskface.data.masks import MASK_STYLES, draw_mask
from maskface.data.synthetic import GROUND_TRUTH_CSV, LANDMARK_COLUMNS
from maskface.models.backbones import shifted
from maskface.tables import read_csv

logger = logging.getLogger(__name__)

# insightface's arcface_src: where alignment puts the 5 landmarks in a 112 x 112 face crop.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
LANDMARK_SOURCES = ("index", "ground_truth", "template")


def template_landmarks(size: int) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` face crop -> (5, 2) float64 pixels."""
    if size < 1:
        raise ValueError(f"template size = {size!r} is invalid; valid: an integer >= 1 (pixels)")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def map_through_crop(points: np.ndarray, source_size: tuple[int, int], crop: dict, size: int) -> np.ndarray:
    """Source-image pixels (..., 2) -> pixels of the crop stage's ``size`` x ``size`` output.

    ``crop`` is ``preprocess.json``'s ``crop`` block ({"mode": "none"|"ratio", "keep_ratio"}):
    ``ratio`` keeps the top ``round(height * keep_ratio)`` rows, then both modes resize to
    ``size``. Pixel centres sit at integer coordinates, as PIL's resize maps them.
    """
    width, height = source_size
    mode = crop.get("mode", "none")
    if mode == "ratio":
        kept = max(1, round(height * float(crop["keep_ratio"])))
    elif mode in ("none", "mask"):
        # mask mode blanks pixels in place: the geometry is that of the whole face.
        kept = height
    else:
        raise ValueError(f"crop mode {mode!r} has no landmark mapping here; valid: none, ratio, mask")
    points = np.asarray(points, dtype=np.float64)
    x = (points[..., 0] + 0.5) * size / width - 0.5
    y = (points[..., 1] + 0.5) * size / kept - 0.5
    return np.stack([x, y], axis=-1)


def _ground_truth_landmarks(paths: pd.Series) -> dict[str, tuple[np.ndarray, int]]:
    """path -> ((5, 2) source-pixel landmarks, square image size) from ground_truth.csv files."""
    found: dict[str, tuple[np.ndarray, int]] = {}
    folders = {Path(p).parent.parent for p in paths}
    for folder in sorted(folders):
        table_path = folder / GROUND_TRUTH_CSV
        if not table_path.is_file():
            continue
        table = read_csv(table_path)
        if not {"path", "size", *LANDMARK_COLUMNS} <= set(table.columns):
            logger.warning("%s lacks landmark columns; its images use the template", table_path)
            continue
        points = table[list(LANDMARK_COLUMNS)].to_numpy(dtype=np.float64).reshape(-1, 5, 2)
        for relative, size, landmarks in zip(table["path"], table["size"], points):
            found[str(folder / str(relative))] = (landmarks, int(size))
    return found


def crop_landmarks(index: pd.DataFrame, crop: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of every crop row, in crop pixels; see the module docstring for the sources.

    Args:
        index: the crop index (``path`` column; optional :data:`LANDMARK_COLUMNS` in crop pixels).
        crop: ``preprocess.json``'s ``crop`` block.
        size: crop side S in pixels.

    Returns:
        (landmarks float64 (N, 5, 2), source per row: str array of :data:`LANDMARK_SOURCES`).
    """
    count = len(index)
    landmarks = np.full((count, 5, 2), np.nan)
    sources = np.full(count, "template", dtype=object)
    if set(LANDMARK_COLUMNS) <= set(index.columns):
        given = index[list(LANDMARK_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        given = given.reshape(-1, 5, 2)
        usable = np.isfinite(given).all(axis=(1, 2))
        landmarks[usable] = given[usable]
        sources[usable] = "index"
    missing = np.flatnonzero(sources == "template")
    if len(missing):
        truth = _ground_truth_landmarks(index["path"].iloc[missing])
        for row in missing:
            entry = truth.get(str(Path(index["path"].iat[row])))
            if entry is not None:
                points, source_size = entry
                landmarks[row] = map_through_crop(points, (source_size, source_size), crop, size)
                sources[row] = "ground_truth"
    # The template describes a whole face filling the crop: it goes through the crop
    # mode like source landmarks (a half-crop stretches it downwards).
    rest = sources == "template"
    if rest.any():
        landmarks[rest] = map_through_crop(template_landmarks(size), (size, size), crop, size)
    return landmarks, sources.astype(str)


def simulate_masks(
    images: np.ndarray,
    landmarks: np.ndarray,
    apply: np.ndarray,
    rng: np.random.Generator,
    styles: Sequence[str] = MASK_STYLES,
) -> np.ndarray:
    """Draw a random simulated mask on the rows where ``apply`` is true.

    Args:
        images: uint8 (N, 3, S, S); not modified.
        landmarks: (N, 5, 2) crop pixels.
        apply: bool (N,).
        rng: picks the style (uniform over ``styles``) and the mask's colours and pattern.

    Returns:
        uint8 (N, 3, S, S), a copy.
    """
    for style in styles:
        if style not in MASK_STYLES:
            raise ValueError(f"mask style {style!r} is invalid; valid: {', '.join(MASK_STYLES)}")
    out = np.array(images, dtype=np.uint8, copy=True)
    for row in np.flatnonzero(apply):
        face = Image.fromarray(np.ascontiguousarray(out[row].transpose(1, 2, 0)), mode="RGB")
        style = styles[int(rng.integers(len(styles)))]
        masked, _ = draw_mask(face, landmarks[row], style, rng)
        out[row] = np.asarray(masked, dtype=np.uint8).transpose(2, 0, 1)
    return out


def flip_horizontal(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, S, S) with the rows where ``flip`` (bool (N,)) is true mirrored left-right."""
    out = np.array(images, copy=True)
    out[flip] = out[flip][..., ::-1]
    return out


def adjust_colors(
    images: np.ndarray,
    brightness: np.ndarray | None = None,
    contrast: np.ndarray | None = None,
    saturation: np.ndarray | None = None,
) -> np.ndarray:
    """Brightness, contrast, then saturation by per-image factors (torchvision's definitions).

    Args:
        images: uint8 (N, 3, S, S).
        brightness, contrast, saturation: (N,) factors, 1 = unchanged, or None to skip.
            Brightness scales the pixels; contrast blends with the image's mean grey level;
            saturation blends with each pixel's grey level (ITU-R 601-2 luma, as PIL and
            torchvision). Each step clips to [0, 255].

    Returns:
        uint8 (N, 3, S, S), rounded.
    """
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)

    def per_image(factors: np.ndarray) -> np.ndarray:
        return np.asarray(factors, dtype=np.float32).reshape(-1, 1, 1, 1)

    x = images.astype(np.float32)
    if brightness is not None:
        x = np.clip(x * per_image(brightness), 0, 255)
    if contrast is not None:
        mean_grey = (x * luma).sum(axis=1, keepdims=True).mean(axis=(2, 3), keepdims=True)
        x = np.clip(mean_grey + (x - mean_grey) * per_image(contrast), 0, 255)
    if saturation is not None:
        grey = (x * luma).sum(axis=1, keepdims=True)
        x = np.clip(grey + (x - grey) * per_image(saturation), 0, 255)
    return np.rint(x).astype(np.uint8)


def lower_resolution(images: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, S, S), each image shrunk to ``sides[i]`` pixels square and enlarged back to S.

    PIL's antialiased bilinear filter both ways, as a small or distant face photographed at a
    low resolution and then upscaled looks; a side of S or more leaves the image as it is.
    """
    out = np.array(images, copy=True)
    size = images.shape[-1]
    for k, side in enumerate(np.asarray(sides, dtype=int)):
        if side >= size:
            continue
        if side < 1:
            raise ValueError(f"lower_resolution side {side} is invalid; valid: at least 1 pixel")
        face = Image.fromarray(np.ascontiguousarray(images[k].transpose(1, 2, 0)))
        small = face.resize((side, side), Image.BILINEAR, reducing_gap=None)
        out[k] = np.asarray(small.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    return out


def shift_images(images: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, S, S), image k moved ``moves[k] = (right, down)`` pixels (negative: left,
    up), the edge row or column repeated into the gap, as the embed stage's shift views are."""
    out = np.empty_like(images)
    for k, (right, down) in enumerate(np.asarray(moves, dtype=int)):
        out[k] = shifted(torch.from_numpy(np.ascontiguousarray(images[k])), int(right), int(down)).numpy()
    return out


def color_jitter(
    images: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> np.ndarray:
    """Random brightness, contrast and saturation per image (see :func:`adjust_colors`).

    Each strength j in [0, 1] draws a factor uniformly from [1 - j, 1 + j]; j = 0 leaves
    that property unchanged. uint8 (N, 3, S, S) in and out.
    """
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    factors = {}
    for name, value in strengths.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"color_jitter {name} = {value!r} is invalid; valid: a number in [0, 1]")
        drawn = rng.uniform(1 - value, 1 + value, size=len(images))
        factors[name] = drawn if value > 0 else None
    return adjust_colors(images, **factors)


def augment_batch(
    images: np.ndarray,
    masked: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_p: float = 0.0,
    mask_styles: Sequence[str] = MASK_STYLES,
    flip_p: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    low_resolution_p: float = 0.0,
    low_resolution_min: float = 0.25,
    shift_p: float = 0.0,
    shift_max: float = 0.04,
) -> np.ndarray:
    """One training batch: masks on unmasked rows (probability ``mask_p``), then a lower
    resolution (probability ``low_resolution_p``, a side drawn uniformly between
    ``low_resolution_min`` x S and S), then a move (probability ``shift_p``, up to
    ``shift_max`` x S pixels each way, drawn uniformly), then flips, then jitter.

    Masks come first because the landmarks describe the unflipped crop, and a mask drawn on
    the photo loses its detail with the rest of the face.

    Args:
        images: uint8 (N, 3, S, S).
        masked: bool (N,), the image already shows a real mask (never masked twice).
        landmarks: (N, 5, 2) crop pixels.

    Returns:
        uint8 (N, 3, S, S), a new array.
    """
    count = len(images)
    add_mask = (~np.asarray(masked, dtype=bool)) & (rng.random(count) < mask_p)
    out = simulate_masks(images, landmarks, add_mask, rng, mask_styles) if add_mask.any() else np.array(images, copy=True)
    if low_resolution_p > 0:
        size = images.shape[-1]
        shrink = rng.random(count) < low_resolution_p
        sides = np.where(shrink, np.rint(rng.uniform(low_resolution_min, 1.0, size=count) * size), size)
        out = lower_resolution(out, sides.astype(int))
    if shift_p > 0:
        reach = max(1, round(shift_max * images.shape[-1]))
        moves = rng.integers(-reach, reach + 1, size=(count, 2)) * (rng.random(count) < shift_p)[:, None]
        out = shift_images(out, moves)
    flip = rng.random(count) < flip_p
    if flip.any():
        out = flip_horizontal(out, flip)
    if brightness > 0 or contrast > 0 or saturation > 0:
        out = color_jitter(out, rng, brightness, contrast, saturation)
    return out
