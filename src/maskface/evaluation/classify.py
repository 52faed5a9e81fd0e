"""Classifiers over embeddings: is (a, b) the same person, and who is this face?

Verification (every split mode). ``cosine``, the field's standard, accepts a pair when
the cosine similarity of its two unit embeddings reaches a threshold; the learned
classifiers (``knn``, ``mlp``, ``lda``) see symmetric pair features ``[|a - b|, a * b]``,
so swapping the two images never changes the decision, and output the probability of
"same person". Every classifier's threshold is chosen on pairs of the validation
identities (``classify.threshold_rule``, ``classify.threshold_pair_types``). The
cosine similarity of every pair is kept beside the classifier's score as the baseline.

Closed-set identification (``split.by: image``: test identities also have training
images): the same classifier, trained on the training images' embeddings, ranks every
training identity for each test image (``cosine``: the best cosine similarity to any of
an identity's training images).

The model folder (``classifier.json`` and, for learned classifiers, ``classifier.npz``)
holds everything inference needs: :func:`score_pairs` with the pipeline
:func:`load_classifier` rebuilds (None for cosine) scores a pair from two embeddings
exactly as the val and test pairs were. ``classifier.npz`` holds plain arrays and a JSON
description (estimator class names from a fixed allow-list, their parameters), read with
``allow_pickle=False``: loading a classifier from someone else never runs code from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler

from maskface.artifacts import CLASSIFIER_META_FILE
from maskface.evaluation.classifiers import registered as _registered  # fit_and_score names its result `registered`
from maskface.config import PAIR_TYPES, ClassifyConfig
from maskface.errors import InputError
from maskface.evaluation.metrics import choose_threshold, identification_ranks
from maskface.data.split import make_pairs

logger = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.npz"
# 2: the fitted pipeline as arrays + JSON (classifier.npz); 1 was a pickle (classifier.joblib).
META_FORMAT = 2
PAIR_FEATURES = "abs_diff_product"  # [|a - b|, a * b], see pair_features
TOP_K = 5


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, E) x (N, E) -> (N, 2E): [|a - b|, a * b], symmetric in a and b."""
    return np.concatenate([np.abs(a - b), a * b], axis=1)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, E) x (N, E) unit rows -> (N,) cosine similarity in [-1, 1]."""
    return np.einsum("ij,ij->i", a, b)


def score_pairs(model: Optional[Pipeline], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) pair scores, higher = more likely the same person.

    ``model`` None (cosine): the cosine similarity. Otherwise the fitted pipeline's
    probability of "same" over the symmetric pair features.
    """
    if model is None:
        return cosine_similarity(a, b)
    return model.predict_proba(pair_features(a, b))[:, 1]


