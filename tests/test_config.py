from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from maskface.config import (
    ArcFaceConfig,
    BackboneConfig,
    ClassifyConfig,
    ConfigError,
    CosineConfig,
    CropConfig,
    EmbedConfig,
    EvaluateConfig,
    FinetuneConfig,
    KnnConfig,
    LdaConfig,
    MlpConfig,
    SplitConfig,
    SyntheticConfig,
    backbone_configs,
    backbone_settings,
    classifier_name,
    load_params,
    parse_section,
    section,
)
from maskface.data.datasets import DataConfig


def test_repository_params_parse(repo_root: Path):
    params = load_params(repo_root / "params.yaml")
    assert set(backbone_configs(params)) == {"insightface_mbf", "edgeface", "mobilefacenet", "facenet", "vggface", "alexnet"}
    # Cosine is the default: its threshold carries over to other collections (docs/recipe.md).
    assert classifier_name(params) == "cosine"
    assert section(params, SplitConfig, "split").ratios == (0.7, 0.1, 0.2)


def test_the_commented_fusion_entry_of_params_is_valid_once_uncommented(repo_root: Path):
    from maskface.models.backbones import get_spec

    text = (repo_root / "params.yaml").read_text()
    # The commented block under `backbones:`, from its key to the next live entry.
    lines = text.split("\n  # edgeface+mobilefacenet:\n", 1)[1].split("\n  facenet:", 1)[0].splitlines()
    block = "  edgeface+mobilefacenet:\n" + "\n".join(line.replace("  # ", "  ", 1) for line in lines)
    params = {"backbones": yaml.safe_load("backbones:\n" + block)["backbones"]}
    fusion = backbone_configs(params)["edgeface+mobilefacenet"]
    # The head starts as the identity, so the embedding is the fused feature itself.
    assert fusion.head_init == "identity" and fusion.embedding_size == get_spec("edgeface+mobilefacenet").feature_dim
    assert fusion.weights == "auto" and fusion.train_layers == "last_5"


def test_the_commented_data_examples_of_params_are_valid_once_uncommented(repo_root: Path):
    params = load_params(repo_root / "params.yaml")
    text = (repo_root / "params.yaml").read_text()
    examples = {}
    for key in ("extra_sources", "validation_sources"):
        line = next(line for line in text.splitlines() if line.startswith(f"  # {key}: "))
        examples.update(yaml.safe_load(line.replace("  # ", "", 1)))
    data = DataConfig.model_validate({**params["data"], "source": "rmfrd", "root": "../shared/datasets/rmfrd-dev", **examples})
    assert data.extra_sources == ("lfw:../shared/datasets/lfw-gray-20",)
    assert data.validation_sources == ("rmfrd:../shared/datasets/lfw-masktheface",)


def test_unknown_key_names_the_key_and_the_valid_keys():
    with pytest.raises(ConfigError) as error:
        parse_section(CropConfig, {"mode": "none", "keep_ratoi": 0.5}, "crop")
    message = str(error.value)
    assert "crop.keep_ratoi" in message
    assert "keep_ratio" in message and "mode" in message


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_keep_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"crop\.keep_ratio.*\(0, 1\]"):
        parse_section(CropConfig, {"keep_ratio": ratio}, "crop")


def test_keep_ratio_of_one_is_allowed():
    assert parse_section(CropConfig, {"mode": "ratio", "keep_ratio": 1}, "crop").keep_ratio == 1.0


def test_ratios_must_sum_to_one():
    with pytest.raises(ConfigError, match=r"split\.ratios.*summing to 1"):
        parse_section(SplitConfig, {"ratios": [0.7, 0.2, 0.2]}, "split")


def test_unknown_pair_type_lists_valid_ones():
    with pytest.raises(ConfigError, match="masked-unmasked, masked-masked, unmasked-unmasked"):
        parse_section(SplitConfig, {"pair_types": ["masked-other"]}, "split")


def test_unknown_backbone_lists_registry():
    with pytest.raises(ConfigError, match=r"resnet.*facenet, vggface, alexnet"):
        backbone_configs({"backbones": {"resnet": {}}})


def test_backbone_settings_parse_strictly_but_leave_names_to_the_registry():
    # The evaluate stage's reader: no registry (no torch), but each entry is still a strict config.
    settings = backbone_settings({"backbones": {"resnet": {"epochs": 2}}})
    assert settings["resnet"].epochs == 2
    with pytest.raises(ConfigError, match=r"backbones\.resnet.*epoch"):
        backbone_settings({"backbones": {"resnet": {"epoch": 2}}})
    with pytest.raises(ConfigError, match="backbones must map backbone names"):
        backbone_settings({"backbones": []})


