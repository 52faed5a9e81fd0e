"""The self-contained model folder: everything inference needs, nothing from params.yaml.

Layout (``models/<backbone>/`` as the pipeline writes it, or a copy made by
:func:`export_model_folder`)::

    backbone/model.pt          weights (a plain state dict, loaded with weights_only=True)
    backbone/model.json        backbone name, embedding size, input size, weights it started from
    backbone/preprocess.json   {"input_size": S, "crop": {mode, keep_ratio, ...}} from the crop stage
    backbone/training.json     the fine-tuning summary (informative only)
    classifier/classifier.json {"classifier": name, "settings": {...}, "threshold": t}
    classifier/classifier.npz  the fitted pair classifier as arrays + JSON (absent for "cosine")
    manifest.json              exported copies only: format version, maskface version, sha256 of every file

Inference preprocesses through :func:`preprocess_image`, which calls the crop stage's own
transform (:func:`maskface.face.crop.crop_details`) with the settings the crop stage recorded,
so a picture reaches the network as exactly the same uint8 tensor in training and in use.

Every user-facing failure here is a :class:`ModelFolderError` or :class:`ImageError`
(both :class:`maskface.errors.UserError` and ``ValueError``) whose message is one line
naming the file and the reason.

Loading a folder from someone else never runs code from it: JSON files, weights through
``torch.load(weights_only=True)``, the classifier through
:func:`maskface.evaluation.classify.read_classifier_file` (arrays with ``allow_pickle=False``,
estimators from an allow-list). A pickled ``classifier.joblib`` from maskface before
classifier format 2 is refused, never unpickled; any other file in the folder is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskface import __version__
from maskface.artifacts import CLASSIFIER_META_FILE, file_sha256
from maskface.errors import InputError, UserError
from maskface.face import uses_landmarks
from maskface.imageio import load_rgb, sniff_format, to_rgb
from maskface.text import one_line

logger = logging.getLogger(__name__)

FORMAT_NAME = "maskface-model"
FORMAT_VERSION = 1
# Format versions this maskface reads; a folder written by a newer format is refused.
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
BACKBONE_DIR = "backbone"
CLASSIFIER_DIR = "classifier"
MODEL_FILE = "model.pt"
MODEL_CONFIG_FILE = "model.json"
PREPROCESS_FILE = "preprocess.json"
TRAINING_FILE = "training.json"
CLASSIFIER_FILE = "classifier.npz"
# What maskface wrote before classifier format 2: a pickle, refused rather than loaded.
LEGACY_PICKLE_FILE = "classifier.joblib"
# classifier.json "format" values and "pair_features" layouts this maskface scores
# (see maskface.evaluation.classify.pair_features: [|a - b|, a * b]); absent keys mean the first ones.
SUPPORTED_CLASSIFIER_FORMATS = (1, 2)
SUPPORTED_PAIR_FEATURES = ("abs_diff_product",)
# The files that decide an embedding: two folders agreeing on these embed identically.
EMBEDDER_FILES = (
    f"{BACKBONE_DIR}/{MODEL_FILE}",
    f"{BACKBONE_DIR}/{MODEL_CONFIG_FILE}",
    f"{BACKBONE_DIR}/{PREPROCESS_FILE}",
)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


class ModelFolderError(UserError, ValueError):
    """A model folder is missing files, corrupt, or from an incompatible version (one-line message)."""


class ImageError(UserError, ValueError):
    """One input image cannot be used; ``source`` names it and ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


# --------------------------------------------------------------------------- images


