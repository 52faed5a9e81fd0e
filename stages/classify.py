"""DVC stage `classify@<backbone>`: train the pair classifier and score val/test pairs."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import _common
import pandas as pd

from maskface.classify import fit_and_score, save_classifier
from maskface.config import ClassifyConfig, KnnConfig, MlpConfig, classifier_name, load_params, section
from maskface.embed import load_embeddings

CLASSIFIER_CONFIGS = {"knn": KnnConfig, "mlp": MlpConfig}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--pairs-dir", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True, help="folder for val.csv and test.csv")
    parser.add_argument("--model", type=Path, required=True, help="folder for the fitted classifier")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    name = classifier_name(params)
    classifier_config = section(params, CLASSIFIER_CONFIGS[name], name)
    config = section(params, ClassifyConfig, "classify")

    embeddings, index = load_embeddings(args.embeddings)
    val_pairs = pd.read_csv(args.pairs_dir / "val.csv")
    test_pairs = pd.read_csv(args.pairs_dir / "test.csv")
    model, threshold, val, test = fit_and_score(embeddings, index, val_pairs, test_pairs, name, classifier_config, config)
    args.scores.mkdir(parents=True, exist_ok=True)
    val.to_csv(args.scores / "val.csv", index=False, float_format="%.8g")
    test.to_csv(args.scores / "test.csv", index=False, float_format="%.8g")
    save_classifier(model, args.model, {"classifier": name, "settings": asdict(classifier_config), "threshold": threshold})


if __name__ == "__main__":
    _common.run(main)
