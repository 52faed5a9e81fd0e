"""Data-parallel pieces, and the finetune stage under torchrun (gloo, 2 CPU processes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from maskface.config import ArcFaceConfig, BackboneConfig, CropConfig, FinetuneConfig
from maskface.face.crop import crop_dataset
from maskface.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    broadcast_object,
    choose_backend,
    distributed_session,
    epoch_batches,
    gather_objects,
    launch_environment,
    wrap_model,
)

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_importing_training_starts_no_process_group():
    import maskface.training.distributed  # noqa: F401
    import maskface.training.train  # noqa: F401

    assert not dist.is_initialized()


def test_launch_environment_reads_torchrun_variables(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert launch_environment() == DistributedContext(rank=0, world_size=1, local_rank=0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = launch_environment()
    assert (context.rank, context.world_size, context.local_rank) == (3, 4, 1)
    assert context.is_distributed and not context.is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        launch_environment()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK = 'one'"):
        launch_environment()


def test_single_process_session_is_plain(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with distributed_session("cpu") as (context, device):
        assert context == DistributedContext() and device == torch.device("cpu")
        assert not dist.is_initialized()
        assert all_reduce_mean(2.5, context, device) == 2.5
        assert broadcast_object({"a": 1}, context) == {"a": 1}
        assert gather_objects(7, context) == [7]
        module = torch.nn.Linear(2, 2)
        assert wrap_model(module, context, device) is module


def test_backend_follows_the_device():
    assert choose_backend(torch.device("cuda", 0)) == "nccl"
    assert choose_backend(torch.device("cpu")) == "gloo"


def test_epoch_batches_partition_the_data_between_ranks():
    count, batch = 50, 8
    ranks = [epoch_batches(count, batch, DistributedContext(rank=r, world_size=2), seed=0, epoch=1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 50 // 2 // 4  # 25 per rank, 4 per step
    seen = [np.concatenate(batches) for batches in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert all(len(b) == 4 and np.all(np.diff(b) > 0) for batches in ranks for b in batches)
    single = epoch_batches(count, batch, DistributedContext(), seed=0, epoch=1)
    assert len(single) == 50 // 8 and len(np.unique(np.concatenate(single))) == 48
    assert all(np.array_equal(a, b) for a, b in zip(single, epoch_batches(count, batch, DistributedContext(), 0, 1)))
    other = epoch_batches(count, batch, DistributedContext(), seed=0, epoch=2)
    assert not all(np.array_equal(a, b) for a, b in zip(single, other))
    with pytest.raises(ValueError, match="batch_size >= world size"):
        epoch_batches(count, 1, DistributedContext(rank=0, world_size=2), 0, 0)


# One training run of a tiny ArcFace model through the project's DDP pieces: the same script
# under torchrun (2 gloo processes) and as one plain process.
TINY_RUN = """
import json, sys
import numpy as np, torch
from maskface.training.distributed import all_reduce_mean, distributed_session, epoch_batches, gather_objects, wrap_model
from maskface.training.losses import ArcFaceLoss
from maskface.training.train import ArcFaceTrainer

