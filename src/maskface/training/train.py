"""ArcFace fine-tuning of a registered backbone on the crop stage's arrays.

One function, :func:`finetune`, runs the same way on a CPU, one GPU, or N GPUs under
``torchrun --nproc_per_node=N`` (see :mod:`maskface.training.distributed`). It seeds, enters the
distributed session and runs a :class:`Trainer`, whose steps (epoch, validation,
checkpoint and resume, early stopping) are its methods:

- batches are read straight from the crop stage's uint8 memory map (optionally in
  ``loader_workers`` processes) and augmented there (:mod:`maskface.training.augment`);
- AdamW or SGD with separate learning rates for the trunk (``lr``) and for the head plus
  the ArcFace class centres (``head_lr``), linear warm-up then cosine decay, weight decay
  on weight matrices only, gradient clipping;
- CUDA: bf16 autocast where supported, else fp16 with a gradient scaler; channels-last;
- validation pair accuracy and ROC AUC after every epoch (and before the first), the best
  epoch kept, optional early stopping; curves through DVCLive;
- a checkpoint after every epoch (model, class centres, optimiser, scaler, RNG states,
  epoch) in ``checkpoint_dir``; a rerun with the same settings and data resumes from it
  and, with ``deterministic``, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maskface.artifacts import file_sha256
from maskface.training.augment import augment_batch, crop_landmarks
from maskface.models.backbones import FaceEmbedder, create_model
from maskface.config import AnchorMasked, ArcFaceConfig, BackboneConfig, FinetuneConfig
from maskface.face.crop import IMAGES_FILE, PREPROCESS_FILE, open_crops
from maskface.device import amp_dtype, autocast
from maskface.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_object,
    distributed_session,
    epoch_batches,
    gather_objects,
    wrap_model,
)
from maskface.inference.embed import embed_array, save_model
from maskface.errors import InputError
from maskface.training.losses import ArcFaceLoss
from maskface.evaluation.metrics import choose_threshold, confusion_at_threshold, roc_auc
from maskface.tables import read_csv

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
TRAINING_FILE = "training.json"
# Settings that change how a run executes but not what it computes: a checkpoint written
# under other values of these is still resumed.
_EXECUTION_ONLY = ("device", "loader_workers", "resume")


@dataclass
class EpochResult:
    """One epoch: mean training loss (ArcFace cross entropy, nats), the last learning-rate
    multiplier of the schedule, validation pair accuracy and ROC AUC, wall time in seconds.
    Epoch 0 is the model before any training (loss NaN, multiplier 0)."""

    epoch: int
    loss: float
    lr_multiplier: float
    val_accuracy: float
    val_auc: float
    seconds: float
    # Pairs of another collection (data.validation_sources), when given; None otherwise.
    xval_accuracy: float | None = None
    xval_auc: float | None = None


class StopTraining(Exception):
    """Raised by an ``on_epoch_end`` callback to stop after a checkpoint (the run stays resumable)."""


# --------------------------------------------------------------------------- reproducibility


def seed_everything(seed: int, deterministic: bool) -> dict:
    """Seed Python, NumPy and torch (all devices); with ``deterministic``, only deterministic kernels.

    Returns the previous global switches, for :func:`restore_determinism`: these are
    process-wide, and a library call must not leave them changed.
    """
    previous = {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible matmuls; read when CUDA first
        # initialises cuBLAS, so it is set before any CUDA work of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = torch.cuda.is_available()
    return previous


def restore_determinism(previous: dict) -> None:
    torch.use_deterministic_algorithms(previous["deterministic"], warn_only=previous["warn_only"])
    torch.backends.cudnn.deterministic = previous["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = previous["cudnn_benchmark"]


def rng_state() -> dict:
    """Every global RNG this process trains with, as tensors and plain Python values."""
    version, mt, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:
            logger.warning("checkpoint has CUDA RNG states of %d devices, %d visible: not restored", len(saved), torch.cuda.device_count())


# --------------------------------------------------------------------------- schedule, optimiser, precision


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def trunk_parts(model: FaceEmbedder, config: BackboneConfig) -> list[tuple[str, list[nn.Parameter], float]]:
    """(name, trainable parameters, learning rate) for the trunk: one part at ``lr``, or with
    ``layer_decay`` < 1 one per layer group, the last at ``lr`` and each earlier one at
    ``layer_decay`` times the next (layer-wise learning-rate decay: the early layers hold the
    most general features, so they move least)."""
    trainable = model.trunk_parameters()
    if config.layer_decay == 1:
        return [("trunk", trainable, config.lr)]
    wanted = {id(p) for p in trainable}
    parts, seen = [], set()
    for depth, group in enumerate(reversed(list(model.trunk.layer_groups))):
        chosen = [p for p in model.trunk.get_submodule(group).parameters() if id(p) in wanted and id(p) not in seen]
        seen.update(id(p) for p in chosen)
        if chosen:
            parts.append((f"trunk.{group}", chosen, config.lr * config.layer_decay**depth))
    rest = [p for p in trainable if id(p) not in seen]
    if rest:
        # Outside every layer group (none of the registered trunks has such parameters):
        # treated as the earliest layer.
        parts.append(("trunk.other", rest, config.lr * config.layer_decay ** len(model.trunk.layer_groups)))
    return parts


def parameter_groups(model: FaceEmbedder, loss_fn: nn.Module, config: BackboneConfig) -> list[dict]:
    """Optimiser groups: trunk at ``lr`` (per layer group with ``layer_decay``, see
    :func:`trunk_parts`), head and class centres at ``head_lr`` (``lr`` if null).

    Weight decay applies to weight matrices and kernels only; biases and batch-norm
    scales (1-d tensors) are exempt, as decaying them only fights the normalisation.
    """
    head_lr = config.head_lr if config.head_lr is not None else config.lr
    parts = [
        *trunk_parts(model, config),
        ("head", model.head_parameters() + [p for p in loss_fn.parameters() if p.requires_grad], head_lr),
    ]
    groups = []
    for name, params, lr in parts:
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr": lr,
                        "base_lr": lr,
                        "weight_decay": config.weight_decay if decay else 0.0,
                        "name": f"{name}{'' if decay else '_no_decay'}",
                    }
                )
    return groups


def build_optimizer(groups: list[dict], config: BackboneConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (plain SGD at momentum 0)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.momentum > 0)
    raise ValueError(f"optimizer {config.optimizer!r} is invalid; valid: adamw, sgd")


def training_precision(device: torch.device, amp: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a gradient scaler is needed).

    bf16 where the GPU supports it (no scaler: bf16 has fp32's exponent range), else fp16
    with a scaler (its 5-bit exponent underflows small gradients); fp32 on CPU and with
    ``amp`` off.
    """
    dtype = amp_dtype(device) if amp else None
    return dtype, dtype == torch.float16


