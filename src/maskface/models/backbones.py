"""Backbone registry: one decorator, one factory (the timm pattern).

Each entry carries everything the rest of the pipeline needs to know about a network –
input size, pixel normalisation, feature size, the ordered layer groups that
``train_layers: last_<n>`` can unfreeze, and the pretrained weights it accepts – so the
crop and embed stages never repeat those numbers.

A :class:`FaceEmbedder` takes raw ``uint8`` pixels (N, 3, H, W) and does the
normalisation itself, so training and inference share one preprocessing path.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskface.errors import InputError
from maskface.models.deferred_import import import_without_package_init
from maskface.text import one_line

logger = logging.getLogger(__name__)

TrunkBuilder = Callable[[], "Trunk"]
FACENET_NETWORK_MODULE = "facenet_pytorch.models.inception_resnet_v1"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the pipeline knows about a backbone.

    ``mean``/``std`` are in the units of ``pixel_range``: the network sees
    ``(pixels_uint8 / 255 * pixel_range - mean) / std``.
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_range: float
    feature_dim: int
    weights: tuple[str, ...]
    default_weights: str
    description: str
    builder: TrunkBuilder = dataclasses.field(repr=False, compare=False)
    # The 5-point alignment template the network was trained on (maskface.face.geometry.TEMPLATES):
    # `crop.template: auto` aligns each backbone's faces to its own.
    template: str = "facenet"
    # A fusion's member backbones (:func:`register_fusion`); () for a single network.
    members: tuple[str, ...] = ()


class Trunk(nn.Module):
    """A pretrained network cut where the face embedding is taken.

    ``layer_groups`` lists sub-module names from input to output; ``last_<n>``
    unfreezes the final n of them.
    """

    layer_groups: tuple[str, ...] = ()

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        """Copy the published state dict of the weights named ``weights`` into this trunk.

        The file is resolved, verified and read by :func:`load_pretrained`, the one loader;
        a trunk whose published keys or format differ from its own overrides this mapping.
        """
        self.load_state_dict(state)

    def fold_batch_norm(self) -> int:
        """Fold eval-mode batch norms into the layer before them (see :func:`fold_batch_norms`).

        Trunks whose own ``forward`` puts a batch norm after a layer override this to fold
        that pair too. Returns how many were folded.
        """
        return fold_batch_norms(self)


def _fused(layer: nn.Module, norm: nn.Module) -> nn.Module | None:
    """``layer`` with ``norm`` (eval mode, running statistics) folded into its weights, or None."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean is None:
        return None
    if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
        return fuse_conv_bn_eval(layer, norm)
    if isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
        return fuse_linear_bn_eval(layer, norm)
    return None


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every batch norm into the conv or linear layer before it, where that order is certain.

    Certain means: consecutive entries of an ``nn.Sequential``, and facenet-pytorch's
    ``BasicConv2d`` (conv -> bn -> relu). The norm becomes ``nn.Identity``. Same function up
    to float rounding, one kernel fewer per layer (~7 % faster CPU embedding). For eval-mode
    models only: the folded layers no longer learn as the pair did. Returns the count.
    """
    # Not facenet_pytorch's __init__: see maskface.models.deferred_import.
    BasicConv2d = import_without_package_init(FACENET_NETWORK_MODULE).BasicConv2d

    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            fused = _fused(module._modules[first], module._modules[second])
            if fused is not None:
                module._modules[first], module._modules[second] = fused, nn.Identity()
                folded += 1
    elif isinstance(module, BasicConv2d):
        fused = _fused(module.conv, module.bn)
        if fused is not None:
            module.conv, module.bn = fused, nn.Identity()
            # The folded conv's output is a fresh tensor nothing else reads: rectifying it in
            # place saves a copy per layer (5-8 % faster CPU embedding, same numbers).
            module.relu.inplace = True
            folded += 1
    for child in module.children():
        folded += fold_batch_norms(child)
    return folded


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    *,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    pixel_range: float,
    feature_dim: int,
    weights: tuple[str, ...],
    default_weights: str,
    description: str,
    template: str = "facenet",
    members: tuple[str, ...] = (),
) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Decorator registering a trunk builder under ``name`` with its preprocessing."""

    def decorate(builder: TrunkBuilder) -> TrunkBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneSpec(
            name=name,
            input_size=input_size,
            mean=mean,
            std=std,
            pixel_range=pixel_range,
            feature_dim=feature_dim,
            weights=weights,
            default_weights=default_weights,
            description=description,
            builder=builder,
            template=template,
            members=tuple(members),
        )
        return builder

    return decorate


def available_backbones() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(_REGISTRY)}") from None


