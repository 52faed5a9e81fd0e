"""Pair classifiers and closed-set identification over synthetic clustered embeddings."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import top_k_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from maskface.artifacts import CLASSIFIER_META_FILE, IDENTIFICATION_FILE
from maskface.evaluation.classify import (
    CLASSIFIER_FILE,
    classifier_metadata,
    fit_and_score,
    identify,
    pair_features,
    read_classifier_file,
    save_classifier,
    score_pairs,
    threshold_pairs,
)
from maskface.config import (
    ClassifyConfig,
    ConfigError,
    CosineConfig,
    KnnConfig,
    LdaConfig,
    MlpConfig,
    load_params,
    parse_section,
)
from maskface.evaluation.metrics import choose_threshold, roc_auc
from maskface.data.split import split_dataset

CONFIGS = {
    "cosine": CosineConfig(),
    "knn": KnnConfig(n_neighbors=7),
    "mlp": MlpConfig(hidden_layer_sizes=(32,), max_iter=300),
    "lda": LdaConfig(),
}


def clustered(n_ids: int = 24, per_id: int = 8, dim: int = 16, spread: float = 0.9, seed: int = 0):
    """Unit embeddings around one random centre per identity; every other image 'masked'."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    identity = np.repeat(np.arange(n_ids), per_id)
    x = centres[identity] + spread * rng.normal(size=(identity.size, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = pd.DataFrame(
        {
            "path": [f"id{i:02d}/{k}.png" for i in range(n_ids) for k in range(per_id)],
            "identity": [f"id{i:02d}" for i in identity],
            "masked": np.tile(np.arange(per_id) % 2 == 0, n_ids),
        }
    )
    return x.astype(np.float32), index


@pytest.fixture(scope="module")
def open_set():
    embeddings, index = clustered()
    manifest, pairs = split_dataset(index, (0.5, 0.25, 0.25), 0, "identity", ["masked-unmasked", "masked-masked", "unmasked-unmasked"], 6)
    return embeddings, manifest, pairs["val"], pairs["test"]


def test_lda_and_cosine_sections_parse_strictly():
    assert parse_section(LdaConfig, None, "lda").shrinkage is None
    assert parse_section(LdaConfig, {"shrinkage": 0.2}, "lda").shrinkage == 0.2
    with pytest.raises(ConfigError, match=r"lda.shrinkage = 1.5 is invalid; valid: null \(Ledoit-Wolf\)"):
        parse_section(LdaConfig, {"shrinkage": 1.5}, "lda")
    assert parse_section(CosineConfig, {}, "cosine") == CosineConfig()
    with pytest.raises(ConfigError, match="unknown key cosine.threshold"):
        parse_section(CosineConfig, {"threshold": 0.3}, "cosine")


@pytest.mark.parametrize("name", ["cosine", "knn", "mlp", "lda"])
def test_every_classifier_separates_clusters_and_picks_threshold_on_val(open_set, name):
    embeddings, index, val, test = open_set
    model, threshold, val_scored, test_scored = fit_and_score(
        embeddings, index, val, test, name, CONFIGS[name], ClassifyConfig(train_pairs_per_identity=20)
    )
    assert len(test_scored) == len(test) and list(test_scored.columns[-2:]) == ["score", "cosine"]
    # The threshold comes from pairs of the validation identities only, never from test.
    config = ClassifyConfig(train_pairs_per_identity=20)
    chosen_on = threshold_pairs(index, config)
    val_identities = set(index.loc[index["split"] == "val", "identity"])
    assert set(chosen_on["identity_a"]) | set(chosen_on["identity_b"]) <= val_identities
    assert set(chosen_on["pair_type"]) == {"masked-unmasked", "unmasked-unmasked"}
    row_of = dict(zip(index["path"], range(len(index))))
    scores = score_pairs(model, embeddings[chosen_on["path_a"].map(row_of)], embeddings[chosen_on["path_b"].map(row_of)])
    assert threshold == choose_threshold(scores, chosen_on["label"].to_numpy(), config.threshold_rule)
    assert roc_auc(test_scored["score"].to_numpy(), test_scored["label"].to_numpy()) > 0.9
    a = embeddings[test["path_a"].map(dict(zip(index["path"], range(len(index))))).to_numpy()]
    b = embeddings[test["path_b"].map(dict(zip(index["path"], range(len(index))))).to_numpy()]
    np.testing.assert_allclose(test_scored["cosine"], np.sum(a * b, axis=1), atol=1e-6)
    if name == "cosine":
        assert model is None
        np.testing.assert_array_equal(test_scored["score"], test_scored["cosine"])
    else:
        assert test_scored["score"].between(0, 1).all()
        # Symmetric features: swapping the two images of every pair changes nothing.
        np.testing.assert_allclose(score_pairs(model, a, b), score_pairs(model, b, a), atol=1e-12)
        np.testing.assert_allclose(score_pairs(model, a, b), test_scored["score"], atol=1e-12)


def test_lda_is_sklearn_lda_on_pair_features(open_set):
    embeddings, index, val, test = open_set
    model, *_ = fit_and_score(embeddings, index, val, test, "lda", LdaConfig(shrinkage=0.3), ClassifyConfig(train_pairs_per_identity=20))
    lda = model[-1]
    assert isinstance(lda, LinearDiscriminantAnalysis) and lda.solver == "lsqr" and lda.shrinkage == 0.3


def test_pair_features_are_symmetric_and_hold_the_dot_product():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    features = pair_features(a, b)
    np.testing.assert_array_equal(features, pair_features(b, a))
    np.testing.assert_allclose(features[:, 6:].sum(axis=1), np.einsum("ij,ij->i", a, b))


@pytest.mark.parametrize("name", ["cosine", "knn", "mlp", "lda"])
def test_saved_classifier_reproduces_scores_and_decisions(open_set, tmp_path, name):
    embeddings, index, val, test = open_set
    model, threshold, _, test_scored = fit_and_score(embeddings, index, val, test, name, CONFIGS[name], ClassifyConfig(train_pairs_per_identity=20))
    out = tmp_path / "classifier"
    out.mkdir()
    (out / CLASSIFIER_FILE).write_bytes(b"stale")  # a previous learned run's leftover
    (out / "classifier.joblib").write_bytes(b"stale pickle")  # what maskface wrote before format 2
    save_classifier(model, out, classifier_metadata(name, CONFIGS[name], threshold, embeddings.shape[1]))
    meta = json.loads((out / CLASSIFIER_META_FILE).read_text())
    assert meta["classifier"] == name and meta["threshold"] == threshold and meta["embedding_size"] == 16
    assert meta["score"] == ("cosine" if name == "cosine" else "probability")
    # cosine has no fitted part: the threshold in classifier.json is the whole model.
    assert (out / CLASSIFIER_FILE).exists() == (name != "cosine")
    assert meta["model_file"] == (None if name == "cosine" else CLASSIFIER_FILE)
    assert not (out / "classifier.joblib").exists()
    loaded = read_classifier_file(out / meta["model_file"]) if meta["model_file"] else None
    if name == "mlp":
        assert meta["pair_features"] == "abs_diff_product" and meta["settings"]["hidden_layer_sizes"] == [32]
    # What inference does with the folder gives the scores evaluate saw.
    row = dict(zip(index["path"], range(len(index))))
    a = embeddings[test["path_a"].map(row).to_numpy()]
    b = embeddings[test["path_b"].map(row).to_numpy()]
    rescored = score_pairs(loaded, a, b)
    np.testing.assert_allclose(rescored, test_scored["score"], atol=1e-7)
    np.testing.assert_array_equal(rescored >= meta["threshold"], test_scored["score"].to_numpy() >= threshold)
    if model is not None:
        # The rebuilt pipeline is the fitted one, not an approximation: scikit-learn's own
        # predict, predict_proba and decision steps agree exactly on the same features.
        features = pair_features(a, b)
        np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
        np.testing.assert_array_equal(loaded.predict_proba(features), model.predict_proba(features))
        assert [type(step).__name__ for _, step in loaded.steps] == [type(step).__name__ for _, step in model.steps]


@pytest.fixture(scope="module")
def closed_set():
    embeddings, index = clustered(n_ids=12, per_id=10, spread=0.8, seed=3)
    manifest, _ = split_dataset(index, (0.6, 0.2, 0.2), 0, "image", ["masked-unmasked"], 6)
    return embeddings, manifest


def brute_force_ranks(class_scores, truth):
    """Rank by sorting each row; ties placed ahead of the true class (pessimistic)."""
    ranks = []
    for row, t in zip(class_scores, truth):
        others = np.delete(row, t)
        ranks.append(1 + int(np.sum(others >= row[t])))
    return np.array(ranks)


def test_cosine_identification_is_best_match_over_each_gallery(closed_set):
    embeddings, index = closed_set
    table = identify(embeddings, index, "cosine", CosineConfig())
    test = index[index["split"] == "test"]
    train = index[index["split"] == "train"]
    identities = sorted(train["identity"].unique())
    # Oracle: loop over identities and their gallery images one by one.
    scores = np.array(
        [[max(float(embeddings[q] @ embeddings[g]) for g in train.index[train["identity"] == i]) for i in identities] for q in test.index]
    )
    truth = np.array([identities.index(i) for i in test["identity"]])
    np.testing.assert_array_equal(table["rank"], brute_force_ranks(scores, truth))
    assert list(table["path"]) == list(test["path"])
    np.testing.assert_array_equal(table["predicted"], np.array(identities)[scores.argmax(axis=1)])
    assert (table["rank"] <= 5).mean() == pytest.approx(top_k_accuracy_score(truth, scores, k=5, labels=range(len(identities))))
    assert (table["rank"] == 1).mean() > 0.8
    assert all(len(top.split("|")) == 5 and top.split("|")[0] == p for top, p in zip(table["top_5"], table["predicted"]))


def test_knn_identification_top1_is_sklearn_prediction(closed_set):
    embeddings, index = closed_set
    config = KnnConfig(n_neighbors=5, weights="distance")
    table = identify(embeddings, index, "knn", config)
    train = (index["split"] == "train").to_numpy()
    test = (index["split"] == "test").to_numpy()
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oracle = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5, weights="distance"))
    oracle.fit(embeddings[train], index.loc[train, "identity"])
    hits = table["rank"].to_numpy() == 1
    np.testing.assert_array_equal(table.loc[hits, "predicted"], oracle.predict(embeddings[test])[hits])
    assert hits.mean() > 0.8