# --------------------------------------------------------------------------- data


class BatchSource(Dataset):
    """Augmented training batches from the crop memmap; item ``k`` is this epoch's batch ``k``.

    Each batch gets its own RNG seeded with (seed, epoch, rank, k), so batches do not
    depend on which worker process makes them nor on where a resumed run restarted.
    The memmap is opened lazily in each process (pickling one would copy the array).
    """

    def __init__(
        self,
        images_path: Path,
        rows: np.ndarray,
        labels: np.ndarray,
        masked: np.ndarray,
        landmarks: np.ndarray,
        config: FinetuneConfig,
        rank: int,
    ):
        self.images_path = Path(images_path)
        self.rows = rows
        self.labels = labels
        self.masked = masked
        self.landmarks = landmarks
        self.augment = {
            "mask_p": config.mask_augment_p,
            "mask_styles": tuple(config.mask_styles),
            "flip_p": config.flip_p,
            "brightness": config.brightness,
            "contrast": config.contrast,
            "saturation": config.saturation,
            "low_resolution_p": config.low_resolution_p,
            "low_resolution_min": config.low_resolution_min,
            "shift_p": config.shift_p,
            "shift_max": config.shift_max,
        }
        self.seed = config.seed
        self.rank = rank
        self.epoch = 0
        self.batches: list[np.ndarray] = []
        self._images: np.ndarray | None = None

    def set_epoch(self, epoch: int, batches: list[np.ndarray]) -> None:
        """``batches``: positions into ``rows`` (see :func:`maskface.training.distributed.epoch_batches`)."""
        self.epoch = epoch
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (uint8 (B, 3, S, S), int64 (B,) class labels, bool (B,) the photo shows a real mask)."""
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        chosen = self.batches[k]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, k])
        pixels = augment_batch(
            np.asarray(self._images[self.rows[chosen]]),
            self.masked[chosen],
            self.landmarks[chosen],
            rng,
            **self.augment,
        )
        return (
            torch.from_numpy(pixels),
            torch.from_numpy(self.labels[chosen].astype(np.int64)),
            torch.from_numpy(self.masked[chosen].astype(bool)),
        )


class ArcFaceTrainer(nn.Module):
    """Embedder and ArcFace loss as one module, so DDP averages the class centres' gradients too.

    With an ``anchor`` network (the untouched pretrained embedder, frozen) the loss adds
    ``anchor_weight * mean(1 - cos(embedding, anchor embedding))`` over the batch: a pull
    toward what the network knew before, which keeps a small fine-tuning set from making it
    forget faces from other collections (feature distillation, as in LwF).

    ``anchor_masked`` says what a photo that shows a real mask (``masked`` in :meth:`forward`)
    is pulled toward: ``own``, the anchor's embedding of that photo, as any other; ``template``,
    row ``label`` of ``templates`` (the anchor's mean embedding of the identity's unmasked
    photos) where ``has_template[label]``, else its own; ``none``, nothing (its term is 0).
    """

    def __init__(
        self,
        model: FaceEmbedder,
        loss_fn: ArcFaceLoss,
        anchor: FaceEmbedder | None = None,
        anchor_weight: float = 0.0,
        anchor_masked: str = "own",
        templates: torch.Tensor | None = None,
        has_template: torch.Tensor | None = None,
    ):
        super().__init__()
        if anchor_masked not in ANCHOR_MASKED:
            raise ValueError(f"anchor_masked {anchor_masked!r}; valid: {', '.join(ANCHOR_MASKED)}")
        # Without an anchor (weights from scratch: nothing to keep) the setting has nothing to act on.
        pulls = anchor is not None and anchor_weight > 0
        if pulls and anchor_masked == "template" and (templates is None or has_template is None):
            raise ValueError("anchor_masked 'template' needs templates and has_template")
        self.model = model
        self.loss_fn = loss_fn
        self.anchor_weight = float(anchor_weight)
        self.anchor_masked = anchor_masked
        # Plain attributes, not submodules or buffers: never trained, saved, or synchronised by DDP.
        self.__dict__["anchor"] = anchor
        self.__dict__["templates"] = templates
        self.__dict__["has_template"] = has_template

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.model(pixels)
        loss = self.loss_fn(embeddings, labels)
        if self.anchor is not None and self.anchor_weight > 0:
            with torch.no_grad():
                target = self.anchor(pixels)
            weight = torch.ones(len(labels), dtype=embeddings.dtype, device=embeddings.device)
            if masked is not None and self.anchor_masked != "own":
                masked = masked.to(embeddings.device, torch.bool)
                if self.anchor_masked == "none":
                    weight = weight * (~masked).to(weight.dtype)
                else:
                    use = masked & self.has_template.to(masked.device)[labels]
                    target = torch.where(use[:, None], self.templates.to(target)[labels], target)
            distance = 1.0 - (embeddings * target).sum(dim=1)
            loss = loss + self.anchor_weight * (weight * distance).mean()
        return loss


ANCHOR_MASKED = get_args(AnchorMasked)


def unmasked_templates(embeddings: np.ndarray, labels: np.ndarray, masked: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's mean unmasked embedding, L2-normalised -> (templates (C, D), has_template (C,)).

    A class without unmasked photos gets a zero row and ``has_template`` False.
    """
    unmasked = ~np.asarray(masked, bool)
    sums = np.zeros((n_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels[unmasked], embeddings[unmasked])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    has_template = norms[:, 0] > 0
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32), has_template