class PixelNormalize(nn.Module):
    """uint8-range pixels (N, 3, H, W) -> the backbone's normalised float input."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        scale = spec.pixel_range / 255.0
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        # Folded into one multiply-add: x * (scale/std) - mean/std.
        self.register_buffer("multiplier", scale / std, persistent=False)
        self.register_buffer("offset", -mean / std, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = self.multiplier.dtype if not torch.is_floating_point(pixels) else pixels.dtype
        return pixels.to(dtype) * self.multiplier.to(dtype) + self.offset.to(dtype)


# Shift test-time augmentation's moves, (columns right, rows down) in steps: a set that is its
# own mirror image, so that with flip an image and its mirror still embed identically.
SHIFT_MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(pixels: torch.Tensor, right: int, down: int) -> torch.Tensor:
    """``pixels`` (..., H, W) moved ``right`` columns and ``down`` rows (negative: left, up),
    the edge row or column repeated into the gap, any dtype (uint8 crops included)."""
    height, width = pixels.shape[-2:]
    columns = (torch.arange(width, device=pixels.device) - right).clamp(0, width - 1)
    rows = (torch.arange(height, device=pixels.device) - down).clamp(0, height - 1)
    return pixels.index_select(-1, columns).index_select(-2, rows)


class FaceEmbedder(nn.Module):
    """Trunk + embedding head (linear, batch norm) + L2 normalisation.

    forward(pixels): pixels (N, 3, H, W), uint8 or float in [0, 255] -> (N, embedding_size),
    rows of unit L2 norm.
    """

    def __init__(self, spec: BackboneSpec, trunk: Trunk, embedding_size: int, input_size: int):
        super().__init__()
        self.spec = spec
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.normalize = PixelNormalize(spec)
        self.trunk = trunk
        self.head = nn.Sequential(
            nn.Dropout(p=0.0),
            nn.Linear(spec.feature_dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.frozen_bn_stats = False
        # Set by init_head_identity: the head's batch norm keeps its identity statistics.
        self.frozen_head_norm = False
        self.batch_norm_folded = False
        # What the trunk started from (set by create_model): None = random initialisation.
        self.pretrained: dict | None = None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.normalize(pixels))

    def forward(self, pixels: torch.Tensor, flip: bool = False, shift: float = 0.0) -> torch.Tensor:
        """``flip``: add the mirror image's embedding; ``shift`` > 0: add those of four copies
        moved by ``shift`` x the side (at least 1 px) left, right, up and down (each with its
        mirror when ``flip``). Test-time augmentations, summed before normalisation as
        insightface's verification sums the flip."""
        views = [pixels]
        if shift > 0:
            step = max(1, round(shift * pixels.shape[-1]))
            views += [shifted(pixels, dx * step, dy * step) for dx, dy in SHIFT_MOVES]
        embedding = None
        for view in views:
            raw = self.head(self.features(view))
            if flip:
                raw = raw + self.head(self.features(view.flip(-1)))
            embedding = raw if embedding is None else embedding + raw
        # Normalise in fp32: under bf16 autocast a half-precision norm loses ~3 digits.
        return F.normalize(embedding.float(), dim=1)

    def remove_direction(self, direction: torch.Tensor) -> None:
        """Make every embedding lose its component along ``direction`` (then normalised as always).

        The projection ``I - d d^T`` is folded into the head: the batch norm's eval-mode affine
        map moves into the linear layer and its bias, and the norm becomes the exact identity,
        so the model folder keeps its format and every user of it (embed stage, API, CLI)
        gets the projected embedding. Flip test-time augmentation sums two head outputs, each
        projected, which is the projection of the sum. For eval-mode inference; the head can
        still be trained afterwards, but its norm would then learn statistics again.
        """
        linear, norm = self.head[1], self.head[2]
        d = direction.detach().to(linear.weight.dtype).to(linear.weight.device).flatten()
        if d.numel() != self.embedding_size or not torch.isfinite(d).all() or float(d.norm()) == 0.0:
            raise ValueError(f"direction must be a finite non-zero vector of {self.embedding_size} values")
        d = d / d.norm()
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            projection = torch.eye(self.embedding_size, dtype=d.dtype, device=d.device) - torch.outer(d, d)
            linear.weight.copy_(projection @ (scale[:, None] * linear.weight))
            norm.bias.copy_(projection @ shift)
            norm.weight.fill_(1.0)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # sqrt(var + eps) = 1 exactly

    def init_head_identity(self) -> None:
        """Make the head the identity map, so the embedding is the trunk's own L2-normalised feature.

        The linear layer becomes the identity matrix and the batch norm its fresh state
        (running mean 0, variance 1, weight 1, bias 0: ``x / sqrt(1 + eps)`` in eval mode,
        the same direction). Fine-tuning then starts exactly from the pretrained embedding
        instead of a random projection of it. Needs ``embedding_size == spec.feature_dim``.
        """
        linear, norm = self.head[1], self.head[2]
        if self.embedding_size != self.spec.feature_dim:
            raise InputError(
                f"head_init 'identity' needs embedding_size = {self.spec.feature_dim} (the {self.spec.name} "
                f"feature size), got {self.embedding_size}; valid: embedding_size {self.spec.feature_dim} "
                "or head_init 'random'"
            )
        with torch.no_grad():
            linear.weight.copy_(torch.eye(self.embedding_size))
        norm.reset_parameters()
        # Its running statistics stay those of the identity: learning them would subtract the
        # training collection's mean embedding, which centres that collection's scores (its
        # impostors drop toward cosine 0) but moves every other collection's by a different
        # amount, so a threshold chosen on one no longer holds on another. Measured on
        # rmfrd-dev -> lfw-masktheface: the threshold fell from 0.17 to 0.05 while
        # lfw-masktheface's best stayed near 0.3 (docs/recipe.md).
        self.frozen_head_norm = True

    def configure_training(self, train_layers: str, freeze_bn_stats: bool) -> list[str]:
        """Set requires_grad by the ``train_layers`` policy; returns the trainable group names.

        ``all``: everything; ``head``: only the embedding head; ``last_<n>``: the head and the
        last n layer groups of the trunk. With ``freeze_bn_stats`` the batch-norm layers of the
        trunk keep their pretrained running statistics (small fine-tuning sets estimate them
        badly), see :meth:`train`.
        """
        groups = list(self.trunk.layer_groups)
        if train_layers == "all":
            trainable = groups
        elif train_layers == "head":
            trainable = []
        elif train_layers.startswith("last_") and train_layers[5:].isdigit():
            count = int(train_layers[5:])
            if not 1 <= count <= len(groups):
                raise InputError(
                    f"train_layers {train_layers!r} asks for more groups than {self.spec.name} has; "
                    f"valid: all, head, last_1 .. last_{len(groups)} ({', '.join(groups)})"
                )
            trainable = groups[-count:]
        else:
            raise ValueError(f"train_layers {train_layers!r} is invalid; valid: all, head, last_<n>")
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(train_layers == "all")
        if train_layers != "all":
            for group in trainable:
                for parameter in self.trunk.get_submodule(group).parameters():
                    parameter.requires_grad_(True)
        self.frozen_bn_stats = freeze_bn_stats
        self.train(self.training)
        return trainable

    def fold_batch_norm(self) -> FaceEmbedder:
        """Make this eval-mode model inference-only and faster: batch norms folded into the layers.

        Embeddings stay the same up to float rounding (tested); the model can no longer be
        trained or saved as a checkpoint (rebuild it from its weights for that).
        """
        if self.training:
            raise ValueError("fold_batch_norm needs an eval-mode model; call model.eval() first")
        folded = self.trunk.fold_batch_norm() + fold_batch_norms(self.head)
        self.batch_norm_folded = True
        logger.debug("%s: folded %d batch norms for inference", self.spec.name, folded)
        return self

    def train(self, mode: bool = True) -> FaceEmbedder:
        if mode and self.batch_norm_folded:
            raise ValueError(
                f"this {self.spec.name} model has its batch norms folded for inference and cannot train; "
                "rebuild it from its weights (maskface.inference.embed.load_model(..., fold_batch_norm=False))"
            )
        super().train(mode)
        if mode and self.frozen_bn_stats:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if mode and self.frozen_head_norm:
            self.head[2].eval()
        return self

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]


