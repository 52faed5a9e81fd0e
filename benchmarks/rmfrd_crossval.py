"""Does the recipe's fine-tuning help on people it never saw? Averaged over identity splits.

rmfrd-dev's test split holds 21 identities: one split's trained-vs-untouched difference moves
by +-0.03 with the split alone. This script repeats the pipeline's own chain for several
``split.seed`` values (``split_dataset`` -> ``crop_dataset`` -> ``finetune`` -> cosine
threshold on the val identities with ``classify``'s rule) and scores, for every seed, the
untouched network and each fine-tuning variant on

- that seed's rmfrd-dev test identities (people never trained on, same collection: the
  closest proxy for "other RMFRD identities"),
- lfw-masktheface and orl-sim (collections never trained on; pairs as in generalization.py),
  and with ``--collections`` also lfw-masktheface-lowres (its small, compressed faces).

It reports each row per seed and, per variant and collection, the mean over seeds and the
mean paired difference to the untouched network with its standard error over seeds.

A variant is the params' recipe with some keys replaced, for example
``--variant epochs6:backbones.edgeface.epochs=6``, ``--variant more:backbones.edgeface.lr=1e-4,
backbones.edgeface.train_layers=last_3``; ``recipe`` (the params as they are) always runs.
``--interpolate W`` adds each model's weights moved toward the untouched network (WiSE-FT);
``--mask-direction`` adds each model with the training identities' mean masked-minus-unmasked
embedding projected out of every embedding. ``--soup`` adds, per seed, the uniform average of
every fine-tuned model's weights (a model soup, Wortsman et al. 2022): give variants that
differ only in ``finetune.seed`` for the classic soup of one recipe. A variant that sets
``data.extra_sources`` trains with those collections' people as well (training split only, as
the split stage puts them; anyone who is also in a tested collection is left out), for
example ``--variant lfw:'data.extra_sources=["lfw:../shared/datasets/lfw-gray-20"]'``.

Usage:
    MASKFACE_WEIGHTS_DIR=../shared/weights python benchmarks/rmfrd_crossval.py \
        --backbone edgeface --seeds 0 1 2 3 4 --work /tmp/maskface-crossval
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalization as gen  # noqa: E402
import recipe_variants as rv  # noqa: E402
from _common import datasets_root, machine  # noqa: E402

from maskface.config import (  # noqa: E402
    ArcFaceConfig, ClassifyConfig, CropConfig, EmbedConfig, FinetuneConfig, SplitConfig, backbone_config, load_params, section,
)
from maskface.data.datasets import DataConfig, build_manifest  # noqa: E402
from maskface.data.split import split_dataset  # noqa: E402
from maskface.evaluation.classify import threshold_pairs  # noqa: E402
from maskface.evaluation.metrics import choose_threshold  # noqa: E402
from maskface.face.crop import IMAGES_FILE, crop_dataset  # noqa: E402
from maskface.face.geometry import landmark_table  # noqa: E402
from maskface.inference.embed import embed_array, load_model  # noqa: E402
from maskface.models.backbones import get_spec  # noqa: E402
from maskface.tables import write_csv  # noqa: E402
from maskface.training.train import finetune, pair_scores, soup_state  # noqa: E402
from maskface.training.train import mask_direction as training_mask_direction, with_both_sides  # noqa: E402

logger = logging.getLogger("rmfrd_crossval")

RECIPE = "recipe"
UNTOUCHED = "untouched"
SOUP = "soup"


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``name:dotted.key=value,other.key=value`` -> (name, {dotted key: YAML value})."""
    name, _, assignments = text.partition(":")
    if not name or not assignments:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:key=value[,key=value]")
    changes = {}
    for assignment in assignments.split(","):
        key, equals, value = assignment.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {assignment!r} is not key=value")
        # As params.yaml would read it; the configs take `1e-4` (text to YAML 1.1) as the number.
        changes[key.strip()] = yaml.safe_load(value)
    return name, changes


def with_changes(params: dict, changes: dict[str, object]) -> dict:
    """A copy of ``params`` with each dotted key set (:func:`checked` then validates the result)."""
    changed = copy.deepcopy(params)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = changed
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"{dotted}: {part!r} is not a section of the params (valid here: {', '.join(map(str, node))})")
            node = node[part]
        node[leaf] = value
    return changed


