"""Does a trained model beat the untouched pretrained network on collections it never saw?

Masked-vs-unmasked verification, cosine similarity, on three kinds of held-out data:

- ``rmfrd-test``: the test identities of rmfrd-dev under the pipeline's own identity split
  (``split.ratios`` 0.7/0.1/0.2, seed 0): people the model never trained on, same collection;
- ``lfw-masktheface``: LFW in colour with masks from another simulator (MaskTheFace), other
  people, cameras and framing; a masked copy is never paired with its own source photo;
- ``orl-sim``: ORL faces with masks drawn by ``maskface simulate-masks``,
  likewise never paired with their source;
- ``lfw-masktheface-lowres``: the same photos as ``lfw-masktheface`` shrunk to a third of
  their side (a face about 40 px high) and saved as JPEG at quality 40, the small,
  compressed faces of video stills and CCTV (not among the defaults: ``--collections``).

Pairs are built independently of the pipeline (every genuine masked/unmasked pair and as many
impostors, LFW-style person-disjoint folds: identities are dealt to 10 folds and impostors are
drawn within a fold), so that the numbers do not inherit a pipeline bug. Each row reports
10-fold accuracy, ROC AUC with a 95 % identity-bootstrap interval and, for trained model
folders, the accuracy at the model's own threshold (chosen on rmfrd-dev val pairs by the
pipeline) with its gap to the 10-fold accuracy.

Models: every registered face network with real weights, untouched (``pretrained``, embedding
= the network's own feature, head = identity; registered fusions such as
``edgeface+mobilefacenet`` included, their members' pretrained networks side by side), and the
model folders of a pipeline run (``--models DIR`` = a ``models/`` folder from ``dvc repro`` on
rmfrd-dev). Preprocessing is the one in each model's preprocess.json; pretrained networks are
shown with alignment to their own template and with the crop modes in ``--modes``.
``--average A+B`` adds a row averaging the cosines of the trained folders A and B, each
fine-tuned alone (score-level fusion outside the pipeline, to compare with a fusion backbone
fine-tuned as one network). ``--views`` scores every network also on test-time variants of
the same aligned crops: ``grey`` (luma in all three channels), ``zoom=S`` (scaled by S about
the frame's centre, grey beyond the crop) and ``band=D`` (grey above D eye distances over the
template's eye line, on top of the crop mode's own greying: the eye band alone); ``plain`` is
the crop as the model's preprocessing makes it.

Landmarks (MTCNN, once per collection) and crops are cached in ``--work``.

Usage:
    # 1. train on rmfrd-dev's training identities (README's real-data recipe) in a scratch copy
    # 2. compare:
    python benchmarks/generalization.py --work /tmp/maskface-generalization --models /tmp/run/models
    # the pretrained networks also with the pipeline's shift test-time augmentation:
    python benchmarks/generalization.py --models /tmp/run/models --modes nose --flip 1 --shift 0 0.04
    # the same networks on greyscale, zoomed and eye-band-only copies of their crops:
    python benchmarks/generalization.py --models /tmp/run/models --backbones edgeface --modes nose --flip 1 \
        --shift 0.04 --views plain grey zoom=1.1 band=0.6 band=0.9
    # a fusion next to its members, and the average of the members trained alone:
    python benchmarks/generalization.py --models /tmp/run/models --modes nose --flip 1 \
        --backbones edgeface mobilefacenet edgeface+mobilefacenet --average edgeface+mobilefacenet
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import datasets_root, machine  # noqa: E402

from maskface.models.backbones import available_backbones, create_model, get_spec  # noqa: E402
from maskface.face.crop import GREY, crop_details  # noqa: E402
from maskface.data.datasets import DataConfig, build_manifest  # noqa: E402
from maskface.inference.embed import embed_array, load_model  # noqa: E402
from maskface.inference.model_folder import read_model_folder  # noqa: E402
from maskface.face.geometry import FaceDetector, detect_table, read_landmark_table, table_landmarks, template_points  # noqa: E402
from maskface.imageio import load_rgb  # noqa: E402
from maskface.evaluation.metrics import AucStatistic, bootstrap_interval, kfold_accuracy, roc_auc  # noqa: E402
from maskface.data.split import assign_splits  # noqa: E402
from maskface.tables import read_csv, write_csv  # noqa: E402
from maskface.models.weights import WeightsError  # noqa: E402

logger = logging.getLogger("generalization")

FOLDS = 10
# A masked copy's source photo: MaskTheFace names `<Name>_NNNN_<mask>.jpg` and
# `crop_<Name>_NNNN_<mask>.jpg` after `<Name>_NNNN.jpg`.
_SOURCE_STEM = re.compile(r"^(?:crop_)?(.+?_\d{4})(?:_.*)?$")


@dataclass
class Collection:
    name: str
    manifest: pd.DataFrame  # path, identity, masked, derived_from ('' = an original photo)
    pairs: pd.DataFrame  # a, b (manifest rows), label, fold, identity_a, identity_b
    landmarks: dict


def source_stem(path: str) -> str:
    match = _SOURCE_STEM.match(Path(path).stem)
    return match.group(1) if match else Path(path).stem


def build_pairs(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every genuine (masked, unmasked) pair not made from the same photo, as many impostors,
    person-disjoint folds."""
    rng = np.random.default_rng(seed)
    masked = manifest[manifest["masked"]]
    unmasked = manifest[~manifest["masked"]]
    identities = sorted(set(masked["identity"]) & set(unmasked["identity"]))
    order = rng.permutation(len(identities))
    fold_of = {identities[k]: int(position % FOLDS) for position, k in enumerate(order)}
    unmasked_by_fold: dict[int, pd.DataFrame] = {
        fold: unmasked[unmasked["identity"].map(fold_of) == fold] for fold in range(FOLDS)
    }
    rows = []
    for identity in identities:
        fold = fold_of[identity]
        others = unmasked_by_fold[fold]
        others = others[others["identity"] != identity]
        own = unmasked[unmasked["identity"] == identity]
        for a, derived in zip(masked.index[masked["identity"] == identity], masked.loc[masked["identity"] == identity, "derived_from"]):
            for b in own.index:
                if derived and derived == source_stem(own.at[b, "path"]):
                    continue  # the masked copy of this very photo: not a recognition test
                rows.append((a, b, True, fold, identity, identity))
                if len(others):
                    c = others.index[rng.integers(len(others))]
                    rows.append((a, c, False, fold, identity, others.at[c, "identity"]))
    return pd.DataFrame(rows, columns=["a", "b", "label", "fold", "identity_a", "identity_b"])