torch.use_deterministic_algorithms(True)
rng = np.random.default_rng(0)
y = torch.from_numpy(rng.integers(0, 3, 48))
x = torch.from_numpy(rng.normal(size=(3, 6))[y.numpy()] + 0.3 * rng.normal(size=(48, 6)))  # 3 learnable clusters
with distributed_session("cpu") as (context, device):
    torch.manual_seed(0)
    # Kept as train.py keeps it: the module inside DDP's wrapper, to save.
    inner = ArcFaceTrainer(torch.nn.Linear(6, 4).double(), ArcFaceLoss(4, 3, scale=8.0, margin_rad=0.3).double())
    trainer = wrap_model(inner, context, device)
    optimizer = torch.optim.SGD(trainer.parameters(), lr=0.5, momentum=0.9)
    losses, used = [], []
    for epoch in (1, 2, 3):
        for batch in epoch_batches(len(x), 8, context, seed=0, epoch=epoch):  # 8 = the global batch
            rows = torch.from_numpy(batch)
            loss = trainer(x[rows], y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(all_reduce_mean(loss.item(), context, device))
            used.append(sorted(int(i) for ranks in gather_objects(batch.tolist(), context) for i in ranks))
    if context.is_main:
        torch.save(inner.state_dict(), sys.argv[1] + "/state.pt")
        with open(sys.argv[1] + "/run.json", "w") as handle:
            json.dump({"processes": context.world_size, "losses": losses, "batches": used}, handle)
"""


def test_two_gloo_processes_give_the_weights_of_one_process_on_the_same_global_batches(tmp_path):
    """DDP averages the two half-batch gradients into the full batch's: same losses, same weights."""
    script = tmp_path / "tiny_run.py"
    script.write_text(TINY_RUN)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    runs = {}
    for name, launcher in (("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]), ("one", [sys.executable])):
        out = tmp_path / name
        out.mkdir()
        done = subprocess.run([*launcher, str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = (json.loads((out / "run.json").read_text()), torch.load(out / "state.pt", weights_only=True))
    (ddp, ddp_state), (one, one_state) = runs["ddp"], runs["one"]
    assert ddp["processes"] == 2 and one["processes"] == 1
    # The two ranks' halves of each step are exactly the single process's batch.
    assert ddp["batches"] == one["batches"] and len(one["batches"]) == 3 * 48 // 8
    np.testing.assert_allclose(ddp["losses"], one["losses"], rtol=1e-10, atol=1e-12)
    assert np.mean(one["losses"][-6:]) < np.mean(one["losses"][:6])  # it learned: the comparison is not of idle weights
    assert ddp_state.keys() == one_state.keys()
    for key in one_state:
        torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-10, atol=1e-12)


def test_torchrun_two_gloo_processes_train_like_one(toy_dataset, tmp_path, repo_root):
    """The finetune stage under torchrun --nproc_per_node=2 (gloo on CPU) against one process."""
    crops = tmp_path / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 64, crops)
    val = toy_dataset["pairs_dir"] / "val.csv"
    backbone = {"epochs": 3, "lr": 2e-3, "batch_size": 12, "embedding_size": 16, "train_layers": "last_2"}
    finetune_settings = {"seed": 0, "device": "cpu"}
    params = {"backbones": {"alexnet": backbone}, "arcface": {"scale": 16.0, "margin_rad": 0.2}, "finetune": finetune_settings}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(repo_root / "stages" / "finetune.py"), "--params", "params.yaml", "--backbone", "alexnet",
        "--crops", str(crops), "--val-pairs", str(val), "--out", "ddp/model", "--live-dir", "ddp/live",
        "--checkpoint-dir", "ddp/ck",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 of 2" in done.stderr and "gloo" in done.stderr

    from maskface.training.train import finetune

    os.chdir(tmp_path)
    try:
        single = finetune(
            "alexnet", crops, val, tmp_path / "one" / "model", tmp_path / "one" / "live",
            BackboneConfig(**backbone), ArcFaceConfig(scale=16.0, margin_rad=0.2), FinetuneConfig(**finetune_settings),
            progress=False,
        )
    finally:
        os.chdir(repo_root)

    ddp = json.loads((tmp_path / "ddp" / "model" / "training.json").read_text())
    assert ddp["processes"] == 2 and single["processes"] == 1
    losses = [e["loss"] for e in ddp["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert [e["epoch"] for e in ddp["epochs"]] == [e["epoch"] for e in single["epochs"]]
    ddp_state = torch.load(tmp_path / "ddp" / "model" / "model.pt", weights_only=True)
    one_state = torch.load(tmp_path / "one" / "model" / "model.pt", weights_only=True)
    assert {k: v.shape for k, v in ddp_state.items()} == {k: v.shape for k, v in one_state.items()}
    assert json.loads((tmp_path / "ddp" / "model" / "model.json").read_text()) == json.loads(
        (tmp_path / "one" / "model" / "model.json").read_text()
    )
    # Rank 0 alone wrote the curves (one row per epoch) and removed its finished checkpoint.
    loss_curve = (tmp_path / "ddp" / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert len(loss_curve) == 1 + 3
    assert not list((tmp_path / "ddp" / "ck").glob("*.pt"))
