import pickle

import numpy as np
import pytest
import torch

from maskface.models.backbones import create_model
from maskface.device import inference_dtype
from maskface.inference.embed import embed_array
from maskface.imageio import load_rgb


def test_inference_dtype_choices():
    cpu = torch.device("cpu")
    assert inference_dtype(cpu, "fp32") is None
    assert inference_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        inference_dtype(cpu, "fp8")


def test_auto_precision_follows_the_cpu(monkeypatch):
    import maskface.device as device

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    assert device.inference_dtype(torch.device("cpu"), "auto") is None
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    assert device.inference_dtype(torch.device("cpu"), "auto") is torch.bfloat16


@pytest.mark.realdata
def test_bf16_facenet_embeddings_agree_with_fp32_on_real_faces(datasets_root):
    """The reduced-precision default is only allowed because of this agreement."""
    from maskface.models.weights import WeightsUnavailableError

    pytest.importorskip("cv2")
    try:
        model = create_model("facenet", weights="casia-webface", embedding_size=512)
    except WeightsUnavailableError as error:
        # Only "no file, no download, no local builder" skips. A local build that crashed is
        # reported with the crash as its cause: that is a failure, never a skip.
        if error.__cause__ is not None:
            raise
        pytest.skip(f"facenet casia-webface weights unavailable offline: {error}")
    # The pretrained embedding itself (not a random head), as the embed stage loads a model:
    # eval mode, batch norms folded.
    model.init_head_identity()
    model.eval().fold_batch_norm()
    paths = sorted((datasets_root / "rmfrd-dev" / "AFDB_masked_face_dataset").glob("*/*.jp*g"))[:12]
    paths += sorted((datasets_root / "rmfrd-dev" / "AFDB_face_dataset").glob("*/*.jpg"))[:12]
    images = np.stack([np.asarray(load_rgb(p).resize((160, 160))).transpose(2, 0, 1) for p in paths])
    fp32 = embed_array(model, images, batch_size=8, progress=False, precision="fp32")
    bf16 = embed_array(model, images, batch_size=8, progress=False, precision="bf16", channels_last=True)
    cosine = np.einsum("ij,ij->i", fp32, bf16)
    assert cosine.min() >= 0.999, cosine.min()


def test_load_model_rebuilds_the_saved_network_and_leaves_the_thread_count(tmp_path):
    # Loading runs on one thread (many small copies); the caller's setting must come back,
    # after a failed load too.
    from maskface.inference.embed import MODEL_FILE, load_model, save_model

    torch.manual_seed(0)
    network = create_model("alexnet", weights="none", embedding_size=16, input_size=64).eval()
    save_model(network, tmp_path / "backbone", {"weights": "none"})
    before = torch.get_num_threads()
    loaded = load_model(tmp_path / "backbone", fold_batch_norm=False)
    assert torch.get_num_threads() == before
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    (tmp_path / "backbone" / MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises((RuntimeError, pickle.UnpicklingError)):
        load_model(tmp_path / "backbone")
    assert torch.get_num_threads() == before
