"""What the networks see of a face: alignment, crop modes and mask blanking.

One entry point, :func:`preprocess_face`, turns an RGB photo (and its 5 landmarks, see
:mod:`maskface.face.geometry`) into the network input; the crop stage and inference both call
it with the same ``preprocess.json`` settings, so a face reaches the network identically.

Modes (``crop.mode``):

- ``none``: the whole (aligned) face;
- ``ratio``: the top ``keep_ratio`` of the height, stretched back to a square as the
  study fed it to its networks (0.5 = the study's half crop);
- ``eyes``: everything above a line ``eye_line`` eye distances below the eyes, stretched
  to a square, so the eyes are kept whatever the framing;
- ``mask``: the whole face with the mask (:mod:`maskface.face.mask_segmentation`) blanked to
  the image mean or a constant; where no mask is found, the region a mask would cover is
  blanked too (``blank_without_mask``), so masked and unmasked faces show the same parts;
- ``nose``: the whole face with every row below the nose line (the nose tip plus
  ``nose_line`` eye distances) set to mid-grey, on every photo, masked or not: both photos
  of a pair then show the same upper face, whatever the mask looks like. Aligned faces use
  the template's nose, because a detector's nose on a masked face is a guess.

With ``align`` the face is first mapped by a similarity transform from its landmarks onto
a template at the input size (:func:`maskface.face.geometry.alignment_matrix`), all in one warp.
A face without landmarks falls back to the unaligned image, framed as if it were a
template-framed crop (pre-cropped datasets are); the crop stage counts these.

Output of the crop stage, per backbone (``data/crops/<backbone>/``):
- ``images.npy``: uint8 (N, 3, S, S), written through a memory map so that memory stays
  flat however many images there are, and read back the same way by finetune and embed;
- ``index.csv``: one row per array row: path, identity, masked, split, the landmarks
  ``le_x ... mr_y`` in pixels of the S x S output (empty when detection was skipped),
  ``landmark_source`` (mtcnn | ground_truth: found; template: no face found, the
  template's points as framed in the output; none: detection skipped), ``aligned`` (bool);
- ``preprocess.json``: ``{"input_size": S, "crop": {...}}``, the settings of
  :func:`preprocess_face`, copied into the model folder so inference repeats this
  preprocessing exactly (keys the settings do not use are left out);
- ``summary.json``: counts (aligned, fallbacks without a face, masks found).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from maskface.config import CROP_MODES, CropConfig
from maskface.face import uses_landmarks
from maskface.errors import InputError
from maskface.imageio import load_rgb
from maskface.data.synthetic import LANDMARK_COLUMNS
from maskface.tables import read_csv, write_csv

logger = logging.getLogger(__name__)

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
PREPROCESS_FILE = "preprocess.json"
SUMMARY_FILE = "summary.json"
INDEX_COLUMNS = ["path", "identity", "masked", "split"]

# Mid-grey, for what the network must not read: the face below the nose line (nose mode) and,
# with `border: grey`, the aligned frame beyond the photo. After every backbone's
# normalisation it is close to zero input, the least informative value a network can see.
GREY = 128

# Settings keys by what uses them; preprocess.json carries only the ones in use.
_BASE_KEYS = ("mode", "keep_ratio")
_ALIGN_KEYS = ("align", "align_points", "template", "border")
_EYES_KEYS = ("eye_line", "template")
_MASK_KEYS = ("blank", "blank_value", "blank_without_mask", "template")
_NOSE_KEYS = ("nose_line", "template")
_DETECT_KEYS = ("landmarks", "detect_pad", "detect_thresholds", "detect_min_face", "detect_device")
_DEFAULTS = {key: value for key, value in CropConfig().model_dump().items() if key != "preview_images"}


def crop_settings(config: CropConfig | Mapping[str, Any]) -> dict:
    """The ``crop`` block of preprocess.json: the keys the configured preprocessing uses."""
    values = config.model_dump() if isinstance(config, CropConfig) else {**_DEFAULTS, **dict(config)}
    keys = list(_BASE_KEYS)
    mode, align = values["mode"], bool(values.get("align", False))
    if align:
        keys += _ALIGN_KEYS
    if mode == "eyes":
        keys += _EYES_KEYS
    if mode == "mask":
        keys += _MASK_KEYS
    if mode == "nose":
        keys += _NOSE_KEYS
    if uses_landmarks(values):
        keys += _DETECT_KEYS
    settings = {key: values[key] for key in dict.fromkeys(keys)}
    if "detect_thresholds" in settings:
        settings["detect_thresholds"] = [float(t) for t in settings["detect_thresholds"]]
    return settings


def preprocess_settings(config: CropConfig, input_size: int, template: str | None = None) -> dict:
    """preprocess.json: ``{"input_size": S, "crop": crop_settings(config)}``.

    ``template``: the backbone's own alignment template, which ``crop.template: auto`` stands
    for; preprocess.json always names a concrete template, so inference needs no registry.
    """
    settings = crop_settings(config)
    if settings.get("template") == "auto":
        if template is None:
            raise ValueError("crop.template is auto but no backbone template was given; valid: facenet, arcface")
        settings["template"] = template
    return {"input_size": int(input_size), "crop": settings}


def _resolved(crop: Mapping[str, Any]) -> dict:
    """Settings with defaults filled in and checked; a bad value names the valid ones."""
    settings = {**_DEFAULTS, **dict(crop)}
    if settings["mode"] not in CROP_MODES:
        raise ValueError(f"crop.mode {settings['mode']!r} is invalid; valid: {', '.join(CROP_MODES)}")
    if settings["template"] == "auto":
        raise ValueError("crop.template 'auto' must be resolved to the backbone's template first; valid: facenet, arcface")
    for key, valid in (
        ("border", CropConfig.BORDERS),
        ("align_points", CropConfig.ALIGN_POINTS),
        ("template", CropConfig.TEMPLATES),
        ("blank", CropConfig.BLANKS),
    ):
        if settings[key] not in valid:
            raise ValueError(f"crop.{key} {settings[key]!r} is invalid; valid: {', '.join(valid)}")
    if not 0.0 < float(settings["keep_ratio"]) <= 1.0:
        raise ValueError(f"crop.keep_ratio {settings['keep_ratio']!r} is invalid; valid: a number in (0, 1]")
    return settings


# Decoding threads ask for the detector at once: without the lock each would build its own
# MTCNN, importing facenet_pytorch and torchvision side by side, and two threads importing
# torchvision together can meet its modules half-initialised (ImportError).
_detector_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_detector(device: str, pad: float, thresholds: tuple[float, ...], min_face: int):
    from maskface.face.geometry import FaceDetector

    return FaceDetector(device=device, pad=pad, thresholds=thresholds, min_face_size=min_face)


def detector_for_settings(crop: Mapping[str, Any]):
    """The settings' MTCNN detector, built once per setting and shared between threads."""
    settings = _resolved(crop)
    with _detector_lock:
        return _cached_detector(
            str(settings["detect_device"]),
            float(settings["detect_pad"]),
            tuple(float(t) for t in settings["detect_thresholds"]),
            int(settings["detect_min_face"]),
        )