def checked(params: dict, backbone: str) -> dict:
    """``params`` after every section this script reads has parsed: a bad key or value fails
    here, naming the valid ones, not after hours of training."""
    backbone_config(params, backbone)
    for cls, name in ((SplitConfig, "split"), (CropConfig, "crop"), (EmbedConfig, "embed"), (ClassifyConfig, "classify"),
                      (ArcFaceConfig, "arcface"), (FinetuneConfig, "finetune")):
        section(params, cls, name)
    return params


def own_threshold(index: pd.DataFrame, embeddings: np.ndarray, classify: ClassifyConfig) -> float:
    """The threshold the classify stage would choose for cosine (its pairs, its rule)."""
    pairs = threshold_pairs(index, classify)
    row_of = {path: row for row, path in enumerate(index["path"])}
    return choose_threshold(pair_scores(embeddings, row_of, pairs), pairs["label"].to_numpy(), classify.threshold_rule)


class Seed:
    """One identity split of rmfrd-dev: its crops, its test identities as a collection.

    With ``extra`` (the manifest of a variant's ``data.extra_sources``), those images join the
    training split only, as the split stage puts them, in crops of their own (``name``); the
    rmfrd-dev identities are split exactly as without them."""

    def __init__(
        self, seed: int, manifest: pd.DataFrame, landmarks: pd.DataFrame, params: dict, backbone: str, work: Path,
        extra: pd.DataFrame | None = None, name: str = "crops",
    ):
        split = section(params, SplitConfig, "split")
        crop = section(params, CropConfig, "crop")
        self.folder = work / f"seed{seed}"
        self.folder.mkdir(parents=True, exist_ok=True)
        if extra is not None:
            manifest = pd.concat([manifest, extra], ignore_index=True)
        # The split stage's rule: every source but the main one trains only.
        train_only = manifest["source"] != "rmfrd"
        self.manifest, pairs = split_dataset(
            manifest, split.ratios, seed, split.by, split.pair_types, split.max_genuine_per_identity, train_only
        )
        self.val_pairs = self.folder / "val.csv"
        write_csv(pairs["val"], self.val_pairs)
        spec = get_spec(backbone)
        self.crops = self.folder / name
        self.index = crop_dataset(self.manifest, crop, spec.input_size, self.crops, landmarks, spec.template)
        self.images = np.load(self.crops / IMAGES_FILE, mmap_mode="r")
        test = self.index[self.index["split"] == "test"]
        self.test_rows = test.index.to_numpy()
        test = test.reset_index(drop=True).assign(derived_from="", masked=lambda t: t["masked"].astype(bool))
        self.test = gen.Collection(f"rmfrd-test (seed {seed})", test, gen.build_pairs(test), {})

    def embeddings(self, model, embed: EmbedConfig) -> np.ndarray:
        return embed_array(model, self.images, batch_size=64, progress=False, flip=embed.flip, shift=embed.shift)


