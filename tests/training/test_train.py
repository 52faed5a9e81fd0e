"""Fine-tuning: schedule, optimiser groups, precision choice, data, the Trainer's steps, resume, early stopping."""

import contextlib
import json
import logging
import math
import pickle
import random
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

import maskface.training.train as train
from maskface.models.backbones import create_model
from maskface.config import ArcFaceConfig, BackboneConfig, CropConfig, FinetuneConfig
from maskface.face.crop import IMAGES_FILE, INDEX_FILE, crop_dataset, open_crops
from maskface.inference.embed import load_model
from maskface.tables import read_csv, write_csv
from maskface.training.losses import ArcFaceLoss
from maskface.training.train import (
    BatchSource,
    EpochResult,
    StopTraining,
    Trainer,
    build_optimizer,
    cosine_schedule,
    finetune,
    parameter_groups,
    restore_determinism,
    rng_state,
    seed_everything,
    set_rng_state,
    training_precision,
)

# Two epochs (the least a resume needs), the last two AlexNet groups trainable: seconds on a CPU.
SMALL = BackboneConfig(epochs=2, lr=1e-3, batch_size=12, embedding_size=16, train_layers="last_2")
ARC = ArcFaceConfig(scale=16.0, margin_rad=0.2)
DETERMINISTIC = FinetuneConfig(seed=0, deterministic=True, mask_augment_p=0.5)


@pytest.fixture(scope="module")
def toy_crops(toy_dataset, tmp_path_factory):
    crops = tmp_path_factory.mktemp("train_crops") / "alexnet"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 64, crops)
    return {"crops": crops, "val": toy_dataset["pairs_dir"] / "val.csv"}


def _run(toy_crops, root, name, backbone_config=SMALL, config=DETERMINISTIC, **kwargs):
    return finetune(
        "alexnet", toy_crops["crops"], toy_crops["val"], root / name / "model", root / name / "live",
        backbone_config, ARC, config, progress=False, **kwargs,
    )


# --------------------------------------------------------------------------- pure pieces