def detect_for_settings(image: Image.Image, crop: Mapping[str, Any]) -> Optional[np.ndarray]:
    """(5, 2) landmarks of the face in ``image`` found with the settings' detector, or None.

    Inference on a new photo always detects with MTCNN (``landmarks: ground_truth`` exists
    only for the synthetic training data).
    """
    landmarks = detector_for_settings(crop).detect_one(image).landmarks
    # Rounded as the landmark table stores them, so a photo seen in training is warped alike.
    return None if landmarks is None else np.round(landmarks, 2)


@dataclass(frozen=True)
class FaceCrop:
    """One preprocessed face.

    ``image``: uint8 (S, S, 3). ``landmarks``: (5, 2) in output pixels (found ones, or the
    template's as framed in the output when ``face_found`` is False). ``aligned``: the
    similarity warp was applied. ``region``: mask mode only, bool (S, S) blanked pixels;
    ``mask_found``: mask mode only, whether a mask was seen (else the prior was used).
    """

    image: np.ndarray
    landmarks: np.ndarray
    face_found: bool
    aligned: bool
    region: Optional[np.ndarray] = None
    mask_found: Optional[bool] = None


def _stretch_rows(kept: float, size: int) -> np.ndarray:
    """(2, 3) affine: the top ``kept`` rows (continuous units) of a ``size``-wide frame to S x S."""
    factor = size / kept
    # Pixel centres: y_out + 0.5 = (y_in + 0.5) * factor.
    return np.array([[1.0, 0.0, 0.0], [0.0, factor, 0.5 * factor - 0.5]])


def _eye_cut(landmarks: np.ndarray, eye_line: float) -> float:
    """Continuous y of the eyes-mode cut: ``eye_line`` eye distances below the lower eye."""
    left, right = landmarks[0], landmarks[1]
    distance = float(np.hypot(*(right - left)))
    return max(left[1], right[1]) + 0.5 + eye_line * distance


