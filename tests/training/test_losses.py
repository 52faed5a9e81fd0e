"""ArcFace loss against a hand-computed oracle (python floats, math.acos/cos)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskface.training.losses import COSINE_EPS, ArcFaceLoss, arcface_logits

# Tolerances per dtype of the computation: the oracle works in float64 on the same
# (already rounded) inputs, so the error is the rounding of the cosine times the scale.
TOLERANCE = {
    torch.float64: dict(rel_tol=1e-9, abs_tol=1e-9),
    torch.float32: dict(rel_tol=1e-5, abs_tol=1e-5),
    torch.float16: dict(rel_tol=2e-2, abs_tol=5e-2),
    torch.bfloat16: dict(rel_tol=5e-2, abs_tol=2e-1),
}


def _oracle_loss(embeddings: torch.Tensor, centres: torch.Tensor, labels, scale: float, margin: float) -> float:
    """ArcFace cross entropy recomputed sample by sample on python floats.

    Like the implementation (and as specified), the target cosine is clamped to
    [-1 + COSINE_EPS, 1 - COSINE_EPS] before acos, which bounds the gradient.
    """
    emb = embeddings.double().tolist()
    cen = centres.double().tolist()

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    emb = [unit(v) for v in emb]
    cen = [unit(v) for v in cen]
    total = 0.0
    for row, label in zip(emb, labels):
        logits = []
        for j, centre in enumerate(cen):
            cosine = max(-1.0, min(1.0, sum(a * b for a, b in zip(row, centre))))
            if j == label:
                cosine = max(-1.0 + COSINE_EPS, min(1.0 - COSINE_EPS, cosine))
                theta = math.acos(cosine)
                cosine = math.cos(theta + margin) if theta + margin <= math.pi else cosine - margin * math.sin(margin)
            logits.append(scale * cosine)
        peak = max(logits)
        log_sum = peak + math.log(sum(math.exp(z - peak) for z in logits))
        total += log_sum - logits[label]
    return total / len(labels)


def _angle_embeddings(angles_deg, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_loss_matches_hand_computation(dtype):
    torch.manual_seed(0)
    scale, margin = 30.0, 0.5
    loss_fn = ArcFaceLoss(embedding_size=2, num_classes=10, scale=scale, margin_rad=margin).to(dtype)
    # Unit vectors every 2 degrees around the whole circle: many samples lie more than
    # pi - m from their centre, so both branches of the target logit are exercised.
    embeddings = _angle_embeddings(range(0, 360, 2), dtype=dtype)
    labels = torch.randint(0, 10, (embeddings.shape[0],))
    loss = loss_fn(embeddings, labels)
    expected = _oracle_loss(embeddings, loss_fn.weight.detach(), labels.tolist(), scale, margin)
    assert loss.dim() == 0
    assert math.isclose(loss.item(), expected, **TOLERANCE[dtype]), (dtype, loss.item(), expected)


def test_logits_hand_computed_both_branches():
    scale, margin = 64.0, 0.5
    # theta + m > pi  <=>  cos(theta) < cos(pi - m) = -0.8776 for m = 0.5
    cosine = torch.tensor([[0.3, -0.2, 0.9], [-0.95, 0.1, 0.4], [0.2, -0.99, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    logits = arcface_logits(cosine, labels, scale=scale, margin_rad=margin)
    for i, label in enumerate(labels.tolist()):
        for j in range(3):
            c = cosine[i, j].item()
            if j == label:
                theta = math.acos(c)
                c = math.cos(theta + margin) if theta + margin <= math.pi else c - margin * math.sin(margin)
            assert math.isclose(logits[i, j].item(), scale * c, rel_tol=1e-12, abs_tol=1e-12)
    # the fallback rows really took the fallback: cos(theta + m) there would be larger
    for i, label in ((1, 0), (2, 1)):
        c = cosine[i, label].item()
        assert math.acos(c) + margin > math.pi
        assert logits[i, label].item() < scale * math.cos(math.acos(c) + margin)


def test_fallback_keeps_target_logit_monotonic_in_angle():
    # Without the fallback, cos(theta + m) rises again once theta + m > pi, rewarding
    # embeddings that point away from their centre.
    angles = torch.linspace(0.0, math.pi, 721, dtype=torch.float64)
    cosine = torch.cos(angles).unsqueeze(1).repeat(1, 2)
    labels = torch.zeros(angles.shape[0], dtype=torch.long)
    target = arcface_logits(cosine, labels, scale=1.0, margin_rad=0.5)[:, 0]
    assert torch.all(target[1:] <= target[:-1] + 1e-12)


def test_margin_zero_is_scaled_softmax_cross_entropy():
    torch.manual_seed(1)
    loss_fn = ArcFaceLoss(embedding_size=16, num_classes=7, scale=20.0, margin_rad=0.0)
    embeddings = torch.randn(32, 16)
    labels = torch.randint(0, 7, (32,))
    cosine = F.normalize(embeddings) @ F.normalize(loss_fn.weight.detach()).T
    expected = F.cross_entropy(20.0 * cosine, labels)
    torch.testing.assert_close(loss_fn(embeddings, labels), expected, rtol=1e-5, atol=1e-6)


def test_margin_lowers_only_the_target_logit():
    torch.manual_seed(2)
    cosine = torch.rand(8, 5) * 1.6 - 0.8
    labels = torch.randint(0, 5, (8,))
    plain = arcface_logits(cosine, labels, scale=10.0, margin_rad=0.0)
    margined = arcface_logits(cosine, labels, scale=10.0, margin_rad=0.4)
    target = F.one_hot(labels, 5).bool()
    assert torch.all(margined[target] < plain[target])
    torch.testing.assert_close(margined[~target], plain[~target])
    torch.testing.assert_close(plain, 10.0 * cosine)


def test_gradients_finite_at_cosine_plus_minus_one():
    cosine = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.5]], requires_grad=True)
    labels = torch.tensor([0, 0])
    F.cross_entropy(arcface_logits(cosine, labels, 30.0, 0.5), labels).backward()
    assert torch.isfinite(cosine.grad).all()

    torch.manual_seed(3)
    loss_fn = ArcFaceLoss(embedding_size=8, num_classes=4)
    labels = torch.tensor([0, 1, 2, 3])
    centres = loss_fn.weight.detach().clone()
    # embeddings exactly on (and exactly opposite) their class centres
    embeddings = torch.cat([centres[:2] * 5.0, -centres[2:] * 3.0]).requires_grad_(True)
    loss = loss_fn(embeddings, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    assert torch.isfinite(loss_fn.weight.grad).all() and loss_fn.weight.grad.abs().sum() > 0


def test_gradient_matches_finite_differences():
    torch.manual_seed(4)
    loss_fn = ArcFaceLoss(embedding_size=3, num_classes=4, scale=8.0, margin_rad=0.3).double()
    embeddings = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.autograd.gradcheck(lambda e, w: _functional_loss(e, w, labels), (embeddings, loss_fn.weight))


def _functional_loss(embeddings, weight, labels):
    cosine = F.normalize(embeddings) @ F.normalize(weight).T
    return F.cross_entropy(arcface_logits(cosine, labels, 8.0, 0.3), labels)


def test_optimisation_reduces_loss_on_separable_toy_data():
    torch.manual_seed(5)
    num_classes, per_class, dim = 4, 16, 6
    means = torch.randn(num_classes, dim) * 3.0
    inputs = torch.cat([means[c] + 0.3 * torch.randn(per_class, dim) for c in range(num_classes)])
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    embedder = torch.nn.Linear(dim, 8)
    loss_fn = ArcFaceLoss(embedding_size=8, num_classes=num_classes, scale=16.0, margin_rad=0.3)
    optimiser = torch.optim.Adam([*embedder.parameters(), *loss_fn.parameters()], lr=0.05)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = loss_fn(embedder(inputs), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        predicted = loss_fn.cosine(embedder(inputs)).argmax(1)
    assert (predicted == labels).float().mean() == 1.0


def test_autocast_bfloat16_margin_in_float32():
    torch.manual_seed(6)
    loss_fn = ArcFaceLoss(embedding_size=32, num_classes=5)
    embeddings = torch.randn(10, 32, requires_grad=True)
    labels = torch.randint(0, 5, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = loss_fn.logits(embeddings, labels)
        loss = loss_fn(embeddings, labels)
    assert logits.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    reference = loss_fn(embeddings.detach(), labels)
    assert math.isclose(loss.item(), reference.item(), **TOLERANCE[torch.bfloat16])


def test_attributes_units_and_validation():
    loss_fn = ArcFaceLoss(embedding_size=4, num_classes=3, scale=30.0, margin_rad=0.5)
    assert loss_fn.weight.shape == (3, 4)
    assert math.isclose(loss_fn.margin_deg, 0.5 * 180.0 / math.pi)
    with pytest.raises(ValueError, match=r"margin_rad = 1\.6.*\[0, pi/2\)"):
        ArcFaceLoss(4, 3, margin_rad=1.6)
    with pytest.raises(ValueError, match=r"margin_rad = -0\.1"):
        ArcFaceLoss(4, 3, margin_rad=-0.1)
    with pytest.raises(ValueError, match=r"scale = 0.*> 0"):
        ArcFaceLoss(4, 3, scale=0)
    with pytest.raises(ValueError, match=r"num_classes = 1.*>= 2"):
        ArcFaceLoss(4, 1)
    with pytest.raises(ValueError, match=r"embeddings must have shape \(N, 4\)"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"label 3 is out of range.*\[0, 2\]"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 1, 2]))


def test_initialisation_is_normal_with_std_0_01():
    torch.manual_seed(7)
    weight = ArcFaceLoss(embedding_size=256, num_classes=200).weight.detach()
    assert abs(weight.mean().item()) < 1e-3
    assert math.isclose(weight.std().item(), 0.01, rel_tol=0.02)


def test_matches_pytorch_metric_learning():
    # A dev dependency (pyproject.toml): missing, this test fails rather than skips.
    from pytorch_metric_learning.losses import ArcFaceLoss as PmlArcFaceLoss

    torch.manual_seed(8)
    margin_rad, scale = 0.5, 30.0
    ours = ArcFaceLoss(embedding_size=2, num_classes=6, scale=scale, margin_rad=margin_rad)
    # pytorch-metric-learning takes the margin in DEGREES and stores W as (E, C).
    theirs = PmlArcFaceLoss(num_classes=6, embedding_size=2, margin=math.degrees(margin_rad), scale=scale)
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)
        centre_angles = torch.atan2(ours.weight[:, 1], ours.weight[:, 0])
    labels = torch.randint(0, 6, (40,))
    # It has no fallback branch, so keep every theta + m well below pi.
    offsets = torch.linspace(-1.5, 1.5, 40)
    angles = centre_angles[labels] + offsets
    embeddings = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    torch.testing.assert_close(ours(embeddings, labels), theirs(embeddings, labels), rtol=1e-5, atol=1e-5)


def test_imprint_sets_each_centre_to_its_class_mean_direction():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 6, generator=generator) * torch.rand(40, 1, generator=generator).add(0.5)
    labels = torch.arange(40) % 4
    loss = ArcFaceLoss(6, 4)
    loss.imprint(embeddings, labels)
    # Oracle in plain python: average the unit rows of each class, then scale to unit length.
    for k in range(4):
        rows = [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row, y in zip(embeddings.tolist(), labels.tolist()) if y == k]
        mean = [sum(column) / len(rows) for column in zip(*rows)]
        norm = math.sqrt(sum(x * x for x in mean))
        for got, want in zip(loss.weight[k].tolist(), mean):
            assert got == pytest.approx(want / norm, abs=1e-6)
    # Each class's own centre is then the nearest to its mean: the loss starts near its floor.
    assert (loss.cosine(embeddings).argmax(dim=1) == labels).float().mean() > 0.25


def test_imprint_refuses_a_class_without_rows():
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        ArcFaceLoss(4, 3).imprint(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        ArcFaceLoss(4, 3).imprint(torch.randn(4, 5), torch.tensor([0, 1, 2, 1]))
