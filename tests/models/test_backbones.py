import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskface.models.backbones import available_backbones, create_model, get_spec, shifted
from maskface.inference.embed import load_model, save_model

# Small inputs keep the registry-wide tests fast on CPU; every trunk pools adaptively.
TEST_SIZE = {
    "facenet": 96, "vggface": 64, "alexnet": 96, "edgeface": 64, "edgeface_xxs": 64, "mobilefacenet": 112,
    "insightface_mbf": 112, "edgeface+mobilefacenet": 112,
}


@pytest.fixture(scope="module", params=available_backbones())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, embedding_size=32, input_size=TEST_SIZE[request.param]).eval()


def test_registry_lists_the_study_and_modern_backbones():
    assert available_backbones() == [
        "facenet", "vggface", "alexnet", "edgeface", "edgeface_xxs", "mobilefacenet", "insightface_mbf",
        "edgeface+mobilefacenet",
    ]


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


def _as_exported_graph(trunk) -> dict:
    """``trunk``'s parameters as the ONNX export of InsightFace's MBF holds them: every batch norm
    after a convolution folded into its bias (torch's own fusion, the oracle), named by node."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from maskface.models.backbones import _ConvNormPReLU

    state, node = {}, 0
    for block in (m for m in trunk.modules() if isinstance(m, _ConvNormPReLU)):
        fused = fuse_conv_bn_eval(block[0], block[1])
        state[f"Conv_{node}.weight"], state[f"Conv_{node}.bias"] = fused.weight.detach(), fused.bias.detach()
        node += 1
        if len(block) == 3:
            state[f"PRelu_{node}.slope"] = block[2].weight.detach().reshape(-1, 1, 1)
            node += 1
    linear, norm = trunk.head[3], trunk.head[4]
    state[f"Gemm_{node}.weight"], state[f"Gemm_{node}.bias"] = linear.weight.detach(), linear.bias.detach()
    for part in ("weight", "bias", "running_mean", "running_var"):
        state[f"BatchNormalization_{node + 1}.{part}"] = getattr(norm, part).detach()
    return state


def test_insightface_mbf_loads_its_folded_onnx_parameters_into_the_same_function():
    from maskface.errors import InputError

    torch.manual_seed(0)
    published = create_model("insightface_mbf", embedding_size=512)
    _randomise_batch_norms(published)
    for prelu in (m for m in published.modules() if isinstance(m, torch.nn.PReLU)):
        prelu.weight.data.uniform_(-0.5, 0.5)
    published.eval()
    loaded = create_model("insightface_mbf", embedding_size=512).eval()
    loaded.trunk.load_published(_as_exported_graph(published.trunk), "webface600k")
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.trunk(pixels), published.trunk(pixels), atol=1e-4, rtol=1e-4)
    # The graph's own batch norms became x + bias: unit scale, zero mean, variance 1 - eps.
    first = loaded.trunk.stem[0][1]
    torch.testing.assert_close(first.running_var, torch.full_like(first.running_var, 1 - first.eps))
    short = {k: v for k, v in _as_exported_graph(published.trunk).items() if k not in ("Conv_0.weight", "Conv_0.bias")}
    with pytest.raises(InputError, match="48 convolutions and 34 PReLUs; InsightFace's MBF has 49 and 34"):
        loaded.trunk.load_published(short, "webface600k")


def test_facenet_builds_without_facenet_pytorch_s_init_and_the_package_stays_whole():
    """In a fresh interpreter: building and folding FaceNet imports neither torchvision nor cv2
    (facenet_pytorch's __init__ would, through MTCNN); importing the package afterwards gives
    the whole of it, with the very classes the model was built from."""
    probe = (
        "import json, sys\n"
        "from maskface.models.backbones import create_model\n"
        "model = create_model('facenet', weights='none', embedding_size=16, input_size=96).eval().fold_batch_norm()\n"
        "before = [m for m in ('torchvision', 'cv2', 'torch._dynamo') if m in sys.modules]\n"
        "from facenet_pytorch import MTCNN, InceptionResnetV1\n"
        "import facenet_pytorch.models.mtcnn\n"
        "from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d\n"
        "print(json.dumps({'before': before, 'same_class': isinstance(model.trunk.net, InceptionResnetV1),\n"
        "    'basic_conv': any(isinstance(m, BasicConv2d) for m in model.modules()),\n"
        "    'mtcnn': facenet_pytorch.models.mtcnn.MTCNN is MTCNN, 'torchvision_now': 'torchvision' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "before": [], "same_class": True, "basic_conv": True, "mtcnn": True, "torchvision_now": True,
    }


def test_folding_rectifies_facenet_s_conv_outputs_in_place_with_the_same_embeddings():
    model = create_model("facenet", embedding_size=32, input_size=96)
    _randomise_batch_norms(model, seed=5)
    model.eval()
    pixels = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(pixels)
        folded = copy.deepcopy(model).fold_batch_norm()
        got = folded(pixels)
    in_place = [m.inplace for m in folded.modules() if isinstance(m, torch.nn.ReLU)]
    assert sum(in_place) > 50, "the folded conv blocks' ReLUs should work in place"
    assert not any(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU)), "the trainable model is untouched"
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


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


def test_shifted_moves_pixels_and_repeats_the_edge_like_numpy_pad():
    pixels = torch.randint(0, 256, (2, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    array = pixels.numpy()
    for right, down in [(2, 0), (-3, 0), (0, 1), (0, -2), (1, -1)]:
        # Oracle: numpy's edge padding by the move's size, then the window the move leaves.
        padded = np.pad(array, [(0, 0), (0, 0), (abs(down),) * 2, (abs(right),) * 2], mode="edge")
        top, left = abs(down) - down, abs(right) - right
        expected = padded[..., top : top + 7, left : left + 9]
        np.testing.assert_array_equal(shifted(pixels, right, down).numpy(), expected)


def test_shift_embeds_the_image_plus_four_moved_copies_each_with_its_mirror():
    model = create_model("mobilefacenet", embedding_size=128, input_size=112).eval()
    # A trunk that sees where every pixel is: a real network, untrained, is nearly blind to a
    # 3 px move, and then summing moved copies could not be told from ignoring them.
    model.trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, get_spec("mobilefacenet").feature_dim))
    pixels = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        def raw(view, flip):
            return model.head(model.features(view)) + (model.head(model.features(view.flip(-1))) if flip else 0)

        for flip in (False, True):
            # 0.025 of 112 px is 2.8: rounded to 3 px.
            views = [pixels] + [shifted(pixels, right, down) for right, down in [(3, 0), (-3, 0), (0, 3), (0, -3)]]
            expected = torch.nn.functional.normalize(sum(raw(view, flip) for view in views), dim=1)
            torch.testing.assert_close(model(pixels, flip=flip, shift=0.025), expected, atol=1e-5, rtol=0)
        # The moves are their own mirror image: with flip, the mirror image still embeds the same.
        torch.testing.assert_close(model(pixels.flip(-1), flip=True, shift=0.025), model(pixels, flip=True, shift=0.025), atol=1e-5, rtol=0)
        # A share below half a pixel still moves by one.
        views = [pixels] + [shifted(pixels, right, down) for right, down in [(1, 0), (-1, 0), (0, 1), (0, -1)]]
        expected = torch.nn.functional.normalize(sum(raw(view, False) for view in views), dim=1)
        torch.testing.assert_close(model(pixels, shift=0.001), expected, atol=1e-5, rtol=0)
        assert float((model(pixels, shift=0.025) - model(pixels)).abs().max()) > 0.01


def test_remove_direction_projects_every_embedding_flip_included():
    model = create_model("mobilefacenet", embedding_size=128, input_size=112).eval()
    _randomise_batch_norms(model)
    with torch.no_grad():
        model.head[2].running_mean.normal_()  # a head norm with real statistics: they must fold exactly
        model.head[2].running_var.uniform_(0.5, 2.0)
        model.head[2].weight.uniform_(0.5, 1.5)
        model.head[2].bias.normal_()
    pixels = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    direction = torch.randn(128, generator=torch.Generator().manual_seed(4)).double()
    unit = direction / direction.norm()
    with torch.no_grad():
        raw = {flip: model.head(model.features(pixels)) + (model.head(model.features(pixels.flip(-1))) if flip else 0)
               for flip in (False, True)}
        model.remove_direction(direction)
        for flip, before in raw.items():
            before = before.double()
            expected = torch.nn.functional.normalize(before - torch.outer(before @ unit, unit), dim=1).float()
            after = model(pixels, flip=flip)
            torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)
            assert float((after.double() @ unit).abs().max()) < 1e-5
        model.fold_batch_norm()  # the inference path folds the (now identity) norm again: same embeddings
        torch.testing.assert_close(model(pixels, flip=True), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="finite non-zero vector of 128"):
        create_model("mobilefacenet", embedding_size=128).remove_direction(torch.zeros(128))


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


# --- fusion ------------------------------------------------------------------------------------

FUSION = "edgeface+mobilefacenet"


def _member_model(fused, member):
    """A stand-alone ``member`` embedder carrying the fused model's weights for that member."""
    spec = get_spec(member)
    single = create_model(member, embedding_size=spec.feature_dim, input_size=112)
    single.trunk.load_state_dict(fused.trunk.members[member].state_dict())
    single.init_head_identity()
    return single.eval()


def test_fused_cosine_is_the_mean_of_the_member_cosines():
    torch.manual_seed(0)
    fused = create_model(FUSION, embedding_size=640, input_size=112)
    _randomise_batch_norms(fused)
    fused.init_head_identity()
    fused.eval()
    pixels = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # Oracle: each network alone, with its own normalisation, through its own embedder.
        member_cosines = [
            (lambda e: e @ e.T)(_member_model(fused, member)(pixels)) for member in ("edgeface", "mobilefacenet")
        ]
        expected = sum(member_cosines) / 2
        embeddings = fused(pixels)
        torch.testing.assert_close(embeddings @ embeddings.T, expected, atol=1e-5, rtol=0)
        # Folding the batch norms for inference keeps it.
        folded = copy.deepcopy(fused).fold_batch_norm()(pixels)
        torch.testing.assert_close(folded @ folded.T, expected, atol=1e-4, rtol=0)
    # The two members really differ, so the mean is no accident of one of them.
    assert (member_cosines[0] - member_cosines[1]).abs().max() > 0.05


def test_fused_normalisation_is_each_members_own():
    fused = create_model(FUSION, embedding_size=640, input_size=112)
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    # The fused embedder hands the pixels on; each member normalises them as it does alone.
    assert fused.normalize(pixels)[0, 0, 0, 0].item() == 255.0
    for member in ("edgeface", "mobilefacenet"):
        alone = create_model(member, input_size=112).normalize(pixels)
        torch.testing.assert_close(fused.trunk.normalizers[member](fused.normalize(pixels)), alone)


def _trainable_names(module):
    return {name for name, parameter in module.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("count, per_member", [(1, {"mobilefacenet": 1, "edgeface": 0}), (5, {"mobilefacenet": 3, "edgeface": 2}), (12, {"mobilefacenet": 6, "edgeface": 6}), (17, {"mobilefacenet": 11, "edgeface": 6})])
def test_fused_train_layers_unfreeze_the_last_groups_of_both_members(count, per_member):
    fused = create_model(FUSION, embedding_size=640, input_size=112)
    fused.configure_training(f"last_{count}", freeze_bn_stats=False)
    # Oracle: each member alone with its own last_<k>.
    expected = set()
    for member, k in per_member.items():
        alone = create_model(member, input_size=112)
        alone.configure_training(f"last_{k}" if k else "head", freeze_bn_stats=False)
        expected |= {f"members.{member}.{name}" for name in _trainable_names(alone.trunk)}
    assert _trainable_names(fused.trunk) == expected
    assert len(fused.trunk.layer_groups) == 17
    with pytest.raises(ValueError, match="last_1 .. last_17"):
        fused.configure_training("last_18", freeze_bn_stats=False)


def test_fusion_members_must_share_input_size_and_template():
    from maskface.models.backbones import register_fusion

    with pytest.raises(ValueError, match=r"edgeface 112 px on the arcface template, facenet 160 px on the facenet template"):
        register_fusion("edgeface", "facenet")
    with pytest.raises(ValueError, match="is a fusion itself"):
        register_fusion("edgeface_xxs", FUSION)
    with pytest.raises(ValueError, match="two or more different"):
        register_fusion("edgeface", "edgeface")
    assert "edgeface+facenet" not in available_backbones()
    spec = get_spec(FUSION)
    assert (spec.input_size, spec.template, spec.feature_dim, spec.members) == (112, "arcface", 640, ("edgeface", "mobilefacenet"))


def _publish(tmp_path, monkeypatch, trunks):
    """Save each ``backbone -> trunk`` state dict as that backbone's published file in a weights
    folder, with the registry's SHA-256 pinned to it; returns the files."""
    import hashlib

    from maskface.models import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "_download", _refuse_download)
    folder = tmp_path / "share"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    files = {}
    for backbone, trunk in trunks.items():
        source = weights.get_source(f"{backbone}:{get_spec(backbone).default_weights}")
        path = folder / source.filename
        torch.save(trunk.state_dict(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(weights._registry(), source.spec, weights.WeightSource(**{**source.__dict__, "sha256": digest}))
        files[backbone] = (path, digest)
    return files


def test_fused_pretrained_weights_load_each_members_file_and_record_both(tmp_path, monkeypatch):
    torch.manual_seed(5)
    published = {name: create_model(name, input_size=112).trunk for name in ("edgeface", "mobilefacenet")}
    files = _publish(tmp_path, monkeypatch, published)
    model = create_model(FUSION, weights="auto", embedding_size=640)
    for name, trunk in published.items():
        for key, tensor in trunk.state_dict().items():
            torch.testing.assert_close(model.trunk.members[name].state_dict()[key], tensor, rtol=0, atol=0)
    record = model.pretrained
    assert record["spec"] == f"{FUSION}:pretrained"
    assert [(m["spec"], m["file"], m["sha256"], m["origin"]) for m in record["members"]] == [
        ("edgeface:webface12m", "edgeface_xs_q.pt", files["edgeface"][1], "official"),
        ("mobilefacenet:ms1m", "mobilefacenet_ms1m.pt", files["mobilefacenet"][1], "official"),
    ]
    assert record["sha256"] == f"{files['edgeface'][1]} + {files['mobilefacenet'][1]}"
    assert record == create_model(FUSION, weights="pretrained", embedding_size=640).pretrained


def test_fused_weights_auto_with_a_member_file_missing_starts_all_from_scratch(tmp_path, monkeypatch, caplog):
    torch.manual_seed(6)
    edgeface = create_model("edgeface", input_size=112).trunk
    _publish(tmp_path, monkeypatch, {"edgeface": edgeface})  # no MobileFaceNet file anywhere
    with caplog.at_level("WARNING"):
        model = create_model(FUSION, weights="auto", embedding_size=640)
    assert model.pretrained is None and "mobilefacenet_ms1m.pt" in caplog.text
    # Never half pretrained: the EdgeFace file was found but not loaded either.
    published = edgeface.state_dict()["model.stem.0.weight"]
    assert not torch.equal(model.trunk.members["edgeface"].state_dict()["model.stem.0.weight"], published)
    from maskface.models.weights import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="mobilefacenet_ms1m.pt"):
        create_model(FUSION, weights="pretrained", embedding_size=640)
    with pytest.raises(ValueError, match="none, auto, pretrained"):
        create_model(FUSION, weights="webface12m")
