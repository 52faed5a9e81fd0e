"""ArcFace fine-tuning of a registered backbone on the crop stage's arrays."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from maskface.backbones import FaceEmbedder, create_model
from maskface.config import ArcFaceConfig, BackboneConfig, FinetuneConfig
from maskface.crop import PREPROCESS_FILE, open_crops
from maskface.device import amp_dtype, autocast, resolve_device
from maskface.embed import embed_array, save_model
from maskface.losses import ArcFaceLoss
from maskface.metrics import choose_threshold, confusion_at_threshold, roc_auc

logger = logging.getLogger(__name__)


@dataclass
class EpochResult:
    epoch: int
    loss: float
    val_accuracy: float
    val_auc: float


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up for ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pair_scores(embeddings: np.ndarray, row_of: dict[str, int], pairs: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each pair; embeddings are unit rows so it is a dot product."""
    a = embeddings[pairs["path_a"].map(row_of).to_numpy()]
    b = embeddings[pairs["path_b"].map(row_of).to_numpy()]
    return np.einsum("ij,ij->i", a, b)


def validate(model: FaceEmbedder, images: np.ndarray, index: pd.DataFrame, pairs: pd.DataFrame, batch_size: int, device) -> tuple[float, float]:
    """Val pair accuracy (threshold chosen on the same pairs: a model-selection signal) and AUC."""
    needed = sorted(set(pairs["path_a"]) | set(pairs["path_b"]))
    row_of_path = {path: row for row, path in enumerate(index["path"])}
    rows = np.array([row_of_path[p] for p in needed])
    embeddings = embed_array(model, images, rows, batch_size=batch_size, device=device, progress=False)
    scores = pair_scores(embeddings, {p: i for i, p in enumerate(needed)}, pairs)
    labels = pairs["label"].to_numpy()
    threshold = choose_threshold(scores, labels)
    accuracy = confusion_at_threshold(scores, labels, threshold)["accuracy"]
    return float(accuracy), float(roc_auc(scores, labels))


def finetune(
    backbone: str,
    crops_dir: Path,
    val_pairs_path: Path,
    out_dir: Path,
    live_dir: Path,
    backbone_config: BackboneConfig,
    arcface: ArcFaceConfig,
    config: FinetuneConfig,
) -> dict:
    """Fine-tune ``backbone`` with ArcFace on the training identities; keep the best epoch.

    Writes ``out_dir`` (model.pt, model.json, preprocess.json, training.json) and DVCLive
    curves to ``live_dir``. Returns the training summary.
    """
    from dvclive import Live

    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    images, index = open_crops(crops_dir)
    train_rows = np.flatnonzero((index["split"] == "train").to_numpy())
    if len(train_rows) == 0:
        raise ValueError(f"no training images in {crops_dir}; check split.ratios")
    identities = sorted(index.loc[train_rows, "identity"].unique())
    if len(identities) < 2:
        raise ValueError(f"ArcFace needs at least 2 training identities; found {len(identities)}")
    label_of = {identity: k for k, identity in enumerate(identities)}
    train_labels = index.loc[train_rows, "identity"].map(label_of).to_numpy()
    val_pairs = pd.read_csv(val_pairs_path)

    model = create_model(
        backbone,
        weights=backbone_config.weights,
        embedding_size=backbone_config.embedding_size,
        input_size=images.shape[-1],
    )
    pretrained = backbone_config.weights != "none"
    trainable = model.configure_training(backbone_config.train_layers, backbone_config.freeze_bn_stats and pretrained)
    loss_fn = ArcFaceLoss(backbone_config.embedding_size, len(identities), scale=arcface.scale, margin_rad=arcface.margin_rad)
    model.to(device)
    loss_fn.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    head_lr = backbone_config.head_lr or backbone_config.lr
    groups = [{"params": model.head_parameters() + list(loss_fn.parameters()), "lr": head_lr}]
    if model.trunk_parameters():
        groups.append({"params": model.trunk_parameters(), "lr": backbone_config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=backbone_config.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    batch_size = min(backbone_config.batch_size, len(train_rows))
    steps_per_epoch = max(1, len(train_rows) // batch_size)
    total_steps = steps_per_epoch * backbone_config.epochs
    warmup = min(steps_per_epoch, max(1, total_steps // 10))
    generator = np.random.default_rng(config.seed)
    logger.info(
        "%s: %d training images of %d identities, trainable groups %s, device %s",
        backbone, len(train_rows), len(identities), trainable or "head only", device,
    )

    history: list[EpochResult] = []
    best: tuple[float, int, dict] | None = None
    live_dir.mkdir(parents=True, exist_ok=True)
    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        val_accuracy, val_auc = validate(model, images, index, val_pairs, batch_size, device)
        logger.info("%s: before fine-tuning val accuracy %.4f auc %.4f", backbone, val_accuracy, val_auc)
        best = (val_auc, 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
        step = 0
        for epoch in range(1, backbone_config.epochs + 1):
            model.train()
            order = generator.permutation(len(train_rows))
            losses = []
            progress = tqdm(range(steps_per_epoch), desc=f"{backbone} epoch {epoch}", unit="step", leave=False)
            for batch in progress:
                chosen = np.sort(order[batch * batch_size : (batch + 1) * batch_size])
                pixels = torch.from_numpy(np.ascontiguousarray(images[train_rows[chosen]]))
                labels = torch.from_numpy(train_labels[chosen]).long()
                flip = torch.from_numpy(generator.random(len(chosen)) < config.flip_p)
                pixels[flip] = pixels[flip].flip(-1)
                pixels = pixels.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if device.type == "cuda":
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                multiplier = cosine_schedule(step, total_steps, warmup)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * multiplier
                with autocast(device, dtype):
                    loss = loss_fn(model(pixels), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                losses.append(loss.item())
                progress.set_postfix(loss=f"{losses[-1]:.3f}")
            val_accuracy, val_auc = validate(model, images, index, val_pairs, batch_size, device)
            result = EpochResult(epoch, float(np.mean(losses)), val_accuracy, val_auc)
            history.append(result)
            live.log_metric("train/loss", result.loss)
            live.log_metric("val/accuracy", result.val_accuracy)
            live.log_metric("val/auc", result.val_auc)
            live.next_step()
            logger.info("%s epoch %d: loss %.4f val accuracy %.4f auc %.4f", backbone, epoch, result.loss, val_accuracy, val_auc)
            if val_auc > best[0]:
                best = (val_auc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})

    model.load_state_dict(best[2])
    model.to("cpu").to(memory_format=torch.contiguous_format)
    summary = {
        "backbone": backbone,
        "weights": backbone_config.weights,
        "best_epoch": best[1],
        "best_val_auc": best[0],
        "epochs": [asdict(h) for h in history],
        "train_images": int(len(train_rows)),
        "train_identities": len(identities),
        "device": str(device),
    }
    save_model(model, out_dir, {"weights": backbone_config.weights, "train_layers": backbone_config.train_layers})
    shutil.copyfile(crops_dir / PREPROCESS_FILE, out_dir / PREPROCESS_FILE)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
