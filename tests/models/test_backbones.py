import copy

import pytest
import torch

from maskface.models.backbones import available_backbones, create_model, get_spec
from maskface.inference.embed import load_model, save_model

# Small inputs keep the registry-wide tests fast on CPU; every trunk pools adaptively.
TEST_SIZE = {"facenet": 96, "vggface": 64, "alexnet": 96, "edgeface": 64, "edgeface_xxs": 64, "mobilefacenet": 112}


@pytest.fixture(scope="module", params=available_backbones())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, embedding_size=32, input_size=TEST_SIZE[request.param]).eval()


def test_registry_lists_the_study_and_modern_backbones():
    assert available_backbones() == ["facenet", "vggface", "alexnet", "edgeface", "edgeface_xxs", "mobilefacenet"]


def test_forward_shape_finite_and_unit_norm(model):
    size = model.input_size
    pixels = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        embeddings = model(pixels)
    assert embeddings.shape == (3, 32)
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_uint8_and_float_pixels_give_the_same_embedding(model):
    size = model.input_size
    pixels = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), model(pixels.float()))


@pytest.mark.parametrize(
    "name, pixel, expected",
    [
        ("facenet", 255, (255 - 127.5) / 128),
        ("facenet", 0, -127.5 / 128),
        ("vggface", 200, 200 - 129.186279296875),
        ("alexnet", 255, (1.0 - 0.485) / 0.229),
    ],
)
def test_pixel_normalisation_golden_values(name, pixel, expected):
    model = create_model(name, input_size=TEST_SIZE[name])
    normalised = model.normalize(torch.full((1, 3, 2, 2), pixel, dtype=torch.uint8))
    assert normalised[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_spec_carries_preprocessing():
    assert get_spec("facenet").input_size == 160 and get_spec("facenet").feature_dim == 512
    assert get_spec("vggface").input_size == 224 and get_spec("vggface").feature_dim == 4096
    assert get_spec("alexnet").feature_dim == 256
    for name in ("edgeface", "edgeface_xxs", "mobilefacenet"):
        spec = get_spec(name)
        # The modern networks were trained on 112 px faces aligned to insightface's template.
        assert (spec.input_size, spec.template) == (112, "arcface")
    assert get_spec("edgeface").feature_dim == 512 and get_spec("mobilefacenet").feature_dim == 128
    assert get_spec("facenet").template == "facenet"


def test_unknown_backbone_and_weights_name_the_choices():
    with pytest.raises(ValueError, match="facenet, vggface, alexnet"):
        get_spec("resnet")
    with pytest.raises(ValueError, match="none, auto, imagenet1k-v1"):
        create_model("alexnet", weights="imagenet")


@pytest.mark.parametrize("name", available_backbones())
def test_train_layers_policies(name):
    model = create_model(name, input_size=TEST_SIZE[name])
    model.configure_training("head", freeze_bn_stats=False)
    assert not model.trunk_parameters() and model.head_parameters()
    groups = model.trunk.layer_groups
    trainable = model.configure_training("last_1", freeze_bn_stats=False)
    assert trainable == [groups[-1]]
    expected = {id(p) for p in model.trunk.get_submodule(groups[-1]).parameters()}
    assert {id(p) for p in model.trunk_parameters()} == expected
    model.configure_training("all", freeze_bn_stats=False)
    assert len(model.trunk_parameters()) == len(list(model.trunk.parameters()))
    with pytest.raises(ValueError, match="last_1 .. last_"):
        model.configure_training(f"last_{len(groups) + 1}", freeze_bn_stats=False)


def test_frozen_bn_statistics_do_not_move_in_training():
    model = create_model("facenet", input_size=96)
    model.configure_training("all", freeze_bn_stats=True)
    model.train()
    bn = model.trunk.net.conv2d_1a.bn
    before = bn.running_mean.clone()
    model(torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8))
    torch.testing.assert_close(bn.running_mean, before)
    # The head's batch norm is new and must still learn its statistics.
    assert model.head[2].training


def test_vgg_face_dag_tensors_land_in_the_right_layers():
    model = create_model("vggface", input_size=64)
    trunk = model.trunk
    names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    state = {}
    for name, conv in zip(names, trunk.conv_layers()):
        state[f"{name}.weight"] = torch.randn_like(conv.weight)
        state[f"{name}.bias"] = torch.randn_like(conv.bias)
    # The DAG conversion stores fc6 as a 7x7 convolution over 512 channels.
    state["fc6.weight"] = torch.randn(4096, 512, 7, 7)
    state["fc6.bias"] = torch.randn(4096)
    state["fc7.weight"] = torch.randn(4096, 4096)
    state["fc7.bias"] = torch.randn(4096)
    trunk.load_published(state, "vgg-face-dag")
    torch.testing.assert_close(trunk.block3[0].weight, state["conv3_1.weight"])
    torch.testing.assert_close(trunk.block5[4].bias, state["conv5_3.bias"])
    torch.testing.assert_close(trunk.fc6[0].weight, state["fc6.weight"].reshape(4096, -1))
    torch.testing.assert_close(trunk.fc7[0].weight, state["fc7.weight"])
    with pytest.raises(ValueError, match="fc7.weight"):
        trunk.load_published({k: v for k, v in state.items() if k != "fc7.weight"}, "vgg-face-dag")