def _align_points(settings: Mapping[str, Any], masked: Optional[bool]) -> str:
    points = settings["align_points"]
    if points == "auto":
        # Only an image known to be unmasked trusts nose and mouth; at inference the
        # masked flag is unknown and the eyes are the safe choice.
        return "all" if masked is False else "eyes"
    return points


def crop_details(
    image: Image.Image,
    landmarks: Optional[np.ndarray],
    crop: Mapping[str, Any],
    size: int,
    masked: Optional[bool] = None,
) -> FaceCrop:
    """:func:`preprocess_face` with everything learnt on the way (see :class:`FaceCrop`).

    ``landmarks`` None means no face is known: nothing is detected here.
    """
    from maskface.face.geometry import alignment_matrix, compose, template_points, transform_points, warp_affine

    settings = _resolved(crop)
    if size < 1:
        raise ValueError(f"input size {size!r} is invalid; valid: an integer >= 1 (pixels)")
    if image.mode != "RGB":
        raise ValueError(f"preprocess needs an RGB image, got mode {image.mode!r} (use maskface.imageio.to_rgb)")
    mode = settings["mode"]
    found = landmarks is not None
    if found:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.shape != (5, 2) or not np.all(np.isfinite(landmarks)):
            raise ValueError(f"landmarks must be finite (5, 2) pixels, got {landmarks.tolist()}")
    width, height = image.size
    aligned = bool(settings["align"]) and found

    if aligned:
        matrix = alignment_matrix(landmarks, size, settings["template"], _align_points(settings, masked))
        frame_landmarks = transform_points(landmarks, matrix)
        if mode == "ratio":
            matrix = compose(_stretch_rows(size * float(settings["keep_ratio"]), size), matrix)
        elif mode == "eyes":
            kept = min(float(size), _eye_cut(frame_landmarks, float(settings["eye_line"])))
            matrix = compose(_stretch_rows(kept, size), matrix)
        fill = GREY if settings["border"] == "grey" else None
        pixels = warp_affine(np.asarray(image), matrix, (size, size), fill)
        out_landmarks = transform_points(landmarks, matrix)
    else:
        # Unaligned: keep the top `kept` rows of the photo and resize to S x S with PIL,
        # the study's (and this project's original) transform.
        if found:
            source_landmarks = landmarks
        else:
            # No face: take the photo as a template-framed crop (pre-cropped datasets are).
            template = template_points(settings["template"], 1000) + 0.5
            source_landmarks = template / 1000.0 * np.array([width, height]) - 0.5
        kept = height
        if mode == "ratio":
            kept = max(1, round(height * float(settings["keep_ratio"])))
        elif mode == "eyes":
            kept = int(min(height, max(1, round(_eye_cut(source_landmarks, float(settings["eye_line"]))))))
        region = image if kept == height else image.crop((0, 0, width, kept))
        resized = region.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels = np.asarray(resized, dtype=np.uint8)
        scale = np.array([size / width, size / kept])
        out_landmarks = (source_landmarks + 0.5) * scale - 0.5


    if mode == "nose":
        return _grey_below_nose(pixels, out_landmarks, found, aligned, settings, size)
    if mode != "mask":
        return FaceCrop(np.ascontiguousarray(pixels, dtype=np.uint8), out_landmarks, found, aligned)

    from maskface.face.mask_segmentation import segment_mask

    pixels = np.array(pixels, dtype=np.uint8, copy=True)
    segmentation = segment_mask(pixels, out_landmarks)
    region = segmentation.region if (segmentation.found or settings["blank_without_mask"]) else np.zeros_like(segmentation.region)
    if region.any():
        if settings["blank"] == "mean":
            visible = pixels[~region]
            fill = np.rint(visible.mean(axis=0)) if len(visible) else np.full(3, 128.0)
        else:
            fill = np.full(3, float(settings["blank_value"]))
        pixels[region] = fill.astype(np.uint8)
    return FaceCrop(pixels, out_landmarks, found, aligned, region=region, mask_found=segmentation.found)




def nose_cut(landmarks: np.ndarray, nose_line: float) -> float:
    """Continuous y below which nose mode greys: the nose tip plus ``nose_line`` eye distances."""
    distance = float(np.hypot(*(landmarks[1] - landmarks[0])))
    return float(landmarks[2, 1]) + 0.5 + nose_line * distance