def read_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open one image file as RGB through :func:`maskface.imageio.load_rgb` (the crop stage's reader).

    Raises :class:`ImageError` with reason ``missing``, ``not a file``, ``unreadable``,
    ``empty file``, ``not an image``, ``truncated or corrupt`` or ``too large``.
    """
    name = os.fspath(path)
    if not os.path.lexists(name):
        raise ImageError(name, "missing: no such file")
    if not os.path.exists(name):
        raise ImageError(name, "unreadable: broken symbolic link")
    if os.path.isdir(name):
        raise ImageError(name, "not a file: it is a folder")
    if not os.path.isfile(name):
        raise ImageError(name, "not a file: not a regular file")
    if os.path.getsize(name) == 0:
        raise ImageError(name, "empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_rgb(name)
    except PermissionError as error:
        raise ImageError(name, f"unreadable: {error.strerror or error}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(name, f"too large: {one_line(error)}") from None
    except UnidentifiedImageError:
        with open(name, "rb") as handle:
            signature = sniff_format(handle.read(16))
        if signature is None:
            raise ImageError(name, "not an image: no known image signature") from None
        raise ImageError(name, f"truncated or corrupt: {signature} signature but the header does not parse") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated pixel data as OSError ("image file is truncated") and some
        # malformed headers as SyntaxError/ValueError.
        raise ImageError(name, f"truncated or corrupt: {one_line(error)}") from None


def describe_input(image: ImageInput, position: Optional[int] = None) -> str:
    """A name for error messages: the path, or ``image #k (PIL/array)``."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    kind = "PIL image" if isinstance(image, Image.Image) else "array"
    return f"{kind} #{position}" if position is not None else kind


def as_rgb(image: ImageInput, position: Optional[int] = None) -> Image.Image:
    """A path, a PIL image (any mode) or a uint8 array -> a PIL RGB image.

    Arrays are (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA, dtype uint8, as
    ``np.asarray(PIL image)`` gives them; they are converted with the same
    :func:`maskface.imageio.to_rgb` the pipeline uses.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except (OSError, ValueError) as error:
            raise ImageError(describe_input(image, position), f"cannot convert to RGB: {one_line(error)}") from None
    if isinstance(image, np.ndarray):
        name = describe_input(image, position)
        if image.dtype != np.uint8:
            raise ImageError(name, f"dtype {image.dtype} is not supported; valid: uint8 pixels 0-255")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            if min(image.shape[:2]) < 1:
                raise ImageError(name, f"shape {image.shape} has no pixels")
            return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
        raise ImageError(name, f"shape {image.shape} is not supported; valid: (H, W), (H, W, 3) RGB, (H, W, 4) RGBA")
    raise ImageError(
        describe_input(image, position) if position is not None else type(image).__name__,
        f"type {type(image).__name__} is not supported; valid: a path, a PIL image or a uint8 array",
    )


def needs_face(settings: Mapping[str, Any]) -> bool:
    """Whether preprocessing finds the face first: alignment or a mode placed from the
    landmarks (``eyes``, ``mask``, ``nose``), unless the model was trained without landmarks
    (``landmarks: none``)."""
    crop = settings["crop"]
    return uses_landmarks(crop) and crop.get("landmarks", "mtcnn") != "none"


def preprocess_image(image: ImageInput, settings: Mapping[str, Any]) -> np.ndarray:
    """An image (path, PIL or array, see :func:`as_rgb`) -> uint8 (3, S, S) network input.

    ``settings`` is preprocess.json: ``{"input_size": S, "crop": {"mode": ..., ...}}``. The
    transform is the crop stage's own (:func:`maskface.face.crop.crop_details`, what
    :func:`maskface.face.crop.preprocess_face` and :func:`maskface.face.crop.crop_dataset` run),
    followed by the same HWC -> CHW transpose, so every crop mode flows through unchanged.
    Where the settings need the face's landmarks they are found with the settings' own
    detector (:func:`maskface.face.crop.detect_for_settings`); a photo without a face is an
    :class:`ImageError` here, where training fell back to the unaligned photo.
    """
    from maskface.face.crop import crop_details, detect_for_settings

    rgb = as_rgb(image)
    crop = settings["crop"]
    landmarks = None
    if needs_face(settings):
        landmarks = detect_for_settings(rgb, crop)
        if landmarks is None:
            what = "alignment" if crop.get("align") else f"crop mode {crop.get('mode')!r}"
            raise ImageError(describe_input(image), f"no face found ({what} needs the face's landmarks)")
    face = crop_details(rgb, landmarks, crop, int(settings["input_size"]))
    return np.ascontiguousarray(face.image.transpose(2, 0, 1))


# --------------------------------------------------------------------------- folder


@dataclass
class ModelFolder:
    """A checked model folder; ``manifest`` is None for a pipeline folder (no manifest.json)."""

    root: Path
    model_config: dict
    preprocess: dict
    classifier_meta: dict
    training: Optional[dict] = None
    manifest: Optional[dict] = None
    _fingerprint: Optional[str] = field(default=None, repr=False)

    @property
    def backbone(self) -> str:
        return str(self.model_config["backbone"])

    @property
    def classifier(self) -> str:
        return str(self.classifier_meta["classifier"])

    @property
    def threshold(self) -> float:
        return float(self.classifier_meta["threshold"])

    @property
    def input_size(self) -> int:
        return int(self.preprocess["input_size"])

    @property
    def flip(self) -> bool:
        """Whether embeddings are flip-augmented (image plus mirror image), as the embed stage
        made the ones the threshold was chosen on; folders from before the option: False."""
        return bool(self.classifier_meta.get("embedding", {}).get("flip", False))

    @property
    def shift(self) -> float:
        """Shift test-time augmentation's step (share of the side; 0 = off), as the embed stage
        made the embeddings the threshold was chosen on; folders from before the option: 0."""
        return float(self.classifier_meta.get("embedding", {}).get("shift", 0.0) or 0.0)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def fingerprint(self) -> str:
        """sha256 over the files that decide an embedding (weights, model.json, preprocess.json).

        Two folders with the same fingerprint turn every image into the same embedding, so a
        gallery enrolled with one can be searched with the other.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for relative in EMBEDDER_FILES:
                known = (self.manifest or {}).get("files", {}).get(relative)
                digest.update(f"{relative}\0{known or file_sha256(self.root / relative)}\n".encode())
            if self.flip:  # flip changes every embedding; folders without it keep their old fingerprint
                digest.update(b"flip\n")
            if self.shift:
                digest.update(f"shift {self.shift!r}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def summary(self) -> dict:
        """JSON-ready description (backbone, sizes, crop, classifier, threshold)."""
        return {
            "model_dir": str(self.root),
            "backbone": self.backbone,
            "embedding_size": int(self.model_config["embedding_size"]),
            "input_size": self.input_size,
            "crop": self.preprocess["crop"],
            "classifier": self.classifier,
            "threshold": self.threshold,
            "flip": self.flip,
            "shift": self.shift,
            "started_from": self.model_config.get("started_from"),
            "format_version": (self.manifest or {}).get("format_version"),
        }


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; not a complete maskface model folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{path}: unreadable JSON: {one_line(error)}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _require_keys(data: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise ModelFolderError(
            f"{path}: lacks {', '.join(missing)}; this folder is from an incompatible maskface version"
        )


def check_manifest(root: Path) -> Optional[dict]:
    """Verify manifest.json (format version, every file's sha256); None when there is none."""
    path = root / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = _read_json(path)
    if manifest.get("format") != FORMAT_NAME:
        raise ModelFolderError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFolderError(
            f"{path}: format version {version!r} is incompatible with maskface {__version__}, "
            f"which reads format version {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} "
            f"(folder written by maskface {manifest.get('maskface_version', 'unknown')})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelFolderError(f"{path}: no file checksums listed")
    for relative, expected in sorted(files.items()):
        target = root / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ModelFolderError(f"{path}: lists {relative!r}, which is outside the folder")
        if not target.is_file():
            raise ModelFolderError(f"{target}: missing; manifest.json lists it")
        actual = file_sha256(target)
        if actual != expected:
            raise ModelFolderError(
                f"{target}: checksum mismatch (sha256 {actual[:12]}..., manifest.json says {str(expected)[:12]}...); "
                "the file is corrupt or was changed after export"
            )
    return manifest


def _is_parameter_free(meta: Mapping[str, Any]) -> bool:
    # classify writes score "cosine" for every classifier the registry marks learned=False;
    # format-1 folders predate the field and name their classifier only.
    return meta.get("score", "cosine" if meta.get("classifier") == "cosine" else None) == "cosine"


def _model_file(meta: Mapping[str, Any]) -> str:
    default = CLASSIFIER_FILE if meta.get("format", 1) >= 2 else LEGACY_PICKLE_FILE
    name = meta.get("model_file") or default
    # The file must sit in classifier/ itself: a manifest-free folder is not checksummed.
    return Path(str(name)).name


def _refuse_pickled_classifier(meta: Mapping[str, Any], meta_path: Path) -> None:
    """A learned classifier stored as a pickle (format 1) would run code when loaded: refuse it."""
    name = _model_file(meta)
    if meta.get("format", 1) < 2 or not name.endswith(".npz"):
        raise ModelFolderError(
            f"{meta_path.parent / name}: a pickled classifier (maskface classifier format {meta.get('format', 1)}); "
            "it is not loaded because unpickling runs code from the file; rebuild the folder with this maskface "
            "(dvc repro classify, then maskface export)"
        )


def _check_backbone(model_config: Mapping[str, Any], path: Path) -> None:
    from maskface.models.backbones import available_backbones

    if model_config["backbone"] not in available_backbones():
        raise ModelFolderError(
            f"{path}: backbone {model_config['backbone']!r} is unknown to maskface "
            f"{__version__}; valid: {', '.join(available_backbones())}"
        )


def read_model_folder(path: Union[str, os.PathLike], check_backbone: bool = True) -> ModelFolder:
    """Check and read a model folder's metadata; loads no weights.

    Raises :class:`ModelFolderError` (one line naming the file) for a missing folder, a
    missing or malformed file, an incompatible format version or a checksum mismatch.
    ``check_backbone=False`` leaves the backbone name to :func:`load_embedder`: checking it
    needs the backbone registry, which imports torch (what a lazy load postpones).
    """
    root = Path(path)
    if not root.exists():
        raise ModelFolderError(f"{root}: model folder missing")
    if not root.is_dir():
        raise ModelFolderError(f"{root}: not a folder; --model takes a model folder such as models/facenet")
    if (root / MODEL_CONFIG_FILE).is_file() and not (root / BACKBONE_DIR).is_dir():
        raise ModelFolderError(f"{root}: is the backbone/ part of a model folder; pass its parent ({root.parent})")
    manifest = check_manifest(root)
    backbone_dir = root / BACKBONE_DIR
    model_config = _read_json(backbone_dir / MODEL_CONFIG_FILE)
    _require_keys(model_config, ("backbone", "embedding_size", "input_size"), backbone_dir / MODEL_CONFIG_FILE)
    if check_backbone:
        _check_backbone(model_config, backbone_dir / MODEL_CONFIG_FILE)
    preprocess = _read_json(backbone_dir / PREPROCESS_FILE)
    _require_keys(preprocess, ("input_size", "crop"), backbone_dir / PREPROCESS_FILE)
    if not isinstance(preprocess["crop"], dict) or "mode" not in preprocess["crop"]:
        raise ModelFolderError(f"{backbone_dir / PREPROCESS_FILE}: crop must be an object with a mode")
    if int(preprocess["input_size"]) != int(model_config["input_size"]):
        raise ModelFolderError(
            f"{backbone_dir / PREPROCESS_FILE}: input_size {preprocess['input_size']} differs from "
            f"model.json's {model_config['input_size']}; the folder mixes two trainings"
        )
    if not (backbone_dir / MODEL_FILE).is_file():
        raise ModelFolderError(f"{backbone_dir / MODEL_FILE}: missing; not a complete maskface model folder")
    classifier_dir = root / CLASSIFIER_DIR
    classifier_meta = _read_json(classifier_dir / CLASSIFIER_META_FILE)
    _require_keys(classifier_meta, ("classifier", "threshold"), classifier_dir / CLASSIFIER_META_FILE)
    try:
        threshold = float(classifier_meta["threshold"])
    except (TypeError, ValueError):
        threshold = float("nan")
    if not np.isfinite(threshold):
        raise ModelFolderError(
            f"{classifier_dir / CLASSIFIER_META_FILE}: threshold {classifier_meta['threshold']!r} is not a finite number"
        )
    meta_path = classifier_dir / CLASSIFIER_META_FILE
    if classifier_meta.get("format", 1) not in SUPPORTED_CLASSIFIER_FORMATS:
        raise ModelFolderError(
            f"{meta_path}: classifier format {classifier_meta['format']!r} is incompatible with maskface {__version__} "
            f"(reads {', '.join(map(str, SUPPORTED_CLASSIFIER_FORMATS))})"
        )
    features = classifier_meta.get("pair_features")
    if features is not None and features not in SUPPORTED_PAIR_FEATURES:
        raise ModelFolderError(
            f"{meta_path}: pair features {features!r} are unknown to maskface {__version__}; valid: {', '.join(SUPPORTED_PAIR_FEATURES)}"
        )
    if not _is_parameter_free(classifier_meta):
        _refuse_pickled_classifier(classifier_meta, meta_path)
        fitted = classifier_dir / _model_file(classifier_meta)
        if not fitted.is_file():
            raise ModelFolderError(f"{fitted}: missing; classifier {classifier_meta['classifier']!r} needs its fitted file")
    training_path = backbone_dir / TRAINING_FILE
    training = _read_json(training_path) if training_path.is_file() else None
    return ModelFolder(root, model_config, preprocess, classifier_meta, training, manifest)


def load_embedder(folder: ModelFolder, device: Any = "cpu"):
    """The folder's :class:`maskface.models.backbones.FaceEmbedder` in eval mode on ``device``."""
    import pickle

    from maskface.inference.embed import load_model

    _check_backbone(folder.model_config, folder.root / BACKBONE_DIR / MODEL_CONFIG_FILE)
    try:
        return load_model(folder.root / BACKBONE_DIR, device)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, OSError) as error:
        raise ModelFolderError(
            f"{folder.root / BACKBONE_DIR / MODEL_FILE}: cannot load the weights: {one_line(error)[:300]}"
        ) from None


class PairScorer:
    """Scores embedding pairs the way the classify stage did: higher = more likely the same person.

    Learned classifiers see :func:`maskface.evaluation.classify.pair_features` and score
    ``predict_proba(...)[:, 1]``; ``cosine`` scores the dot product of the unit embeddings.
    """

    def __init__(self, name: str, threshold: float, model: Any = None):
        self.name = name
        self.threshold = float(threshold)
        self.model = model

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, E) x (N, E) unit embeddings -> (N,) float64 scores."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float32))
        b = np.atleast_2d(np.asarray(b, dtype=np.float32))
        if a.shape != b.shape:
            raise InputError(f"embedding shapes differ: {a.shape} vs {b.shape}")
        if len(a) == 0:
            return np.empty(0, dtype=np.float64)
        # The classify stage's own scoring function, so inference cannot drift from it.
        from maskface.evaluation.classify import score_pairs

        return np.asarray(score_pairs(self.model, a, b), dtype=np.float64)


def load_pair_scorer(folder: ModelFolder) -> PairScorer:
    """The folder's pair classifier with its chosen threshold.

    The classifier file holds arrays and JSON only (see :func:`maskface.evaluation.classify.read_classifier_file`):
    loading it runs no code from the folder.
    """
    if _is_parameter_free(folder.classifier_meta):
        return PairScorer(folder.classifier, folder.threshold)
    from maskface.evaluation.classify import pair_features, read_classifier_file

    meta_path = folder.root / CLASSIFIER_DIR / CLASSIFIER_META_FILE
    _refuse_pickled_classifier(folder.classifier_meta, meta_path)
    path = folder.root / CLASSIFIER_DIR / _model_file(folder.classifier_meta)
    try:
        model = read_classifier_file(path)
    except UserError as error:
        raise ModelFolderError(one_line(error)) from None
    if not hasattr(model, "predict_proba"):
        raise ModelFolderError(f"{path}: holds a {type(model).__name__}, which has no predict_proba")
    size = int(folder.model_config["embedding_size"])
    try:
        # One probe pair: shapes that do not fit the embedding size fail here, naming the file.
        probe = model.predict_proba(pair_features(np.zeros((1, size)), np.zeros((1, size))))
    except (ValueError, IndexError, AttributeError) as error:
        raise ModelFolderError(
            f"{path}: the classifier does not score {size}-dimensional embeddings: {one_line(error)[:300]}"
        ) from None
    if probe.shape != (1, 2):
        raise ModelFolderError(f"{path}: the classifier gives {probe.shape[1]} classes; a pair classifier gives 2 (different, same)")
    return PairScorer(folder.classifier, folder.threshold, model)


# --------------------------------------------------------------------------- export


def folder_files(root: Path) -> list[str]:
    """The model files under ``root`` (POSIX relative paths, sorted), manifest.json excluded."""
    files = []
    for sub in (BACKBONE_DIR, CLASSIFIER_DIR):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                files.append(path.relative_to(root).as_posix())
    return files


def build_manifest(root: Path, folder: ModelFolder) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "maskface_version": __version__,
        "backbone": folder.backbone,
        "classifier": folder.classifier,
        "threshold": folder.threshold,
        "files": {relative: file_sha256(root / relative) for relative in folder_files(root)},
    }


