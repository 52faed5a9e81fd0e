from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from maskface.config import (
    BackboneConfig,
    ConfigError,
    CropConfig,
    SplitConfig,
    backbone_configs,
    backbone_settings,
    classifier_name,
    load_params,
    parse_section,
    section,
)


def test_repository_params_parse(repo_root: Path):
    params = load_params(repo_root / "params.yaml")
    assert set(backbone_configs(params)) == {"edgeface", "mobilefacenet", "facenet", "vggface", "alexnet"}
    # Cosine is the default: its threshold carries over to other collections (docs/recipe.md).
    assert classifier_name(params) == "cosine"
    assert section(params, SplitConfig, "split").ratios == (0.7, 0.1, 0.2)


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