def create_model(
    name: str,
    *,
    weights: str = "none",
    embedding_size: int = 128,
    input_size: int | None = None,
) -> FaceEmbedder:
    """Build a :class:`FaceEmbedder` for the registered backbone ``name``.

    ``weights``: ``none`` (random initialisation), one of the spec's weight names, resolved
    through :mod:`maskface.models.weights` (cache, weights folder, official URL with checksum, or a
    local converter), or ``auto``: the spec's default weights when they can be found, else
    random initialisation with a warning. ``model.pretrained`` records what happened: None
    (random) or :func:`maskface.models.weights.provenance` (spec, file, sha256, origin).
    """
    spec = get_spec(name)
    valid = ("none", "auto") + spec.weights
    if weights not in valid:
        raise ValueError(f"unknown weights {weights!r} for backbone {name!r}; valid: {', '.join(valid)}")
    trunk = spec.builder()
    pretrained = None
    if weights == "auto":
        from maskface.models.weights import WeightsUnavailableError

        try:
            pretrained = load_pretrained(trunk, name, spec.default_weights)
        except WeightsUnavailableError as error:
            logger.warning(
                "%s: weights auto: %s; training from random initialisation instead", name, one_line(error)
            )
    elif weights != "none":
        pretrained = load_pretrained(trunk, name, weights)
    model = FaceEmbedder(spec, trunk, embedding_size=embedding_size, input_size=input_size or spec.input_size)
    model.pretrained = pretrained
    return model