def test_cosine_schedule_by_hand():
    # warm-up 4 of 20 steps: (step + 1) / 4, then 0.5 * (1 + cos(pi * (step - 4) / 16)).
    assert cosine_schedule(0, 20, 4) == pytest.approx(0.25)
    assert cosine_schedule(3, 20, 4) == pytest.approx(1.0)
    assert cosine_schedule(4, 20, 4) == pytest.approx(1.0)
    assert cosine_schedule(12, 20, 4) == pytest.approx(0.5)
    assert cosine_schedule(8, 20, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_schedule(20, 20, 4) == pytest.approx(0.0, abs=1e-12)
    assert cosine_schedule(0, 10, 0) == pytest.approx(1.0)


def test_parameter_groups_split_lrs_and_exempt_1d_tensors_from_decay():
    model = create_model("alexnet", embedding_size=16, input_size=64)
    model.configure_training("last_1", freeze_bn_stats=False)
    loss = ArcFaceLoss(16, 5)
    config = BackboneConfig(lr=1e-4, head_lr=1e-2, weight_decay=0.1)
    groups = {g["name"]: g for g in parameter_groups(model, loss, config)}
    assert set(groups) == {"trunk", "trunk_no_decay", "head", "head_no_decay"}
    conv5 = model.trunk.conv5[0]
    assert [id(p) for p in groups["trunk"]["params"]] == [id(conv5.weight)]
    assert [id(p) for p in groups["trunk_no_decay"]["params"]] == [id(conv5.bias)]
    assert groups["trunk"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-2
    assert any(p is loss.weight for p in groups["head"]["params"])
    assert groups["head"]["weight_decay"] == 0.1 and groups["head_no_decay"]["weight_decay"] == 0.0
    frozen = {id(p) for p in model.trunk.conv1.parameters()}
    assert not frozen & {id(p) for g in groups.values() for p in g["params"]}
    # head_lr null: the head follows lr.
    same = {g["name"]: g["lr"] for g in parameter_groups(model, loss, BackboneConfig(lr=3e-4))}
    assert set(same.values()) == {3e-4}


def test_layer_decay_gives_each_earlier_layer_group_a_smaller_rate():
    model = create_model("alexnet", embedding_size=16, input_size=64)
    model.configure_training("last_3", freeze_bn_stats=False)
    loss = ArcFaceLoss(16, 5)
    groups = parameter_groups(model, loss, BackboneConfig(lr=1e-3, head_lr=1e-2, layer_decay=0.5))
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {
        "trunk.conv5": 1e-3, "trunk.conv5_no_decay": 1e-3,
        "trunk.conv4": 5e-4, "trunk.conv4_no_decay": 5e-4,
        "trunk.conv3": 2.5e-4, "trunk.conv3_no_decay": 2.5e-4,
        "head": 1e-2, "head_no_decay": 1e-2,
    }
    # Every trainable parameter in exactly one group, each group holding its own layer's.
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]
    assert sorted(grouped) == sorted(id(p) for p in trainable)
    for name in ("conv3", "conv4", "conv5"):
        layer = {id(p) for p in getattr(model.trunk, name).parameters()}
        assert {id(p) for g in groups if g["name"].startswith(f"trunk.{name}") for p in g["params"]} == layer
    # layer_decay 1 keeps one trunk group.
    plain = {g["name"] for g in parameter_groups(model, loss, BackboneConfig(lr=1e-3))}
    assert plain == {"trunk", "trunk_no_decay", "head", "head_no_decay"}


def test_build_optimizer_adamw_and_nesterov_sgd():
    model = create_model("alexnet", embedding_size=16, input_size=64)
    groups = parameter_groups(model, ArcFaceLoss(16, 3), BackboneConfig())
    assert isinstance(build_optimizer(groups, BackboneConfig(optimizer="adamw")), torch.optim.AdamW)
    sgd = build_optimizer(parameter_groups(model, ArcFaceLoss(16, 3), BackboneConfig()), BackboneConfig(optimizer="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] is True


@pytest.mark.parametrize(
    "device, amp, bf16, expected",
    [
        ("cuda", True, True, (torch.bfloat16, False)),
        ("cuda", True, False, (torch.float16, True)),
        ("cuda", False, True, (None, False)),
        ("cpu", True, True, (None, False)),
    ],
)
def test_training_precision_prefers_bf16_and_scales_fp16(monkeypatch, device, amp, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert training_precision(torch.device(device), amp) == expected


def test_seed_everything_restores_global_switches_and_rng_round_trips():
    before = torch.are_deterministic_algorithms_enabled()
    previous = seed_everything(5, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    restore_determinism(previous)
    assert torch.are_deterministic_algorithms_enabled() == before

    seed_everything(3, deterministic=False)
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(pickle.loads(pickle.dumps(saved)))
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_identity_head_reproduces_the_trunk_embedding():
    torch.manual_seed(0)
    model = create_model("alexnet", embedding_size=256, input_size=64)
    model.init_head_identity()
    model.eval()
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.features(pixels), dim=1)
        np.testing.assert_allclose(model(pixels).numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="embedding_size = 256"):
        create_model("alexnet", embedding_size=16, input_size=64).init_head_identity()


def test_batch_source_is_the_same_in_worker_processes(toy_crops):
    images, index = open_crops(toy_crops["crops"])
    rows = np.flatnonzero((index["split"] == "train").to_numpy())
    landmarks = np.repeat(np.array([[22, 30], [42, 30], [32, 41], [24, 53], [40, 53]], float)[None], len(rows), 0)
    source = BatchSource(
        toy_crops["crops"] / IMAGES_FILE, rows, np.arange(len(rows)) % 4, index["masked"].to_numpy()[rows], landmarks,
        FinetuneConfig(mask_augment_p=0.5), rank=0,
    )
    source.set_epoch(2, [np.array([0, 3, 5]), np.array([1, 2, 4])])
    here = [(p.clone(), y.clone(), m.clone()) for p, y, m in DataLoader(source, batch_size=None, num_workers=0)]
    there = list(DataLoader(source, batch_size=None, num_workers=1))
    assert len(here) == 2 and here[0][0].dtype == torch.uint8 and here[0][0].shape == (3, 3, 64, 64)
    for (a, la, ma), (b, lb, mb) in zip(here, there):
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(ma, mb)
    assert torch.equal(here[1][1], torch.tensor([1, 2, 0]))
    # The real-mask flags of the batch's rows, as the index has them (the anchor's masked photos).
    flags = index["masked"].astype(bool).to_numpy()[rows]
    assert torch.equal(here[0][2], torch.from_numpy(flags[[0, 3, 5]]))
    assert pickle.loads(pickle.dumps(source))._images is None


# --------------------------------------------------------------------------- the Trainer's steps, one by one


@contextlib.contextmanager
def seeded(config=DETERMINISTIC):
    # As finetune() does before building a Trainer; the global switches are put back after.
    previous = seed_everything(config.seed, config.deterministic)
    try:
        yield
    finally:
        restore_determinism(previous)


def _trainer(toy_crops, root, backbone_config=SMALL, config=DETERMINISTIC, **kwargs):
    return Trainer(
        "alexnet", toy_crops["crops"], toy_crops["val"], root / "model", root / "live",
        backbone_config, ARC, config, progress=False, **kwargs,
    )


def _brute_force_accuracy(scores, labels):
    # The best accuracy of "same when score >= t" over every threshold that changes a decision.
    return max(np.mean((scores >= t) == labels) for t in [*np.unique(scores), np.inf])


def test_validate_scores_the_untouched_network_as_epoch_0(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    xval = toy_crops["val"].with_name("test.csv")  # other identities stand in for another collection
    with seeded():
        trainer = _trainer(toy_crops, tmp_path, backbone_config=SMALL.model_copy(update={"epochs": 1}), cross_val_pairs_path=xval)
        scores = trainer.validate()

        # Oracle: the same network's embeddings by a plain forward pass, scikit-learn's AUC and
        # the best threshold found by trying them all.
        images, index = open_crops(toy_crops["crops"])
        row_of = {path: row for row, path in enumerate(index["path"])}
        trainer.model.eval()
        for pairs_path, accuracy, auc in ((toy_crops["val"], scores.accuracy, scores.auc), (xval, scores.xval_accuracy, scores.xval_auc)):
            pairs = pd.read_csv(pairs_path)
            with torch.no_grad():
                a = trainer.model(torch.from_numpy(images[pairs["path_a"].map(row_of).to_numpy()])).numpy()
                b = trainer.model(torch.from_numpy(images[pairs["path_b"].map(row_of).to_numpy()])).numpy()
            similarity = (a * b).sum(axis=1)
            labels = pairs["label"].astype(bool).to_numpy()
            assert auc == pytest.approx(roc_auc_score(labels, similarity), abs=1e-9)
            assert accuracy == pytest.approx(_brute_force_accuracy(similarity, labels), abs=1e-9)

        # The whole run's epoch 0 is that score, and it is the first candidate for the kept epoch.
        summary = trainer.fit()
    before = summary["before"]
    assert (before["val_accuracy"], before["val_auc"], before["xval_accuracy"], before["xval_auc"]) == tuple(scores)
    assert summary["selected_on"] == "val+xval"
    assert trainer.initial.epoch == 0 and math.isnan(trainer.initial.loss)


def test_train_epoch_takes_the_scheduled_steps_and_moves_only_trainable_layers(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with seeded():
        trainer = _trainer(toy_crops, tmp_path)
        frozen = trainer.model.trunk.conv1[0].weight.detach().clone()
        trained = trainer.model.trunk.conv5[0].weight.detach().clone()
        loss, multiplier = trainer.train_epoch(1)
    # One process, incomplete batches dropped: floor(train images / batch) optimiser steps.
    n_train = int((open_crops(toy_crops["crops"])[1]["split"] == "train").sum())
    steps = n_train // SMALL.batch_size
    assert trainer.steps_per_epoch == steps and trainer.step == steps
    # The multiplier of the epoch's last step: linear warm-up over warmup_epochs, then cosine.
    warmup = min(2 * steps, round(SMALL.warmup_epochs * steps))
    assert multiplier == pytest.approx(cosine_schedule(steps - 1, 2 * steps, warmup))
    assert math.isfinite(loss) and loss > 0
    assert torch.equal(trainer.model.trunk.conv1[0].weight, frozen)  # train_layers last_2
    assert not torch.equal(trainer.model.trunk.conv5[0].weight, trained)
    assert trainer.history == [] and trainer.epoch == 0  # train_epoch records nothing


def _result(epoch, auc):
    return EpochResult(epoch, float("nan") if epoch == 0 else 1.0, 1.0, 0.5, auc, 0.0)


def test_record_keeps_the_best_epoch_and_should_stop_after_patience_epochs(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = _trainer(toy_crops, tmp_path, backbone_config=SMALL.model_copy(update={"epochs": 6}), config=FinetuneConfig(patience=2))
    weights = {}
    for epoch, auc in enumerate([0.5, 0.7, 0.6, 0.65]):
        with torch.no_grad():  # a different network each epoch, to see which one is kept
            trainer.model.head[1].weight.fill_(epoch)
        weights[epoch] = trainer.model.head[1].weight.detach().clone()
        trainer.record(_result(epoch, auc))
        # Better than every earlier epoch resets the count; patience = 2 worse ones in a row stops.
        assert trainer.should_stop() == (epoch == 3), epoch
    assert (trainer.best_epoch, trainer.best_score, trainer.bad_epochs) == (1, 0.7, 2)
    assert torch.equal(trainer.best_state["head.1.weight"], weights[1])
    assert [r.epoch for r in trainer.history] == [1, 2, 3] and trainer.initial.epoch == 0

    # An equal score is not better; at the last epoch there is nothing left to stop.
    trainer.record(_result(4, 0.7))
    assert (trainer.best_epoch, trainer.bad_epochs, trainer.should_stop()) == (1, 3, True)
    trainer.record(_result(5, 0.6))
    trainer.record(_result(6, 0.6))
    assert trainer.bad_epochs == 5 and not trainer.should_stop()
    # Without patience it never stops.
    endless = _trainer(toy_crops, tmp_path / "endless", backbone_config=SMALL.model_copy(update={"epochs": 6}))
    for epoch, auc in enumerate([0.9, 0.1, 0.1, 0.1]):
        endless.record(_result(epoch, auc))
    assert endless.bad_epochs == 3 and not endless.should_stop()


def test_resume_from_a_checkpoint_continues_as_if_never_stopped(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "ck"
    with seeded():
        first = _trainer(toy_crops, tmp_path / "first", checkpoint_dir=checkpoints)
        first.validate_untouched()
        first.run_epoch(1)
        first.save_checkpoint()
        after_one = {k: v.clone() for k, v in first.model.state_dict().items()}
        step = first.step
        first.run_epoch(2)
    assert step == first.steps_per_epoch

    with seeded():
        second = _trainer(toy_crops, tmp_path / "second", checkpoint_dir=checkpoints)
        random.seed(1), np.random.seed(1), torch.manual_seed(1)  # resume puts the generators back too
        assert second.resume()
        assert (second.epoch, second.step, second.resumed_from) == (1, step, 1)
        assert all(torch.equal(v, after_one[k]) for k, v in second.model.state_dict().items())
        assert second.history == first.history[:1]
        assert second.best_score == max(first.initial.val_auc, first.history[0].val_auc)
        assert (second.initial.val_accuracy, second.initial.val_auc) == (first.initial.val_accuracy, first.initial.val_auc)
        second.run_epoch(2)
    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key
    assert second.history[1].loss == first.history[1].loss and second.best_epoch == first.best_epoch

    # Other settings, or resume off: the checkpoint is not used and nothing changes.
    other = _trainer(toy_crops, tmp_path / "other", backbone_config=SMALL.model_copy(update={"lr": 5e-4}), checkpoint_dir=checkpoints)
    off = _trainer(toy_crops, tmp_path / "off", config=DETERMINISTIC.model_copy(update={"resume": False}), checkpoint_dir=checkpoints)
    for trainer in (other, off):
        assert not trainer.resume() and trainer.epoch == 0 and trainer.step == 0 and trainer.history == []


# --------------------------------------------------------------------------- whole runs


def test_killed_run_resumes_to_the_same_final_weights(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = _run(toy_crops, tmp_path, "full", checkpoint_dir=tmp_path / "ck_full")

    def kill_after_first(result: EpochResult) -> None:
        if result.epoch == 1:
            raise StopTraining("simulated kill")

    checkpoints = tmp_path / "ck"
    with pytest.raises(StopTraining):
        _run(toy_crops, tmp_path, "resumed", checkpoint_dir=checkpoints, on_epoch_end=kill_after_first)
    assert (checkpoints / train.CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "resumed" / "model" / "model.pt").exists()

    resumed = _run(toy_crops, tmp_path, "resumed", checkpoint_dir=checkpoints)
    assert resumed["resumed_from_epoch"] == 1 and full["resumed_from_epoch"] is None
    expected = torch.load(tmp_path / "full" / "model" / "model.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed" / "model" / "model.pt", weights_only=True)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    # No wall times in the summary: the same run gives the same training.json, byte for byte.
    assert resumed["epochs"] == full["epochs"] and "seconds" not in full["epochs"][0]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert full["epochs"][-1]["loss"] < full["epochs"][0]["loss"]
    # A finished run leaves no checkpoint behind; its curves hold each epoch once.
    assert not (checkpoints / train.CHECKPOINT_FILE).exists()
    auc = pd.read_csv(tmp_path / "resumed" / "live" / "plots" / "metrics" / "val" / "auc.tsv", sep="\t")
    assert auc["step"].tolist() == [0, 1, 2]
    saved = json.loads((tmp_path / "resumed" / "model" / "training.json").read_text())
    assert saved["before"]["loss"] is None and saved["resumed_from_epoch"] == 1
    assert load_model(tmp_path / "resumed" / "model").embedding_size == 16


def test_fingerprint_tracks_what_decides_the_weights(toy_crops, tmp_path, caplog):
    crops, val = toy_crops["crops"], toy_crops["val"]

    def fingerprint(backbone_config=SMALL, config=DETERMINISTIC, world_size=1, crops_dir=crops):
        return train.checkpoint_fingerprint("alexnet", crops_dir, val, backbone_config, ARC, config, world_size)

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(backbone_config=SMALL.model_copy(update={"lr": 5e-4})) != base
    assert fingerprint(config=DETERMINISTIC.model_copy(update={"mask_augment_p": 0.2})) != base
    assert fingerprint(world_size=2) != base
    # Where and how it runs does not change what it computes.
    assert fingerprint(config=DETERMINISTIC.model_copy(update={"device": "cpu", "loader_workers": 2, "resume": False})) == base
    changed = tmp_path / "crops"
    changed.mkdir()
    for name in (IMAGES_FILE, "index.csv", "preprocess.json"):
        (changed / name).write_bytes((crops / name).read_bytes())
    images = np.load(changed / IMAGES_FILE, mmap_mode="r+")
    images[0, 0, 0, 0] ^= 1
    images.flush()
    del images
    assert fingerprint(crops_dir=changed) != base

    path = tmp_path / "ck" / train.CHECKPOINT_FILE
    train.save_checkpoint(path, {"fingerprint": base, "epoch": 1})
    assert train.load_checkpoint(path, base) == {"fingerprint": base, "epoch": 1}
    with caplog.at_level(logging.WARNING, logger="maskface.training.train"):
        assert train.load_checkpoint(path, "0" * 64) is None
        path.write_bytes(b"truncated")
        assert train.load_checkpoint(path, base) is None
    assert "other settings or data" in caplog.text and "unreadable" in caplog.text
    assert train.load_checkpoint(tmp_path / "none.pt", base) is None


def test_best_epoch_is_kept_and_patience_stops(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Scripted validation AUCs for epochs 0..: best at epoch 1, then two worse epochs.
    aucs = iter([0.50, 0.70, 0.60, 0.65, 0.99, 0.99])
    monkeypatch.setattr(train, "pair_metrics", lambda *args, **kwargs: (0.5, next(aucs)))
    states = {}

    def remember(result):
        states[result.epoch] = torch.load(tmp_path / "ck" / train.CHECKPOINT_FILE, weights_only=True)["model"]

    config = FinetuneConfig(seed=0, patience=2)
    summary = _run(
        toy_crops, tmp_path, "es", backbone_config=SMALL.model_copy(update={"epochs": 6}),
        config=config, checkpoint_dir=tmp_path / "ck", on_epoch_end=remember,
    )
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    assert summary["stopped_early"] is True and summary["best_epoch"] == 1 and summary["best_val_auc"] == 0.70
    saved = torch.load(tmp_path / "es" / "model" / "model.pt", weights_only=True)
    for key, value in saved.items():
        assert torch.equal(value, states[1][key]), key
    assert any(not torch.equal(states[1][k], states[3][k]) for k in saved)


def test_finetune_refuses_identity_head_of_the_wrong_size(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="head_init 'random'"):
        _run(toy_crops, tmp_path, "bad", backbone_config=BackboneConfig(embedding_size=16, head_init="identity"))


def test_mask_direction_is_projected_out_of_the_saved_model(toy_crops, tmp_path):
    from maskface.inference.embed import embed_array

    # One training person photographed without a mask only, as an extra collection's people
    # are: the direction must come from the people with both sides alone.
    crops = tmp_path / "crops"
    shutil.copytree(toy_crops["crops"], crops)
    index = read_csv(crops / INDEX_FILE)
    unmasked_only = sorted(index.loc[index["split"] == "train", "identity"].unique())[0]
    index.loc[index["identity"] == unmasked_only, "masked"] = False
    write_csv(index, crops / INDEX_FILE)
    toy_crops = {**toy_crops, "crops": crops}

    plain = _run(toy_crops, tmp_path, "plain")
    removed = _run(toy_crops, tmp_path, "removed", SMALL.model_copy(update={"mask_direction": True}))
    assert "mask_direction" not in plain and plain["best_epoch"] == removed["best_epoch"]
    images, index = open_crops(crops)
    masked = index["masked"].astype(bool).to_numpy()
    train = (index["split"] == "train").to_numpy() & (index["identity"] != unmasked_only).to_numpy()
    assert removed["mask_direction"]["images"] == {"masked": int((train & masked).sum()), "unmasked": int((train & ~masked).sum())}
    # Oracle: the same training without the option, its embeddings projected by hand.
    before = embed_array(load_model(tmp_path / "plain" / "model"), images, progress=False).astype(np.float64)
    after = embed_array(load_model(tmp_path / "removed" / "model"), images, progress=False)
    direction = before[train & masked].mean(0) - before[train & ~masked].mean(0)
    assert removed["mask_direction"]["length"] == pytest.approx(np.linalg.norm(direction), rel=1e-4)
    unit = direction / np.linalg.norm(direction)
    expected = before - np.outer(before @ unit, unit)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(after, expected, atol=1e-4)
    assert np.abs(after @ unit).max() < 1e-4
    saved = json.loads((tmp_path / "removed" / "model" / "training.json").read_text())
    assert saved["mask_direction"]["removed"] is True
    assert json.loads((tmp_path / "removed" / "model" / "model.json").read_text())["mask_direction"] is True


def test_imprinted_class_centres_are_the_starting_networks_identity_means(toy_crops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    imprint = SMALL.model_copy(update={"class_centres": "imprint"})
    with seeded():
        trainer = _trainer(toy_crops, tmp_path / "imprint", backbone_config=imprint)
    # Oracle: the same starting network, rebuilt from its seed, embedding the training crops
    # one forward pass at a time; each identity's unit embeddings averaged with numpy.
    with seeded():
        start = create_model("alexnet", weights="none", embedding_size=16, input_size=64).eval()
    images, index = open_crops(toy_crops["crops"])
    train_rows = np.flatnonzero((index["split"] == "train").to_numpy())
    with torch.no_grad():
        embeddings = start(torch.from_numpy(images[train_rows])).numpy().astype(np.float64)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    identities = index["identity"].to_numpy()[train_rows]
    centres = trainer.loss_fn.weight.detach().numpy()
    for k, identity in enumerate(trainer.identities):
        mean = embeddings[identities == identity].mean(axis=0)
        np.testing.assert_allclose(centres[k], mean / np.linalg.norm(mean), atol=1e-5)
    # The random default draws small centres; imprinting leaves the network itself untouched.
    with seeded():
        plain = _trainer(toy_crops, tmp_path / "plain")
    assert np.linalg.norm(plain.loss_fn.weight.detach().numpy(), axis=1).max() < 0.2
    for name, tensor in plain.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], tensor)
    summary = _run(toy_crops, tmp_path, "run", backbone_config=imprint)
    assert summary["settings"]["backbone"]["class_centres"] == "imprint"


# --------------------------------------------------------------------------- model soups

def _saved_state(folder):
    return torch.load(folder / "model" / "model.pt", weights_only=True)


@pytest.fixture
def shared_start(monkeypatch):
    """A soup needs a shared pretrained start: the toy alexnet (weights: none) is marked as
    one, every run starting from the same seed-0 weights."""
    create = train.create_model

    def pretrained_model(*args, **kwargs):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create(*args, **kwargs)
        model.pretrained = {"spec": "test:shared-start"}
        return model

    monkeypatch.setattr(train, "create_model", pretrained_model)


def _scripted_aucs(monkeypatch, aucs):
    scripted = iter(aucs)
    monkeypatch.setattr(train, "pair_metrics", lambda *args, **kwargs: (0.5, next(scripted)))


def test_soup_saves_the_mean_of_its_runs_kept_weights(toy_crops, tmp_path, monkeypatch, shared_start):
    monkeypatch.chdir(tmp_path)
    # Oracle: the same two runs one by one (seeds 0 and 1), each keeping its last epoch.
    singles = []
    for seed in (0, 1):
        _scripted_aucs(monkeypatch, [0.5, 0.6, 0.7])
        config = DETERMINISTIC.model_copy(update={"seed": seed})
        _run(toy_crops, tmp_path, f"seed{seed}", config=config)
        singles.append(_saved_state(tmp_path / f"seed{seed}"))
    _scripted_aucs(monkeypatch, [0.5, 0.6, 0.7, 0.5, 0.6, 0.7, 0.65])  # the soup (last) beats epoch 0
    checkpoints = tmp_path / "ck"
    summary = _run(toy_crops, tmp_path, "soup", backbone_config=SMALL.model_copy(update={"soup": 2}), checkpoint_dir=checkpoints)
    soup = _saved_state(tmp_path / "soup")
    assert any(not torch.equal(singles[0][k], singles[1][k]) for k in soup if soup[k].is_floating_point())
    for key, value in soup.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (singles[0][key] + singles[1][key]) / 2, rtol=0, atol=1e-6)
    assert summary["soup"]["kept"] == "soup" and summary["best_epoch"] is None and summary["best_val_auc"] == 0.65
    assert [run["seed"] for run in summary["soup"]["runs"]] == [0, 1]
    assert [run["best_epoch"] for run in summary["soup"]["runs"]] == [2, 2]
    assert summary["settings"]["finetune"]["seed"] == 0
    saved = json.loads((tmp_path / "soup" / "model" / "training.json").read_text())
    assert saved["soup"]["val"]["val_auc"] == 0.65 and saved["soup"]["ingredients"] == 2
    # Every run's checkpoint folder is gone once the soup is saved; the first run's curves stay.
    assert not checkpoints.exists()
    auc = pd.read_csv(tmp_path / "soup" / "live" / "plots" / "metrics" / "val" / "auc.tsv", sep="\t")
    assert auc["auc"].tolist() == [0.5, 0.6, 0.7]


def test_soup_worse_than_the_start_keeps_the_best_run(toy_crops, tmp_path, monkeypatch, shared_start):
    monkeypatch.chdir(tmp_path)
    _scripted_aucs(monkeypatch, [0.5, 0.8, 0.6])
    _run(toy_crops, tmp_path, "seed1", config=DETERMINISTIC.model_copy(update={"seed": 1}))
    # Run 0 keeps epoch 2 (0.7), run 1 epoch 1 (0.8); the soup scores below epoch 0.
    _scripted_aucs(monkeypatch, [0.5, 0.6, 0.7, 0.5, 0.8, 0.6, 0.4])
    summary = _run(toy_crops, tmp_path, "soup", backbone_config=SMALL.model_copy(update={"soup": 2}))
    assert summary["soup"]["kept"] == "run 1" and summary["best_epoch"] == 1 and summary["best_val_auc"] == 0.8
    expected, got = _saved_state(tmp_path / "seed1"), _saved_state(tmp_path / "soup")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_killed_soup_resumes_to_the_same_weights(toy_crops, tmp_path, monkeypatch, shared_start):
    monkeypatch.chdir(tmp_path)
    souped = SMALL.model_copy(update={"soup": 2})
    _run(toy_crops, tmp_path, "full", backbone_config=souped)
    epochs_seen = []

    def kill_in_second_run(result: EpochResult) -> None:
        epochs_seen.append(result.epoch)
        if len(epochs_seen) == 3:  # run 0's epochs 1 and 2, then run 1's epoch 1
            raise StopTraining("simulated kill")

    checkpoints = tmp_path / "ck"
    with pytest.raises(StopTraining):
        _run(toy_crops, tmp_path, "resumed", backbone_config=souped, checkpoint_dir=checkpoints, on_epoch_end=kill_in_second_run)
    # The finished run's checkpoint stays until the soup is saved, so it is not trained again.
    assert (checkpoints / "ingredient0" / train.CHECKPOINT_FILE).is_file()
    assert (checkpoints / "ingredient1" / train.CHECKPOINT_FILE).is_file()
    trained_after_resuming = []
    resumed = _run(toy_crops, tmp_path, "resumed", backbone_config=souped, checkpoint_dir=checkpoints,
                   on_epoch_end=lambda result: trained_after_resuming.append(result.epoch))
    assert trained_after_resuming == [2]  # run 1's last epoch; run 0 resumed finished
    assert resumed["soup"]["runs"][0]["epochs"] == json.loads(
        (tmp_path / "full" / "model" / "training.json").read_text())["soup"]["runs"][0]["epochs"]
    assert resumed["soup"]["runs"][1]["epochs"] == json.loads(
        (tmp_path / "full" / "model" / "training.json").read_text())["soup"]["runs"][1]["epochs"]
    expected, got = _saved_state(tmp_path / "full"), _saved_state(tmp_path / "resumed")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert not checkpoints.exists()


def test_soup_without_a_pretrained_start_trains_once(toy_crops, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    single = _run(toy_crops, tmp_path, "single")
    with caplog.at_level("WARNING", logger=train.__name__):
        souped = _run(toy_crops, tmp_path, "soup", backbone_config=SMALL.model_copy(update={"soup": 3}))
    assert "needs pretrained weights" in caplog.text and "training once" in caplog.text
    assert "soup" not in souped and souped["best_epoch"] == single["best_epoch"]
    expected, got = _saved_state(tmp_path / "single"), _saved_state(tmp_path / "soup")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