def _grey_below_nose(
    pixels: np.ndarray, landmarks: np.ndarray, found: bool, aligned: bool, settings: Mapping[str, Any], size: int
) -> FaceCrop:
    from maskface.face.geometry import template_points

    # An aligned face sits on the template, so the template's nose is where the nose is,
    # mask or not; MTCNN's nose on a masked face lands anywhere on the mask.
    reference = template_points(settings["template"], size) if aligned else landmarks
    cut = nose_cut(reference, float(settings["nose_line"]))
    first_row = int(np.clip(np.ceil(cut - 0.5), 0, size))
    pixels = np.array(pixels, dtype=np.uint8, copy=True)
    pixels[first_row:] = GREY
    region = np.zeros((size, size), dtype=bool)
    region[first_row:] = True
    return FaceCrop(pixels, landmarks, found, aligned, region=region)


def preprocess_face(
    image: Image.Image,
    landmarks: Optional[np.ndarray],
    settings: Mapping[str, Any],
    masked: Optional[bool] = None,
) -> np.ndarray:
    """An RGB face -> the network input, uint8 (S, S, 3).

    Args:
        image: PIL RGB image (any size).
        landmarks: (5, 2) pixels of ``image`` (MTCNN order), or None: then, when the
            settings use landmarks (``align``, modes ``eyes`` / ``mask`` / ``nose``), they are
            detected here with the settings' detector; a face still not found falls back
            to the unaligned image.
        settings: preprocess.json, ``{"input_size": S, "crop": {...}}`` (missing crop keys
            take the :class:`~maskface.config.CropConfig` defaults).
        masked: whether the face is known to wear a mask (only ``align_points: auto``
            uses it; None = unknown).
    """
    crop = settings.get("crop", {})
    resolved = _resolved(crop)
    if landmarks is None and uses_landmarks(resolved):
        landmarks = detect_for_settings(image, resolved)
    return crop_details(image, landmarks, resolved, int(settings["input_size"]), masked).image


