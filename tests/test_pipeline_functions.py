"""The stage functions chained on a toy dataset: crop -> finetune -> embed -> classify -> evaluate."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from maskface.evaluation.classify import fit_and_score, pair_features
from maskface.config import ArcFaceConfig, BackboneConfig, ClassifyConfig, CropConfig, EvaluateConfig, FinetuneConfig, KnnConfig, MlpConfig
from maskface.face.crop import crop_dataset
from maskface.artifacts import load_embeddings
from maskface.inference.embed import embed_crops, load_model
from maskface.evaluation.evaluate import evaluate
from maskface.evaluation.metrics import roc_auc


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    crops = root / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 64, crops)
    from maskface.training.train import finetune

    # Outside any git/DVC repository DVCLive only writes files (no experiment bookkeeping).
    previous = os.getcwd()
    os.chdir(root)
    try:
        summary = finetune(
            "alexnet",
            crops,
            toy_dataset["pairs_dir"] / "val.csv",
            root / "model",
            root / "live",
            BackboneConfig(epochs=3, lr=1e-3, batch_size=12, embedding_size=16),
            ArcFaceConfig(scale=16.0, margin_rad=0.2),
            FinetuneConfig(seed=0),
        )
    finally:
        os.chdir(previous)
    embed_crops(crops, root / "model", root / "embeddings", batch_size=16, device="cpu")
    return {"root": root, "summary": summary, "crops": crops}


def test_finetune_writes_a_rebuildable_model_and_curves(trained):
    root = trained["root"]
    summary = trained["summary"]
    assert len(summary["epochs"]) == 3
    assert summary["epochs"][-1]["loss"] < summary["epochs"][0]["loss"]
    # The kept epoch is the argmax of the validation curve DVCLive recorded (epoch 0 = before
    # fine-tuning; the first of tied epochs, as a later epoch must be strictly better).
    curve = pd.read_csv(root / "live" / "plots" / "metrics" / "val" / "auc.tsv", sep="\t")
    assert curve["step"].tolist() == [0, 1, 2, 3]
    assert summary["best_epoch"] == int(curve["step"][np.argmax(curve["auc"].to_numpy())])
    assert summary["best_val_auc"] == pytest.approx(curve["auc"].max())
    config = json.loads((root / "model" / "model.json").read_text())
    assert config["backbone"] == "alexnet" and config["input_size"] == 64
    assert (root / "model" / "preprocess.json").is_file()
    live = json.loads((root / "live" / "metrics.json").read_text())
    assert {"train", "val"} <= set(live)
    assert (root / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_embeddings_are_unit_rows_and_reproducible(trained):
    embeddings, index = load_embeddings(trained["root"] / "embeddings")
    assert embeddings.shape == (len(index), 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    model = load_model(trained["root"] / "model")
    from maskface.face.crop import open_crops
    from maskface.inference.embed import embed_array

    images, _ = open_crops(trained["crops"])
    again = embed_array(model, images, np.arange(5), batch_size=2, progress=False, precision="auto", channels_last=True)
    np.testing.assert_allclose(again, embeddings[:5], atol=1e-5)


def test_pair_features_are_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    np.testing.assert_array_equal(pair_features(a, b), pair_features(b, a))


@pytest.mark.parametrize("name, config", [("knn", KnnConfig(n_neighbors=5)), ("mlp", MlpConfig(max_iter=200))])
def test_classifiers_score_pairs_and_beat_chance_on_toy_data(trained, toy_dataset, name, config):
    embeddings, index = load_embeddings(trained["root"] / "embeddings")
    val = pd.read_csv(toy_dataset["pairs_dir"] / "val.csv")
    test = pd.read_csv(toy_dataset["pairs_dir"] / "test.csv")
    model, threshold, val_scored, test_scored = fit_and_score(embeddings, index, val, test, name, config, ClassifyConfig(train_pairs_per_identity=9))
    assert len(test_scored) == len(test) and test_scored["score"].between(0, 1).all()
    # The toy identities differ in colour layout: cosine alone separates them.
    assert roc_auc(test_scored["cosine"].to_numpy(), test_scored["label"].to_numpy()) > 0.8
    assert 0.0 <= threshold <= 1.0


def test_classify_rejects_unknown_classifier(trained, toy_dataset):
    embeddings, index = load_embeddings(trained["root"] / "embeddings")
    val = pd.read_csv(toy_dataset["pairs_dir"] / "val.csv")
    with pytest.raises(ValueError, match="knn, mlp"):
        fit_and_score(embeddings, index, val, val, "svm", None, ClassifyConfig())


def test_evaluate_writes_nested_metrics_and_plot_data(trained, toy_dataset, tmp_path):
    embeddings, index = load_embeddings(trained["root"] / "embeddings")
    val = pd.read_csv(toy_dataset["pairs_dir"] / "val.csv")
    test = pd.read_csv(toy_dataset["pairs_dir"] / "test.csv")
    _, _, val_scored, test_scored = fit_and_score(embeddings, index, val, test, "knn", KnnConfig(n_neighbors=5), ClassifyConfig())
    scores = tmp_path / "scores" / "alexnet"
    scores.mkdir(parents=True)
    val_scored.to_csv(scores / "val.csv", index=False)
    test_scored.to_csv(scores / "test.csv", index=False)
    results = evaluate(["alexnet"], tmp_path / "scores", tmp_path / "evaluate.json", tmp_path / "plots", EvaluateConfig(roc_points=20))
    saved = json.loads((tmp_path / "evaluate.json").read_text())
    assert saved == json.loads(json.dumps(results))
    metrics = saved["alexnet"]
    assert metrics["tp"] + metrics["fn"] == int(test["label"].sum())
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == len(test)
    confusion = pd.read_csv(tmp_path / "plots" / "confusion" / "alexnet.csv")
    assert len(confusion) == len(test)
    assert ((confusion["actual"] == "same") & (confusion["predicted"] == "same")).sum() == metrics["tp"]
    roc = pd.read_csv(tmp_path / "plots" / "roc" / "alexnet.csv")
    assert list(roc.columns) == ["fpr", "tpr"] and len(roc) <= 20


def test_bf16_embeddings_agree_with_fp32(trained):
    from maskface.face.crop import open_crops
    from maskface.inference.embed import embed_array

    model = load_model(trained["root"] / "model")
    images, _ = open_crops(trained["crops"])
    rows = np.arange(16)
    fp32 = embed_array(model, images, rows, batch_size=8, progress=False, precision="fp32")
    bf16 = embed_array(model, images, rows, batch_size=8, progress=False, precision="bf16", channels_last=True)
    cosine = np.einsum("ij,ij->i", fp32, bf16)
    assert cosine.min() > 0.99