def mask_direction(index: pd.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """Mean masked minus mean unmasked embedding of the training identities (as fine-tuning's)."""
    masked = index["masked"].astype(bool).to_numpy()
    train = (index["split"] == "train").to_numpy() & with_both_sides(index["identity"].to_numpy(), masked)
    return training_mask_direction(embeddings[train], masked[train])


def extra_sources(params: dict) -> tuple[str, ...]:
    return tuple((params.get("data") or {}).get("extra_sources") or ())


def extra_training_images(
    sources: tuple[str, ...], rmfrd_root: Path, others: list[gen.Collection], params: dict, work: Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images of ``data.extra_sources`` as the split stage reads them, less every person
    who is also in a collection this script tests on (five of lfw-gray-20's people are in
    lfw-masktheface): trained on, they would be no test of people never seen. Returns the
    images and their landmarks (detected once, cached in ``work``)."""
    combined = build_manifest(DataConfig(source="rmfrd", root=str(rmfrd_root), extra_sources=sources, workers=2)).manifest
    extra = combined[combined["source"] != "rmfrd"]
    tested = {str(identity).split("/", 1)[-1] for collection in others for identity in collection.manifest["identity"]}
    seen = extra["identity"].map(lambda identity: str(identity).split("/", 1)[-1] in tested)
    logger.info("extra sources %s: %d images of %d people; left out, also tested on: %s", ", ".join(sources),
                int((~seen).sum()), extra.loc[~seen, "identity"].nunique(),
                ", ".join(sorted(extra.loc[seen, "identity"].unique())) or "nobody")
    extra = extra[~seen].reset_index(drop=True)
    landmarks = landmark_table(extra["path"], section(params, CropConfig, "crop"), cache_path=work / "landmark-cache.csv")
    return extra, landmarks


def score_model(
    name: str, seed: int, model, current: Seed, others: list[gen.Collection], params: dict, work: Path,
    with_mask_direction_removed: bool = False,
) -> list[dict]:
    """Rows for this seed's held-out identities and the other collections. With
    ``with_mask_direction_removed`` the same embeddings are scored a second time, each first
    losing its component along :func:`mask_direction` (renormalised), thresholds included."""
    embed = section(params, EmbedConfig, "embed")
    classify = section(params, ClassifyConfig, "classify")
    embeddings = current.embeddings(model, embed)
    settings = json.loads((current.crops / "preprocess.json").read_text())
    other_embeddings = [
        embed_array(model, gen.crops_for(collection, settings["crop"], int(settings["input_size"]), work),
                    batch_size=64, progress=False, flip=embed.flip, shift=embed.shift)
        for collection in others
    ]
    views = [(name, lambda vectors: vectors)]
    if with_mask_direction_removed:
        direction = mask_direction(current.index, embeddings)
        views.append((f"{name} without mask direction", lambda vectors: rv.without_direction(vectors, direction)))
    rows = []
    for variant, project in views:
        seed_embeddings = project(embeddings)
        threshold = own_threshold(current.index, seed_embeddings, classify)
        scored = [(current.test, seed_embeddings[current.test_rows], "rmfrd-test")]
        scored += [(collection, project(vectors), collection.name) for collection, vectors in zip(others, other_embeddings)]
        for collection, vectors, label in scored:
            row = {"variant": variant, "seed": seed, "collection": label, **gen.evaluate(collection, vectors, threshold, 0), "threshold": threshold}
            logger.info("%s seed %d %s: 10-fold %.3f, AUC %.3f, own threshold %.3f", variant, seed, label,
                        row["kfold_accuracy"], row["auc"], row["own_threshold_accuracy"])
            rows.append(row)
    return rows


def interpolated_state(trained, untouched, weight: float) -> dict:
    """Weight-space interpolation (WiSE-FT, Wortsman et al. 2022): ``weight`` x fine-tuned +
    (1 - ``weight``) x untouched, tensor by tensor; both unfolded, same architecture."""
    start = untouched.state_dict()
    return {
        key: weight * value + (1 - weight) * start[key] if value.is_floating_point() else value
        for key, value in trained.state_dict().items()
    }


def souped(models: list):
    """A uniform model soup: the mean of ``models``' weights, tensor by tensor (all unfolded,
    same architecture, fine-tuned from the same start), folded for inference."""
    mixed = copy.deepcopy(models[0])
    mixed.load_state_dict(soup_state([model.state_dict() for model in models]))
    return mixed.eval().fold_batch_norm()


def interpolated(trained, untouched, weight: float):
    """An inference copy of the untouched network holding :func:`interpolated_state`."""
    mixed = copy.deepcopy(untouched)
    mixed.load_state_dict(interpolated_state(trained, untouched, weight))
    return mixed.eval().fold_batch_norm()


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant and collection: means over seeds, and the paired difference to untouched."""
    metrics = ["kfold_accuracy", "auc", "own_threshold_accuracy", "gap"]
    base = table[table["variant"] == UNTOUCHED].set_index(["seed", "collection"])[metrics]
    rows = []
    for (variant, collection), group in table.groupby(["variant", "collection"], sort=False):
        group = group.set_index(["seed", "collection"])
        row = {"variant": variant, "collection": collection, "seeds": len(group)}
        for metric in metrics:
            row[metric] = group[metric].mean()
        if variant != UNTOUCHED:
            for metric in ("kfold_accuracy", "auc"):
                difference = group[metric] - base.loc[group.index, metric]
                row[f"{metric}_vs_untouched"] = difference.mean()
                row[f"{metric}_vs_untouched_se"] = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--datasets", type=Path, default=None, help="folder with rmfrd-dev/, lfw-masktheface/, orl/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-crossval"))
    parser.add_argument("--backbone", default="edgeface")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME:key=value[,key=value]")
    parser.add_argument("--collections", nargs="*", default=["lfw-masktheface", "orl-sim"], help="other collections (generalization.py's)")
    parser.add_argument(
        "--interpolate", type=float, nargs="*", default=[], metavar="W",
        help="also score each variant's weights interpolated toward the untouched network (W x trained + (1 - W) x untouched)",
    )
    parser.add_argument(
        "--mask-direction", action="store_true",
        help="also score every model with the training identities' mask direction projected out (recipe_variants.py's variant)",
    )
    parser.add_argument(
        "--soup", action="store_true",
        help="also score, per seed, the uniform average of the recipe's and every variant's fine-tuned weights (a model soup)",
    )
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    datasets = args.datasets or datasets_root()
    params = load_params(args.params)
    variants = {
        RECIPE: checked(params, args.backbone),
        **{name: checked(with_changes(params, changes), args.backbone) for name, changes in args.variant},
    }

    manifest = build_manifest(DataConfig(source="rmfrd", root=str(datasets / "rmfrd-dev"), workers=2)).manifest
    args.work.mkdir(parents=True, exist_ok=True)
    # The split stage's own detection and cache: each photo is detected once across runs.
    landmarks = landmark_table(manifest["path"], section(params, CropConfig, "crop"), cache_path=args.work / "landmark-cache.csv")
    roots = gen.collection_roots(datasets)
    others = [gen.load_collection(name, roots[name], args.work) for name in args.collections]
    untouched = gen.pretrained_models([args.backbone])[args.backbone]

    extras = {
        sources: extra_training_images(sources, datasets / "rmfrd-dev", others, variant, args.work)
        for variant in variants.values() if (sources := extra_sources(variant))
    }

    rows = []
    for seed in args.seeds:
        current = Seed(seed, manifest, landmarks, params, args.backbone, args.work)
        rows += score_model(UNTOUCHED, seed, untouched, current, others, params, args.work, args.mask_direction)
        for name, variant in variants.items():
            out = current.folder / name
            trained_on = current
            if sources := extra_sources(variant):
                # Trained with more people; scored, and its threshold chosen, as every other row.
                images, marks = extras[sources]
                trained_on = Seed(seed, manifest, pd.concat([landmarks, marks], ignore_index=True), params, args.backbone,
                                  args.work, extra=images, name=f"crops-{name}")
                held_out = [table.loc[table["split"] != "train", "path"].tolist() for table in (current.manifest, trained_on.manifest)]
                if held_out[0] != held_out[1]:
                    raise RuntimeError(f"{name}: data.extra_sources moved rmfrd-dev's val or test identities")
            finetune(
                args.backbone, trained_on.crops, trained_on.val_pairs, out / "model", out / "live",
                backbone_config(variant, args.backbone), section(variant, ArcFaceConfig, "arcface"),
                section(variant, FinetuneConfig, "finetune"), progress=False,
            )
            rows += score_model(name, seed, load_model(out / "model"), current, others, variant, args.work, args.mask_direction)
            for weight in args.interpolate:
                model = interpolated(load_model(out / "model", fold_batch_norm=False), untouched, weight)
                rows += score_model(f"{name} x{weight:g}", seed, model, current, others, variant, args.work)
        if args.soup:
            ingredients = [load_model(current.folder / name / "model", fold_batch_norm=False) for name in variants]
            rows += score_model(SOUP, seed, souped(ingredients), current, others, variants[RECIPE], args.work)
        table = pd.DataFrame(rows)
        write_csv(table, args.work / "results.csv")

    summary = summarise(table)
    write_csv(summary, args.work / "summary.csv")
    text = summary.to_markdown(index=False, floatfmt=".3f") if gen._has_tabulate() else summary.to_string(index=False)
    footer = f"{machine()}; {len(args.seeds)} seeds; {time.perf_counter() - started:.0f} s"
    (args.work / "summary.md").write_text(f"{text}\n\n{footer}\n")
    print(text)
    print(footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