def _pair_embeddings(embeddings: np.ndarray, row_of: dict[str, int], pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = (set(pairs["path_a"]) | set(pairs["path_b"])) - set(row_of)
    if missing:
        raise InputError(f"{len(missing)} paired images have no embedding, e.g. {sorted(missing)[0]!r}; rerun crop and embed")
    a = embeddings[pairs["path_a"].map(row_of).to_numpy()]
    b = embeddings[pairs["path_b"].map(row_of).to_numpy()]
    return a, b


def _pairs_within(index: pd.DataFrame, split: str, pair_types, per_identity: int, seed: int) -> pd.DataFrame:
    """Balanced pairs among the identities of one split, impostors drawn across all of them
    (no folds), so that a fold's few identities do not decide which impostors are seen."""
    return make_pairs(index[index["split"] == split], pair_types, per_identity, seed, n_folds=1)


def training_pairs(index: pd.DataFrame, config: ClassifyConfig) -> pd.DataFrame:
    """Balanced pairs of every type among the training identities."""
    return _pairs_within(index, "train", PAIR_TYPES, config.train_pairs_per_identity, config.seed)


def fit_and_score(
    embeddings: np.ndarray,
    index: pd.DataFrame,
    val_pairs: pd.DataFrame,
    test_pairs: pd.DataFrame,
    classifier: str,
    classifier_config,
    config: ClassifyConfig,
) -> tuple[Optional[Pipeline], float, pd.DataFrame, pd.DataFrame]:
    """Train ``classifier`` on training-identity pairs; score val and test pairs.

    Args:
        embeddings: (N, E) float32 unit rows, row i is ``index`` row i.
        index: one row per embedding with ``path``, ``identity``, ``masked``, ``split``.
        val_pairs, test_pairs: pair tables (path_a, path_b, label, ...).
        classifier: a registered name; ``classifier_config`` its params dataclass.

    Returns:
        The fitted pipeline (None for ``cosine``), the threshold chosen on pairs of the
        validation identities (:func:`threshold_pairs`, in score units), and the val/test pair tables with ``score`` (the classifier's
        probability of "same", or the cosine for ``cosine``) and ``cosine`` columns.
    """
    registered = _registered(classifier)
    row_of = {path: row for row, path in enumerate(index["path"])}
    model: Optional[Pipeline] = None
    if classifier != "cosine":
        train_pairs = training_pairs(index, config)
        if train_pairs.empty or train_pairs["label"].nunique() < 2:
            raise InputError("the training identities give only one kind of pair; more identities or images are needed")
        a, b = _pair_embeddings(embeddings, row_of, train_pairs)
        model = registered.builder(classifier_config, len(train_pairs))
        model.fit(pair_features(a, b), train_pairs["label"].to_numpy())
        logger.info("%s trained on %d pairs (%d genuine)", classifier, len(train_pairs), int(train_pairs["label"].sum()))

    scored = []
    for pairs in (val_pairs, test_pairs):
        a, b = _pair_embeddings(embeddings, row_of, pairs)
        table = pairs.copy()
        table["score"] = score_pairs(model, a, b)
        table["cosine"] = cosine_similarity(a, b)
        scored.append(table)
    threshold_table = threshold_pairs(index, config)
    if threshold_table["label"].nunique() < 2:
        logger.warning(
            "the validation identities give no %s pairs of both kinds; the threshold is chosen on the val pairs",
            " / ".join(config.threshold_pair_types),
        )
        threshold_table = scored[0]
    else:
        a, b = _pair_embeddings(embeddings, row_of, threshold_table)
        threshold_table = threshold_table.assign(score=score_pairs(model, a, b))
    threshold = choose_threshold(threshold_table["score"].to_numpy(), threshold_table["label"].to_numpy(), config.threshold_rule)
    logger.info(
        "threshold %.4g (%s) on %d pairs of the validation identities (%d genuine)",
        threshold, config.threshold_rule, len(threshold_table), int(threshold_table["label"].sum()),
    )
    return model, threshold, scored[0], scored[1]


def threshold_pairs(index: pd.DataFrame, config: ClassifyConfig) -> pd.DataFrame:
    """Balanced pairs of ``config.threshold_pair_types`` among the validation identities."""
    return _pairs_within(index, "val", config.threshold_pair_types, config.threshold_pairs_per_identity, config.seed)


# --------------------------------------------------------------------------- identification


def _identity_model(classifier: str, classifier_config, n_train: int) -> Optional[Pipeline]:
    model = _registered(classifier).builder(classifier_config, n_train)
    if model is not None:
        # Early stopping holds out a stratified slice, impossible with one image per identity.
        model.set_params(**{key: False for key in model.get_params() if key.endswith("__early_stopping")})
    return model


def identify(
    embeddings: np.ndarray,
    index: pd.DataFrame,
    classifier: str,
    classifier_config,
    top_k: int = TOP_K,
) -> pd.DataFrame:
    """Closed-set identification of every test image among the training identities.

    The classifier is fitted on the training images' embeddings (labels = identities)
    and ranks all training identities for each test image. ``cosine`` scores an
    identity by its best cosine similarity to any of that identity's training images.

    Returns:
        One row per test image: ``path``, ``identity``, ``masked``, ``rank`` (int, 1 =
        the true identity ranked first, ties counted against it; 0 when the identity
        has no training image: a miss at every rank), ``predicted`` (top-1 identity), ``score``
        (its score) and ``top_<k>`` (the k best identities joined by ``|``).
    """
    train = index["split"].to_numpy() == "train"
    test = index["split"].to_numpy() == "test"
    if not test.any():
        raise InputError("identification needs test images; the index has none (check split.ratios)")
    identities = np.array(sorted(index.loc[train, "identity"].unique()))
    if identities.size < 2:
        raise InputError(f"identification needs at least 2 training identities; found {identities.size}")
    column_of = {identity: k for k, identity in enumerate(identities)}
    train_x, test_x = embeddings[train], embeddings[test]
    train_y = index.loc[train, "identity"].map(column_of).to_numpy()

    model = _identity_model(classifier, classifier_config, int(train.sum()))
    if model is None:
        similarity = test_x @ train_x.T
        class_scores = np.full((test_x.shape[0], identities.size), -np.inf)
        for column in range(identities.size):
            class_scores[:, column] = similarity[:, train_y == column].max(axis=1)
    else:
        model.fit(train_x, train_y)
        probabilities = model.predict_proba(test_x)
        # predict_proba's columns follow model.classes_, which are the identity columns present.
        class_scores = np.zeros((test_x.shape[0], identities.size))
        class_scores[:, model.classes_] = probabilities
    truth = index.loc[test, "identity"].map(column_of).fillna(-1).astype(np.int64).to_numpy()
    ranks = identification_ranks(class_scores, truth)
    k = min(int(top_k), identities.size)
    # Stable sort on the negated scores: among tied identities the alphabetically first leads.
    order = np.argsort(-class_scores, axis=1, kind="stable")[:, :k]
    table = index.loc[test, ["path", "identity", "masked"]].reset_index(drop=True)
    table["rank"] = ranks
    table["predicted"] = identities[order[:, 0]]
    table["score"] = class_scores[np.arange(len(table)), order[:, 0]]
    table[f"top_{k}"] = ["|".join(identities[row]) for row in order]
    logger.info(
        "identification (%s): %d test images, %d identities, rank-1 %.4f",
        classifier, len(table), identities.size, float(np.mean(ranks == 1)),
    )
    return table


# --------------------------------------------------------------------------- model folder


def classifier_metadata(
    classifier: str,
    classifier_config,
    threshold: float,
    embedding_size: int,
    identification: bool = False,
) -> dict:
    """What ``classifier.json`` says: which classifier and how to score a pair from two embeddings."""
    learned = classifier != "cosine"
    return {
        "format": META_FORMAT,
        "classifier": classifier,
        "settings": classifier_config.model_dump() if classifier_config is not None else {},
        "threshold": float(threshold),
        "embedding_size": int(embedding_size),
        "score": "probability" if learned else "cosine",
        "pair_features": PAIR_FEATURES if learned else None,
        "model_file": CLASSIFIER_FILE if learned else None,
        "decision": "same person when score >= threshold",
        "how_to_score": (
            f"predict_proba(pair_features(a, b))[:, 1] of the pipeline in {CLASSIFIER_FILE} (maskface.evaluation.classify.read_classifier_file), pair_features = "
            "[|a - b|, a * b] of the unit embeddings a, b (N, E)"
            if learned
            else "cosine similarity sum(a * b) of the unit embeddings a, b (N, E)"
        ),
        "identification": bool(identification),
    }


# --------------------------------------------------------------------------- serialisation

SERIAL_FORMAT = "maskface-classifier"
SERIAL_VERSION = 1
SPEC_KEY = "spec"
# The only estimators a classifier.npz may name, with the fitted attributes that predict,
# predict_proba and decision_function read. Attributes are arrays, lists of arrays or
# JSON scalars; nothing else is stored and nothing else is restored.
_FITTED_STATE: dict[str, tuple[type, tuple[str, ...]]] = {
    "StandardScaler": (StandardScaler, ("mean_", "scale_", "var_", "n_samples_seen_", "n_features_in_")),
    "LinearDiscriminantAnalysis": (
        LinearDiscriminantAnalysis,
        ("classes_", "coef_", "intercept_", "means_", "priors_", "covariance_", "n_features_in_"),
    ),
    "MLPClassifier": (
        MLPClassifier,
        ("classes_", "coefs_", "intercepts_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_", "n_iter_"),
    ),
    # k-NN's fitted state is its training set (and the search tree built from it): it is
    # stored as the training features and labels and refitted, which rebuilds the same tree.
    "KNeighborsClassifier": (KNeighborsClassifier, ()),
}


class ClassifierFileError(InputError):
    """A classifier.npz cannot be read or names something outside the allow-list (one line)."""


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def classifier_state(model: Pipeline) -> tuple[dict, dict[str, np.ndarray]]:
    """A fitted pipeline -> (JSON-ready description, named arrays); see :func:`classifier_from_state`."""
    steps, arrays = [], {}
    for position, (name, estimator) in enumerate(model.steps):
        kind = type(estimator).__name__
        if kind not in _FITTED_STATE:
            raise TypeError(f"cannot store a {kind}; storable: {', '.join(_FITTED_STATE)}")
        params = {key: _json_value(value) for key, value in estimator.get_params(deep=False).items()}
        json.dumps(params)  # a parameter that is not plain data (a callable metric) cannot be stored
        step = {"name": name, "class": kind, "params": params, "scalars": {}, "arrays": [], "array_lists": {}}
        attributes = _FITTED_STATE[kind][1]
        if kind == "KNeighborsClassifier":
            fit_x = estimator._fit_X
            arrays[f"{position}/fit_X"] = np.asarray(fit_x)
            arrays[f"{position}/fit_y"] = np.asarray(estimator.classes_)[estimator._y]
            step["arrays"] = ["fit_X", "fit_y"]
        for attribute in attributes:
            value = getattr(estimator, attribute)
            if isinstance(value, np.ndarray):
                arrays[f"{position}/{attribute}"] = value
                step["arrays"].append(attribute)
            elif isinstance(value, list):
                for k, item in enumerate(value):
                    arrays[f"{position}/{attribute}/{k}"] = np.asarray(item)
                step["array_lists"][attribute] = len(value)
            else:
                step["scalars"][attribute] = _json_value(value)
        steps.append(step)
    for key, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"{key} is an object array, which only a pickle could store")
    return {"format": SERIAL_FORMAT, "version": SERIAL_VERSION, "steps": steps}, arrays