def _orl_with_simulated_masks(root: Path, cache: Path) -> pd.DataFrame:
    """ORL's photos plus a masked copy of each drawn by `maskface simulate-masks` (cached)."""
    from maskface.data.simulate import simulate_masks

    originals = build_manifest(DataConfig(source="folder", root=str(root), workers=2)).manifest
    masked_dir = cache / "masked"
    if not (masked_dir / "manifest.csv").is_file():
        simulate_masks(root, masked_dir, "folder", seed=0, on_no_face="template", overwrite=masked_dir.exists())
    copies = read_csv(masked_dir / "manifest.csv")
    copies["path"] = [str(masked_dir / p) for p in copies["path"]]
    copies["masked"] = True
    # The folder reader names identities "folder/<name>"; simulate-masks keeps the bare folder name.
    originals = originals.assign(identity=originals["identity"].str.removeprefix("folder/"))
    return pd.concat([originals[["path", "identity", "masked"]], copies[["path", "identity", "masked"]]], ignore_index=True)


def _is_tight_crop(path) -> bool:
    """MaskTheFace's 128 x 128 ``crop_*`` copies, beside its full-frame ones."""
    return Path(path).name.startswith("crop_")


LOWRES_FACTOR = 3
LOWRES_QUALITY = 40


def _low_resolution_copy(root: Path, cache: Path) -> Path:
    """A copy of an RMFRD-layout collection's full-frame photos, each shrunk by LOWRES_FACTOR
    (area averaging, as a camera's sensor does) and saved as JPEG at LOWRES_QUALITY (cached)."""
    from PIL import Image

    target = cache / "images"
    done = cache / "images.done"
    if done.is_file():
        return target
    # The collection's own reader decides what is a photo, as for the full-size collection.
    photos = build_manifest(DataConfig(source="rmfrd", root=str(root), workers=2)).manifest["path"]
    for source in map(Path, photos):
        if _is_tight_crop(source):
            continue
        destination = (target / source.relative_to(root)).with_suffix(".jpg")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            image = image.convert("RGB")
            small = image.resize(
                (max(1, round(image.width / LOWRES_FACTOR)), max(1, round(image.height / LOWRES_FACTOR))), Image.Resampling.BOX
            )
        small.save(destination, quality=LOWRES_QUALITY)
    done.write_text(f"factor={LOWRES_FACTOR} quality={LOWRES_QUALITY}\n")
    return target


