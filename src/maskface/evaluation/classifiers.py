"""The classifier registry: the one place that names the classifiers and says how to build each.

``classifier: <name>`` in params.yaml picks one; its settings are the params section of the
same name, parsed into the registered dataclass from :mod:`maskface.config`. That module reads
the names from here (to accept those sections and to check ``classifier``), and
:mod:`maskface.evaluation.classify` fits and scores what the builders return. Registering a classifier
is all it takes to add one (and its section to the classify stage's params in dvc.yaml).

Light to import on purpose: every stage checks its params through :mod:`maskface.config`,
so scikit-learn is imported by the builders, only when a classifier is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maskface.config import CosineConfig, KnnConfig, LdaConfig, MlpConfig
from maskface.errors import InputError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# A builder returns an unfitted scikit-learn pipeline, or None for a classifier with no
# learned part (cosine: the threshold is the whole model).
Builder = Callable[[Any, int], "Pipeline | None"]


@dataclass(frozen=True)
class Registered:
    builder: Builder
    config_class: type


_REGISTRY: dict[str, Registered] = {}


def register_classifier(name: str, config_class: type):
    """Register ``builder(config, n_train) -> Pipeline | None`` under ``name`` with its params class."""

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = Registered(builder, config_class)
        return builder

    return decorate


def available_classifiers() -> list[str]:
    """Every registered classifier name, in registration order."""
    return list(_REGISTRY)


def registered(classifier: str) -> Registered:
    """The builder and params class of ``classifier``; an unknown name lists the valid ones."""
    if classifier not in _REGISTRY:
        raise InputError(f"classifier {classifier!r} is invalid; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[classifier]


def config_class(classifier: str) -> type:
    """The params dataclass of ``classifier`` (its settings live in the section of that name)."""
    return registered(classifier).config_class


@register_classifier("cosine", CosineConfig)
def _cosine(config: CosineConfig, n_train: int) -> None:
    return None


@register_classifier("knn", KnnConfig)
def _knn(config: KnnConfig, n_train: int) -> Pipeline:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        KNeighborsClassifier(n_neighbors=min(config.n_neighbors, n_train), weights=config.weights),
    )


@register_classifier("mlp", MlpConfig)
def _mlp(config: MlpConfig, n_train: int) -> Pipeline:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

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


@register_classifier("lda", LdaConfig)
def _lda(config: LdaConfig, n_train: int) -> Pipeline:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    shrinkage = "auto" if config.shrinkage is None else config.shrinkage
    return make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage))