def load_pretrained(trunk: Trunk, name: str, weights: str) -> dict:
    """Load backbone ``name``'s pretrained ``weights`` into ``trunk``; returns their provenance.

    A fusion's ``weights`` are its members' files (:func:`weight_specs`), each loaded into its
    member's trunk by that trunk's own ``load_published``; the provenance then lists them all
    (:func:`maskface.models.weights.combined_provenance`).
    """
    from maskface.models.weights import combined_provenance, provenance

    specs = weight_specs(name, weights)
    # Every file is resolved, verified and read before any is loaded, so that a missing one
    # (`weights: auto`) leaves the whole trunk at its random initialisation, never half pretrained.
    states = [_pretrained_state(*spec.split(":")) for spec in specs]
    records = []
    for spec, (state, path) in zip(specs, states):
        member, member_weights = spec.split(":")
        target = trunk.members[member] if isinstance(trunk, FusedTrunk) else trunk
        target.load_published(state, member_weights)
        logger.info("%s: loaded pretrained weights %r from %s", member, member_weights, path)
        records.append(provenance(spec, path))
    if isinstance(trunk, FusedTrunk):
        return combined_provenance(f"{name}:{weights}", records)
    return records[0]


def weight_specs(name: str, weights: str) -> tuple[str, ...]:
    """The weight files (``backbone:weights`` specs of :mod:`maskface.models.weights`) that backbone
    ``name``'s pretrained ``weights`` stand for: its own, or for a fusion each member's default."""
    from maskface.models.weights import UnknownWeightsError

    spec = get_spec(name)
    if weights not in spec.weights:
        raise UnknownWeightsError(f"unknown weights {weights!r} for backbone {name!r}; valid: {', '.join(spec.weights)}")
    if spec.members:
        return tuple(f"{member}:{get_spec(member).default_weights}" for member in spec.members)
    return (f"{name}:{weights}",)


# --- facenet: InceptionResnetV1 ---------------------------------------------------------------


class FaceNetTrunk(Trunk):
    """facenet-pytorch's InceptionResnetV1 up to its 512-d bottleneck batch norm (before L2)."""

    layer_groups = (
        "net.conv2d_1a",
        "net.conv2d_2a",
        "net.conv2d_2b",
        "net.conv2d_3b",
        "net.conv2d_4a",
        "net.conv2d_4b",
        "net.repeat_1",
        "net.mixed_6a",
        "net.repeat_2",
        "net.mixed_7a",
        "net.repeat_3",
        "net.block8",
        "net.last_linear",
        "net.last_bn",
    )

    def __init__(self):
        super().__init__()
        self.net = import_without_package_init(FACENET_NETWORK_MODULE).InceptionResnetV1(pretrained=None, classify=False)
        # Not used for embeddings; dropping it keeps state dicts and optimisers lean.
        self.net.logits = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.conv2d_1a(x)
        x = net.conv2d_2a(x)
        x = net.conv2d_2b(x)
        x = net.maxpool_3a(x)
        x = net.conv2d_3b(x)
        x = net.conv2d_4a(x)
        x = net.conv2d_4b(x)
        x = net.repeat_1(x)
        x = net.mixed_6a(x)
        x = net.repeat_2(x)
        x = net.mixed_7a(x)
        x = net.repeat_3(x)
        x = net.block8(x)
        x = net.avgpool_1a(x)
        x = net.dropout(x)
        x = net.last_linear(x.flatten(1))
        return net.last_bn(x)

    def fold_batch_norm(self) -> int:
        folded = fold_batch_norms(self)
        # forward() above applies last_bn right after last_linear.
        fused = _fused(self.net.last_linear, self.net.last_bn)
        if fused is not None:
            self.net.last_linear, self.net.last_bn = fused, nn.Identity()
            folded += 1
        return folded

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("logits")]:
            raise ValueError(f"facenet weights {weights!r} do not fit InceptionResnetV1: missing {missing}, unexpected {unexpected}")


@register_backbone(
    "facenet",
    input_size=160,
    # facenet-pytorch's fixed_image_standardization: (x - 127.5) / 128 on 0-255 pixels.
    mean=(127.5, 127.5, 127.5),
    std=(128.0, 128.0, 128.0),
    pixel_range=255.0,
    feature_dim=512,
    weights=("casia-webface", "vggface2", "casia-webface-opencv"),
    default_weights="casia-webface",
    description="InceptionResnetV1 (facenet-pytorch), 512-d bottleneck",
)
def _build_facenet() -> Trunk:
    return FaceNetTrunk()


# --- vggface: VGG-16 --------------------------------------------------------------------------


# Layer names of Albanie's PyTorch conversion (vgg_face_dag.pth) in torchvision VGG-16 order.
_VGG_FACE_DAG_CONVS = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)


