"""Fine-tuning that does not forget: the anchor pull and validation on another collection."""

import json

import pytest
import torch

from maskface.models.backbones import create_model
from maskface.config import ArcFaceConfig, BackboneConfig, CropConfig, FinetuneConfig
from maskface.face.crop import crop_dataset
from maskface.training.losses import ArcFaceLoss
from maskface.training.train import ArcFaceTrainer, finetune

ARC = ArcFaceConfig(scale=16.0, margin_rad=0.2)


def test_anchor_adds_the_mean_cosine_distance_to_the_untouched_network():
    torch.manual_seed(0)
    model = create_model("alexnet", embedding_size=16, input_size=64).eval()
    anchor = create_model("alexnet", embedding_size=16, input_size=64).eval()  # another init: a real distance
    loss_fn = ArcFaceLoss(16, 3, scale=16.0, margin_rad=0.2)
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = ArcFaceTrainer(model, loss_fn)(pixels, labels)
    pulled = ArcFaceTrainer(model, loss_fn, anchor, anchor_weight=2.5)(pixels, labels)
    with torch.no_grad():
        # By hand: the same embeddings, 2.5 x mean(1 - cos) to the anchor's.
        distance = (1 - (model(pixels) * anchor(pixels)).sum(dim=1)).mean()
    torch.testing.assert_close(pulled, plain + 2.5 * distance)
    # The anchor is no submodule: never trained, saved or synchronised.
    assert all(not name.startswith("anchor") for name, _ in ArcFaceTrainer(model, loss_fn, anchor, 1.0).named_parameters())


@pytest.fixture(scope="module")
def toy_crops(toy_dataset, tmp_path_factory):
    crops = tmp_path_factory.mktemp("generalization_crops") / "alexnet"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 64, crops)
    return crops


def test_the_kept_epoch_is_the_best_mean_of_both_collections_epoch_0_included(toy_dataset, toy_crops, tmp_path):
    pairs = toy_dataset["pairs_dir"]
    summary = finetune(
        "alexnet", toy_crops, pairs / "val.csv", tmp_path / "model", tmp_path / "live",
        BackboneConfig(epochs=3, lr=1e-3, batch_size=12, embedding_size=16, train_layers="last_2"),
        ARC, FinetuneConfig(seed=0, deterministic=True), progress=False,
        # The test pairs stand in for another collection's: images the model never trains on.
        cross_val_pairs_path=pairs / "test.csv",
    )
    saved = json.loads((tmp_path / "model" / "training.json").read_text())
    assert saved["selected_on"] == "val+xval"
    epochs = [saved["before"], *saved["epochs"]]
    assert all(e["xval_auc"] is not None for e in epochs)
    # Oracle: argmax of the mean AUC over epochs 0..3, the first of equals.
    means = [(e["val_auc"] + e["xval_auc"]) / 2 for e in epochs]
    assert summary["best_epoch"] == means.index(max(means))
    assert saved["best_val_auc"] == pytest.approx(max(means))
    live = (tmp_path / "live" / "metrics.json").read_text()
    assert "xval" in live


def test_an_empty_cross_collection_table_means_val_alone(toy_dataset, toy_crops, tmp_path):
    pairs = toy_dataset["pairs_dir"]
    empty = tmp_path / "xval.csv"
    header = (pairs / "val.csv").read_text().splitlines()[0]
    empty.write_text(header + "\n")
    summary = finetune(
        "alexnet", toy_crops, pairs / "val.csv", tmp_path / "model", tmp_path / "live",
        BackboneConfig(epochs=1, lr=1e-3, batch_size=12, embedding_size=16, train_layers="last_2"),
        ARC, FinetuneConfig(seed=0, deterministic=True), progress=False, cross_val_pairs_path=empty,
    )
    assert summary["selected_on"] == "val" and summary["before"]["xval_auc"] is None


def test_an_identity_head_keeps_its_norm_statistics_through_training():
    torch.manual_seed(0)
    model = create_model("alexnet", embedding_size=256, input_size=64)
    model.init_head_identity()
    model.configure_training("last_1", freeze_bn_stats=True)
    model.train()
    norm = model.head[2]
    assert not norm.training  # eval mode inside a training model: running stats untouched
    model(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8))
    torch.testing.assert_close(norm.running_mean, torch.zeros(256))
    torch.testing.assert_close(norm.running_var, torch.ones(256))
    # A random head learns its statistics as before.
    other = create_model("alexnet", embedding_size=16, input_size=64).train()
    other(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8))
    assert other.head[2].training and not torch.allclose(other.head[2].running_mean, torch.zeros(16))
