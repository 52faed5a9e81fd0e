"""DVC stage `classify@<backbone>`: train the classifier, score val/test pairs, identify (closed set)."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.artifacts import CLASSIFIER_META_FILE, IDENTIFICATION_FILE, load_embeddings, read_embed_settings
from maskface.evaluation.classifiers import config_class
from maskface.evaluation.classify import (
    classifier_metadata,
    fit_and_score,
    identify,
    save_classifier,
)
from maskface.config import ClassifyConfig, SplitConfig, classifier_name, load_params, section
from maskface.tables import read_csv, write_csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--pairs-dir", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True, help="folder for val.csv, test.csv (and identification.csv)")
    parser.add_argument("--model", type=Path, required=True, help="folder for the fitted classifier")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    name = classifier_name(params)
    classifier_config = section(params, config_class(name), name)
    config = section(params, ClassifyConfig, "classify")
    # Of the split section only `by` matters here: a closed set (by image) adds identification.
    closed_set = section(params, SplitConfig, "split").by == "image"

    embeddings, index = load_embeddings(args.embeddings)
    val_pairs = read_csv(args.pairs_dir / "val.csv")
    test_pairs = read_csv(args.pairs_dir / "test.csv")
    model, threshold, val, test = fit_and_score(embeddings, index, val_pairs, test_pairs, name, classifier_config, config)
    write_csv(val, args.scores / "val.csv", float_format="%.8g")
    write_csv(test, args.scores / "test.csv", float_format="%.8g")
    if closed_set:
        write_csv(identify(embeddings, index, name, classifier_config), args.scores / IDENTIFICATION_FILE, float_format="%.8g")
    meta = classifier_metadata(name, classifier_config, threshold, embeddings.shape[1], identification=closed_set)
    # How the embeddings were made (flip TTA, the weights the network started from): the
    # threshold holds only for embeddings made the same way, so inference reads it from here.
    meta["embedding"] = read_embed_settings(args.embeddings)
    meta["threshold_choice"] = {
        "rule": config.threshold_rule,
        "pair_types": list(config.threshold_pair_types),
        "identities": "val",
    }
    save_classifier(model, args.model, meta)
    # evaluate reads which classifier made these scores from beside them (no dependency on models/).
    (args.scores / CLASSIFIER_META_FILE).write_text((args.model / CLASSIFIER_META_FILE).read_text())


if __name__ == "__main__":
    _common.run(main)