def test_unknown_classifier_lists_choices():
    with pytest.raises(ConfigError, match=r"classifier = 'svm'.*knn, mlp"):
        classifier_name({"classifier": "svm"})


def test_unknown_top_level_section(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"clasifier": "knn"}))
    with pytest.raises(ConfigError, match="clasifier.*valid sections"):
        load_params(path)


def test_wrong_types_are_refused():
    with pytest.raises(ConfigError, match=r"backbones\.facenet\.epochs.*integer"):
        parse_section(BackboneConfig, {"epochs": "three"}, "backbones.facenet")
    with pytest.raises(ConfigError, match=r"train_layers.*all, head, last_<n>"):
        parse_section(BackboneConfig, {"train_layers": "some"}, "backbones.facenet")


def test_sections_are_frozen():
    config = parse_section(CropConfig, {}, "crop")
    with pytest.raises(ValidationError, match="frozen"):
        config.mode = "ratio"


def test_scientific_notation_strings_become_floats():
    assert parse_section(BackboneConfig, {"lr": "1e-3"}, "b").lr == pytest.approx(1e-3)


SECTIONS = [
    SyntheticConfig, DataConfig, SplitConfig, CropConfig, BackboneConfig, ArcFaceConfig, FinetuneConfig,
    EmbedConfig, KnnConfig, MlpConfig, LdaConfig, CosineConfig, ClassifyConfig, EvaluateConfig,
]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda cls: cls.__name__)
def test_defaults_pass_their_own_validation(cls):
    # pydantic does not validate defaults: parse them as if they were written in params.yaml.
    defaults = cls()
    assert parse_section(cls, defaults.model_dump(), "s") == defaults
    assert parse_section(cls, None, "s") == defaults  # `s:` with nothing under it


def test_values_keep_the_types_the_pipeline_hashes():
    # Fingerprints and model.json hold model_dump(): 30 must stay 30.0, a list a tuple.
    config = parse_section(ArcFaceConfig, {"scale": 30, "margin_rad": "5e-1"}, "arcface")
    assert (type(config.scale), config.margin_rad) == (float, 0.5)
    assert parse_section(EvaluateConfig, {"fars": [0.01]}, "evaluate").model_dump()["fars"] == (0.01,)


