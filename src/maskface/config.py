"""Typed, strict views of ``params.yaml``.

Each DVC stage reads only its own sections through these frozen dataclasses. An
unknown or misspelt key is an error that names the valid keys, so a typo can never
silently fall back to a default (the failure mode of EasyDict-style merges).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml

# invalid_param keeps its short local name: it is raised on almost every line below.
from maskface.errors import ConfigError
from maskface.errors import invalid_param as _fail

PAIR_TYPES = ("masked-unmasked", "masked-masked", "unmasked-unmasked")
CROP_MODES = ("none", "ratio", "eyes", "mask", "nose")
SPLIT_BY = ("identity", "image")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

# The top-level sections a stage may read besides one per registered classifier (its
# settings, see top_level_keys); anything else in params.yaml is a typo.
SECTIONS = ("data", "split", "crop", "backbones", "arcface", "finetune", "embed", "classifier", "classify", "evaluate")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(annotation):
        return parse_section(annotation, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, "a list")
        item_type = args[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, "an integer")
        return value
    if annotation is float:
        # YAML reads "1e-3" (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _fail(key, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, value, "a number")
        if not math.isfinite(float(value)):
            raise _fail(key, value, "a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        return value
    return value


def parse_section(cls: type, raw: Any, name: str):
    """Build the frozen dataclass ``cls`` from the params mapping ``raw`` (section ``name``).

    Missing keys take the dataclass defaults; unknown keys are refused.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params: {name} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"params: unknown key {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"valid keys of {name}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in raw.items()}
    instance = cls(**kwargs)
    instance.validate(name)
    return instance


class _Section:
    def validate(self, name: str) -> None:  # overridden where values have ranges
        return None


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_Section):
    """The embedded default dataset (see :mod:`maskface.synthetic`)."""

    identities: int = 24
    images_per_identity: int = 12
    masked_share: float = 0.4
    min_size: int = 112
    max_size: int = 160
    seed: int = 0

    def validate(self, name: str) -> None:
        if self.identities < 2:
            raise _fail(f"{name}.identities", self.identities, "an integer >= 2")
        if self.images_per_identity < 4:
            raise _fail(f"{name}.images_per_identity", self.images_per_identity, "an integer >= 4")
        if not 0.0 < self.masked_share < 1.0:
            raise _fail(f"{name}.masked_share", self.masked_share, "a number in (0, 1)")
        if not 64 <= self.min_size <= self.max_size:
            raise _fail(f"{name}.min_size/max_size", (self.min_size, self.max_size), "64 <= min_size <= max_size")