class VggFaceTrunk(Trunk):
    """VGG-16 up to fc7 (4096-d, after ReLU), the VGG-Face descriptor layer."""

    layer_groups = ("block1", "block2", "block3", "block4", "block5", "fc6", "fc7")

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        base = vgg16(weights=None)
        features = list(base.features)
        # torchvision's features: each block ends with a MaxPool2d; split there.
        blocks, current = [], []
        for layer in features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(nn.Sequential(*current))
                current = []
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        # Inputs other than 224 px give other than 7x7 maps; adaptive pooling keeps fc6's shape.
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc6 = nn.Sequential(base.classifier[0], nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc7 = nn.Sequential(base.classifier[3], nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x = block(x)
        return self.fc7(self.fc6(self.pool(x).flatten(1)))

    def conv_layers(self) -> list[nn.Conv2d]:
        blocks = (self.block1, self.block2, self.block3, self.block4, self.block5)
        return [m for block in blocks for m in block if isinstance(m, nn.Conv2d)]

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        """Copy Albanie's vgg_face_dag tensors (conv1_1 .. fc7) into this trunk."""
        targets = dict(zip(_VGG_FACE_DAG_CONVS, self.conv_layers()))
        targets["fc6"] = self.fc6[0]
        targets["fc7"] = self.fc7[0]
        for name, layer in targets.items():
            for kind in ("weight", "bias"):
                key = f"{name}.{kind}"
                if key not in state:
                    raise ValueError(f"vgg_face_dag weights lack {key!r}; is this the right file?")
                tensor = state[key]
                target = getattr(layer, kind)
                # The DAG conversion may store fc6/fc7 as 1x1 or 7x7 convolutions.
                tensor = tensor.reshape(target.shape)
                with torch.no_grad():
                    target.copy_(tensor)


@register_backbone(
    "vggface",
    input_size=224,
    # VGG-Face (Parkhi et al.) subtracts the RGB mean of its training faces from 0-255 pixels.
    mean=(129.186279296875, 104.76238250732422, 93.59396362304688),
    std=(1.0, 1.0, 1.0),
    pixel_range=255.0,
    feature_dim=4096,
    weights=("vgg-face-dag",),
    default_weights="vgg-face-dag",
    description="VGG-16 with VGG-Face weights, fc7 descriptor (4096-d)",
)
def _build_vggface() -> Trunk:
    return VggFaceTrunk()


# --- alexnet ----------------------------------------------------------------------------------


class AlexNetTrunk(Trunk):
    """torchvision AlexNet conv1..conv5 (the study's "fifth layer"), globally average-pooled."""

    layer_groups = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self):
        super().__init__()
        from torchvision.models import alexnet

        features = alexnet(weights=None).features
        # torchvision indices: conv1 0-2 (conv, relu, pool), conv2 3-5, conv3 6-7, conv4 8-9, conv5 10-12.
        self.conv1 = features[0:3]
        self.conv2 = features[3:6]
        self.conv3 = features[6:8]
        self.conv4 = features[8:10]
        self.conv5 = features[10:13]
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for group in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            x = group(x)
        return self.pool(x).flatten(1)

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        # Re-assemble torchvision's flat `features` numbering over the same module objects.
        features = nn.Sequential(*self.conv1, *self.conv2, *self.conv3, *self.conv4, *self.conv5)
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})


@register_backbone(
    "alexnet",
    input_size=224,
    # torchvision's ImageNet statistics on 0-1 pixels.
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    pixel_range=1.0,
    feature_dim=256,
    weights=("imagenet1k-v1",),
    default_weights="imagenet1k-v1",
    description="torchvision AlexNet, conv5 features average-pooled (256-d)",
)
def _build_alexnet() -> Trunk:
    return AlexNetTrunk()


# --- edgeface: EdgeNeXt (timm) trained on WebFace12M -------------------------------------------


def dequantize_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """A ``quantize_dynamic(..., {nn.Linear}, qint8)`` state dict -> the fp32 one of the same network.

    Each dynamically quantised Linear stores ``<name>._packed_params._packed_params`` as
    (int8 weight with its scale, fp32 bias) plus bookkeeping keys (``scale``, ``zero_point``,
    ``_packed_params.dtype``) that a plain Linear does not have; everything else passes through.
    """
    suffix = "._packed_params._packed_params"
    packed = {key.removesuffix(suffix) for key in state if key.endswith(suffix)}
    bookkeeping = {f"{name}.{part}" for name in packed for part in ("scale", "zero_point", "_packed_params.dtype")}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(suffix):
            name = key.removesuffix(suffix)
            weight, bias = value
            plain[f"{name}.weight"] = weight.dequantize()
            if bias is not None:
                plain[f"{name}.bias"] = bias.detach().clone()
        elif key not in bookkeeping:
            plain[key] = value
    return plain


