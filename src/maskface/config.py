"""Typed, strict views of ``params.yaml``.

Each DVC stage reads only its own sections through these frozen pydantic models. An unknown
or misspelt key is an error that names the valid keys, so a typo can never silently fall back
to a default (the failure mode of EasyDict-style merges). :func:`parse_section` turns
pydantic's errors into one line that names the key by its dotted path, the bad value and what
is valid, the last worded from the field's type and constraints (or its :class:`Valid` text).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

# invalid_param keeps its short local name: it is raised on almost every line below.
from maskface.errors import ConfigError
from maskface.errors import invalid_param as _fail
from maskface.hardware import DEVICES, PRECISIONS

PAIR_TYPES = ("masked-unmasked", "masked-masked", "unmasked-unmasked")
# How a decision threshold is chosen on validation pairs (maskface.evaluation.metrics.choose_threshold).
THRESHOLD_RULES = ("eer", "max_accuracy", "one_se")
CROP_MODES = ("none", "ratio", "eyes", "mask", "nose")
SPLIT_BY = ("identity", "image")
# MASK_STYLES repeats maskface.data.masks's so that reading params never imports the drawing code.
MASK_STYLES = ("surgical", "cloth", "n95")

# The top-level sections a stage may read besides one per registered classifier (its
# settings, see top_level_keys); anything else in params.yaml is a typo.
SECTIONS = ("data", "split", "crop", "backbones", "arcface", "finetune", "embed", "classifier", "classify", "evaluate")


@dataclasses.dataclass(frozen=True)
class Valid:
    """Field metadata: what an error message calls valid, where the constraints would word it badly."""

    text: str


def bad_value(key: str, value: Any, valid: str) -> PydanticCustomError:
    """The error a cross-field check raises: ``key`` of this section holds ``value``; ``valid``
    may name sibling keys as ``{section}.key`` (filled in with the section's dotted path)."""
    context = {"key": key, "value": value, "valid": valid}
    return PydanticCustomError("bad_value", "{key} = {value} is invalid; valid: {valid}", context)


def _number(value: Any) -> Any:
    # YAML reads "1e-3" (no dot) as a string; accept it as the number it obviously is.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


T = TypeVar("T")
Number = Annotated[float, BeforeValidator(_number)]
Items = Annotated[tuple[T, ...], Field(strict=False)]  # a YAML list, kept as a tuple
Share = Annotated[Number, Field(gt=0, lt=1)]


class Section(BaseModel):
    """A params section: unknown keys, wrong types (no ``"2"`` for 2) and values out of range are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, raw: Any) -> Any:
        return {} if raw is None else raw  # `section:` with nothing under it


def parse_section(cls: type[Section], raw: Any, name: str):
    """Build the section model ``cls`` from the params mapping ``raw`` (section ``name``).

    Missing keys take the defaults; unknown keys are refused.
    """
    try:
        return cls.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"params: {_message(cls, name, error.errors(include_url=False))}") from None


def _path(name: str, loc: Sequence) -> str:
    return name + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _message(cls: type[Section], name: str, errors: list) -> str:
    unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
    if unknown:  # every unknown key of the first section that has one
        parent = unknown[0][:-1]
        owner, field = _field(cls, parent)
        keys = (owner if field is None else field.annotation).model_fields
        return (
            f"unknown key {', '.join(_path(name, loc) for loc in unknown if loc[:-1] == parent)}; "
            f"valid keys of {_path(name, parent)}: {', '.join(keys) or 'none (it takes no settings)'}"
        )
    error = errors[0]
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    if kind == "bad_value":
        where = _path(name, loc)
        return f"{where}.{ctx['key']} = {ctx['value']!r} is invalid; valid: {ctx['valid'].replace('{section}', where)}"
    _, field = _field(cls, loc)
    if loc and isinstance(loc[-1], int):  # one item of a list
        field = FieldInfo.from_annotation(get_args(field.annotation)[0])
        if kind == "literal_error":
            loc = loc[:-1]  # the message names the list and the bad choice
    valid = "a finite number" if kind == "finite_number" else _describe(field) if field else "a mapping of keys"
    return f"{_path(name, loc)} = {error['input']!r} is invalid; valid: {valid}"


def _field(cls: type[Section], loc: Sequence) -> tuple[type[Section], Optional[FieldInfo]]:
    """The model holding the last key named in ``loc``, and that key's field (None for no key)."""
    model, field = cls, None
    for part in loc:
        if isinstance(part, str):
            if field is not None:
                model = field.annotation  # a nested section
            field = model.model_fields.get(part)
    return model, field


def _describe(field: FieldInfo) -> str:
    """What a value must be, in words: the field's Valid text or its type and constraints, then
    its description (units, what 0 means) in parentheses."""
    words = next((m.text for m in field.metadata if isinstance(m, Valid)), None) or _words(field)
    return f"{words} ({field.description})" if field.description else words


def _words(field: FieldInfo) -> str:
    annotation, args = field.annotation, get_args(field.annotation)
    if type(None) in args:
        return "null or " + _describe(FieldInfo.from_annotation(next(a for a in args if a is not type(None))))
    if get_origin(annotation) is Literal:
        return ", ".join(args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of keys"
    keys = ("gt", "ge", "lt", "le", "min_length", "max_length")
    limit = {key: getattr(m, key) for m in field.metadata for key in keys if hasattr(m, key)}
    if get_origin(annotation) is tuple:
        item = FieldInfo.from_annotation(args[0])
        size = limit.get("min_length", 0)
        kind = f"list of {size}" if size == limit.get("max_length") else "non-empty list" if size else "list"
        return f"a {kind}, each {'one of ' if get_origin(item.annotation) is Literal else ''}{_describe(item)}"
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]
    low = f"({limit['gt']}" if "gt" in limit else f"[{limit['ge']}" if "ge" in limit else ""
    high = f"{limit['lt']})" if "lt" in limit else f"{limit['le']}]" if "le" in limit else ""
    if low and high:
        return f"{noun} in {low}, {high}"
    if low:
        return f"{noun} {'>' if low[0] == '(' else '>='} {low[1:]}"
    if high:
        return f"{noun} {'<' if high[-1] == ')' else '<='} {high[:-1]}"
    return noun


class SyntheticConfig(Section):
    """The embedded default dataset (see :mod:`maskface.data.synthetic`)."""

    identities: Annotated[int, Field(ge=2)] = 24
    images_per_identity: Annotated[int, Field(ge=4)] = 12
    masked_share: Share = 0.4
    min_size: Annotated[int, Field(ge=64)] = 112
    max_size: int = 160
    seed: int = 0

    @model_validator(mode="after")
    def _sizes_in_order(self) -> "SyntheticConfig":
        if self.min_size > self.max_size:
            raise bad_value("min_size/max_size", (self.min_size, self.max_size), "64 <= min_size <= max_size")
        return self


class SplitConfig(Section):
    ratios: Items[Share] = Field((0.7, 0.1, 0.2), min_length=3, max_length=3, description="train, val, test")
    seed: int = 0
    by: Literal[SPLIT_BY] = "identity"
    pair_types: Items[Literal[PAIR_TYPES]] = Field(("masked-unmasked",), min_length=1)
    max_genuine_per_identity: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> "SplitConfig":
        if not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
            raise bad_value("ratios", list(self.ratios), "ratios summing to 1")
        return self


# The crop section's choices, repeated here so that reading params never imports the geometry code.
ALIGN_POINTS = ("eyes", "all", "auto")
TEMPLATES = ("facenet", "arcface", "auto")
BLANKS = ("mean", "constant")
BORDERS = ("edge", "grey")
LANDMARK_SOURCES = ("none", "mtcnn", "ground_truth", "auto")


class CropConfig(Section):
    """What the networks see of each face, and how faces are found and aligned.

    Modes (maskface.face.crop): ``none`` the whole face; ``ratio`` the top ``keep_ratio`` of the
    height; ``eyes`` everything above a line ``eye_line`` eye distances below the eyes;
    ``mask`` the whole face with the mask region blanked; ``nose`` the whole face with
    everything below the nose line (``nose_line`` eye distances below the nose) greyed, on
    masked and unmasked photos alike. Landmarks (maskface.face.geometry) are
    found once, in the split stage, unless ``landmarks`` is none; ``align`` and the modes
    ``eyes`` and ``mask`` need them, the filter needs MTCNN's.
    """

    mode: Literal[CROP_MODES] = "none"
    # Ratio mode: share of the height kept from the top (0.5 = the study).
    keep_ratio: Annotated[Number, Field(gt=0, le=1)] = 0.5
    preview_images: Annotated[int, Field(ge=1)] = 8
    align: bool = False  # similarity-align each face to `template` from its landmarks
    align_points: Literal[ALIGN_POINTS] = "eyes"  # auto: all five for unmasked, eyes for masked images
    # facenet (loose) | arcface (tight, insightface) | auto (each backbone's own)
    template: Literal[TEMPLATES] = "facenet"
    # Aligned faces, the frame beyond the photo: edge (repeat its edge pixels) | grey (mid-grey,
    # like the nose line). Pre-cropped photos (RMFRD) reach the frame's edge on one side of a
    # pair and not the other; smeared edges are texture the network reads as face.
    border: Literal[BORDERS] = "edge"
    # Eyes mode: the cut.
    eye_line: Annotated[Number, Field(ge=0.1, le=2, description="eye distances below the eyes")] = 0.4
    blank: Literal[BLANKS] = "mean"  # mask mode: fill the mask with the image mean | constant (blank_value)
    blank_value: Annotated[int, Field(ge=0, le=255)] = 0  # mask mode with blank: constant, grey level
    blank_without_mask: bool = True  # mask mode, no mask found: blank where a mask would be
    # Nose mode: grey below this line.
    nose_line: Annotated[Number, Field(ge=-1, le=1, description="eye distances below the nose")] = 0.0
    # none (no detection) | mtcnn | ground_truth (synthetic only) | auto (either, by data.source)
    landmarks: Literal[LANDMARK_SOURCES] = "none"
    # Border added before detection.
    detect_pad: Annotated[Number, Field(ge=0, le=2, description="fraction of the image side")] = 0.3
    detect_thresholds: Items[Share] = Field((0.2, 0.3, 0.3), min_length=3, max_length=3)  # MTCNN P/R/O-Net
    detect_min_face: Annotated[int, Field(ge=12, description="pixels")] = 20  # smallest face searched for
    # Smallest face searched for as a share of the image's shorter side: pre-cropped faces fill
    # the image, and skipping MTCNN's finest pyramid levels keeps their landmarks (0 = off).
    detect_min_face_share: Annotated[Number, Field(ge=0, le=1, description="share of the shorter image side")] = 0.25
    detect_batch_size: Annotated[int, Field(ge=1)] = 16
    detect_device: Literal[DEVICES] = "auto"
    # Detection processes on the CPU, one torch thread each; 0 = one per CPU core. Not a
    # setting of the result: any count gives the same table.
    detect_workers: Annotated[int, Field(ge=0, description="processes, 0 = one per CPU core")] = 0
    filter: bool = False  # drop images without a face or below min_confidence (split stage)
    # MTCNN face probability a kept image needs when filtering.
    min_confidence: Annotated[Number, Field(ge=0, lt=1)] = 0.9

    ALIGN_POINTS: ClassVar[tuple[str, ...]] = ALIGN_POINTS
    BORDERS: ClassVar[tuple[str, ...]] = BORDERS
    TEMPLATES: ClassVar[tuple[str, ...]] = TEMPLATES
    BLANKS: ClassVar[tuple[str, ...]] = BLANKS
    LANDMARK_SOURCES: ClassVar[tuple[str, ...]] = LANDMARK_SOURCES

    def for_source(self, source: str) -> "CropConfig":
        """``landmarks: auto`` made concrete for ``data.source``: the renderer's ground truth for
        synthetic data, MTCNN for real photos (the same alignment code either way)."""
        if self.landmarks != "auto":
            return self
        return self.model_copy(update={"landmarks": "ground_truth" if source == "synthetic" else "mtcnn"})

    @property
    def needs_landmarks(self) -> bool:
        """Whether the split stage finds landmarks (``landmarks`` is not none)."""
        return self.landmarks != "none"

    @model_validator(mode="after")
    def _landmarks_for_their_users(self) -> "CropConfig":
        if self.filter and self.landmarks not in ("mtcnn", "auto"):
            valid = "mtcnn while {section}.filter is true (it filters on MTCNN's confidence)"
            raise bad_value("landmarks", self.landmarks, valid)
        users = ["{section}.align is true"] if self.align else []
        if self.mode in ("eyes", "mask", "nose"):
            users.append(f"{{section}}.mode is {self.mode}")
        if users and self.landmarks == "none":
            valid = f"mtcnn or ground_truth (synthetic data) while {' and '.join(users)}"
            raise bad_value("landmarks", self.landmarks, valid)
        return self


# What the anchor pulls a photo of a masked face toward (BackboneConfig.anchor_masked).
AnchorMasked = Literal["own", "template", "none"]

# What fine-tuning updates: all, the embedding head only, or the head and the last n layer groups.
TrainLayers = Annotated[str, Field(pattern=r"^(all|head|last_0*[1-9][0-9]*)$"), Valid("all, head, last_<n>")]


class BackboneConfig(Section):
    """One entry of the ``backbones`` mapping; the mapping key is the registry name."""

    weights: str = "none"
    input_size: Optional[Annotated[int, Field(ge=32, le=512)]] = None  # None: the registry's own input size
    embedding_size: Annotated[int, Field(ge=2)] = 128
    epochs: Annotated[int, Field(ge=0, description="0: no fine-tuning")] = 3
    lr: Annotated[Number, Field(gt=0)] = 1e-3
    # Layer-wise learning-rate decay: the last trained layer group of the trunk learns at lr,
    # each earlier one at layer_decay times the next. 1 = one rate for the whole trunk.
    layer_decay: Annotated[Number, Field(gt=0, le=1)] = 1.0
    head_lr: Optional[Annotated[Number, Field(gt=0)]] = None  # None: same as lr
    weight_decay: Annotated[Number, Field(ge=0)] = 5e-4
    batch_size: Annotated[int, Field(ge=2)] = 32
    train_layers: TrainLayers = "all"
    # Keep pretrained batch-norm statistics; ignored for weights: none (nothing to keep).
    freeze_bn_stats: bool = True
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: with momentum, Nesterov
    momentum: Annotated[Number, Field(ge=0, lt=1)] = 0.9  # sgd only
    # Linear warm-up, then cosine decay to 0 at the last epoch.
    warmup_epochs: Annotated[Number, Field(ge=0, description="epochs")] = 1.0
    # identity: the embedding head starts as the identity map (embedding_size must equal the
    # backbone's feature size), so fine-tuning starts from the pretrained embedding itself.
    head_init: Literal["random", "identity"] = "random"
    # Pull toward the pretrained network: this weight times the mean (1 - cosine) between each
    # training image's embedding and the one the untouched network gives it is added to the
    # ArcFace loss, so a few hundred faces cannot drag the embedding far from what millions
    # taught it. 0 = off; needs pretrained weights.
    anchor: Annotated[Number, Field(ge=0, description="0: no pull toward the pretrained embedding")] = 0.0
    # What the anchor pulls a photo of a masked face toward. own: the untouched network's
    # embedding of that photo (the masked embedding it had; the same as for unmasked photos).
    # template: the untouched network's mean embedding of the identity's unmasked training
    # photos (template-level distillation from the unmasked face, Huber et al. 2021), for
    # identities with unmasked photos, its own otherwise. none: no pull on masked photos.
    anchor_masked: AnchorMasked = "own"
    # After training, remove the training identities' mask direction (their mean masked minus
    # mean unmasked embedding) from every embedding: what a mask adds to a face's embedding,
    # as far as the training collection shows, no longer counts in a pair's score.
    mask_direction: bool = False
    # imprint: each ArcFace class centre starts as its identity's mean embedding from the
    # starting network (weight imprinting, the closed-form linear probe of a cosine classifier),
    # so the first steps refine the embedding instead of chasing random centres, which distorts
    # pretrained features most (Kumar et al. 2022, LP-FT). random: N(0, 0.01^2).
    class_centres: Literal["random", "imprint"] = "random"
    # A uniform model soup (Wortsman et al. 2022): fine-tune this many times, with finetune.seed,
    # seed + 1, ..., each run keeping its best epoch, and save the mean of their weights. Runs
    # from the same start differ mostly in what their data order taught them; the mean keeps
    # what they share. 1 = one run.
    soup: Annotated[int, Field(ge=1, le=16, description="fine-tuning runs averaged; 1: one run")] = 1


class ArcFaceConfig(Section):
    """ArcFace additive angular margin: logits = scale * cos(theta + margin_rad)."""

    scale: Annotated[Number, Field(gt=0)] = 30.0
    margin_rad: Annotated[Number, Field(ge=0, lt=math.pi / 2), Valid("radians in [0, pi/2)")] = 0.5


Unit = Annotated[Number, Field(ge=0, le=1)]


class FinetuneConfig(Section):
    """Training settings shared by every backbone (the per-backbone ones are in BackboneConfig)."""

    seed: int = 0
    device: Literal[DEVICES] = "auto"
    deterministic: bool = False
    amp: bool = True  # CUDA only: bf16 autocast where supported, else fp16 with a gradient scaler
    flip_p: Unit = 0.5
    # Share of the unmasked training images that get a simulated mask each time they are drawn.
    mask_augment_p: Unit = 0.5
    mask_styles: Items[Literal[MASK_STYLES]] = Field(MASK_STYLES, min_length=1)
    # Colour jitter strengths: a factor drawn from [1 - x, 1 + x] per image.
    brightness: Unit = 0.2
    contrast: Unit = 0.2
    saturation: Unit = 0.2
    # Share of the training images shown at a lower resolution (shrunk to a side drawn between
    # low_resolution_min x the crop size and the crop size, then enlarged back): real masked
    # photos are often small, distant or video stills, the unmasked ones sharp portraits.
    low_resolution_p: Unit = 0.0
    low_resolution_min: Annotated[Number, Field(gt=0, le=1)] = 0.25
    # Share of the training images moved by up to shift_max x the crop size each way (edge
    # repeated into the gap), as the embed stage's shift views move the test images.
    shift_p: Unit = 0.0
    shift_max: Annotated[Number, Field(gt=0, le=0.25)] = 0.04
    # The max global L2 norm of the gradients.
    grad_clip_norm: Annotated[Number, Field(ge=0, description="0: no clipping")] = 5.0
    select_by: Literal["auc", "accuracy"] = "auc"  # the validation metric that picks the best epoch
    # Stop after this many epochs without a better one; null = never.
    patience: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="epochs")
    # Batch-preparing worker processes; 0 = in the training process.
    loader_workers: Annotated[int, Field(ge=0)] = 0
    resume: bool = True  # continue from a checkpoint written with the same settings and data

    MASK_STYLES: ClassVar[tuple[str, ...]] = MASK_STYLES


