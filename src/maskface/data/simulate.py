"""Simulated masks: turn an unmasked dataset into a masked one, as the SMFRD was made.

Each unmasked face gets one procedural mask (:func:`maskface.data.masks.draw_mask`: a polygon
anchored on the 5 landmarks from the nose bridge to below the chin, surgical, N95 or
cloth, in several colours and textures, shaded) where MTCNN (:mod:`maskface.face.geometry`)
finds its landmarks. Everything is seeded per file, so a rerun writes the same pixels.

``maskface simulate-masks SRC DST --source lfw`` writes, under DST:

- every masked image at the same relative path as in SRC, same format; greyscale sources
  stay greyscale (a colour mask on a grey photo would be a give-away cue);
- ``manifest.csv``: path (relative to DST), identity, masked (True), mask_style,
  source_path (as the run saw it), derived_from (the same source photo, relative to DST
  like ``path``), landmark_source (mtcnn | template), confidence, the landmarks ``le_x
  ... mr_y``. It is a valid ``data.source: manifest`` input (``data.root:
  DST/manifest.csv``); the reader turns derived_from into the source's manifest path, and
  no pair ever joins a copy with its source (:func:`maskface.data.split.make_pairs`);
- ``skipped.csv``: source_path, identity, reason (``already_masked``, ``no_face``);
- ``preview.png``: originals above their masked versions (or ``--preview PATH``).

:func:`augment_with_mask` is the same drawing as a training augmentation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from maskface.data.masks import MASK_STYLES, draw_mask
from maskface.data.synthetic import LANDMARK_COLUMNS
from maskface.hardware import DEVICES
from maskface.tables import write_csv
from maskface.text import one_line

if TYPE_CHECKING:
    from maskface.face.geometry import Detection, FaceDetector

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
SKIPPED_FILE = "skipped.csv"
PREVIEW_FILE = "preview.png"
# Real datasets only: the synthetic source draws its own masks.
SOURCE_KINDS = ("rmfrd", "smfrd", "lfw", "folder", "manifest")
ON_NO_FACE = ("skip", "template")
MANIFEST_COLUMNS = (
    "path", "identity", "masked", "mask_style", "source_path", "derived_from", "landmark_source", "confidence",
    *LANDMARK_COLUMNS,
)
SKIPPED_COLUMNS = ("source_path", "identity", "reason")
_JPEG_QUALITY = 95


def _check_styles(styles: Sequence[str]) -> tuple[str, ...]:
    styles = tuple(styles)
    if not styles:
        raise ValueError(f"mask styles: none given; valid: {', '.join(MASK_STYLES)}")
    for style in styles:
        if style not in MASK_STYLES:
            raise ValueError(f"mask style {style!r} is invalid; valid: {', '.join(MASK_STYLES)}")
    return styles


def augment_with_mask(
    image: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    styles: Sequence[str] = MASK_STYLES,
) -> np.ndarray:
    """Draw one random mask (style uniform over ``styles``) on a face: training augmentation.

    Args:
        image: uint8 (H, W, 3) RGB; not modified.
        landmarks: (5, 2) pixels of ``image`` (MTCNN order).
        rng: picks the style, colours, pattern and valve.

    Returns:
        uint8 (H, W, 3), a new array.
    """
    styles = _check_styles(styles)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"augment_with_mask needs a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    style = styles[int(rng.integers(len(styles)))]
    masked, _ = draw_mask(Image.fromarray(np.ascontiguousarray(image), mode="RGB"), landmarks, style, rng)
    return np.asarray(masked, dtype=np.uint8)


def _file_rng(seed: int, relative: str) -> np.random.Generator:
    """A generator for one file, fixed by the seed and its relative path alone."""
    key = zlib.crc32(relative.encode("utf-8", "surrogateescape"))
    return np.random.default_rng([seed, key])


def _relative(path: str, root: str) -> str:
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative.startswith(os.pardir):
        raise ValueError(f"{path}: outside the source root {root}; its place under the output is undefined")
    return Path(relative).as_posix()


def _save(image: Image.Image, destination: Path, source_mode: str) -> None:
    """Save in the source's format (by extension) and colour mode."""
    if source_mode in ("L", "I", "I;16", "1"):
        image = image.convert("L")
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = destination.suffix.lower()
    options: dict[str, Any] = {}
    if suffix in (".jpg", ".jpeg"):
        options = {"quality": _JPEG_QUALITY, "subsampling": 0}
    elif suffix == ".png":
        options = {"compress_level": 6}
    image.save(destination, **options)