def collection_roots(datasets: Path) -> dict[str, Path]:
    """Each collection's source folder under ``datasets`` (../shared/datasets' layout)."""
    return {
        "rmfrd-test": datasets / "rmfrd-dev",
        "lfw-masktheface": datasets / "lfw-masktheface",
        "lfw-masktheface-lowres": datasets / "lfw-masktheface",
        "orl-sim": datasets / "orl",
    }


def load_collection(name: str, root: Path, work: Path, ratios_seed: int = 0, with_tight_crops: bool = False) -> Collection:
    cache = work / name
    cache.mkdir(parents=True, exist_ok=True)
    if name == "lfw-masktheface-lowres":
        root = _low_resolution_copy(root, cache)
    if name == "orl-sim":
        manifest = _orl_with_simulated_masks(root, cache)
    else:
        manifest = build_manifest(DataConfig(source="rmfrd", root=str(root), workers=2)).manifest
    if name == "rmfrd-test":
        manifest = manifest[assign_splits(manifest, (0.7, 0.1, 0.2), ratios_seed, "identity") == "test"]
    elif name == "lfw-masktheface" and not with_tight_crops:
        # MaskTheFace's 128 x 128 `crop_*` copies: five per photo, so they would dominate the
        # pairs and the detection time; the full-frame `_surgical` copies test the same thing.
        manifest = manifest[~manifest["path"].map(_is_tight_crop)]
    manifest = manifest.reset_index(drop=True)
    manifest["masked"] = manifest["masked"].astype(bool)
    derived = name != "rmfrd-test"
    manifest["derived_from"] = [source_stem(p) if derived and m else "" for p, m in zip(manifest["path"], manifest["masked"])]
    table_path = cache / "landmarks.csv"
    if table_path.is_file():
        table = read_landmark_table(table_path)
    else:
        detector = FaceDetector(device="cpu", pad=0.3, thresholds=(0.2, 0.3, 0.3), min_face_size=20)
        table = detect_table([str(p) for p in manifest["path"]], detector, desc=f"{name}: landmarks")
        write_csv(table, table_path)
    pairs = build_pairs(manifest)
    logger.info(
        "%s: %d images, %d identities, %d pairs (%d genuine); faces found in %.1f %%",
        name, len(manifest), manifest["identity"].nunique(), len(pairs), int(pairs["label"].sum()),
        100 * table["detected"].astype(bool).mean(),
    )
    return Collection(name, manifest, pairs, table_landmarks(table))


def crops_for(collection: Collection, crop: dict, size: int, work: Path) -> np.ndarray:
    key = "-".join(f"{k}={crop[k]}" for k in sorted(crop)) + f"-{size}"
    path = work / collection.name / f"crops-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    images = np.empty((len(collection.manifest), 3, size, size), dtype=np.uint8)
    for row, (image_path, masked) in enumerate(zip(collection.manifest["path"], collection.manifest["masked"])):
        face = crop_details(load_rgb(image_path), collection.landmarks.get(str(image_path)), crop, size, bool(masked))
        images[row] = face.image.transpose(2, 0, 1)
    np.save(path, images)
    return images


VIEWS = ("plain", "grey", "zoom=<scale>", "band=<eye distances>")


def parse_view(text: str) -> str:
    """A ``--views`` entry, checked: ``plain``, ``grey``, ``zoom=S`` (S > 0), ``band=D``."""
    name, equals, value = text.partition("=")
    if name in ("plain", "grey") and not equals:
        return text
    if name in ("zoom", "band") and equals:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if np.isfinite(number) and (name == "band" or number > 0):
            return text
    raise argparse.ArgumentTypeError(f"--views {text!r} is invalid; valid: {', '.join(VIEWS)}")