def _params(raw: Mapping, where: str) -> dict:
    if not isinstance(raw, Mapping):
        raise ClassifierFileError(f"{where}: params must be an object")
    # JSON has no tuples; scikit-learn's tuple parameters (hidden_layer_sizes) come back as lists.
    return {str(key): tuple(value) if isinstance(value, list) else value for key, value in raw.items()}


def classifier_from_state(spec: Mapping, arrays: Mapping[str, np.ndarray], where: str = "classifier") -> Pipeline:
    """Rebuild the pipeline :func:`classifier_state` described; only allow-listed estimators."""
    if not isinstance(spec, Mapping) or spec.get("format") != SERIAL_FORMAT:
        raise ClassifierFileError(f"{where}: not a maskface classifier (format {spec.get('format') if isinstance(spec, Mapping) else spec!r})")
    if spec.get("version") != SERIAL_VERSION:
        raise ClassifierFileError(f"{where}: classifier version {spec.get('version')!r} is unknown; this maskface reads {SERIAL_VERSION}")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ClassifierFileError(f"{where}: lists no estimator steps")
    built = []
    for position, step in enumerate(steps):
        kind = step.get("class") if isinstance(step, Mapping) else None
        if kind not in _FITTED_STATE:
            raise ClassifierFileError(f"{where}: step {position} is {kind!r}, which is not allowed; allowed: {', '.join(_FITTED_STATE)}")
        cls, attributes = _FITTED_STATE[kind]

        def array(name: str) -> np.ndarray:
            key = f"{position}/{name}"
            if key not in arrays:
                raise ClassifierFileError(f"{where}: lacks the array {key!r}")
            return arrays[key]

        try:
            estimator = cls(**_params(step.get("params", {}), where))
            estimator._validate_params()  # scikit-learn's own check of every parameter value
        except (TypeError, ValueError) as error:
            raise ClassifierFileError(f"{where}: {kind} parameters are invalid: {' '.join(str(error).split())}") from None
        if kind == "KNeighborsClassifier":
            try:
                estimator.fit(array("fit_X"), array("fit_y"))
            except (TypeError, ValueError) as error:
                raise ClassifierFileError(f"{where}: the k-NN training set is unusable: {' '.join(str(error).split())}") from None
        scalars, lists = step.get("scalars", {}), step.get("array_lists", {})
        if not isinstance(scalars, Mapping) or not isinstance(lists, Mapping):
            raise ClassifierFileError(f"{where}: step {position} ({kind}) has malformed scalars or array lists")
        for attribute in attributes:
            if attribute in scalars:
                value = scalars[attribute]
                if not isinstance(value, (int, float, str)):
                    raise ClassifierFileError(f"{where}: {kind}.{attribute} must be a number or a string")
            elif attribute in lists:
                count = lists[attribute]
                if not isinstance(count, int) or not 0 <= count <= 64:
                    raise ClassifierFileError(f"{where}: {kind}.{attribute} lists {count!r} arrays; valid: 0 to 64")
                value = [array(f"{attribute}/{k}") for k in range(count)]
            else:
                value = array(attribute)
            setattr(estimator, attribute, value)
        if kind == "MLPClassifier":
            # predict() maps output columns back to labels through this; it is derived, not stored.
            estimator._label_binarizer = LabelBinarizer().fit(estimator.classes_)
        built.append((str(step.get("name", kind.lower())), estimator))
    try:
        return Pipeline(built)
    except (TypeError, ValueError) as error:  # e.g. two steps with the same name
        raise ClassifierFileError(f"{where}: the steps do not form a pipeline: {' '.join(str(error).split())}") from None


