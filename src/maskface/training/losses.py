"""ArcFace additive angular margin loss (Deng et al., 2019, https://arxiv.org/abs/1801.07698).

The target-class logit is ``scale * cos(theta + margin_rad)`` and every other logit is
``scale * cos(theta)``, where ``theta`` is the angle between the L2-normalised embedding and
the L2-normalised class centre. Where ``theta + margin_rad`` would pass pi, ``cos`` stops
being monotonic in ``theta`` (a larger angle would get a *larger* logit), so, as in
insightface's ``arcface_torch`` ``ArcFace`` (``easy_margin=False``), the target logit falls
back to ``cos(theta) - margin_rad * sin(margin_rad)``, which keeps it decreasing in theta.

Units: angles in radians throughout; ``ArcFaceLoss.margin_deg`` is for reading only.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Keeps acos/sqrt away from +-1, where d/dc sqrt(1 - c^2) is infinite and a cosine of
# exactly 1 (an embedding equal to its centre) would turn the gradient into NaN.
COSINE_EPS = 1e-7


def _check_scale_margin(scale: float, margin_rad: float) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"ArcFace scale = {scale!r} is invalid; valid: a finite number > 0")
    if not (isinstance(margin_rad, (int, float)) and 0.0 <= margin_rad < math.pi / 2):
        raise ValueError(
            f"ArcFace margin_rad = {margin_rad!r} is invalid; valid: radians in [0, pi/2) "
            f"i.e. [0, {math.pi / 2:.6f})"
        )


def _check_labels(labels: Tensor, batch: int, num_classes: int) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if batch:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"label {bad} is out of range; valid: class indices in [0, {num_classes - 1}]")


def arcface_logits(cosine: Tensor, labels: Tensor, scale: float, margin_rad: float) -> Tensor:
    """ArcFace logits from cosine similarities.

    Args:
        cosine: (N, C) cosine between each normalised embedding and each normalised class
            centre, values in [-1, 1]. Any float dtype; the margin is computed in at least
            float32 so that bf16/fp16 (autocast) inputs do not lose the margin to rounding.
        labels: (N,) integer class index of each row, in [0, C).
        scale: s > 0, multiplies every logit (the inverse softmax temperature).
        margin_rad: additive angular margin m in radians, in [0, pi/2).

    Returns:
        (N, C) logits in float32 (float64 if ``cosine`` is float64): ``s * cos(theta + m)``
        at the target where ``theta + m <= pi``, else ``s * (cos(theta) - m * sin(m))``;
        ``s * cos(theta)`` elsewhere.
    """
    _check_scale_margin(scale, margin_rad)
    if cosine.dim() != 2:
        raise ValueError(f"cosine must have shape (N, C), got {tuple(cosine.shape)}")
    _check_labels(labels, cosine.shape[0], cosine.shape[1])

    compute_dtype = torch.promote_types(cosine.dtype, torch.float32)
    cos_all = cosine.to(compute_dtype)
    index = labels.long().unsqueeze(1)
    target = cos_all.gather(1, index).clamp(-1.0 + COSINE_EPS, 1.0 - COSINE_EPS)
    sin_target = torch.sqrt(1.0 - target * target)  # theta in [0, pi], so sin >= 0
    cos_theta_plus_m = target * math.cos(margin_rad) - sin_target * math.sin(margin_rad)
    # theta + m <= pi  <=>  cos(theta) >= cos(pi - m); insightface's ``theta``/``sinmm``.
    threshold = math.cos(math.pi - margin_rad)
    fallback_shift = math.sin(math.pi - margin_rad) * margin_rad
    target_logit = torch.where(target >= threshold, cos_theta_plus_m, target - fallback_shift)
    # scatter (not in-place indexing) so autograd keeps the un-clamped non-target cosines.
    logits = cos_all.scatter(1, index, target_logit)
    return logits * scale


class ArcFaceLoss(nn.Module):
    """ArcFace loss with learnable class centres.

    Attributes:
        weight: (num_classes, embedding_size) class centres, initialised N(0, 0.01^2);
            normalised on every forward pass, so only their direction matters.
        scale: logit scale s (unitless).
        margin_rad: additive angular margin in radians.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, margin_rad: float = 0.5):
        super().__init__()
        if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size < 1:
            raise ValueError(f"ArcFace embedding_size = {embedding_size!r} is invalid; valid: an integer >= 1")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"ArcFace num_classes = {num_classes!r} is invalid; valid: an integer >= 2")
        _check_scale_margin(scale, margin_rad)
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin_rad = float(margin_rad)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    @property
    def margin_deg(self) -> float:
        """The margin in degrees, for comparison with libraries that take degrees."""
        return math.degrees(self.margin_rad)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(N, E) embeddings (any norm) -> (N, C) cosine to each class centre."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (N, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        # Outside autocast, mixed dtypes (fp16 embeddings, fp32 centres) meet in the wider
        # one; inside autocast the matmul is cast down to the autocast dtype regardless.
        dtype = torch.promote_types(embeddings.dtype, self.weight.dtype)
        return F.normalize(embeddings.to(dtype), dim=1) @ F.normalize(self.weight.to(dtype), dim=1).T

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(N, E) embeddings and (N,) labels -> (N, C) ArcFace logits (see :func:`arcface_logits`)."""
        return arcface_logits(self.cosine(embeddings), labels, self.scale, self.margin_rad)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross entropy of the ArcFace logits; a scalar in float32 (float64 for float64 input)."""
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())

    @torch.no_grad()
    def imprint(self, embeddings: Tensor, labels: Tensor) -> None:
        """Set each class centre to the direction of its class's mean unit embedding.

        ``embeddings`` (N, E) any norm, ``labels`` (N,) in [0, num_classes); every class needs
        at least one row.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have shape (N, {self.embedding_size}), got {tuple(embeddings.shape)}")
        labels = labels.long().to(embeddings.device)
        counts = torch.bincount(labels, minlength=self.num_classes)
        if len(counts) > self.num_classes or bool((counts == 0).any()):
            missing = torch.nonzero(counts[: self.num_classes] == 0).flatten().tolist()
            raise ValueError(
                f"imprinting needs every class in 0..{self.num_classes - 1} once at least; "
                f"missing {missing}, largest label {int(labels.max())}"
            )
        sums = torch.zeros(self.num_classes, self.embedding_size, dtype=torch.float64, device=embeddings.device)
        sums.index_add_(0, labels, F.normalize(embeddings.double(), dim=1))
        self.weight.copy_(F.normalize(sums, dim=1).to(self.weight))

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"scale={self.scale}, margin_rad={self.margin_rad}"
        )