def simulate_masks(
    src_root: str | Path,
    dst_root: str | Path,
    source_kind: str,
    styles: Sequence[str] = MASK_STYLES,
    seed: int = 0,
    *,
    device: str = "auto",
    pad: float = 0.3,
    thresholds: Sequence[float] = (0.2, 0.3, 0.3),
    on_no_face: str = "skip",
    limit: Optional[int] = None,
    preview: str | Path | None = None,
    overwrite: bool = False,
    workers: int = 2,
) -> pd.DataFrame:
    """Write a masked copy of every unmasked image of ``src_root`` under ``dst_root``.

    Args:
        src_root: the dataset folder (a CSV for ``source_kind`` manifest).
        dst_root: output folder; must not overlap ``src_root``; must be empty unless
            ``overwrite``.
        source_kind: the source layout, one of :data:`SOURCE_KINDS` (see maskface.data.datasets).
        styles: mask styles drawn uniformly at random.
        seed: with the file's relative path, fixes its style, colours and pattern.
        device, pad, thresholds: the MTCNN detector (see :class:`maskface.face.geometry.FaceDetector`).
        on_no_face: ``skip`` the image, or ``template``: place the mask on the template
            landmarks as if the photo were a template-framed face crop.
        limit: process only the first ``limit`` unmasked images (sorted by path).
        preview: the preview sheet's path (default ``dst_root/preview.png``).
        overwrite: allow a non-empty ``dst_root`` (files at the same paths are replaced).
        workers: processes validating the source images.

    Returns:
        The manifest written to ``dst_root/manifest.csv`` (columns :data:`MANIFEST_COLUMNS`).
    """
    styles = _check_styles(styles)
    _check_choices(source_kind, on_no_face, limit)
    src_root, dst_root = str(src_root), Path(dst_root)
    base = _check_destination(src_root, dst_root, source_kind, overwrite)
    todo, skipped = _images_to_mask(src_root, source_kind, workers, limit)

    from maskface.face.geometry import FaceDetector

    detector = FaceDetector(device=device, pad=pad, thresholds=thresholds)
    rows, no_face, examples = _mask_all(todo, source_kind, base, dst_root, detector, styles, seed, on_no_face)
    skipped += no_face

    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_csv(manifest, dst_root / MANIFEST_FILE)
    write_csv(pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)), dst_root / SKIPPED_FILE)
    if examples:
        _preview(examples, Path(preview) if preview is not None else dst_root / PREVIEW_FILE)
    reasons = pd.Series([s["reason"] for s in skipped], dtype=object).value_counts().to_dict()
    logger.info(
        "simulate-masks: %d masked images written to %s; skipped %s", len(manifest), dst_root, reasons or "none"
    )
    return manifest


def _check_choices(source_kind: str, on_no_face: str, limit: Optional[int]) -> None:
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"source kind {source_kind!r} is invalid; valid: {', '.join(SOURCE_KINDS)}")
    if on_no_face not in ON_NO_FACE:
        raise ValueError(f"on_no_face {on_no_face!r} is invalid; valid: {', '.join(ON_NO_FACE)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit!r} is invalid; valid: an integer >= 1, or none for every image")


def _check_destination(src_root: str, dst_root: Path, source_kind: str, overwrite: bool) -> str:
    """Refuse a missing source, an output overlapping it, a non-empty output (unless
    ``overwrite``); return the folder the output mirrors (a manifest's folder for
    ``manifest``, else the source root)."""
    if not os.path.exists(src_root):
        raise FileNotFoundError(f"source {src_root} does not exist")
    base = os.path.dirname(os.path.abspath(src_root)) if source_kind == "manifest" else src_root
    src_real, dst_real = os.path.realpath(base), os.path.realpath(dst_root)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep) or src_real.startswith(dst_real + os.sep):
        raise ValueError(f"output {dst_root} overlaps the source {base}; choose a folder outside it")
    if dst_root.exists() and any(dst_root.iterdir()) and not overwrite:
        raise ValueError(f"output {dst_root} is not empty; choose an empty folder or pass overwrite")
    return base