@pytest.mark.parametrize(
    "cls, name, raw, message",
    [
        # unknown keys: every one of the section, then the valid keys
        (CropConfig, "crop", {"keep_ratoi": 0.5, "mode": "none", "modes": 1},
         "params: unknown key crop.keep_ratoi, crop.modes; valid keys of crop: mode, keep_ratio, "),
        (DataConfig, "data", {"synthetic": {"idents": 3}},
         "params: unknown key data.synthetic.idents; valid keys of data.synthetic: identities, images_per_identity, "),
        (CosineConfig, "cosine", {"threshold": 0.3},
         "params: unknown key cosine.threshold; valid keys of cosine: none"),
        # wrong types: no "2" for 2, no 3.0 for 3, no "yes" for true
        (DataConfig, "data", {"workers": "2"},
         "params: data.workers = '2' is invalid; valid: an integer >= 1 (1: no worker processes)"),
        (MlpConfig, "mlp", {"max_iter": 3.0}, "params: mlp.max_iter = 3.0 is invalid; valid: an integer >= 1"),
        (CropConfig, "crop", {"align": "yes"}, "params: crop.align = 'yes' is invalid; valid: true or false"),
        (BackboneConfig, "backbones.facenet", {"lr": True},
         "params: backbones.facenet.lr = True is invalid; valid: a number > 0"),
        (BackboneConfig, "backbones.facenet", {"lr": "fast"},
         "params: backbones.facenet.lr = 'fast' is invalid; valid: a number > 0"),
        (BackboneConfig, "backbones.facenet", {"weights": 5},
         "params: backbones.facenet.weights = 5 is invalid; valid: a string"),
        (SplitConfig, "split", {"ratios": 0.7},
         "params: split.ratios = 0.7 is invalid; valid: a list of 3, each a number in (0, 1) (train, val, test)"),
        (SplitConfig, "split", {"ratios": [0.7, "x", 0.2]},
         "params: split.ratios[1] = 'x' is invalid; valid: a number in (0, 1)"),
        (DataConfig, "data", {"synthetic": 3}, "params: data.synthetic = 3 is invalid; valid: a mapping of keys"),
        (CropConfig, "crop", [1, 2], "params: crop = [1, 2] is invalid; valid: a mapping of keys"),
        # out of range: the bounds as an interval, the description after it
        (CropConfig, "crop", {"keep_ratio": 0}, "params: crop.keep_ratio = 0 is invalid; valid: a number in (0, 1]"),
        (CropConfig, "crop", {"blank_value": 256},
         "params: crop.blank_value = 256 is invalid; valid: an integer in [0, 255]"),
        (BackboneConfig, "backbones.facenet", {"epochs": -1},
         "params: backbones.facenet.epochs = -1 is invalid; valid: an integer >= 0 (0: no fine-tuning)"),
        (BackboneConfig, "backbones.facenet", {"input_size": 8},
         "params: backbones.facenet.input_size = 8 is invalid; valid: null or an integer in [32, 512]"),
        (BackboneConfig, "backbones.facenet", {"lr": float("inf")},
         "params: backbones.facenet.lr = inf is invalid; valid: a finite number"),
        (BackboneConfig, "backbones.facenet", {"train_layers": "last_0"},
         "params: backbones.facenet.train_layers = 'last_0' is invalid; valid: all, head, last_<n>"),
        (ArcFaceConfig, "arcface", {"margin_rad": 2},
         "params: arcface.margin_rad = 2 is invalid; valid: radians in [0, pi/2)"),
        (FinetuneConfig, "finetune", {"patience": 0},
         "params: finetune.patience = 0 is invalid; valid: null or an integer >= 1 (epochs)"),
        (MlpConfig, "mlp", {"hidden_layer_sizes": []},
         "params: mlp.hidden_layer_sizes = [] is invalid; valid: a non-empty list, each an integer >= 1"),
        (EmbedConfig, "embed", {"shift": 0.5},
         "params: embed.shift = 0.5 is invalid; valid: a number in [0, 0.5)"),
        (EvaluateConfig, "evaluate", {"fars": [0.01, 1]},
         "params: evaluate.fars[1] = 1 is invalid; valid: a number in (0, 1)"),
        (DataConfig, "data", {"synthetic": {"identities": 1}},
         "params: data.synthetic.identities = 1 is invalid; valid: an integer >= 2"),
        # bad choices: the list's name and the bad item, then the choices
        (KnnConfig, "knn", {"weights": "inverse"},
         "params: knn.weights = 'inverse' is invalid; valid: uniform, distance"),
        (FinetuneConfig, "finetune", {"mask_styles": ["cloth", "paper"]},
         "params: finetune.mask_styles = 'paper' is invalid; valid: surgical, cloth, n95"),
        (DataConfig, "data", {"extra_sources": ["lfw:a", "imagenet:b"]},
         "params: data.extra_sources[1] = 'imagenet:b' is invalid; valid: '<kind>:<root>' with kind one of "
         "rmfrd, smfrd, lfw, folder, manifest"),
        # cross-field checks: the key that must change, the others it depends on by their full path
        (SplitConfig, "split", {"ratios": [0.7, 0.2, 0.2]},
         "params: split.ratios = [0.7, 0.2, 0.2] is invalid; valid: ratios summing to 1"),
        (CropConfig, "crop", {"mode": "eyes", "align": True},
         "params: crop.landmarks = 'none' is invalid; valid: mtcnn or ground_truth (synthetic data) "
         "while crop.align is true and crop.mode is eyes"),
        (CropConfig, "crop", {"filter": True, "landmarks": "ground_truth"},
         "params: crop.landmarks = 'ground_truth' is invalid; valid: mtcnn while crop.filter is true "
         "(it filters on MTCNN's confidence)"),
        (DataConfig, "data", {"synthetic": {"min_size": 200, "max_size": 100}},
         "params: data.synthetic.min_size/max_size = (200, 100) is invalid; valid: 64 <= min_size <= max_size"),
        (DataConfig, "data", {"source": "lfw", "unmasked_root": "x"},
         "params: data.unmasked_root = 'x' is invalid; valid: null unless data.source is smfrd (it is 'lfw')"),
    ],
)
def test_every_kind_of_error_is_one_line_naming_key_value_and_valid_values(cls, name, raw, message):
    with pytest.raises(ConfigError) as error:
        parse_section(cls, raw, name)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_a_params_file_error_names_the_nested_key(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("backbones:\n  facenet:\n    epochs: three\n")
    expected = r"^params: backbones\.facenet\.epochs = 'three' is invalid; valid: an integer >= 0"
    with pytest.raises(ConfigError, match=expected):
        backbone_settings(load_params(path))
