"""Pair classifiers over embeddings: is (a, b) the same person?

Learned classifiers see symmetric pair features (|a - b| and a * b), so swapping the two
images never changes the decision. The cosine similarity of every pair is kept beside
the classifier's score as the field's baseline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from maskface.config import PAIR_TYPES, ClassifyConfig, KnnConfig, MlpConfig
from maskface.metrics import choose_threshold
from maskface.split import make_pairs

logger = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.joblib"
CLASSIFIER_META_FILE = "classifier.json"

_BUILDERS: dict[str, Callable[..., Pipeline]] = {}


def register_classifier(name: str):
    def decorate(builder):
        _BUILDERS[name] = builder
        return builder

    return decorate


@register_classifier("knn")
def _knn(config: KnnConfig, n_train: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(),
        KNeighborsClassifier(n_neighbors=min(config.n_neighbors, n_train), weights=config.weights),
    )


@register_classifier("mlp")
def _mlp(config: MlpConfig, n_train: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=config.hidden_layer_sizes,
            alpha=config.alpha,
            max_iter=config.max_iter,
            random_state=config.seed,
            early_stopping=n_train >= 100,
        ),
    )


def available_classifiers() -> list[str]:
    return list(_BUILDERS)


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, E) x (N, E) -> (N, 2E): [|a - b|, a * b], symmetric in a and b."""
    return np.concatenate([np.abs(a - b), a * b], axis=1)


def _pair_embeddings(embeddings: np.ndarray, row_of: dict[str, int], pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = (set(pairs["path_a"]) | set(pairs["path_b"])) - set(row_of)
    if missing:
        raise ValueError(f"{len(missing)} paired images have no embedding, e.g. {sorted(missing)[0]!r}; rerun crop and embed")
    a = embeddings[pairs["path_a"].map(row_of).to_numpy()]
    b = embeddings[pairs["path_b"].map(row_of).to_numpy()]
    return a, b


def training_pairs(index: pd.DataFrame, config: ClassifyConfig) -> pd.DataFrame:
    """Balanced pairs of every type among the training identities."""
    train = index[index["split"] == "train"]
    return make_pairs(train, PAIR_TYPES, config.train_pairs_per_identity, config.seed)


def fit_and_score(
    embeddings: np.ndarray,
    index: pd.DataFrame,
    val_pairs: pd.DataFrame,
    test_pairs: pd.DataFrame,
    classifier: str,
    classifier_config,
    config: ClassifyConfig,
) -> tuple[Pipeline, float, pd.DataFrame, pd.DataFrame]:
    """Train ``classifier`` on training-identity pairs; score val and test pairs.

    Returns the fitted pipeline, the threshold chosen on val, and the val/test pair tables
    with ``score`` (the classifier's probability of "same") and ``cosine`` columns.
    """
    if classifier not in _BUILDERS:
        raise ValueError(f"classifier {classifier!r} is invalid; valid: {', '.join(_BUILDERS)}")
    row_of = {path: row for row, path in enumerate(index["path"])}
    train_pairs = training_pairs(index, config)
    if train_pairs["label"].nunique() < 2:
        raise ValueError("the training identities give only one kind of pair; more identities or images are needed")
    a, b = _pair_embeddings(embeddings, row_of, train_pairs)
    model = _BUILDERS[classifier](classifier_config, len(train_pairs))
    model.fit(pair_features(a, b), train_pairs["label"].to_numpy())
    logger.info("%s trained on %d pairs (%d genuine)", classifier, len(train_pairs), int(train_pairs["label"].sum()))

    scored = []
    for pairs in (val_pairs, test_pairs):
        a, b = _pair_embeddings(embeddings, row_of, pairs)
        table = pairs.copy()
        table["score"] = model.predict_proba(pair_features(a, b))[:, 1]
        table["cosine"] = np.einsum("ij,ij->i", a, b)
        scored.append(table)
    threshold = choose_threshold(scored[0]["score"].to_numpy(), scored[0]["label"].to_numpy())
    return model, threshold, scored[0], scored[1]


def save_classifier(model: Pipeline, out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out_dir / CLASSIFIER_FILE)
    (out_dir / CLASSIFIER_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