def write_classifier_file(model: Pipeline, path: Path) -> None:
    spec, arrays = classifier_state(model)
    with open(path, "wb") as handle:
        np.savez(handle, **{SPEC_KEY: np.array(json.dumps(spec, sort_keys=True))}, **arrays)


def read_classifier_file(path: Path) -> Pipeline:
    """Load a classifier.npz without unpickling anything (``allow_pickle=False``).

    Raises :class:`ClassifierFileError` (one line naming the file) for a file that is not a
    maskface classifier, holds object arrays (pickles) or names an estimator outside the
    allow-list.
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # numpy refuses object (pickled) arrays with a ValueError here, before unpickling anything.
        raise ClassifierFileError(f"{path}: not a readable classifier file: {' '.join(str(error).split())}") from None
    if SPEC_KEY not in arrays or arrays[SPEC_KEY].dtype.kind != "U":
        raise ClassifierFileError(f"{path}: no classifier description ({SPEC_KEY!r}); not a maskface classifier file")
    try:
        spec = json.loads(str(arrays.pop(SPEC_KEY)))
    except json.JSONDecodeError as error:
        raise ClassifierFileError(f"{path}: classifier description is not JSON: {error}") from None
    return classifier_from_state(spec, arrays, str(path))


def save_classifier(model: Optional[Pipeline], out_dir: Path, meta: dict) -> None:
    """Write ``classifier.json`` (``meta``) and, for a learned classifier, ``classifier.npz``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # classifier.json always names the format and file written beside it, whatever the caller passed.
    meta = {**meta, "format": META_FORMAT, "model_file": CLASSIFIER_FILE if model is not None else None}
    model_path = out_dir / CLASSIFIER_FILE
    # A pickle left by an older maskface is never read again; do not leave it to look current.
    (out_dir / "classifier.joblib").unlink(missing_ok=True)
    if model is not None:
        write_classifier_file(model, model_path)
    elif model_path.exists():
        # A stale learned model next to a cosine classifier.json would contradict it.
        model_path.unlink()
    (out_dir / CLASSIFIER_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