def _randomise_batch_norms(model, seed=0):
    # Fresh batch norms are the identity up to eps; real running statistics make folding visible.
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.2)


@pytest.mark.parametrize("name", available_backbones())
def test_folding_batch_norms_keeps_the_embeddings(name):
    model = create_model(name, embedding_size=32, input_size=TEST_SIZE[name])
    _randomise_batch_norms(model)
    model.eval()
    pixels = torch.randint(0, 256, (4, 3, TEST_SIZE[name], TEST_SIZE[name]), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(pixels)
        folded = copy.deepcopy(model).fold_batch_norm()
        got = folded(pixels)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    left = [m for m in folded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert left == [], f"{name}: {len(left)} batch norms not folded"
    assert folded.batch_norm_folded and not model.batch_norm_folded


def test_a_folded_model_refuses_to_train_or_be_saved(tmp_path):
    model = create_model("alexnet", embedding_size=16, input_size=64)
    with pytest.raises(ValueError, match="eval"):
        model.fold_batch_norm()  # still in training mode
    folded = model.eval().fold_batch_norm()
    with pytest.raises(ValueError, match="cannot train"):
        folded.train()
    folded.eval()  # eval stays allowed: embed_array restores the mode it found
    with pytest.raises(ValueError, match="folded"):
        save_model(folded, tmp_path / "m", {})


def test_load_model_folds_unless_asked_not_to(tmp_path):
    model = create_model("facenet", embedding_size=16, input_size=96)
    _randomise_batch_norms(model, seed=3)
    save_model(model.eval(), tmp_path / "m", {})
    assert load_model(tmp_path / "m").batch_norm_folded
    unfolded = load_model(tmp_path / "m", fold_batch_norm=False)
    assert not unfolded.batch_norm_folded
    unfolded.train()  # still trainable


@pytest.mark.parametrize(
    "name, pixel, expected",
    [
        # EdgeFace: (x / 255 - 0.5) / 0.5; MobileFaceNet: ImageNet statistics on [0, 1].
        ("edgeface", 255, 1.0),
        ("edgeface", 0, -1.0),
        ("mobilefacenet", 255, (1.0 - 0.485) / 0.229),
    ],
)
def test_modern_network_normalisation_golden_values(name, pixel, expected):
    model = create_model(name, input_size=TEST_SIZE[name])
    normalised = model.normalize(torch.full((1, 3, 2, 2), pixel, dtype=torch.uint8))
    assert normalised[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_dequantised_state_dict_matches_torch_quantised_linears():
    from maskface.models.backbones import dequantize_state_dict

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4, bias=False))
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(plain), {torch.nn.Linear}, dtype=torch.qint8)
    state = dequantize_state_dict(quantized.state_dict())
    assert set(state) == {"0.weight", "0.bias", "2.weight"}
    # Oracle: torch's own view of each quantised layer's weight.
    torch.testing.assert_close(state["0.weight"], quantized[0].weight().dequantize())
    torch.testing.assert_close(state["2.weight"], quantized[2].weight().dequantize())
    torch.testing.assert_close(state["0.bias"], quantized[0].bias())
    rebuilt = copy.deepcopy(plain)
    rebuilt.load_state_dict(state)
    # int8 weights: within one quantisation step of the originals.
    step = quantized[0].weight().q_scale()
    assert (rebuilt[0].weight - plain[0].weight).abs().max() <= step


def test_head_identity_makes_the_embedding_the_networks_own_feature():
    model = create_model("edgeface", embedding_size=512, input_size=64).eval()
    model.init_head_identity()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.trunk(model.normalize(pixels)), dim=1)
        torch.testing.assert_close(model(pixels), expected, atol=1e-5, rtol=0)


def test_flip_embeds_the_image_plus_its_mirror():
    model = create_model("mobilefacenet", embedding_size=128, input_size=112).eval()
    _randomise_batch_norms(model)
    pixels = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = model.head(model.features(pixels)) + model.head(model.features(pixels.flip(-1)))
        torch.testing.assert_close(model(pixels, flip=True), torch.nn.functional.normalize(raw, dim=1))
        # The mirror image has the same flip-augmented embedding.
        torch.testing.assert_close(model(pixels.flip(-1), flip=True), model(pixels, flip=True), atol=1e-5, rtol=0)


def test_weights_auto_without_a_file_trains_from_scratch_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MASKFACE_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr("maskface.models.weights._download", _refuse_download)
    with caplog.at_level("WARNING"):
        model = create_model("mobilefacenet", weights="auto", embedding_size=128)
    assert model.pretrained is None
    assert "random initialisation" in caplog.text and "mobilefacenet_ms1m.pt" in caplog.text


def test_explicit_weights_without_a_file_fail_naming_the_file_and_place(monkeypatch, tmp_path):
    from maskface.models.weights import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MASKFACE_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr("maskface.models.weights._download", _refuse_download)
    with pytest.raises(WeightsUnavailableError, match=r"edgeface_xs_q\.pt.*MASKFACE_WEIGHTS_DIR|MASKFACE_WEIGHTS_DIR.*edgeface_xs_q\.pt"):
        create_model("edgeface", weights="webface12m", embedding_size=512)


def _refuse_download(url, destination):
    raise OSError(f"offline test: no connection to {url}")