@pytest.mark.parametrize("name", ["mlp", "lda"])
def test_learned_identification_beats_chance(closed_set, name):
    embeddings, index = closed_set
    # 72 training images: the identity MLP needs more iterations than the pair MLP.
    config = MlpConfig(hidden_layer_sizes=(32,), max_iter=2000) if name == "mlp" else CONFIGS[name]
    table = identify(embeddings, index, name, config)
    assert table["rank"].between(1, 12).all()
    assert (table["rank"] == 1).mean() > 0.7  # chance is 1/12
    assert (table["rank"] <= 5).mean() >= (table["rank"] == 1).mean()


def test_identity_without_gallery_images_never_counts(closed_set):
    embeddings, index = closed_set
    index = index.copy()
    stranger = index["identity"] == "id00"
    index.loc[stranger & (index["split"] == "train"), "split"] = "val"
    table = identify(embeddings, index, "cosine", CosineConfig())
    assert (table.loc[table["identity"] == "id00", "rank"] == 0).all()  # not in the gallery: never a hit


def _write_stage_inputs(root, embeddings, index, val, test, params):
    (root / "emb").mkdir()
    np.save(root / "emb" / "embeddings.npy", embeddings)
    index.to_csv(root / "emb" / "index.csv", index=False)
    (root / "pairs").mkdir()
    val.to_csv(root / "pairs" / "val.csv", index=False)
    test.to_csv(root / "pairs" / "test.csv", index=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def load_stage(repo_root, monkeypatch, name):
    """Import stages/<name>.py in-process (a subprocess would pay the torch import again)."""
    monkeypatch.syspath_prepend(str(repo_root / "stages"))  # the stages import their _common helper
    spec = importlib.util.spec_from_file_location(f"stage_{name}", repo_root / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_writes_scores_model_and_identification_for_closed_set(closed_set, tmp_path, repo_root, monkeypatch):
    embeddings, index = closed_set
    _, pairs = split_dataset(index.drop(columns="split"), (0.6, 0.2, 0.2), 0, "image", ["masked-unmasked"], 6)
    params = {"classifier": "lda", "lda": {"shrinkage": None}, "split": {"by": "image"}, "classify": {"train_pairs_per_identity": 10}}
    _write_stage_inputs(tmp_path, embeddings, index, pairs["val"], pairs["test"], params)
    load_params(tmp_path / "params.yaml")  # the params file itself is valid
    argv = [
        "--params", str(tmp_path / "params.yaml"), "--embeddings", str(tmp_path / "emb"),
        "--pairs-dir", str(tmp_path / "pairs"), "--scores", str(tmp_path / "scores"), "--model", str(tmp_path / "model"),
    ]
    stage = load_stage(repo_root, monkeypatch, "classify")
    stage.main(argv)
    meta = json.loads((tmp_path / "model" / CLASSIFIER_META_FILE).read_text())
    assert meta["classifier"] == "lda" and meta["identification"] is True
    assert json.loads((tmp_path / "scores" / CLASSIFIER_META_FILE).read_text()) == meta
    ident = pd.read_csv(tmp_path / "scores" / IDENTIFICATION_FILE)
    assert len(ident) == int((index["split"] == "test").sum())
    scored = pd.read_csv(tmp_path / "scores" / "test.csv")
    assert {"score", "cosine"} <= set(scored.columns)

    # Open set (split.by identity): no identification file.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "split": {"by": "identity"}}))
    stage.main([*argv[:-4], "--scores", str(tmp_path / "open"), "--model", str(tmp_path / "open_model")])
    assert not (tmp_path / "open" / IDENTIFICATION_FILE).exists()

    # A classifier name outside the registry stops the stage with the valid choices.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "classifier": "svm"}))
    with pytest.raises(ConfigError, match="valid: cosine, knn, mlp, lda"):
        stage.main(argv)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda spec, arrays: spec.update(format="joblib"), "not a maskface classifier"),
        (lambda spec, arrays: spec["steps"][1].update({"class": "FunctionTransformer"}), "'FunctionTransformer', which is not allowed"),
        (lambda spec, arrays: spec["steps"][1]["params"].update(activation="os.system"), "MLPClassifier parameters are invalid"),
        (lambda spec, arrays: spec["steps"][1]["array_lists"].update(coefs_="many"), "lists 'many' arrays"),
        (lambda spec, arrays: arrays.pop("0/mean_"), "lacks the array '0/mean_'"),
    ],
)
def test_a_damaged_classifier_file_is_refused_in_one_line(open_set, tmp_path, damage, message):
    from maskface.evaluation.classify import ClassifierFileError, SPEC_KEY, classifier_state

    embeddings, index, val, test = open_set
    model, *_ = fit_and_score(embeddings, index, val, test, "mlp", CONFIGS["mlp"], ClassifyConfig(train_pairs_per_identity=10))
    spec, arrays = classifier_state(model)
    damage(spec, arrays)
    path = tmp_path / "classifier.npz"
    np.savez(path, **{SPEC_KEY: np.array(json.dumps(spec))}, **arrays)
    with pytest.raises(ClassifierFileError, match=message) as caught:
        read_classifier_file(path)
    assert "\n" not in str(caught.value)