class EmbedConfig(Section):
    batch_size: Annotated[int, Field(ge=1)] = 64
    device: Literal[DEVICES] = "auto"
    # auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with
    # AVX512-BF16/AMX), whose embeddings agree with fp32 to cosine >= 0.999 (tested); else fp32.
    precision: Literal[PRECISIONS] = "auto"
    channels_last: bool = True
    flip: bool = True  # flip test-time augmentation: embed each image and its mirror image
    # Shift test-time augmentation: also embed four copies moved by this share of the side
    # (left, right, up, down); 0 = off. Five times the compute.
    shift: Annotated[Number, Field(ge=0, lt=0.5)] = 0.04


class KnnConfig(Section):
    n_neighbors: Annotated[int, Field(ge=1)] = 15
    weights: Literal["uniform", "distance"] = "distance"


class MlpConfig(Section):
    hidden_layer_sizes: Items[Annotated[int, Field(ge=1)]] = Field((64,), min_length=1)
    alpha: Annotated[Number, Field(ge=0)] = 1e-4
    max_iter: Annotated[int, Field(ge=1)] = 500
    seed: int = 0


class LdaConfig(Section):
    """Linear discriminant analysis (lsqr solver) on the pair features, or on embeddings for identities.

    ``shrinkage``: null = Ledoit-Wolf (chosen from the data; stable when features outnumber
    the samples per class), a number in [0, 1] = that fixed shrinkage (0 = plain LDA).
    """

    shrinkage: Annotated[Optional[Unit], Valid("null (Ledoit-Wolf) or a number in [0, 1]")] = None