def _table_for(manifest: pd.DataFrame, config: CropConfig, landmarks: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The landmark table rows of the manifest's images, in manifest order."""
    from maskface.face.geometry import landmark_table

    paths = [str(p) for p in manifest["path"]]
    if landmarks is None:
        return landmark_table(paths, config)
    table = landmarks.set_index(landmarks["path"].astype(str), drop=False)
    missing = [p for p in paths if p not in table.index]
    if missing:
        raise InputError(f"the landmark table lacks {len(missing)} manifest image(s), e.g. {missing[0]!r}; rerun the split stage")
    return table.loc[paths].reset_index(drop=True)


def crop_dataset(
    manifest: pd.DataFrame,
    config: CropConfig,
    input_size: int,
    out_dir: Path,
    landmarks: Optional[pd.DataFrame] = None,
    template: Optional[str] = None,
) -> pd.DataFrame:
    """Preprocess every manifest image into ``out_dir`` (see module docstring); returns the index.

    ``template``: the backbone's alignment template, used where ``config.template`` is auto.

    ``landmarks``: the split stage's landmark table (:func:`maskface.face.geometry.read_landmark_table`)
    covering every manifest path; None = detect here when the settings need landmarks.
    """
    from maskface.face.geometry import table_landmarks

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = manifest[INDEX_COLUMNS].reset_index(drop=True).copy()
    table = _table_for(index, config, landmarks)
    known = table_landmarks(table)
    sources = table["landmark_source"].astype(str).to_numpy()
    settings = preprocess_settings(config, input_size, template)
    crop = _resolved(settings["crop"])

    images = np.lib.format.open_memmap(
        out_dir / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(index), 3, input_size, input_size)
    )
    points = np.full((len(index), 5, 2), np.nan)
    row_sources = np.empty(len(index), dtype=object)
    aligned = np.zeros(len(index), dtype=bool)
    mask_found = 0
    masked_flags = index["masked"].astype(bool).to_numpy()
    for row, path in enumerate(tqdm(index["path"], desc=f"crop {input_size}px", unit="img")):
        face = crop_details(load_rgb(path), known[str(path)], crop, input_size, bool(masked_flags[row]))
        images[row] = face.image.transpose(2, 0, 1)
        aligned[row] = face.aligned
        mask_found += bool(face.mask_found)
        if sources[row] == "none":
            row_sources[row] = "none"  # detection skipped: landmarks unknown, left empty
        else:
            points[row] = face.landmarks
            row_sources[row] = sources[row] if face.face_found else "template"
    images.flush()
    del images

    for column, values in zip(LANDMARK_COLUMNS, points.reshape(len(index), -1).T):
        index[column] = np.round(values, 2)
    index["landmark_source"] = row_sources
    index["aligned"] = aligned
    write_csv(index, out_dir / INDEX_FILE)
    (out_dir / PREPROCESS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    summary = {
        "images": int(len(index)),
        "mode": config.mode,
        "align": config.align,
        "aligned": int(aligned.sum()),
        "no_face_fallback": int(sum(s == "template" for s in row_sources)),
        "mask_found": int(mask_found) if config.mode == "mask" else None,
        "landmark_sources": {str(k): int(v) for k, v in zip(*np.unique(row_sources.astype(str), return_counts=True))},
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info(
        "cropped %d images (mode=%s, align=%s) to %s: %d aligned, %d without a face (unaligned fallback)%s",
        len(index), config.mode, config.align, out_dir, summary["aligned"], summary["no_face_fallback"],
        f", mask found in {mask_found}" if config.mode == "mask" else "",
    )
    return index


def open_crops(crops_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The crop stage's output: a read-only memory map (N, 3, S, S) and its index."""
    images = np.load(Path(crops_dir) / IMAGES_FILE, mmap_mode="r")
    index = read_csv(Path(crops_dir) / INDEX_FILE)
    for column in ("masked", "aligned"):
        if column in index.columns:
            index[column] = index[column].astype(str).str.lower().isin(["true", "1"])
    for column in LANDMARK_COLUMNS:
        if column in index.columns:
            index[column] = pd.to_numeric(index[column], errors="coerce").astype(np.float64)
    if len(index) != len(images):
        raise InputError(f"{crops_dir}: {len(images)} images but {len(index)} index rows; rerun the crop stage")
    return images, index


def _pick_rows(masked: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masked_rows = np.flatnonzero(masked)
    plain_rows = np.flatnonzero(~masked)
    half = count // 2
    take_masked = min(half, len(masked_rows))
    take_plain = min(count - take_masked, len(plain_rows))
    return np.concatenate(
        [
            rng.choice(masked_rows, size=take_masked, replace=False),
            rng.choice(plain_rows, size=take_plain, replace=False),
        ]
    ).astype(int)


def preview_sheet(
    manifest: pd.DataFrame,
    crops_dir: Path,
    destination: Path,
    count: int,
    seed: int = 0,
    landmarks: Optional[pd.DataFrame] = None,
) -> None:
    """Sheet of ``count`` images (masked and unmasked mixed): the original, then every crop mode.

    The row of the mode in use is the network input read back from ``images.npy``; the
    other modes are computed with the same settings (alignment, template) and the
    landmarks of ``landmarks`` (the split stage's table; without it every face takes the
    no-face fallback), so the modes compare side by side.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, index = open_crops(crops_dir)
    settings = json.loads((Path(crops_dir) / PREPROCESS_FILE).read_text())
    size = int(settings["input_size"])
    active = settings["crop"]["mode"]
    rows = _pick_rows(index["masked"].to_numpy(), count, seed)
    known = {}
    if landmarks is not None:
        from maskface.face.geometry import table_landmarks

        known = table_landmarks(landmarks)
    figure, axes = plt.subplots(
        1 + len(CROP_MODES), len(rows), figsize=(1.6 * len(rows), 1.7 * (1 + len(CROP_MODES))), squeeze=False
    )
    for column, row in enumerate(rows):
        path = str(index.at[row, "path"])
        original = load_rgb(path)
        points = known.get(path)
        axes[0, column].imshow(original)
        if points is not None:
            axes[0, column].scatter(points[:, 0], points[:, 1], s=4, c="lime")
        axes[0, column].set_title("masked" if index.at[row, "masked"] else "unmasked", fontsize=7)
        for offset, mode in enumerate(CROP_MODES, start=1):
            if mode == active:
                face = np.asarray(images[row]).transpose(1, 2, 0)
            else:
                crop = {**_resolved(settings["crop"]), "mode": mode}
                face = crop_details(original, points, crop, size, bool(index.at[row, "masked"])).image
            axes[offset, column].imshow(face)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    for offset, mode in enumerate(CROP_MODES, start=1):
        axes[offset, 0].set_ylabel(f"{mode} (in use)" if mode == active else mode, fontsize=8)
    figure.suptitle(
        f"crop modes at {size}px, align={'on' if settings['crop'].get('align') else 'off'}", fontsize=8
    )
    figure.tight_layout()
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=90)
    plt.close(figure)