def test_threshold_falls_back_to_val_pairs_when_val_identities_give_one_kind(open_set):
    embeddings, index, val, test = open_set
    # One validation identity left: only genuine threshold pairs, no impostors.
    val_ids = sorted(index.loc[index["split"] == "val", "identity"].unique())
    index = index.assign(split=np.where(index["identity"].isin(val_ids[1:]), "test", index["split"]))
    config = ClassifyConfig(train_pairs_per_identity=20)
    assert threshold_pairs(index, config)["label"].nunique() == 1
    _, threshold, val_scored, _ = fit_and_score(embeddings, index, val, test, "cosine", CosineConfig(), config)
    assert threshold == choose_threshold(val_scored["score"].to_numpy(), val_scored["label"].to_numpy(), config.threshold_rule)


def test_threshold_settings_are_checked():
    with pytest.raises(ConfigError, match="classify.threshold_rule = 'median' is invalid; valid: eer, max_accuracy, one_se"):
        parse_section(ClassifyConfig, {"threshold_rule": "median"}, "classify")
    with pytest.raises(ConfigError, match="classify.threshold_pair_types = 'masked' is invalid; valid: masked-unmasked"):
        parse_section(ClassifyConfig, {"threshold_pair_types": ["masked"]}, "classify")
    assert parse_section(ClassifyConfig, {"threshold_rule": "max_accuracy"}, "classify").threshold_rule == "max_accuracy"