class CosineConfig(Section):
    """The field's baseline: same person when cosine(a, b) >= the threshold chosen on val.

    Nothing to set: the threshold is the whole model. The section exists so that every
    classifier is configured the same way (an empty or absent ``cosine:`` is valid).
    """


class ClassifyConfig(Section):
    """Training pairs for the pair classifier, and how its decision threshold is chosen.

    The threshold pairs are drawn from the validation identities, of the types in
    ``threshold_pair_types`` (a deployed verifier meets unmasked pairs too, and collections
    easier than the training one need thresholds like theirs), and ``threshold_rule`` picks
    the threshold on them (:func:`maskface.evaluation.metrics.choose_threshold`).
    """

    train_pairs_per_identity: Annotated[int, Field(ge=1)] = 30
    seed: int = 0
    threshold_rule: Literal[THRESHOLD_RULES] = "eer"
    threshold_pair_types: Items[Literal[PAIR_TYPES]] = Field(
        ("masked-unmasked", "unmasked-unmasked"), min_length=1
    )
    threshold_pairs_per_identity: Annotated[int, Field(ge=1)] = 30


class EvaluateConfig(Section):
    """Test-set metrics: curve resolution, TAR@FAR levels, bootstrap and the plot details."""

    roc_points: Annotated[int, Field(ge=2)] = 200
    fars: Items[Share] = Field((1e-2, 1e-3), min_length=1)
    # Resamples over identities for the 95 % intervals.
    bootstrap: Annotated[int, Field(ge=0, description="0: no intervals")] = 1000
    seed: int = 0
    histogram_bins: Annotated[int, Field(ge=2)] = 40
    # False accepts and false rejects shown on each worst-pairs sheet.
    worst_pairs: Annotated[int, Field(ge=0, description="0: no sheet")] = 6
    # The recommended backbone: the first entry of `backbones` whose val ROC AUC is within this
    # of the best. A few hundred val pairs cannot rank AUCs closer than that (standard error ~0.04).
    recommend_tolerance: Annotated[Number, Field(ge=0, lt=0.5, description="an AUC difference")] = 0.01


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
    from maskface.evaluation.classifiers import available_classifiers

    return (*SECTIONS, *available_classifiers())


def classifier_name(params: Mapping) -> str:
    """The ``classifier`` setting, checked against the classifier registry."""
    from maskface.evaluation.classifiers import available_classifiers

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
    from maskface.models.backbones import available_backbones

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
