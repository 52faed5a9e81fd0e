"""File names and readers of the artifacts one stage hands to the next.

Kept free of torch and scikit-learn on purpose: ``classify`` and ``evaluate`` are the
stages an experiment on the classifier reruns, and importing torch alone costs them
1-2 s of start-up each (benchmarks/incremental.py, figure 3 in benchmarks/README.md).
pandas (through :mod:`maskface.tables`) is imported by the readers and writers that need
it, so that the file names and :func:`file_sha256` cost `maskface embed` nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDINGS_INDEX_FILE = "index.csv"
CLASSIFIER_META_FILE = "classifier.json"
IDENTIFICATION_FILE = "identification.csv"
# Beside the embeddings: how they were made ({"flip": bool, "shift": float, "started_from": ...}).
EMBED_SETTINGS_FILE = "embed.json"


def file_sha256(path: str | Path) -> str:
    """Lowercase hex SHA-256 of a file, read in 1 MiB chunks (weights, model folders, checkpoints)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_embeddings(embeddings: np.ndarray, index: pd.DataFrame, out_dir: Path) -> None:
    """``embeddings.npy`` (N, E) float32 and its row index ``index.csv``."""
    if len(embeddings) != len(index):
        raise ValueError(f"{len(embeddings)} embeddings but {len(index)} index rows for {out_dir}")
    from maskface.tables import write_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float32))
    write_csv(index, out_dir / EMBEDDINGS_INDEX_FILE)


def read_embed_settings(embeddings_dir: Path) -> dict:
    """The embed stage's ``embed.json``; {} for embeddings written before it existed."""
    path = Path(embeddings_dir) / EMBED_SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_embeddings(embeddings_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    from maskface.tables import read_csv

    embeddings_dir = Path(embeddings_dir)
    embeddings = np.load(embeddings_dir / EMBEDDINGS_FILE)
    index = read_csv(embeddings_dir / EMBEDDINGS_INDEX_FILE)
    index["masked"] = index["masked"].astype(str).str.lower().isin(["true", "1"])
    return embeddings, index