def _identity(value: Any, source_kind: str) -> str:
    """The identity as the source names it, without the ``<source>/`` prefix the reader adds."""
    return str(value).removeprefix(f"{source_kind}/")


def _images_to_mask(
    src_root: str, source_kind: str, workers: int, limit: Optional[int]
) -> tuple[pd.DataFrame, list[dict]]:
    """The source's unmasked images (the first ``limit``, sorted by path) and the
    ``already_masked`` rows of skipped.csv for the others."""
    from maskface.config import parse_section
    from maskface.data.datasets import DataConfig, build_manifest

    config = parse_section(DataConfig, {"source": source_kind, "root": src_root, "workers": max(1, int(workers))}, "data")
    images = build_manifest(config).manifest
    masked = images[images["masked"]]
    skipped = [
        {"source_path": p, "identity": _identity(i, source_kind), "reason": "already_masked"}
        for p, i in zip(masked["path"], masked["identity"])
    ]
    todo = images[~images["masked"]].reset_index(drop=True)
    if limit is not None:
        todo = todo.head(limit)
    if todo.empty:
        raise ValueError(f"{src_root}: no unmasked image to put a mask on ({len(images)} images, all masked)")
    return todo, skipped


def _template_landmarks(size: tuple[int, int]) -> np.ndarray:
    """The facenet template's landmarks stretched over a whole ``(width, height)`` picture,
    as if it were a template-framed face crop."""
    from maskface.face.geometry import template_points

    width, height = size
    return (template_points("facenet", 1000) + 0.5) / 1000.0 * np.array([width, height]) - 0.5


def _landmarks_for(picture: Image.Image, detection: Detection, on_no_face: str) -> Optional[tuple[np.ndarray, str]]:
    """(landmarks, landmark_source) to draw the mask from, or None to skip the picture."""
    if detection.detected:
        return detection.landmarks, "mtcnn"
    if on_no_face == "template":
        return _template_landmarks(picture.size), "template"
    return None


def _draw_and_save(
    picture: Image.Image, landmarks: np.ndarray, relative: str, source_mode: str,
    dst_root: Path, styles: Sequence[str], seed: int,
) -> str:
    """Draw the file's own seeded mask, save it at ``dst_root/relative``; return its style."""
    rng = _file_rng(seed, relative)
    style = styles[int(rng.integers(len(styles)))]
    masked, _ = draw_mask(picture, landmarks, style, rng)
    _save(masked, dst_root / relative, source_mode)
    return style


def _manifest_row(
    relative: str, identity: str, style: str, source_path: str, dst_root: Path,
    landmarks: np.ndarray, landmark_source: str, detection: Detection,
) -> dict:
    row = {
        "path": relative,
        "identity": identity,
        "masked": True,
        "mask_style": style,
        "source_path": source_path,
        # Relative to DST, as `path` is: it still resolves when the reader runs elsewhere.
        "derived_from": Path(os.path.relpath(os.path.abspath(source_path), os.path.abspath(dst_root))).as_posix(),
        "landmark_source": landmark_source,
        "confidence": round(detection.confidence, 6) if detection.detected else np.nan,
    }
    row.update({c: round(float(v), 2) for c, v in zip(LANDMARK_COLUMNS, np.asarray(landmarks).reshape(-1))})
    return row


def _mask_all(
    todo: pd.DataFrame, source_kind: str, base: str, dst_root: Path, detector: FaceDetector,
    styles: Sequence[str], seed: int, on_no_face: str,
) -> tuple[list[dict], list[dict], list[tuple[Image.Image, Image.Image]]]:
    """Detect, mask and save every image of ``todo``, in detector-sized batches.

    Returns the manifest rows, the ``no_face`` rows of skipped.csv, and up to 8
    (source, masked) pictures for the preview.
    """
    from maskface.imageio import load_rgb

    rows: list[dict] = []
    skipped: list[dict] = []
    examples: list[tuple[Image.Image, Image.Image]] = []
    batch = detector.batch_size
    with tqdm(total=len(todo), desc="simulating masks", unit="img") as progress:
        for start in range(0, len(todo), batch):
            chunk = todo.iloc[start : start + batch]
            pictures = [load_rgb(p) for p in chunk["path"]]
            detections = detector.detect(pictures)
            for (_, item), picture, detection in zip(chunk.iterrows(), pictures, detections):
                identity = _identity(item["identity"], source_kind)
                relative = _relative(str(item["path"]), base)
                found = _landmarks_for(picture, detection, on_no_face)
                if found is None:
                    skipped.append({"source_path": item["path"], "identity": identity, "reason": "no_face"})
                else:
                    landmarks, landmark_source = found
                    style = _draw_and_save(picture, landmarks, relative, str(item["mode"]), dst_root, styles, seed)
                    rows.append(
                        _manifest_row(relative, identity, style, item["path"], dst_root, landmarks, landmark_source, detection)
                    )
                    if len(examples) < 8:
                        examples.append((picture, Image.open(dst_root / relative).convert("RGB")))
                progress.update(1)
    return rows, skipped, examples