def _protected_folders() -> list[tuple[Path, str]]:
    """Folders no export may replace, however they look: the working folder, home, the root."""
    folders = [(Path.cwd().resolve(), "the working folder"), (Path(Path.cwd().anchor).resolve(), "the file-system root")]
    home = os.path.expanduser("~")
    if home and home != "~":
        folders.append((Path(home).resolve(), "your home folder"))
    return folders


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_export_target(source: Path, destination: Path, overwrite: bool) -> None:
    """Refuse an export target that would lose anything not made by a maskface export.

    ``destination`` may never be the source, inside it, or a folder holding it; nor the
    working folder, home or the root (or a folder holding them). An existing
    ``destination`` is replaced only with ``overwrite`` and only when it is an exported
    model folder: a maskface manifest.json and no file that manifest does not list.
    """
    source_real, target_real = source.resolve(), destination.resolve()
    if _is_within(source_real, target_real):
        what = "the source folder itself" if source_real == target_real else f"a folder holding the source {source}"
        raise ModelFolderError(f"--out {destination}: is {what}; exporting there would destroy the source; choose another --out")
    if _is_within(target_real, source_real):
        raise ModelFolderError(f"--out {destination}: is inside the source folder {source}; choose a folder outside it")
    for folder, name in _protected_folders():
        if _is_within(folder, target_real):
            what = name if folder == target_real else f"a folder holding {name} ({folder})"
            raise ModelFolderError(f"--out {destination}: is {what}; maskface never replaces it; choose a new folder")
    if not os.path.lexists(destination):
        return
    if not overwrite:
        raise ModelFolderError(f"--out {destination}: already exists; choose another --out or pass --overwrite")
    if destination.is_symlink() or not destination.is_dir():
        kind = "a symbolic link" if destination.is_symlink() else "not a folder"
        raise ModelFolderError(f"--out {destination}: is {kind}; --overwrite replaces only a folder made by maskface export")
    manifest_path = destination / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or not isinstance(manifest.get("files"), dict):
        raise ModelFolderError(
            f"--out {destination}: holds no maskface manifest.json, so it is not a folder made by maskface export; "
            "--overwrite replaces only such a folder; choose a new --out or remove it yourself"
        )
    listed = set(manifest["files"]) | {MANIFEST_FILE}
    for path in sorted(destination.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(destination).as_posix()
        if relative not in listed:
            raise ModelFolderError(
                f"--out {destination}: holds {relative}, which its manifest.json does not list (not written by maskface export); "
                "--overwrite would delete it; move it away or choose a new --out"
            )


def export_model_folder(source: Union[str, os.PathLike], destination: Union[str, os.PathLike], overwrite: bool = False) -> dict:
    """Copy a model folder to ``destination`` and write its manifest.json; returns the manifest.

    The source is checked first (a corrupt folder is not exported) and the target by
    :func:`check_export_target` (``overwrite`` replaces only an earlier export). The copy is
    written in a hidden folder beside ``destination`` and renamed into place; an earlier
    export is moved aside first and deleted only once the new one is in place, so an
    interrupted export leaves the old folder (or nothing) behind, never half a folder.
    """
    import tempfile

    folder = read_model_folder(source)
    destination = Path(destination)
    check_export_target(folder.root, destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        for relative in folder_files(folder.root):
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder.root / relative, target)
        manifest = build_manifest(staging, folder)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s -> %s (%d files)", folder.root, destination, len(manifest["files"]))
    return manifest


def _swap_in(staging: Path, destination: Path) -> None:
    """Rename ``staging`` to ``destination``; an existing ``destination`` is moved aside, then deleted."""
    import tempfile

    if not os.path.lexists(destination):
        staging.rename(destination)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
    aside.rmdir()  # only the unique name is wanted; rename needs it free
    destination.rename(aside)
    try:
        staging.rename(destination)
    except BaseException:
        aside.rename(destination)
        raise
    shutil.rmtree(aside)
