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

PAIR_TYPES = ("masked-unmasked", "masked-masked", "unmasked-unmasked")
CROP_MODES = ("none", "ratio")
SPLIT_BY = ("identity", "image")
CLASSIFIERS = ("knn", "mlp")
DEVICES = ("auto", "cpu", "cuda")

# Every top-level section a stage may read; anything else in params.yaml is a typo.
TOP_LEVEL_KEYS = (
    "data",
    "split",
    "crop",
    "backbones",
    "arcface",
    "finetune",
    "embed",
    "classifier",
    "classify",
    "knn",
    "mlp",
    "evaluate",
)


class ConfigError(ValueError):
    """A params value is invalid; the message names the key and the valid values."""


def _fail(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"params: {key} = {value!r} is invalid; valid: {valid}")


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
    mode: str = "none"
    keep_ratio: float = 0.5
    preview_images: int = 8

    def validate(self, name: str) -> None:
        if self.mode not in CROP_MODES:
            raise _fail(f"{name}.mode", self.mode, ", ".join(CROP_MODES))
        if not 0.0 < self.keep_ratio <= 1.0:
            raise _fail(f"{name}.keep_ratio", self.keep_ratio, "a number in (0, 1]")
        if self.preview_images < 1:
            raise _fail(f"{name}.preview_images", self.preview_images, "an integer >= 1")


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

    def validate(self, name: str) -> None:
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
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    flip_p: float = 0.5

    def validate(self, name: str) -> None:
        if self.device not in DEVICES:
            raise _fail(f"{name}.device", self.device, ", ".join(DEVICES))
        if not 0.0 <= self.flip_p <= 1.0:
            raise _fail(f"{name}.flip_p", self.flip_p, "a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class EmbedConfig(_Section):
    batch_size: int = 64
    device: str = "auto"

    def validate(self, name: str) -> None:
        if self.batch_size < 1:
            raise _fail(f"{name}.batch_size", self.batch_size, "an integer >= 1")
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
class ClassifyConfig(_Section):
    """How training pairs for the pair classifier are drawn from the training identities."""

    train_pairs_per_identity: int = 30
    seed: int = 0

    def validate(self, name: str) -> None:
        if self.train_pairs_per_identity < 1:
            raise _fail(f"{name}.train_pairs_per_identity", self.train_pairs_per_identity, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(_Section):
    roc_points: int = 200

    def validate(self, name: str) -> None:
        if self.roc_points < 2:
            raise _fail(f"{name}.roc_points", self.roc_points, "an integer >= 2")


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml and refuse unknown top-level sections."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} does not exist") from None
    if not isinstance(params, Mapping):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping of sections")
    unknown = sorted(set(params) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"params: unknown section {', '.join(unknown)}; valid sections: {', '.join(TOP_LEVEL_KEYS)}"
        )
    return dict(params)


def section(params: Mapping, cls: type, name: str):
    """Parse the params section ``name`` (dotted for nested, e.g. ``backbones.facenet``)."""
    raw: Any = params
    for part in name.split("."):
        raw = raw.get(part) if isinstance(raw, Mapping) else None
    return parse_section(cls, raw, name)


def classifier_name(params: Mapping) -> str:
    name = params.get("classifier", "mlp")
    if name not in CLASSIFIERS:
        raise _fail("classifier", name, ", ".join(CLASSIFIERS))
    return name


def backbone_configs(params: Mapping) -> dict[str, BackboneConfig]:
    """All entries of ``backbones``, each checked against the backbone registry."""
    from maskface.backbones import available_backbones

    raw = params.get("backbones")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"params: backbones must map backbone names to settings; valid names: {', '.join(available_backbones())}"
        )
    configs = {}
    for name in raw:
        if name not in available_backbones():
            raise _fail("backbones", name, ", ".join(available_backbones()))
        configs[name] = section(params, BackboneConfig, f"backbones.{name}")
    return configs


def backbone_config(params: Mapping, name: str) -> BackboneConfig:
    configs = backbone_configs(params)
    if name not in configs:
        raise _fail("--backbone", name, ", ".join(configs))
    return configs[name]