@dataclasses.dataclass(frozen=True)
class SplitConfig(_Section):
    ratios: tuple[float, ...] = (0.7, 0.1, 0.2)
    seed: int = 0
    by: str = "identity"
    pair_types: tuple[str, ...] = ("masked-unmasked",)
    max_genuine_per_identity: int = 20

    def validate(self, name: str) -> None:
        if len(self.ratios) != 3:
            raise _fail(f"{name}.ratios", list(self.ratios), "three numbers [train, val, test]")
        if any(not 0.0 < r < 1.0 for r in self.ratios):
            raise _fail(f"{name}.ratios", list(self.ratios), "each ratio in (0, 1)")
        if not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
            raise _fail(f"{name}.ratios", list(self.ratios), "ratios summing to 1")
        if self.by not in SPLIT_BY:
            raise _fail(f"{name}.by", self.by, ", ".join(SPLIT_BY))
        if not self.pair_types:
            raise _fail(f"{name}.pair_types", [], ", ".join(PAIR_TYPES))
        for pair_type in self.pair_types:
            if pair_type not in PAIR_TYPES:
                raise _fail(f"{name}.pair_types", pair_type, ", ".join(PAIR_TYPES))
        if self.max_genuine_per_identity < 1:
            raise _fail(f"{name}.max_genuine_per_identity", self.max_genuine_per_identity, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class CropConfig(_Section):
    """What the networks see of each face, and how faces are found and aligned.

    Modes (maskface.crop): ``none`` the whole face; ``ratio`` the top ``keep_ratio`` of the
    height; ``eyes`` everything above a line ``eye_line`` eye distances below the eyes;
    ``mask`` the whole face with the mask region blanked; ``nose`` the whole face with
    everything below the nose line (``nose_line`` eye distances below the nose) greyed, on
    masked and unmasked photos alike. Landmarks (maskface.geometry) are
    found once, in the split stage, unless ``landmarks`` is none; ``align`` and the modes
    ``eyes`` and ``mask`` need them, the filter needs MTCNN's.
    """

    mode: str = "none"
    keep_ratio: float = 0.5  # ratio mode: share of the height kept from the top (0.5 = the study)
    preview_images: int = 8
    align: bool = False  # similarity-align each face to `template` from its landmarks
    align_points: str = "eyes"  # eyes | all | auto (all five for unmasked, eyes for masked images)
    template: str = "facenet"  # facenet (loose) | arcface (tight, insightface) | auto (each backbone's own)
    eye_line: float = 0.4  # eyes mode: the cut, in eye distances below the eye line
    blank: str = "mean"  # mask mode: fill the mask with the image mean | constant (blank_value)
    blank_value: int = 0  # mask mode with blank: constant, grey level 0-255
    blank_without_mask: bool = True  # mask mode, no mask found: blank where a mask would be
    nose_line: float = 0.0  # nose mode: grey below this many eye distances under the nose tip
    landmarks: str = "none"  # none (no detection) | mtcnn | ground_truth (synthetic only) | auto (either, by data.source)
    detect_pad: float = 0.3  # border added before detection, fraction of the longer side
    detect_thresholds: tuple[float, ...] = (0.2, 0.3, 0.3)  # MTCNN P/R/O-Net thresholds
    detect_min_face: int = 20  # smallest face searched for, pixels
    detect_batch_size: int = 16
    detect_device: str = "auto"
    filter: bool = False  # drop images without a face or below min_confidence (split stage)
    min_confidence: float = 0.9  # MTCNN face probability a kept image needs when filtering

    # Not fields (no annotation): the valid choices, repeated here so that reading params
    # never imports the geometry code.
    ALIGN_POINTS = ("eyes", "all", "auto")
    TEMPLATES = ("facenet", "arcface", "auto")
    BLANKS = ("mean", "constant")
    LANDMARK_SOURCES = ("none", "mtcnn", "ground_truth", "auto")

    def for_source(self, source: str) -> "CropConfig":
        """``landmarks: auto`` made concrete for ``data.source``: the renderer's ground truth for
        synthetic data, MTCNN for real photos (the same alignment code either way)."""
        if self.landmarks != "auto":
            return self
        return dataclasses.replace(self, landmarks="ground_truth" if source == "synthetic" else "mtcnn")

    @property
    def needs_landmarks(self) -> bool:
        """Whether the split stage finds landmarks (``landmarks`` is not none)."""
        return self.landmarks != "none"

    def validate(self, name: str) -> None:
        if self.mode not in CROP_MODES:
            raise _fail(f"{name}.mode", self.mode, ", ".join(CROP_MODES))
        if not 0.0 < self.keep_ratio <= 1.0:
            raise _fail(f"{name}.keep_ratio", self.keep_ratio, "a number in (0, 1]")
        if self.preview_images < 1:
            raise _fail(f"{name}.preview_images", self.preview_images, "an integer >= 1")
        if self.align_points not in self.ALIGN_POINTS:
            raise _fail(f"{name}.align_points", self.align_points, ", ".join(self.ALIGN_POINTS))
        if self.template not in self.TEMPLATES:
            raise _fail(f"{name}.template", self.template, ", ".join(self.TEMPLATES))
        if not 0.1 <= self.eye_line <= 2.0:
            raise _fail(f"{name}.eye_line", self.eye_line, "a number in [0.1, 2] (eye distances below the eyes)")
        if self.blank not in self.BLANKS:
            raise _fail(f"{name}.blank", self.blank, ", ".join(self.BLANKS))
        if not 0 <= self.blank_value <= 255:
            raise _fail(f"{name}.blank_value", self.blank_value, "an integer in [0, 255]")
        if self.landmarks not in self.LANDMARK_SOURCES:
            raise _fail(f"{name}.landmarks", self.landmarks, ", ".join(self.LANDMARK_SOURCES))
        if self.filter and self.landmarks not in ("mtcnn", "auto"):
            raise _fail(f"{name}.landmarks", self.landmarks, f"mtcnn while {name}.filter is true (it filters on MTCNN's confidence)")
        if not -1.0 <= self.nose_line <= 1.0:
            raise _fail(f"{name}.nose_line", self.nose_line, "a number in [-1, 1] (eye distances below the nose)")
        users = [f"{name}.align is true"] if self.align else []
        if self.mode in ("eyes", "mask", "nose"):
            users.append(f"{name}.mode is {self.mode}")
        if users and self.landmarks == "none":
            raise _fail(f"{name}.landmarks", self.landmarks, f"mtcnn or ground_truth (synthetic data) while {' and '.join(users)}")
        if not 0.0 <= self.detect_pad <= 2.0:
            raise _fail(f"{name}.detect_pad", self.detect_pad, "a number in [0, 2] (fraction of the image side)")
        if len(self.detect_thresholds) != 3 or any(not 0.0 < t < 1.0 for t in self.detect_thresholds):
            raise _fail(f"{name}.detect_thresholds", list(self.detect_thresholds), "three probabilities in (0, 1)")
        if self.detect_min_face < 12:
            raise _fail(f"{name}.detect_min_face", self.detect_min_face, "an integer >= 12 (pixels)")
        if self.detect_batch_size < 1:
            raise _fail(f"{name}.detect_batch_size", self.detect_batch_size, "an integer >= 1")
        if self.detect_device not in DEVICES:
            raise _fail(f"{name}.detect_device", self.detect_device, ", ".join(DEVICES))
        if not 0.0 <= self.min_confidence < 1.0:
            raise _fail(f"{name}.min_confidence", self.min_confidence, "a probability in [0, 1)")


@dataclasses.dataclass(frozen=True)
class BackboneConfig(_Section):
    """One entry of the ``backbones`` mapping; the mapping key is the registry name."""

    weights: str = "none"
    input_size: Optional[int] = None  # None: the registry's own input size
    embedding_size: int = 128
    epochs: int = 3
    lr: float = 1e-3
    head_lr: Optional[float] = None  # None: same as lr
    weight_decay: float = 5e-4
    batch_size: int = 32
    train_layers: str = "all"
    # Keep pretrained batch-norm statistics; ignored for weights: none (nothing to keep).
    freeze_bn_stats: bool = True
    optimizer: str = "adamw"  # adamw | sgd (with momentum, Nesterov)
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to 0 at the last epoch
    # identity: the embedding head starts as the identity map (embedding_size must equal the
    # backbone's feature size), so fine-tuning starts from the pretrained embedding itself.
    head_init: str = "random"
    # Pull toward the pretrained network: this weight times the mean (1 - cosine) between each
    # training image's embedding and the one the untouched network gives it is added to the
    # ArcFace loss, so a few hundred faces cannot drag the embedding far from what millions
    # taught it. 0 = off; needs pretrained weights.
    anchor: float = 0.0

    # Not fields (no annotation): the valid choices.
    OPTIMIZERS = ("adamw", "sgd")
    HEAD_INITS = ("random", "identity")

    def validate(self, name: str) -> None:
        if self.optimizer not in self.OPTIMIZERS:
            raise _fail(f"{name}.optimizer", self.optimizer, ", ".join(self.OPTIMIZERS))
        if not 0.0 <= self.momentum < 1.0:
            raise _fail(f"{name}.momentum", self.momentum, "a number in [0, 1)")
        if self.warmup_epochs < 0:
            raise _fail(f"{name}.warmup_epochs", self.warmup_epochs, "a number >= 0 (epochs)")
        if self.head_init not in self.HEAD_INITS:
            raise _fail(f"{name}.head_init", self.head_init, ", ".join(self.HEAD_INITS))
        if self.anchor < 0:
            raise _fail(f"{name}.anchor", self.anchor, "a number >= 0 (0: no pull toward the pretrained embedding)")
        if self.input_size is not None and not 32 <= self.input_size <= 512:
            raise _fail(f"{name}.input_size", self.input_size, "null or an integer in [32, 512]")
        if self.embedding_size < 2:
            raise _fail(f"{name}.embedding_size", self.embedding_size, "an integer >= 2")
        if self.epochs < 0:
            raise _fail(f"{name}.epochs", self.epochs, "an integer >= 0 (0: no fine-tuning)")
        if not self.lr > 0:
            raise _fail(f"{name}.lr", self.lr, "a number > 0")
        if self.head_lr is not None and not self.head_lr > 0:
            raise _fail(f"{name}.head_lr", self.head_lr, "null or a number > 0")
        if self.weight_decay < 0:
            raise _fail(f"{name}.weight_decay", self.weight_decay, "a number >= 0")
        if self.batch_size < 2:
            raise _fail(f"{name}.batch_size", self.batch_size, "an integer >= 2")
        valid_layers = ("all", "head", "last_<n>")
        if self.train_layers not in ("all", "head"):
            suffix = self.train_layers.removeprefix("last_")
            if suffix == self.train_layers or not suffix.isdigit() or int(suffix) < 1:
                raise _fail(f"{name}.train_layers", self.train_layers, ", ".join(valid_layers))


@dataclasses.dataclass(frozen=True)
class ArcFaceConfig(_Section):
    """ArcFace additive angular margin: logits = scale * cos(theta + margin_rad)."""

    scale: float = 30.0
    margin_rad: float = 0.5

    def validate(self, name: str) -> None:
        if not self.scale > 0:
            raise _fail(f"{name}.scale", self.scale, "a number > 0")
        if not 0.0 <= self.margin_rad < math.pi / 2:
            raise _fail(f"{name}.margin_rad", self.margin_rad, "radians in [0, pi/2)")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_Section):
    """Training settings shared by every backbone (the per-backbone ones are in BackboneConfig)."""

    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    amp: bool = True  # CUDA only: bf16 autocast where supported, else fp16 with a gradient scaler
    flip_p: float = 0.5
    # Share of the unmasked training images that get a simulated mask each time they are drawn.
    mask_augment_p: float = 0.5
    mask_styles: tuple[str, ...] = ("surgical", "cloth", "n95")
    # Colour jitter strengths: a factor drawn from [1 - x, 1 + x] per image.
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grad_clip_norm: float = 5.0  # max global L2 norm of the gradients; 0 = no clipping
    select_by: str = "auc"  # the validation metric that picks the best epoch: auc | accuracy
    patience: Optional[int] = None  # stop after this many epochs without a better one; null = never
    loader_workers: int = 0  # batch-preparing worker processes; 0 = in the training process
    resume: bool = True  # continue from a checkpoint written with the same settings and data

    # Not fields (no annotation): the valid choices. MASK_STYLES repeats maskface.masks's
    # so that reading params never imports the drawing code.
    SELECT_BY = ("auc", "accuracy")
    MASK_STYLES = ("surgical", "cloth", "n95")

    def validate(self, name: str) -> None:
        if self.device not in DEVICES:
            raise _fail(f"{name}.device", self.device, ", ".join(DEVICES))
        for key in ("flip_p", "mask_augment_p", "brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise _fail(f"{name}.{key}", getattr(self, key), "a number in [0, 1]")
        if not self.mask_styles:
            raise _fail(f"{name}.mask_styles", [], ", ".join(self.MASK_STYLES))
        for style in self.mask_styles:
            if style not in self.MASK_STYLES:
                raise _fail(f"{name}.mask_styles", style, ", ".join(self.MASK_STYLES))
        if self.grad_clip_norm < 0:
            raise _fail(f"{name}.grad_clip_norm", self.grad_clip_norm, "a number >= 0 (0: no clipping)")
        if self.select_by not in self.SELECT_BY:
            raise _fail(f"{name}.select_by", self.select_by, ", ".join(self.SELECT_BY))
        if self.patience is not None and self.patience < 1:
            raise _fail(f"{name}.patience", self.patience, "null or an integer >= 1 (epochs)")
        if self.loader_workers < 0:
            raise _fail(f"{name}.loader_workers", self.loader_workers, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class EmbedConfig(_Section):
    batch_size: int = 64
    device: str = "auto"
    # auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with
    # AVX512-BF16/AMX), whose embeddings agree with fp32 to cosine >= 0.999 (tested); else fp32.
    precision: str = "auto"
    channels_last: bool = True
    flip: bool = True  # flip test-time augmentation: embed each image and its mirror image

    def validate(self, name: str) -> None:
        if self.batch_size < 1:
            raise _fail(f"{name}.batch_size", self.batch_size, "an integer >= 1")
        if self.precision not in PRECISIONS:
            raise _fail(f"{name}.precision", self.precision, ", ".join(PRECISIONS))
        if self.device not in DEVICES:
            raise _fail(f"{name}.device", self.device, ", ".join(DEVICES))


@dataclasses.dataclass(frozen=True)
class KnnConfig(_Section):
    n_neighbors: int = 15
    weights: str = "distance"

    def validate(self, name: str) -> None:
        if self.n_neighbors < 1:
            raise _fail(f"{name}.n_neighbors", self.n_neighbors, "an integer >= 1")
        if self.weights not in ("uniform", "distance"):
            raise _fail(f"{name}.weights", self.weights, "uniform, distance")


@dataclasses.dataclass(frozen=True)
class MlpConfig(_Section):
    hidden_layer_sizes: tuple[int, ...] = (64,)
    alpha: float = 1e-4
    max_iter: int = 500
    seed: int = 0

    def validate(self, name: str) -> None:
        if not self.hidden_layer_sizes or any(h < 1 for h in self.hidden_layer_sizes):
            raise _fail(f"{name}.hidden_layer_sizes", list(self.hidden_layer_sizes), "a list of integers >= 1")
        if self.alpha < 0:
            raise _fail(f"{name}.alpha", self.alpha, "a number >= 0")
        if self.max_iter < 1:
            raise _fail(f"{name}.max_iter", self.max_iter, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class LdaConfig(_Section):
    """Linear discriminant analysis (lsqr solver) on the pair features, or on embeddings for identities.

    ``shrinkage``: null = Ledoit-Wolf (chosen from the data; stable when features outnumber
    the samples per class), a number in [0, 1] = that fixed shrinkage (0 = plain LDA).
    """

    shrinkage: Optional[float] = None

    def validate(self, name: str) -> None:
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise _fail(f"{name}.shrinkage", self.shrinkage, "null (Ledoit-Wolf) or a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class CosineConfig(_Section):
    """The field's baseline: same person when cosine(a, b) >= the threshold chosen on val.

    Nothing to set: the threshold is the whole model. The section exists so that every
    classifier is configured the same way (an empty or absent ``cosine:`` is valid).
    """


@dataclasses.dataclass(frozen=True)
class ClassifyConfig(_Section):
    """How training pairs for the pair classifier are drawn from the training identities."""

    train_pairs_per_identity: int = 30
    seed: int = 0

    def validate(self, name: str) -> None:
        if self.train_pairs_per_identity < 1:
            raise _fail(f"{name}.train_pairs_per_identity", self.train_pairs_per_identity, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(_Section):
    """Test-set metrics: curve resolution, TAR@FAR levels, bootstrap and the plot details."""

    roc_points: int = 200
    fars: tuple[float, ...] = (1e-2, 1e-3)
    bootstrap: int = 1000  # resamples over identities for the 95 % intervals; 0 = none
    seed: int = 0
    histogram_bins: int = 40
    worst_pairs: int = 6  # false accepts and false rejects shown on each worst-pairs sheet
    # The recommended backbone: the first entry of `backbones` whose val ROC AUC is within this
    # of the best. A few hundred val pairs cannot rank AUCs closer than that (standard error ~0.04).
    recommend_tolerance: float = 0.01

    def validate(self, name: str) -> None:
        if not 0.0 <= self.recommend_tolerance < 0.5:
            raise _fail(f"{name}.recommend_tolerance", self.recommend_tolerance, "an AUC difference in [0, 0.5)")
        if self.roc_points < 2:
            raise _fail(f"{name}.roc_points", self.roc_points, "an integer >= 2")
        if not self.fars or any(not 0.0 < far < 1.0 for far in self.fars):
            raise _fail(f"{name}.fars", list(self.fars), "a non-empty list of rates in (0, 1)")
        if self.bootstrap < 0:
            raise _fail(f"{name}.bootstrap", self.bootstrap, "an integer >= 0 (0: no intervals)")
        if self.histogram_bins < 2:
            raise _fail(f"{name}.histogram_bins", self.histogram_bins, "an integer >= 2")
        if self.worst_pairs < 0:
            raise _fail(f"{name}.worst_pairs", self.worst_pairs, "an integer >= 0 (0: no sheet)")


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml and refuse unknown top-level sections."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} does not exist") from None
    if not isinstance(params, Mapping):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping of sections")
    valid = top_level_keys()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"params: unknown section {', '.join(unknown)}; valid sections: {', '.join(valid)}")
    return dict(params)


def section(params: Mapping, cls: type, name: str):
    """Parse the params section ``name`` (dotted for nested, e.g. ``backbones.facenet``)."""
    raw: Any = params
    for part in name.split("."):
        raw = raw.get(part) if isinstance(raw, Mapping) else None
    return parse_section(cls, raw, name)


def top_level_keys() -> tuple[str, ...]:
    """Every section params.yaml may hold: :data:`SECTIONS` and one per registered classifier."""
    # Imported here: the registry imports this module for the classifiers' params classes.
    from maskface.classifiers import available_classifiers

    return (*SECTIONS, *available_classifiers())


def classifier_name(params: Mapping) -> str:
    """The ``classifier`` setting, checked against the classifier registry."""
    from maskface.classifiers import available_classifiers

    name = params.get("classifier", "mlp")
    if name not in available_classifiers():
        raise _fail("classifier", name, ", ".join(available_classifiers()))
    return name


def backbone_settings(params: Mapping) -> dict[str, BackboneConfig]:
    """All entries of ``backbones`` parsed into strict configs, names not checked.

    For stages that only report on backbones other stages built (evaluate): checking
    names needs the registry, which imports torch, and torch's start-up would be most of
    such a stage's run time. The stages that build models use :func:`backbone_configs`.
    """
    raw = params.get("backbones")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"params: backbones must map backbone names to settings; got {raw!r}")
    return {name: section(params, BackboneConfig, f"backbones.{name}") for name in raw}


def backbone_configs(params: Mapping) -> dict[str, BackboneConfig]:
    """All entries of ``backbones``, each checked against the backbone registry."""
    from maskface.backbones import available_backbones

    raw = params.get("backbones")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"params: backbones must map backbone names to settings; valid names: {', '.join(available_backbones())}"
        )
    for name in raw:
        if name not in available_backbones():
            raise _fail("backbones", name, ", ".join(available_backbones()))
    return backbone_settings(params)


def backbone_config(params: Mapping, name: str) -> BackboneConfig:
    configs = backbone_configs(params)
    if name not in configs:
        raise _fail("--backbone", name, ", ".join(configs))
    return configs[name]