def apply_view(images: np.ndarray, view: str, template: str) -> np.ndarray:
    """``images`` (N, 3, S, S) uint8 aligned to ``template`` as :func:`parse_view`'s ``view``
    sees them (a new array; ``plain`` returns ``images`` itself)."""
    name, _, value = view.partition("=")
    if name == "plain":
        return images
    pixels = np.asarray(images)
    if name == "grey":
        # ITU-R 601 luma, as PIL's convert("L"), in every channel.
        luma = np.tensordot(np.array([0.299, 0.587, 0.114]), pixels.astype(np.float64), axes=([0], [1]))
        return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None], 3, axis=1)
    size = pixels.shape[-1]
    if name == "band":
        eyes = template_points(template, size)[:2]
        line = eyes[:, 1].mean() - float(value) * float(np.hypot(*(eyes[1] - eyes[0])))
        banded = np.array(pixels, copy=True)
        # Every row whose centre (y = row index, template_points' convention) lies above the line.
        banded[:, :, : int(np.clip(np.ceil(line), 0, size))] = GREY
        return banded
    scale = float(value)
    batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)) - GREY
    theta = torch.tensor([[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]]).expand(len(batch), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    zoomed = torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (zoomed + GREY).round().clamp(0, 255).to(torch.uint8).numpy()


def pair_scores(pairs: pd.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """The cosine of every pair's two unit embeddings (manifest rows ``a`` and ``b``)."""
    return np.sum(embeddings[pairs["a"].to_numpy()] * embeddings[pairs["b"].to_numpy()], axis=1)


def evaluate(collection: Collection, embeddings: np.ndarray, threshold: float | None, bootstrap: int) -> dict:
    return evaluate_scores(collection, pair_scores(collection.pairs, embeddings), threshold, bootstrap)


def evaluate_scores(collection: Collection, scores: np.ndarray, threshold: float | None, bootstrap: int) -> dict:
    """10-fold accuracy, ROC AUC (with its identity-bootstrap interval when ``bootstrap``) and,
    given a threshold, the accuracy at it and its gap, of one score per pair of the collection."""
    pairs = collection.pairs
    labels = pairs["label"].to_numpy()
    kfold = kfold_accuracy(scores, labels, pairs["fold"].to_numpy())["mean"]
    result = {"kfold_accuracy": kfold, "auc": roc_auc(scores, labels)}
    if bootstrap:
        # Two-way identity bootstrap: both people of every pair are resampled.
        groups = pairs[["identity_a", "identity_b"]].to_numpy()
        interval = bootstrap_interval(scores, labels, groups, AucStatistic(), n_resamples=bootstrap)
        result["auc_low"], result["auc_high"] = interval["low"], interval["high"]
    if threshold is not None:
        result["own_threshold_accuracy"] = float(np.mean((scores >= threshold) == labels))
        result["gap"] = result["own_threshold_accuracy"] - kfold
    return result


def pretrained_models(names: list[str]) -> dict:
    models = {}
    for name in names:
        spec = get_spec(name)
        try:
            model = create_model(name, weights=spec.default_weights, embedding_size=spec.feature_dim)
        except WeightsError as error:
            logger.warning("%s: skipped, %s", name, error)
            continue
        model.init_head_identity()
        models[name] = model.eval()
    return models


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=None, help="folder with rmfrd-dev/ and lfw-masktheface/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-generalization"))
    parser.add_argument("--models", type=Path, default=None, help="a pipeline run's models/ folder (trained on rmfrd-dev)")
    parser.add_argument("--backbones", nargs="*", default=None, help="pretrained networks (default: those with real weights)")
    parser.add_argument("--modes", nargs="*", default=["none", "nose"], help="crop modes for the pretrained networks")
    parser.add_argument("--flip", nargs="*", type=int, default=[0, 1], help="flip TTA off (0) and/or on (1)")
    parser.add_argument(
        "--shift", nargs="*", type=float, default=[0.0],
        help="shift TTA steps for the pretrained networks (0 = off; trained model folders use the one they recorded)",
    )
    parser.add_argument("--collections", nargs="*", default=["rmfrd-test", "lfw-masktheface", "orl-sim"])
    parser.add_argument(
        "--views", nargs="+", type=parse_view, default=["plain"], metavar="VIEW",
        help=f"test-time variants of every crop: {', '.join(VIEWS)} (--average uses the first)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--tight-crops", action="store_true", help="also use lfw-masktheface's 128 px crop_* copies")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--average", nargs="*", default=[], metavar="A+B",
        help="also score the mean cosine of these trained model folders (in --models), each trained alone",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = args.datasets or datasets_root()
    roots = collection_roots(datasets)
    started = time.perf_counter()
    collections = [load_collection(name, roots[name], args.work, with_tight_crops=args.tight_crops) for name in args.collections]
    rows = []

    candidates = [name for name in (args.backbones or available_backbones()) if get_spec(name).template == "arcface" or args.backbones]
    for name, model in pretrained_models(candidates).items():
        spec = get_spec(name)
        for mode in args.modes:
            crop = {"mode": mode, "align": True, "template": spec.template, "align_points": "eyes", "border": "grey"}
            for flip, shift, view in itertools.product(args.flip, args.shift, args.views):
                for collection in collections:
                    images = apply_view(crops_for(collection, crop, spec.input_size, args.work), view, spec.template)
                    embeddings = embed_array(model, images, batch_size=64, progress=False, flip=bool(flip), shift=shift)
                    row = {"model": f"{name} (pretrained)", "mode": mode, "flip": bool(flip), "shift": shift, "view": view,
                           "collection": collection.name}
                    row.update(evaluate(collection, embeddings, None, args.bootstrap))
                    rows.append(row)
                    logger.info("%s", row)

    trained: dict[tuple[str, str], np.ndarray] = {}
    if args.models is not None:
        for folder in sorted(p for p in args.models.iterdir() if (p / "backbone" / "model.json").is_file()):
            # The folder's own reader: the embedding settings as the API applies them.
            info = read_model_folder(folder)
            model = load_model(folder / "backbone")
            crop = info.preprocess["crop"]
            for view, collection in itertools.product(args.views, collections):
                images = apply_view(crops_for(collection, crop, info.input_size, args.work), view, crop["template"])
                embeddings = embed_array(model, images, batch_size=64, progress=False, flip=info.flip, shift=info.shift)
                if view == args.views[0]:
                    trained[folder.name, collection.name] = embeddings
                # The folder's threshold was chosen on plain crops; on a view it is still the one a user would apply.
                threshold = info.threshold if info.classifier == "cosine" else None
                row = {"model": f"{folder.name} (trained)", "mode": crop["mode"], "flip": info.flip,
                       "shift": info.shift, "view": view, "collection": collection.name}
                row.update(evaluate(collection, embeddings, threshold, args.bootstrap))
                rows.append(row)
                logger.info("%s", row)

    for fusion in args.average:
        members = fusion.split("+")
        missing = [m for m in members if (m, args.collections[0]) not in trained]
        if missing:
            raise SystemExit(f"--average {fusion}: no trained model folder {', '.join(missing)} in {args.models}")
        for collection in collections:
            # Unit embeddings side by side, scaled by 1/sqrt(n): their dot product is the mean cosine.
            side_by_side = np.concatenate([trained[m, collection.name] for m in members], axis=1) / np.sqrt(len(members))
            row = {"model": f"{' + '.join(members)} (each trained, cosines averaged)", "mode": "", "flip": None, "shift": None,
                   "view": args.views[0], "collection": collection.name}
            row.update(evaluate(collection, side_by_side, None, args.bootstrap))
            rows.append(row)
            logger.info("%s", row)

    table = pd.DataFrame(rows)
    args.work.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.work / "results.csv")
    text = table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False)
    (args.work / "results.md").write_text(
        f"{text}\n\n{machine()}; {time.perf_counter() - started:.0f} s\n"
    )
    print(text)
    print(f"{machine()}; {time.perf_counter() - started:.0f} s")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