# --------------------------------------------------------------------------- validation


def pair_scores(embeddings: np.ndarray, row_of: dict[str, int], pairs: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each pair; embeddings are unit rows so it is a dot product."""
    a = embeddings[pairs["path_a"].map(row_of).to_numpy()]
    b = embeddings[pairs["path_b"].map(row_of).to_numpy()]
    return np.einsum("ij,ij->i", a, b)


def mask_direction(embeddings: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Mean embedding of the masked rows minus that of the unmasked rows: what a mask adds."""
    masked = np.asarray(masked, dtype=bool)
    return embeddings[masked].mean(0) - embeddings[~masked].mean(0)


def with_both_sides(identities: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Rows of the identities that have masked and unmasked photos. The mask direction is
    measured on them alone: people photographed without masks only (an extra collection such
    as LFW) would add their collection's mean face to the unmasked side, and removing that
    difference would remove what tells the collections' faces apart, not the mask."""
    table = pd.DataFrame({"identity": np.asarray(identities), "masked": np.asarray(masked, dtype=bool)})
    sides = table.groupby("identity")["masked"].agg(["any", "all"])
    both = set(sides.index[sides["any"] & ~sides["all"]])
    return table["identity"].isin(both).to_numpy()


def pair_metrics(model: FaceEmbedder, images: np.ndarray, index: pd.DataFrame, pairs: pd.DataFrame, batch_size: int, device) -> tuple[float, float]:
    """Val pair accuracy (threshold chosen on the same pairs: a model-selection signal) and ROC AUC."""
    needed = sorted(set(pairs["path_a"]) | set(pairs["path_b"]))
    row_of_path = {path: row for row, path in enumerate(index["path"])}
    missing = [p for p in needed if p not in row_of_path]
    if missing:
        raise InputError(f"{len(missing)} validation pair images are not in the crops, e.g. {missing[0]!r}; rerun the crop stage")
    rows = np.array([row_of_path[p] for p in needed])
    embeddings = embed_array(model, images, rows, batch_size=batch_size, device=device, progress=False)
    scores = pair_scores(embeddings, {p: i for i, p in enumerate(needed)}, pairs)
    labels = pairs["label"].to_numpy()
    threshold = choose_threshold(scores, labels)
    accuracy = confusion_at_threshold(scores, labels, threshold)["accuracy"]
    return float(accuracy), float(roc_auc(scores, labels))


# --------------------------------------------------------------------------- checkpoints


def checkpoint_fingerprint(
    backbone: str,
    crops_dir: Path,
    val_pairs_path: Path,
    backbone_config: BackboneConfig,
    arcface: ArcFaceConfig,
    config: FinetuneConfig,
    world_size: int,
    cross_val_pairs_path: Path | None = None,
) -> str:
    """SHA-256 of everything that decides the trained weights: settings, crops, pairs, process count."""
    settings = {k: v for k, v in config.model_dump().items() if k not in _EXECUTION_ONLY}
    payload = {
        "backbone": backbone,
        "backbone_config": backbone_config.model_dump(),
        "arcface": arcface.model_dump(),
        "finetune": settings,
        "world_size": world_size,
        "crops": {name: file_sha256(crops_dir / name) for name in (IMAGES_FILE, "index.csv", PREPROCESS_FILE)},
        "val_pairs": file_sha256(val_pairs_path),
    }
    if cross_val_pairs_path is not None:
        # They pick the kept epoch too; a checkpoint written under other ones is not resumed.
        payload["cross_val_pairs"] = file_sha256(cross_val_pairs_path)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a kill mid-write leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def remove_checkpoint_file(path: Path) -> None:
    """``path``, then its folder and a soup's checkpoint folder above it when they are empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only removed when empty
        path.parent.rmdir()
        if path.parent.name.startswith(INGREDIENT_FOLDER):
            path.parent.parent.rmdir()


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` if it was written for ``fingerprint``; None (with a log line) otherwise."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint must not stop a fresh run
        logger.warning("checkpoint %s is unreadable (%s); training from the start", path, error)
        return None
    if state.get("fingerprint") != fingerprint:
        logger.warning("checkpoint %s was written for other settings or data; training from the start", path)
        return None
    return state


# --------------------------------------------------------------------------- training


def finetune(
    backbone: str,
    crops_dir: Path,
    val_pairs_path: Path,
    out_dir: Path,
    live_dir: Path,
    backbone_config: BackboneConfig,
    arcface: ArcFaceConfig,
    config: FinetuneConfig,
    *,
    checkpoint_dir: Path | None = None,
    on_epoch_end: Callable[[EpochResult], None] | None = None,
    progress: bool = True,
    cross_val_pairs_path: Path | None = None,
) -> dict:
    """Fine-tune ``backbone`` with ArcFace on the training identities; keep the best epoch.

    Args:
        crops_dir: the crop stage's folder (images.npy uint8 (N, 3, S, S), index.csv, preprocess.json).
        val_pairs_path: validation pairs (path_a, path_b, label), scored after every epoch.
        out_dir: receives model.pt, model.json, preprocess.json, training.json (rank 0 only).
        live_dir: DVCLive curves (``train/loss``, ``train/lr_multiplier``, ``val/accuracy``, ``val/auc``).
        checkpoint_dir: where ``last.pt`` goes after each epoch; None = no checkpoints. A
            checkpoint of the same settings and data is resumed (``config.resume``); it is
            deleted once training completes.
        on_epoch_end: called on every rank with each epoch's result after its checkpoint;
            raising :class:`StopTraining` there stops the run, resumably.
        cross_val_pairs_path: pairs of another collection (the split stage's ``xval.csv``);
            when it holds both classes, the kept epoch is the best on the mean of the two
            sets' metric, epoch 0 (the untouched network) included.

    With ``backbone_config.soup`` = n > 1 the run is repeated with seeds ``config.seed`` ..
    ``config.seed + n - 1`` (see :func:`fit_soup`); the first run's curves go to ``live_dir``.

    Under ``torchrun`` every process calls this; see :mod:`maskface.training.distributed`.
    Returns the training summary (also written as training.json).
    """
    previous = seed_everything(config.seed, config.deterministic)
    try:
        with distributed_session(config.device) as (context, device):
            def trainer(run_config: FinetuneConfig, ingredient: int) -> Trainer:
                if ingredient:
                    seed_everything(run_config.seed, run_config.deterministic)
                return Trainer(
                    backbone, crops_dir, val_pairs_path, out_dir, live_dir if ingredient == 0 else None,
                    backbone_config, arcface, run_config, context=context, device=device,
                    checkpoint_dir=_ingredient_folder(checkpoint_dir, ingredient, backbone_config.soup),
                    on_epoch_end=on_epoch_end, progress=progress, cross_val_pairs_path=cross_val_pairs_path,
                )

            if backbone_config.soup == 1:
                return trainer(config, 0).fit()
            return fit_soup(trainer, config, backbone_config.soup)
    finally:
        restore_determinism(previous)


INGREDIENT_FOLDER = "ingredient"


def _ingredient_folder(checkpoint_dir: Path | None, ingredient: int, ingredients: int) -> Path | None:
    """Each run of a soup resumes from its own checkpoint; one run keeps the folder as it is."""
    if checkpoint_dir is None or ingredients == 1:
        return checkpoint_dir
    return Path(checkpoint_dir) / f"{INGREDIENT_FOLDER}{ingredient}"


def soup_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of same-shaped state dicts, tensor by tensor; integer buffers (batch
    norm's step counters) are the first state's."""
    return {
        key: torch.stack([state[key] for state in states]).mean(0) if value.is_floating_point() else value
        for key, value in states[0].items()
    }


def fit_soup(make_trainer: Callable[[FinetuneConfig, int], Trainer], config: FinetuneConfig, ingredients: int) -> dict:
    """A uniform model soup of ``ingredients`` fine-tuning runs (Wortsman et al. 2022).

    Run k trains with seed ``config.seed + k`` and keeps its best epoch, as one run does. The
    mean of the kept weights is scored on the same validation pairs and saved when it is at
    least as good as the untouched network (epoch 0); otherwise the best single run is saved,
    so a soup, like a run, never returns a network worse on validation than its start. Each
    run's epochs go to training.json under ``soup``; the first run's curves to DVCLive.
    A finished run's last checkpoint (which holds its kept weights) stays until the soup is
    saved: a killed soup resumes where it stopped instead of training its finished runs again.
    """
    score_key = "best_val_" + config.select_by
    kept_states: list[dict[str, torch.Tensor]] = []
    runs: list[dict] = []
    summaries: list[dict] = []
    finished_checkpoints: list[Path] = []
    for ingredient in range(ingredients):
        run_config = config.model_copy(update={"seed": config.seed + ingredient})
        run = make_trainer(run_config, ingredient)
        if ingredient == 0 and (run.model.pretrained is None or run.backbone_config.epochs == 0):
            # Runs from different random starts land in different basins, whose mean is no
            # network at all (Neyshabur et al. 2020); runs without epochs are all the start.
            logger.warning(
                "%s: soup: %d needs pretrained weights and epochs > 0 (pretrained: %s, epochs: %d); training once",
                run.backbone, ingredients, run.model.pretrained is not None, run.backbone_config.epochs,
            )
            return run.fit()
        summaries.append(run.fit(save=False))
        # Only the kept weights (on the CPU, rank 0) outlive a run; the last run saves the soup.
        kept_states.append(run.best_state)
        runs.append({"seed": run_config.seed, "best_epoch": run.best_epoch, score_key: run.best_score,
                     "epochs": summaries[-1]["epochs"]})
        if ingredient < ingredients - 1:
            if run.context.is_main and run.checkpoint_path is not None:
                finished_checkpoints.append(run.checkpoint_path)
            del run
        elif run.context.is_main:
            logger.info(
                "%s: soup of %d runs kept epochs %s (val %s %s)", run.backbone, ingredients,
                [r["best_epoch"] for r in runs], config.select_by, ", ".join(f"{r[score_key]:.4f}" for r in runs),
            )
    final = run
    if final.context.is_main:
        final.model.load_state_dict(soup_state(kept_states))
    soup = final.score_as_is(final.epoch)
    start_score, soup_score = final.metric_of(final.initial), final.metric_of(soup)
    best_run = max(range(ingredients), key=lambda k: runs[k][score_key])
    kept = "soup" if soup_score >= start_score else f"run {best_run}"
    if kept == "soup":
        final.best_state, final.best_score = (_cpu_state(final.model) if final.context.is_main else {}), soup_score
    else:
        final.best_state, final.best_score = kept_states[best_run], runs[best_run][score_key]
    summary = summaries[0] | {
        "best_epoch": None if kept == "soup" else runs[best_run]["best_epoch"],
        score_key: final.best_score,
        "stopped_early": any(s["stopped_early"] for s in summaries),
        "soup": {
            "ingredients": ingredients,
            "kept": kept,
            "val": _without_wall_time(soup) | {"epoch": None},
            "runs": runs,
        },
    }
    if final.context.is_main:
        logger.info(
            "%s: the soup scores val %s %.4f (untouched %.4f, best run %.4f); keeping the %s",
            final.backbone, config.select_by, soup_score, start_score, runs[best_run][score_key], kept,
        )
    final.save_outputs(summary)
    for path in finished_checkpoints:
        remove_checkpoint_file(path)
    return summary


class Validation(NamedTuple):
    """Pair accuracy and ROC AUC on the val pairs, and on the other collection's (None without them)."""

    accuracy: float
    auc: float
    xval_accuracy: float | None = None
    xval_auc: float | None = None


class Trainer:
    """One ArcFace fine-tuning run, as steps that can be called one by one.

    Construction reads the crops and pairs and builds the model, the ArcFace class centres,
    the optimiser, the gradient scaler and the training module (DDP across processes). It
    draws from the global random generators: seed first (:func:`finetune` does, and enters
    the distributed session that gives ``context`` and ``device``).

    :meth:`fit` is the whole run: :meth:`resume` or epoch 0 (:meth:`validate_untouched`);
    then per epoch :meth:`run_epoch` (:meth:`train_epoch`, :meth:`validate`, :meth:`record`,
    :meth:`should_stop`), :meth:`save_checkpoint` and the ``on_epoch_end`` callback; at the
    end :meth:`summary` and :meth:`save_outputs`.

    Between steps the run's state is in ``epoch`` (the last one finished, 0 = only the
    untouched network), ``step`` (optimiser steps so far), ``initial`` (epoch 0),
    ``history`` (epochs 1..), ``best_score`` / ``best_epoch`` / ``best_state``,
    ``bad_epochs`` (epochs since the best) and ``stopped_early``.
    """

    def __init__(
        self,
        backbone: str,
        crops_dir: Path,
        val_pairs_path: Path,
        out_dir: Path,
        live_dir: Path,
        backbone_config: BackboneConfig,
        arcface: ArcFaceConfig,
        config: FinetuneConfig,
        *,
        context: DistributedContext | None = None,
        device: torch.device | str = "cpu",
        checkpoint_dir: Path | None = None,
        on_epoch_end: Callable[[EpochResult], None] | None = None,
        progress: bool = True,
        cross_val_pairs_path: Path | None = None,
    ):
        self.backbone = backbone
        self.crops_dir, self.val_pairs_path = Path(crops_dir), Path(val_pairs_path)
        self.cross_val_pairs_path = None if cross_val_pairs_path is None else Path(cross_val_pairs_path)
        self.out_dir = Path(out_dir)
        self.live_dir = None if live_dir is None else Path(live_dir)
        self.backbone_config, self.arcface, self.config = backbone_config, arcface, config
        self.context = context if context is not None else DistributedContext()
        self.device = torch.device(device)
        self.checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
        self.on_epoch_end = on_epoch_end
        self.progress = progress

        self._read_data()
        self._build_model()
        self.steps_per_epoch = len(epoch_batches(len(self.train_rows), self.batch_size, self.context, config.seed, 0))
        self.total_steps = self.steps_per_epoch * backbone_config.epochs
        self.warmup = min(self.total_steps, round(backbone_config.warmup_epochs * self.steps_per_epoch))
        self._log_plan()
        self.fingerprint = self._fingerprint()
        self.metric_of = _selection_metric(config.select_by, self.cross_val_pairs is not None)

        self.epoch = 0
        self.step = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.initial: EpochResult | None = None
        self.history: list[EpochResult] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] = {}
        self.resumed_from: int | None = None
        self.live = None

    # ----------------------------------------------------------------------- construction

    def _read_data(self) -> None:
        """The training rows with their class labels and mask landmarks, the batch source, the pairs."""
        self.images, self.index = open_crops(self.crops_dir)
        index = self.index
        preprocess = json.loads((self.crops_dir / PREPROCESS_FILE).read_text())
        self.train_rows = train_rows = np.flatnonzero((index["split"] == "train").to_numpy())
        if len(train_rows) == 0:
            raise InputError(f"no training images in {self.crops_dir}; check split.ratios")
        self.identities = sorted(index.loc[train_rows, "identity"].unique())
        if len(self.identities) < 2:
            raise InputError(f"ArcFace needs at least 2 training identities; found {len(self.identities)}")
        label_of = {identity: k for k, identity in enumerate(self.identities)}
        self.train_labels = train_labels = index.loc[train_rows, "identity"].map(label_of).to_numpy()
        # Real masks on the training photos: the augmentation, the anchor's templates and the mask direction read it.
        self.train_masked = index["masked"].astype(bool).to_numpy()[train_rows]
        self.val_pairs = read_csv(self.val_pairs_path)
        self.cross_val_pairs = None
        if self.cross_val_pairs_path is not None:
            table = read_csv(self.cross_val_pairs_path)
            # Both classes are needed for an AUC; an empty table means no validation_sources.
            self.cross_val_pairs = table if len(table) and table["label"].astype(bool).nunique() == 2 else None
        world_size = self.context.world_size
        self.batch_size = min(self.backbone_config.batch_size, len(train_rows))
        if self.batch_size < 2 * world_size:
            raise InputError(
                f"batch_size {self.batch_size} gives fewer than 2 images per process on {world_size} processes "
                f"(the head's batch norm needs 2); valid: batch_size >= {2 * world_size}"
            )

        landmarks, sources = crop_landmarks(
            index.iloc[train_rows].reset_index(drop=True), preprocess.get("crop", {}), self.images.shape[-1]
        )
        self.landmark_sources = {str(name): int(count) for name, count in zip(*np.unique(sources, return_counts=True))}
        self.source = BatchSource(
            self.crops_dir / IMAGES_FILE, train_rows, train_labels, self.train_masked, landmarks,
            self.config, self.context.rank,
        )

    def _build_model(self) -> None:
        """Embedder, ArcFace class centres, optimiser, gradient scaler and the training module, on ``device``."""
        backbone_config, device = self.backbone_config, self.device
        model = create_model(
            self.backbone,
            weights=backbone_config.weights,
            embedding_size=backbone_config.embedding_size,
            input_size=self.images.shape[-1],
        )
        if backbone_config.head_init == "identity":
            model.init_head_identity()
        pretrained = model.pretrained is not None
        self.trainable = model.configure_training(
            backbone_config.train_layers, backbone_config.freeze_bn_stats and pretrained
        )
        loss_fn = ArcFaceLoss(
            backbone_config.embedding_size, len(self.identities),
            scale=self.arcface.scale, margin_rad=self.arcface.margin_rad,
        )
        model.to(device)
        loss_fn.to(device)
        if backbone_config.class_centres == "imprint":
            # Before wrapping: distributed wrapping broadcasts rank 0's centres to every rank.
            embeddings = self._training_embeddings(model)
            loss_fn.imprint(torch.from_numpy(embeddings).to(device), torch.tensor(self.train_labels, device=device))
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(parameter_groups(model, loss_fn, backbone_config), backbone_config)
        self.dtype, use_scaler = training_precision(device, self.config.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        anchor, templates, has_template = None, None, None
        if backbone_config.anchor > 0 and pretrained:
            anchor = copy.deepcopy(model).eval().requires_grad_(False)
            if backbone_config.anchor_masked == "template":
                found, has = unmasked_templates(
                    self._training_embeddings(model), self.train_labels, self.train_masked, len(self.identities)
                )
                templates, has_template = torch.from_numpy(found).to(device), torch.from_numpy(has).to(device)
                logger.info(
                    "%s: masked photos pulled toward their identity's unmasked template (%d of %d identities have one)",
                    self.backbone, int(has.sum()), len(has),
                )
        self.model, self.loss_fn = model, loss_fn
        trainer = ArcFaceTrainer(
            model, loss_fn, anchor, backbone_config.anchor, backbone_config.anchor_masked, templates, has_template
        )
        self.network = wrap_model(trainer, self.context, device)
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _log_plan(self) -> None:
        if self.context.is_main:
            logger.info(
                "%s: %d training images of %d identities; trainable %s (%d parameters); %d x %d steps of %d images "
                "on %d process(es), device %s, precision %s; mask landmarks %s",
                self.backbone, len(self.train_rows), len(self.identities), self.trainable or "head only",
                self.n_trainable, self.backbone_config.epochs, self.steps_per_epoch, self.batch_size,
                self.context.world_size, self.device, _dtype_name(self.dtype), self.landmark_sources,
            )

    def _fingerprint(self) -> str | None:
        """What a checkpoint must have been written for to be resumed; None without checkpoints."""
        if self.checkpoint_path is None:
            return None
        fingerprint = None
        if self.context.is_main:  # hashing the crops once is enough; every rank resumes the same file
            fingerprint = checkpoint_fingerprint(
                self.backbone, self.crops_dir, self.val_pairs_path, self.backbone_config, self.arcface, self.config,
                self.context.world_size, self.cross_val_pairs_path,
            )
        return broadcast_object(fingerprint, self.context)

    # ----------------------------------------------------------------------- the run

    def fit(self, save: bool = True) -> dict:
        """Resume, or score the untouched network (epoch 0); train epoch by epoch with a checkpoint
        after each until the last epoch or early stopping; save the best epoch (``save``; a soup
        saves once, after its last run). -> the summary."""
        resumed = self.resume()
        if self.context.is_main and self.live_dir is not None:
            from dvclive import Live

            self.live_dir.mkdir(parents=True, exist_ok=True)
            self.live = Live(dir=str(self.live_dir), resume=resumed, save_dvc_exp=False, dvcyaml=None, report=None)
        try:
            if not resumed:
                self.validate_untouched()
            for epoch in range(self.epoch + 1, self.backbone_config.epochs + 1):
                if self.stopped_early:
                    break
                result = self.run_epoch(epoch)
                self.save_checkpoint()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(result)
        finally:
            if self.live is not None:
                self.live.end()
        summary = self.summary()
        if save:
            self.save_outputs(summary)
        return summary

    def score_as_is(self, epoch: int) -> EpochResult:
        """The model as it is now, scored without a training step (no loss, multiplier 0)."""
        started = time.perf_counter()
        scores = self.validate()
        return EpochResult(
            epoch, float("nan"), 0.0, scores.accuracy, scores.auc, time.perf_counter() - started,
            scores.xval_accuracy, scores.xval_auc,
        )

    def validate_untouched(self) -> EpochResult:
        """Epoch 0: the network before any training step, the first candidate for the kept epoch."""
        result = self.score_as_is(0)
        self.record(result)
        self._log(result)
        return result

    def run_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch, score it, keep it if it is the best so far, decide on early stopping."""
        started = time.perf_counter()
        loss, multiplier = self.train_epoch(epoch)
        scores = self.validate()
        result = EpochResult(
            epoch, loss, multiplier, scores.accuracy, scores.auc, time.perf_counter() - started,
            scores.xval_accuracy, scores.xval_auc,
        )
        self.record(result)
        self.stopped_early = self.should_stop()
        self._log(result)
        return result

    # ----------------------------------------------------------------------- the steps

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this epoch's batches -> (mean loss over all processes, last LR multiplier).

        Raises InputError when the loss is no longer finite (a learning rate too high).
        """
        config, device = self.config, self.device
        self.source.set_epoch(epoch, epoch_batches(len(self.train_rows), self.batch_size, self.context, config.seed, epoch))
        loader = DataLoader(
            self.source, batch_size=None, shuffle=False, num_workers=config.loader_workers,
            pin_memory=device.type == "cuda",
        )
        self.network.train()
        running = torch.zeros((), dtype=torch.float64, device=device)
        multiplier = 0.0
        bar = tqdm(
            loader, desc=f"{self.backbone} epoch {epoch}", unit="step", leave=False,
            disable=not (self.progress and self.context.is_main),
        )
        for batch, (pixels, labels, masked) in enumerate(bar):
            loss, multiplier = self.train_step(pixels, labels, masked)
            running += loss.detach()
            if batch % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        mean_loss = all_reduce_mean(float(running.item()) / max(1, len(self.source)), self.context, device)
        if not math.isfinite(mean_loss):
            raise InputError(
                f"{self.backbone}: training loss became {mean_loss} in epoch {epoch}; lower backbones.{self.backbone}.lr "
                f"(now {self.backbone_config.lr}) or head_lr, or keep finetune.grad_clip_norm > 0"
            )
        return mean_loss, multiplier

    def train_step(
        self, pixels: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """One optimiser step on one batch at the schedule's learning rate -> (loss, LR multiplier).
        ``masked``: which photos show a real mask (for ``anchor_masked``)."""
        device = self.device
        pixels = pixels.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if masked is not None:
            masked = masked.to(device, non_blocking=True)
        if device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        multiplier = cosine_schedule(self.step, self.total_steps, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
        with autocast(device, self.dtype):
            loss = self.network(pixels, labels, masked)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), max_norm=self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss, multiplier

    def validate(self) -> Validation:
        """The model as it is now on the val pairs and on the other collection's pairs.

        Rank 0 scores them and broadcasts the result, so every rank agrees on early stopping.
        """
        result = None
        if self.context.is_main:
            batch_size = max(self.batch_size, 32)
            val = pair_metrics(self.model, self.images, self.index, self.val_pairs, batch_size, self.device)
            cross = (None, None)
            if self.cross_val_pairs is not None:
                cross = pair_metrics(self.model, self.images, self.index, self.cross_val_pairs, batch_size, self.device)
            result = Validation(*val, *cross)
        return broadcast_object(result, self.context)

    def record(self, result: EpochResult) -> None:
        """Add an epoch's result; keep its weights when it beats the best so far (epoch 0 always
        does), else count it toward ``patience``."""
        if result.epoch == 0:
            self.initial = result
        else:
            self.history.append(result)
        score = self.metric_of(result)
        if result.epoch == 0 or score > self.best_score:
            # Only rank 0 saves; the others need just the score to agree on early stopping.
            state = _cpu_state(self.model) if self.context.is_main else {}
            self.best_score, self.best_epoch, self.best_state, self.bad_epochs = score, result.epoch, state, 0
        else:
            self.bad_epochs += 1
        self.epoch = result.epoch

    def should_stop(self) -> bool:
        """Early stopping: ``patience`` epochs in a row without a better score, and epochs left to run."""
        patience = self.config.patience
        return patience is not None and self.bad_epochs >= patience and self.epoch < self.backbone_config.epochs

    def save_checkpoint(self) -> None:
        """``last.pt`` after the current epoch: all :meth:`resume` needs to go on as if never stopped.

        Weights, class centres, optimiser and scaler state, every rank's RNG state, the
        results so far and the best epoch's weights. Nothing without a checkpoint folder.
        """
        if self.checkpoint_path is None:
            return
        rng_states = gather_objects(rng_state(), self.context)
        if self.context.is_main:
            save_checkpoint(
                self.checkpoint_path,
                {
                    "fingerprint": self.fingerprint,
                    "epoch": self.epoch,
                    "step": self.step,
                    "bad_epochs": self.bad_epochs,
                    "stopped_early": self.stopped_early,
                    "model": _cpu_state(self.model),
                    "loss": _cpu_state(self.loss_fn),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": rng_states,
                    "initial": asdict(self.initial),
                    "history": [asdict(h) for h in self.history],
                    "best_score": self.best_score,
                    "best_epoch": self.best_epoch,
                    "best_state": self.best_state,
                },
            )
        barrier(self.context)

    def resume(self) -> bool:
        """Load ``last.pt`` when ``config.resume`` is on and it was written for these settings and
        data (see :func:`checkpoint_fingerprint`). False, with nothing changed, otherwise."""
        if self.checkpoint_path is None or not self.config.resume:
            return False
        state = load_checkpoint(self.checkpoint_path, self.fingerprint)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.context.rank])
        self.history = [EpochResult(**entry) for entry in state["history"]]
        self.initial = EpochResult(**state["initial"])
        self.best_score, self.best_epoch, self.best_state = state["best_score"], state["best_epoch"], state["best_state"]
        self.epoch, self.step, self.bad_epochs = state["epoch"], state["step"], state["bad_epochs"]
        self.stopped_early = bool(state["stopped_early"])
        self.resumed_from = self.epoch
        if self.context.is_main:
            logger.info("%s: resuming after epoch %d from %s", self.backbone, self.epoch, self.checkpoint_path)
        return True

    # ----------------------------------------------------------------------- outputs

    def _log(self, result: EpochResult) -> None:
        """An epoch's curves (DVCLive step = epoch) and log line, on rank 0."""
        if self.live is not None:
            self.live.step = result.epoch
            if result.epoch > 0:
                self.live.log_metric("train/loss", result.loss)
                self.live.log_metric("train/lr_multiplier", result.lr_multiplier)
            self.live.log_metric("val/accuracy", result.val_accuracy)
            self.live.log_metric("val/auc", result.val_auc)
            if result.xval_auc is not None:
                self.live.log_metric("xval/accuracy", result.xval_accuracy)
                self.live.log_metric("xval/auc", result.xval_auc)
            self.live.next_step()
        if not self.context.is_main:
            return
        if result.epoch == 0:
            logger.info(
                "%s: before fine-tuning val accuracy %.4f auc %.4f%s",
                self.backbone, result.val_accuracy, result.val_auc, _cross_text(result),
            )
        else:
            logger.info(
                "%s epoch %d: loss %.4f val accuracy %.4f auc %.4f%s (%.0f s)%s",
                self.backbone, result.epoch, result.loss, result.val_accuracy, result.val_auc, _cross_text(result),
                result.seconds, f"; no better epoch for {self.bad_epochs}, stopping" if self.stopped_early else "",
            )

    def summary(self) -> dict:
        """The run as training.json holds it: settings, what it started from, every epoch, the kept one."""
        backbone_config, config = self.backbone_config, self.config
        return {
            "backbone": self.backbone,
            "weights": backbone_config.weights,
            # What `weights` resolved to: spec, file name, sha256 and origin (official | converted);
            # None when the trunk started from random initialisation.
            "started_from": self.model.pretrained,
            "train_layers": backbone_config.train_layers,
            "trainable_groups": self.trainable,
            "trainable_parameters": self.n_trainable,
            "best_epoch": self.best_epoch,
            "select_by": config.select_by,
            # val: the val pairs alone; val+xval: their mean with another collection's pairs.
            "selected_on": "val+xval" if self.cross_val_pairs is not None else "val",
            "best_val_" + config.select_by: self.best_score,
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from,
            "before": _without_wall_time(self.initial),
            "epochs": [_without_wall_time(h) for h in self.history],
            "train_images": int(len(self.train_rows)),
            "train_identities": len(self.identities),
            "mask_landmark_sources": self.landmark_sources,
            "device": str(self.device),
            "processes": self.context.world_size,
            "precision": _dtype_name(self.dtype),
            "settings": {
                "backbone": backbone_config.model_dump(),
                "arcface": self.arcface.model_dump(),
                "finetune": config.model_dump(),
            },
        }

    def _training_embeddings(self, model: FaceEmbedder, rows: np.ndarray | None = None) -> np.ndarray:
        """``model``'s embeddings of the training images (or of ``rows`` of them) as they are
        (no augmentation), in row order."""
        rows = self.train_rows if rows is None else rows
        return embed_array(model, self.images, rows, batch_size=self.batch_size, progress=False)

    def _remove_mask_direction(self, model: FaceEmbedder) -> dict:
        """Project the training images' mean masked-minus-unmasked embedding out of ``model``'s head."""
        masked = self.train_masked
        used = with_both_sides(self.index["identity"].to_numpy()[self.train_rows], masked)
        counts = {"masked": int(masked[used].sum()), "unmasked": int((~masked[used]).sum())}
        if not counts["masked"] or not counts["unmasked"]:
            logger.warning(
                "%s: mask_direction needs training identities with masked and unmasked images (%d masked, %d unmasked); "
                "left as it is", self.backbone, counts["masked"], counts["unmasked"],
            )
            return {"removed": False, "images": counts}
        model.eval()
        direction = mask_direction(self._training_embeddings(model, self.train_rows[used]), masked[used])
        model.remove_direction(torch.from_numpy(direction))
        length = float(np.linalg.norm(direction))
        logger.info(
            "%s: removed the mask direction (length %.4f) of %d masked and %d unmasked training images",
            self.backbone, length, counts["masked"], counts["unmasked"],
        )
        return {"removed": True, "length": length, "images": counts}

    def remove_checkpoint(self) -> None:
        """A finished run needs no resuming, and a stale file would only be refused by the next run."""
        if self.context.is_main and self.checkpoint_path is not None:
            remove_checkpoint_file(self.checkpoint_path)

    def save_outputs(self, summary: dict) -> None:
        """Rank 0: the best epoch's weights as a model folder with preprocess.json and training.json;
        the checkpoint is removed (a finished run needs no resuming)."""
        if self.context.is_main:
            model, out_dir = self.model, self.out_dir
            model.load_state_dict(self.best_state)
            model.to("cpu").to(memory_format=torch.contiguous_format)
            extra = {
                "weights": self.backbone_config.weights,
                "started_from": model.pretrained,
                "train_layers": self.backbone_config.train_layers,
                "head_init": self.backbone_config.head_init,
            }
            if self.backbone_config.mask_direction:
                summary["mask_direction"] = self._remove_mask_direction(model)
                extra["mask_direction"] = summary["mask_direction"]["removed"]
            save_model(model, out_dir, extra)
            shutil.copyfile(self.crops_dir / PREPROCESS_FILE, out_dir / PREPROCESS_FILE)
            (out_dir / TRAINING_FILE).write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
            self.remove_checkpoint()
            logger.info(
                "%s: kept %s (val %s %.4f) -> %s", self.backbone,
                "the soup" if summary["best_epoch"] is None else f"epoch {summary['best_epoch']}",
                self.config.select_by, self.best_score, out_dir,
            )
        barrier(self.context)


def _selection_metric(select_by: str, cross_validated: bool) -> Callable[[EpochResult], float]:
    """The score that picks the kept epoch: the val pairs' AUC (or accuracy), averaged with the
    other collection's when there is one, so an epoch that gains here by forgetting there loses."""
    if not cross_validated:
        return lambda r: getattr(r, f"val_{select_by}")
    return lambda r: 0.5 * (getattr(r, f"val_{select_by}") + getattr(r, f"xval_{select_by}"))


def _cross_text(result: EpochResult) -> str:
    if result.xval_auc is None:
        return ""
    return f", other collection accuracy {result.xval_accuracy:.4f} auc {result.xval_auc:.4f}"


def _without_wall_time(result: EpochResult) -> dict:
    """An epoch for training.json: wall time stays in the log, not in the model folder.

    The same code, data and settings give bit-identical weights; with timings inside,
    every rerun would still give the model folder a new hash, and DVC a "changed" model.
    """
    return {key: value for key, value in asdict(result).items() if key != "seconds"}


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).removeprefix("torch.")


def _json_safe(value):
    """NaN (epoch 0's loss) -> None, so training.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
