"""The classifier registry is the one list of classifier names: params checking follows it."""

from __future__ import annotations

import pytest
import yaml

from maskface.evaluation import classifiers
from maskface.evaluation.classifiers import Registered, available_classifiers, config_class, registered
from maskface.config import ConfigError, CosineConfig, KnnConfig, LdaConfig, MlpConfig, classifier_name, load_params


def test_each_registered_classifier_has_its_params_class():
    assert available_classifiers() == ["cosine", "knn", "mlp", "lda"]
    expected = {"cosine": CosineConfig, "knn": KnnConfig, "mlp": MlpConfig, "lda": LdaConfig}
    assert {name: config_class(name) for name in available_classifiers()} == expected
    with pytest.raises(ValueError, match="'svm' is invalid; valid: cosine, knn, mlp, lda"):
        config_class("svm")


def test_builders_give_a_pipeline_for_learned_classifiers_only():
    for name in available_classifiers():
        model = registered(name).builder(config_class(name)(), 50)
        assert (model is None) == (name == "cosine")
        if model is not None:
            assert hasattr(model, "predict_proba")


def test_registering_a_classifier_is_all_params_checking_needs(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"classifier": "toy", "toy": {}}))
    with pytest.raises(ConfigError, match="unknown section toy"):
        load_params(path)
    with pytest.raises(ConfigError, match=r"classifier = 'toy'.*valid: cosine, knn, mlp, lda"):
        classifier_name({"classifier": "toy"})

    monkeypatch.setitem(classifiers._REGISTRY, "toy", Registered(lambda config, n_train: None, CosineConfig))
    params = load_params(path)
    assert classifier_name(params) == "toy" and config_class("toy") is CosineConfig