def _preview(examples: list[tuple[Image.Image, Image.Image]], destination: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(examples), figsize=(1.6 * len(examples), 3.6), squeeze=False)
    for column, (before, after) in enumerate(examples):
        axes[0, column].imshow(before)
        axes[1, column].imshow(after)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("source", fontsize=8)
    axes[1, 0].set_ylabel("simulated mask", fontsize=8)
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=90)
    plt.close(figure)


def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        styles = [s.strip() for s in args.styles.split(",") if s.strip()]
        thresholds = [float(t) for t in args.thresholds.split(",")]
        manifest = simulate_masks(
            args.src,
            args.dst,
            args.source,
            styles,
            args.seed,
            device=args.device,
            pad=args.pad,
            thresholds=thresholds,
            on_no_face=args.on_no_face,
            limit=args.limit,
            preview=args.preview,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    except (ValueError, OSError, RuntimeError) as error:
        print(f"maskface simulate-masks: error: {one_line(error)}", file=sys.stderr)
        return 2
    counts = manifest["mask_style"].value_counts().sort_index()
    print(
        f"{len(manifest)} masked images written to {args.dst} "
        f"({', '.join(f'{style} {count}' for style, count in counts.items())}); see {Path(args.dst) / MANIFEST_FILE}"
    )
    return 0


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``simulate-masks SRC DST`` on an argparse subparsers object.

    The parser sets ``func``; ``args.func(args)`` returns the exit code (0 success, 2 a
    one-line error on stderr).
    """
    parser = subparsers.add_parser(
        "simulate-masks",
        help="put simulated masks on an unmasked dataset (as the SMFRD was made)",
        description=(
            "Detect the 5 landmarks of every unmasked face in SRC and write a copy with a procedural "
            "mask (surgical, N95, cloth) under DST at the same relative path, plus manifest.csv, "
            "skipped.csv and a preview sheet."
        ),
    )
    parser.add_argument("src", metavar="SRC", help="dataset folder (a CSV file for --source manifest)")
    parser.add_argument("dst", metavar="DST", help="output folder (empty, outside SRC)")
    parser.add_argument("--source", default="lfw", choices=SOURCE_KINDS, help="layout of SRC (default: lfw)")
    parser.add_argument("--styles", default=",".join(MASK_STYLES), help=f"comma-separated mask styles (default: {','.join(MASK_STYLES)})")
    parser.add_argument("--seed", type=int, default=0, help="fixes every image's mask (default: 0)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="MTCNN device (default: auto)")
    parser.add_argument("--pad", type=float, default=0.3, help="border added before detection, fraction of the side (default: 0.3)")
    parser.add_argument("--thresholds", default="0.2,0.3,0.3", help="MTCNN stage thresholds (default: 0.2,0.3,0.3)")
    parser.add_argument("--on-no-face", default="skip", choices=ON_NO_FACE, help="no face found: skip, or use the template landmarks")
    parser.add_argument("--limit", type=int, default=None, help="only the first N unmasked images")
    parser.add_argument("--preview", type=Path, default=None, help=f"preview sheet path (default: DST/{PREVIEW_FILE})")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty DST")
    parser.add_argument("--workers", type=int, default=2, help="processes validating SRC (default: 2)")
    parser.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m maskface.data.simulate SRC DST ...``: the same as ``maskface simulate-masks``."""
    from maskface.cli import main as maskface_main

    return maskface_main(["simulate-masks", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
