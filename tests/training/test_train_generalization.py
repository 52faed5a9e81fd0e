"""Fine-tuning that does not forget: the anchor pull and validation on another collection."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from maskface.models.backbones import create_model
from maskface.config import ArcFaceConfig, BackboneConfig, CropConfig, FinetuneConfig
from maskface.face.crop import crop_dataset, open_crops
from maskface.training.losses import ArcFaceLoss
from maskface.training import train
from maskface.training.train import ArcFaceTrainer, Trainer, finetune, unmasked_templates

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


def test_unmasked_templates_are_each_identitys_mean_unmasked_embedding_by_brute_force():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(9, 5))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3])
    masked = np.array([0, 1, 0, 1, 0, 1, 1, 0, 0], bool)  # class 2 has masked photos only
    templates, has_template = unmasked_templates(embeddings, labels, masked, 4)
    for label in range(4):
        rows = [k for k in range(9) if labels[k] == label and not masked[k]]
        assert has_template[label] == bool(rows)
        if rows:
            mean = embeddings[rows].mean(0)
            np.testing.assert_allclose(templates[label], mean / np.linalg.norm(mean), rtol=1e-5)
        else:
            assert not templates[label].any()


def _anchor_pair():
    torch.manual_seed(0)
    model = create_model("alexnet", embedding_size=16, input_size=64).eval()
    anchor = create_model("alexnet", embedding_size=16, input_size=64).eval()
    return model, anchor, ArcFaceLoss(16, 3, scale=16.0, margin_rad=0.2)


def test_anchor_masked_template_pulls_masked_photos_toward_their_identitys_template():
    model, anchor, loss_fn = _anchor_pair()
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    masked = torch.tensor([True, True, True, False, False, False])
    templates = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    has_template = torch.tensor([True, False, True])  # identity 1: no unmasked photo, its own target
    pulled = ArcFaceTrainer(model, loss_fn, anchor, 2.0, "template", templates, has_template)(pixels, labels, masked)
    with torch.no_grad():
        embeddings, own = model(pixels), anchor(pixels)
        targets = torch.stack([templates[0], own[1], templates[2], own[3], own[4], own[5]])
        by_hand = loss_fn(embeddings, labels) + 2.0 * (1 - (embeddings * targets).sum(dim=1)).mean()
    torch.testing.assert_close(pulled, by_hand)
    # Without the masked flags (or with own) every photo is pulled toward its own embedding.
    own_pull = ArcFaceTrainer(model, loss_fn, anchor, 2.0)(pixels, labels)
    torch.testing.assert_close(ArcFaceTrainer(model, loss_fn, anchor, 2.0, "own")(pixels, labels, masked), own_pull)
    assert not torch.allclose(pulled, own_pull)


def test_anchor_masked_none_leaves_masked_photos_out_of_the_pull():
    model, anchor, loss_fn = _anchor_pair()
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0])
    masked = torch.tensor([True, False, True, False])
    pulled = ArcFaceTrainer(model, loss_fn, anchor, 1.5, "none")(pixels, labels, masked)
    with torch.no_grad():
        embeddings = model(pixels)
        distance = 1 - (embeddings * anchor(pixels)).sum(dim=1)
        # The mean over the whole batch, the masked photos' terms 0.
        by_hand = loss_fn(embeddings, labels) + 1.5 * (distance[1] + distance[3]) / 4
    torch.testing.assert_close(pulled, by_hand)


def test_anchor_masked_rejects_unknown_values_naming_the_valid_ones():
    with pytest.raises(ValidationError, match="own.*template.*none"):
        BackboneConfig(anchor_masked="mouth")
    model, anchor, loss_fn = _anchor_pair()
    with pytest.raises(ValueError, match="needs templates"):
        ArcFaceTrainer(model, loss_fn, anchor, 1.0, "template")


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


def test_a_trainer_with_anchor_masked_template_pulls_toward_the_untouched_networks_unmasked_means(
    toy_dataset, toy_crops, tmp_path, monkeypatch
):
    create = train.create_model

    def pretrained_model(*args, **kwargs):  # the anchor needs a pretrained start
        model = create(*args, **kwargs)
        model.pretrained = {"spec": "test:start"}
        return model

    monkeypatch.setattr(train, "create_model", pretrained_model)
    torch.manual_seed(0)
    backbone_config = BackboneConfig(
        epochs=1, lr=1e-3, batch_size=12, embedding_size=16, train_layers="last_2", anchor=1.0, anchor_masked="template",
    )
    trainer = Trainer(
        "alexnet", toy_crops, toy_dataset["pairs_dir"] / "val.csv", tmp_path / "model", None,
        backbone_config, ARC, FinetuneConfig(seed=0, deterministic=True), progress=False,
    )
    module = trainer.network
    # Oracle: the anchor (the untouched network) on the unaugmented training photos, per identity
    # the normalised mean over the unmasked ones, with pandas.
    images, index = open_crops(toy_crops)
    rows = np.flatnonzero((index["split"] == "train").to_numpy())
    train_index = index.iloc[rows]
    with torch.no_grad():
        embeddings = module.anchor.eval()(torch.from_numpy(np.asarray(images[rows]))).numpy()
    frame = pd.DataFrame(embeddings)
    frame["identity"] = train_index["identity"].to_numpy()
    means = frame[~train_index["masked"].astype(bool).to_numpy()].groupby("identity").mean()
    for label, identity in enumerate(trainer.identities):
        expected = means.loc[identity].to_numpy()
        np.testing.assert_allclose(module.templates[label].numpy(), expected / np.linalg.norm(expected), atol=1e-5)
    assert bool(module.has_template.all())
    summary = trainer.fit()
    assert summary["settings"]["backbone"]["anchor_masked"] == "template"
    assert (tmp_path / "model" / "model.pt").exists()


def test_anchor_masked_template_without_pretrained_weights_trains_without_an_anchor(toy_dataset, toy_crops, tmp_path):
    # The synthetic default: edgeface with weights auto and no file trains from scratch, where
    # there is no untouched network to pull toward, templates or not.
    torch.manual_seed(0)
    summary = finetune(
        "alexnet", toy_crops, toy_dataset["pairs_dir"] / "val.csv", tmp_path / "model", None,
        BackboneConfig(epochs=1, lr=1e-3, batch_size=12, embedding_size=16, anchor=1.0, anchor_masked="template"),
        ARC, FinetuneConfig(seed=0, deterministic=True), progress=False,
    )
    assert summary["settings"]["backbone"]["anchor_masked"] == "template"
    assert (tmp_path / "model" / "model.pt").exists()