class EdgeFaceTrunk(Trunk):
    """EdgeFace: timm's EdgeNeXt with its classifier reset to the 512-d face embedding.

    The attribute is called ``model`` as in the authors' wrapper, so their checkpoints' keys
    (``model.stem.0.weight`` ...) load unchanged.
    """

    layer_groups = ("model.stem", "model.stages.0", "model.stages.1", "model.stages.2", "model.stages.3", "model.head")

    def __init__(self, variant: str, backbone: str):
        super().__init__()
        import timm

        self.backbone = backbone
        self.model = timm.create_model(variant, pretrained=False, num_classes=512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        # The published files are int8 (dynamic quantisation of every Linear); training and
        # GPUs need fp32, so the packed weights are dequantised into this plain network.
        self.load_state_dict(dequantize_state_dict(state))

    def quantized(self, weights: str) -> nn.Module:
        """This network as the authors ship it: dynamically quantised int8 Linears, CPU only.

        Loads the file as it is (no dequantisation): the reference the fp32 copy is tested against.
        """
        quantized = torch.ao.quantization.quantize_dynamic(self, {nn.Linear}, dtype=torch.qint8)
        quantized.load_state_dict(_pretrained_state(self.backbone, weights)[0])
        return quantized.eval()


_EDGEFACE_NOTE = (
    "WebFace12M training data is for research only. Input: RGB 112 x 112 aligned to the ArcFace "
    "template, (x / 255 - 0.5) / 0.5."
)


for _name, _variant, _size in (("edgeface", "edgenext_x_small", "XS"), ("edgeface_xxs", "edgenext_xx_small", "XXS")):
    register_backbone(
        _name,
        input_size=112,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        pixel_range=1.0,
        feature_dim=512,
        weights=("webface12m",),
        default_weights="webface12m",
        description=f"EdgeFace-{_size} (timm {_variant}, WebFace12M), 512-d; " + _EDGEFACE_NOTE,
        template="arcface",
    )(functools.partial(EdgeFaceTrunk, _variant, _name))


# --- mobilefacenet (MS1M) ------------------------------------------------------------------------


class _DepthwiseSeparable(nn.Module):
    """depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (MobileFaceNet's second layer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class _GlobalDepthwise(nn.Module):
    """7x7 depthwise convolution over the whole 7x7 map, then BN: MobileFaceNet's learnt pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


# (expansion t, channels c, repeats n, first stride s), as in the MobileFaceNet paper's table 1
# and the MS1M weights' `features.0..14`.
_MOBILEFACENET_BLOCKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNetTrunk(Trunk):
    """MobileFaceNet (Chen et al. 2018), the layout of foamliu/MobileFaceNet's MS1M weights.

    The inverted residual blocks are torchvision's MobileNetV2 ``InvertedResidual`` (same
    key layout: ``conv.0`` expand, ``conv.1`` depthwise, ``conv.2`` project, ``conv.3`` BN).
    112 x 112 in, 128-d out (after the final batch norm).
    """

    layer_groups = ("conv1", "dw_conv", "features.0-4", "features.5", "features.6-11", "features.12", "features.13-14", "conv2", "gdconv", "conv3", "bn")

    def __init__(self):
        super().__init__()
        from torchvision.models.mobilenetv2 import InvertedResidual
        from torchvision.ops.misc import Conv2dNormActivation

        self.conv1 = Conv2dNormActivation(3, 64, kernel_size=3, stride=2, activation_layer=nn.ReLU6)
        self.dw_conv = _DepthwiseSeparable(64)
        blocks, channels = [], 64
        for expansion, out_channels, repeats, stride in _MOBILEFACENET_BLOCKS:
            for k in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if k == 0 else 1, expansion))
                channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.conv2 = Conv2dNormActivation(channels, 512, kernel_size=1, activation_layer=nn.ReLU6)
        self.gdconv = _GlobalDepthwise(512)
        self.conv3 = nn.Conv2d(512, 128, 1)
        self.bn = nn.BatchNorm2d(128)

    def get_submodule(self, target: str) -> nn.Module:
        # Layer groups of several consecutive blocks ("features.0-4") for `train_layers: last_<n>`.
        if target.startswith("features.") and "-" in target:
            first, last = (int(k) for k in target.removeprefix("features.").split("-"))
            return nn.ModuleList(self.features[first : last + 1])
        return super().get_submodule(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.conv3(self.gdconv(self.conv2(x)))
        return self.bn(x).flatten(1)

    def fold_batch_norm(self) -> int:
        folded = fold_batch_norms(self)
        # Pairs that forward() applies back to back outside an nn.Sequential.
        for owner, layer, norm in (
            (self.dw_conv, "depthwise", "bn1"),
            (self.dw_conv, "pointwise", "bn2"),
            (self.gdconv, "depthwise", "bn"),
            (self, "conv3", "bn"),
        ):
            fused = _fused(getattr(owner, layer), getattr(owner, norm))
            if fused is not None:
                setattr(owner, layer, fused)
                setattr(owner, norm, nn.Identity())
                folded += 1
        return folded


@register_backbone(
    "mobilefacenet",
    input_size=112,
    # ImageNet statistics on 0-1 pixels, as the MS1M weights were trained.
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    pixel_range=1.0,
    feature_dim=128,
    weights=("ms1m",),
    default_weights="ms1m",
    description="MobileFaceNet (MS1M-refined, foamliu/MobileFaceNet), 128-d; MS1M is for research only",
    template="arcface",
)
def _build_mobilefacenet() -> Trunk:
    return MobileFaceNetTrunk()


# --- insightface_mbf (WebFace600K) -------------------------------------------------------------


class _ConvNormPReLU(nn.Sequential):
    """conv (no bias) -> batch norm -> PReLU, or without the PReLU (``act=False``: a linear projection)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class _MbfDepthwise(nn.Module):
    """Expand 1x1 -> depthwise 3x3 (stride) -> project 1x1; added to its input where ``residual``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            _ConvNormPReLU(in_channels, hidden),
            _ConvNormPReLU(hidden, hidden, 3, stride, groups=hidden),
            _ConvNormPReLU(hidden, out_channels, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


def _mbf_stage(in_channels: int, channels: int, hidden: int, blocks: int) -> nn.Sequential:
    """One stride-2 block, then ``blocks`` residual ones at ``channels``."""
    return nn.Sequential(
        _MbfDepthwise(in_channels, channels, hidden, 2, residual=False),
        *(_MbfDepthwise(channels, channels, channels, 1, residual=True) for _ in range(blocks)),
    )


class InsightFaceMbfTrunk(Trunk):
    """InsightFace's MobileFaceNet "MBF" as published in the ``buffalo_s`` pack (``w600k_mbf.onnx``).

    The layout is read off that graph: a 3x3 stride-2 stem and a grouped 3x3 (128 channels),
    three stages of inverted residual blocks (128 x 4, 256 x 6, 256 x 2, each opened by a
    stride-2 block), a 1x1 to 512 and one to 64 channels, then the 7 x 7 x 64 map flattened
    into a 512-d linear layer and a batch norm (the embedding). 112 x 112 in, 3.4 M parameters.

    The ONNX export folded each convolution's batch norm into a bias; :meth:`load_published`
    puts that bias into the batch norm with unit scale and variance (``x + bias`` in eval mode),
    so the published network is reproduced exactly and the same layout also trains from scratch.
    """

    layer_groups = ("stem", "stage1", "stage2", "stage3", "head")

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_ConvNormPReLU(3, 128, 3, 2), _ConvNormPReLU(128, 128, 3, 1, groups=64))
        self.stage1 = _mbf_stage(128, 128, 128, 4)
        self.stage2 = _mbf_stage(128, 256, 256, 6)
        self.stage3 = _mbf_stage(256, 256, 512, 2)
        self.head = nn.Sequential(
            _ConvNormPReLU(256, 512),
            _ConvNormPReLU(512, 64),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.BatchNorm1d(512),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        # `state` is the graph's parameters in node order (maskface.models.weights.load_onnx_state):
        # Conv_<k>.weight/.bias, PRelu_<k>.slope, Gemm_<k>.weight/.bias, BatchNormalization_<k>.*.
        # Matched to this trunk's layers in the same order, each shape checked by load_state_dict.
        convs = [key[: -len(".weight")] for key in state if key.startswith("Conv_") and key.endswith(".weight")]
        slopes = [key for key in state if key.startswith("PRelu_")]
        gemm = next(key[: -len(".weight")] for key in state if key.startswith("Gemm_") and key.endswith(".weight"))
        norm = next(key[: -len(".weight")] for key in state if key.startswith("BatchNormalization_") and key.endswith(".weight"))
        blocks = [module for module in self.modules() if isinstance(module, _ConvNormPReLU)]
        activations = [block[2] for block in blocks if len(block) == 3]
        if len(convs) != len(blocks) or len(slopes) != len(activations):
            raise InputError(
                f"{weights}: the graph has {len(convs)} convolutions and {len(slopes)} PReLUs; "
                f"InsightFace's MBF has {len(blocks)} and {len(activations)}"
            )
        mine: dict[str, torch.Tensor] = {}
        names = {module: name for name, module in self.named_modules()}
        for conv, block in zip(convs, blocks):
            prefix = names[block]
            bias = state[f"{conv}.bias"]
            norm_eps = block[1].eps
            mine[f"{prefix}.0.weight"] = state[f"{conv}.weight"]
            mine[f"{prefix}.1.weight"] = torch.ones_like(bias)
            mine[f"{prefix}.1.bias"] = bias
            mine[f"{prefix}.1.running_mean"] = torch.zeros_like(bias)
            mine[f"{prefix}.1.running_var"] = torch.full_like(bias, 1.0 - norm_eps)
            mine[f"{prefix}.1.num_batches_tracked"] = torch.tensor(0)
        for slope, activation in zip(slopes, activations):
            mine[f"{names[activation]}.weight"] = state[slope].flatten()
        mine["head.3.weight"], mine["head.3.bias"] = state[f"{gemm}.weight"], state[f"{gemm}.bias"]
        for part in ("weight", "bias", "running_mean", "running_var"):
            mine[f"head.4.{part}"] = state[f"{norm}.{part}"]
        mine["head.4.num_batches_tracked"] = torch.tensor(0)
        self.load_state_dict(mine)


@register_backbone(
    "insightface_mbf",
    input_size=112,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    pixel_range=1.0,
    feature_dim=512,
    weights=("webface600k",),
    default_weights="webface600k",
    description="InsightFace MobileFaceNet (buffalo_s w600k_mbf, WebFace600K), 512-d; the weights are for "
    "non-commercial research only. Input: RGB 112 x 112 aligned to the ArcFace template, (x / 255 - 0.5) / 0.5.",
    template="arcface",
)
def _build_insightface_mbf() -> Trunk:
    return InsightFaceMbfTrunk()


# --- fusion: several networks side by side ------------------------------------------------------


class FusedTrunk(Trunk):
    """Several registered networks on the same aligned face; their L2-normalised features side
    by side, each scaled by ``1 / sqrt(number of members)``.

    The concatenation has unit norm, and the dot product of two of them is the mean of the
    members' cosine similarities. With the head as the identity (``head_init: identity``) the
    fused embedding's cosine is therefore the average of the members' cosines (score-level
    fusion) carried by one embedding, so galleries, classifiers, the API and model folders
    treat a fusion as any other backbone.

    The trunk receives the pixels themselves (the fused spec's normalisation is the identity)
    and each member normalises them as its own spec says. Members share the input size and
    alignment template (:func:`register_fusion` checks).

    Layer groups interleave the members' from the end, so ``train_layers: last_<n>`` unfreezes
    the last groups of every member in turn: for EdgeFace + MobileFaceNet, ``last_5`` is
    MobileFaceNet's last 3 and EdgeFace's last 2 (each one's default alone).
    """

    def __init__(self, members: tuple[str, ...]):
        super().__init__()
        self.member_names = tuple(members)
        self.members = nn.ModuleDict({name: get_spec(name).builder() for name in members})
        self.normalizers = nn.ModuleDict({name: PixelNormalize(get_spec(name)) for name in members})
        self.share = 1.0 / math.sqrt(len(members))
        from_end = [[f"members.{name}.{group}" for group in reversed(self.members[name].layer_groups)] for name in members]
        # Counted from the end: the last member's last group, the first member's last group, then
        # each one's last but one, ...: odd counts give the later member (MobileFaceNet, finer
        # grained) the extra group.
        interleaved = [group for level in itertools.zip_longest(*from_end) for group in reversed(level) if group is not None]
        self.layer_groups = tuple(reversed(interleaved))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for name in self.member_names:
            feature = self.members[name](self.normalizers[name](x))
            # Normalised in fp32, as FaceEmbedder does: a bf16 norm loses ~3 digits.
            parts.append(F.normalize(feature.float(), dim=1) * self.share)
        return torch.cat(parts, dim=1)

    def get_submodule(self, target: str) -> nn.Module:
        # A member resolves its own group names (MobileFaceNet's "features.0-4" is no attribute path).
        prefix, _, rest = target.partition(".")
        if prefix == "members" and rest:
            name, _, inner = rest.partition(".")
            if name in self.members:
                return self.members[name].get_submodule(inner) if inner else self.members[name]
        return super().get_submodule(target)

    def fold_batch_norm(self) -> int:
        # Each member folds the pairs its own forward() applies back to back.
        return sum(self.members[name].fold_batch_norm() for name in self.member_names)

    def load_published(self, state: dict[str, torch.Tensor], weights: str) -> None:
        raise ValueError(
            f"a fusion has no published file of its own; its members' files are loaded by load_pretrained "
            f"({', '.join(self.member_names)})"
        )


def register_fusion(*members: str) -> str:
    """Register ``"<a>+<b>..."`` as a backbone: the members' networks side by side (:class:`FusedTrunk`).

    Its one weights name, ``pretrained``, stands for each member's default weights. Members
    must be registered single networks sharing input size and alignment template (they see
    the same aligned face); the error names them otherwise. Returns the registered name.
    """
    if len(members) < 2 or len(set(members)) != len(members):
        raise ValueError(f"a fusion needs two or more different backbones, got {members!r}")
    name = "+".join(members)
    specs = [get_spec(member) for member in members]
    nested = [spec.name for spec in specs if spec.members]
    if nested:
        raise ValueError(f"fusion {name}: {', '.join(nested)} is a fusion itself; list its members instead")
    if len({(spec.input_size, spec.template) for spec in specs}) != 1:
        shapes = ", ".join(f"{spec.name} {spec.input_size} px on the {spec.template} template" for spec in specs)
        raise ValueError(
            f"fusion {name}: members must share input size and alignment template (they see the same "
            f"aligned face); got {shapes}"
        )
    register_backbone(
        name,
        input_size=specs[0].input_size,
        # The identity: the trunk gets the pixels and each member normalises them its own way.
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        pixel_range=255.0,
        feature_dim=sum(spec.feature_dim for spec in specs),
        weights=("pretrained",),
        default_weights="pretrained",
        description=f"fusion of {', '.join(members)}: their networks side by side, each feature "
        f"L2-normalised, equal weights ({' + '.join(str(spec.feature_dim) for spec in specs)}-d)",
        template=specs[0].template,
        members=tuple(members),
    )(functools.partial(FusedTrunk, tuple(members)))
    return name


# The average of EdgeFace's and MobileFaceNet's cosines (docs/recipe.md, "Fusion").
register_fusion("edgeface", "mobilefacenet")


def _pretrained_state(backbone: str, weights: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The verified state dict of ``backbone:weights`` (see :mod:`maskface.models.weights`) and its file."""
    from maskface.models.weights import load_state_dict, resolve_weights

    path = resolve_weights(f"{backbone}:{weights}")
    return load_state_dict(path), path
