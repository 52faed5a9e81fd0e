"""Train/val/test assignment and verification pairs.

Pairs are what verification is judged on, so they are built once, seeded, and written
to disk; every later stage (and every classifier) scores exactly the same pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import numpy as np
import pandas as pd

from maskface.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PAIR_COLUMNS = ["path_a", "path_b", "identity_a", "identity_b", "label", "pair_type", "fold"]
N_FOLDS = 10
# A fold's impostor pairs join two of its own people, so k folds keep only ~1/k of all pairs
# of people as impostors. Five people per fold at least (10 pairs of people per fold): with
# two per fold, the 6 test people of the default dataset gave 3 pairs of people, and which 3
# the shuffle picked moved test accuracy by 0.1 to 0.2 (docs/evaluation.md).
MIN_IDENTITIES_PER_FOLD = 5


def _allocate(count: int, ratios: Sequence[float]) -> list[int]:
    """Split ``count`` items into len(ratios) parts by largest remainder, each part >= 1 when possible."""
    raw = np.asarray(ratios, dtype=float) * count
    sizes = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - sizes), kind="stable")[: count - sizes.sum()]:
        sizes[index] += 1
    # A tiny dataset must still give every split something to evaluate on.
    for index in range(len(sizes)):
        if sizes[index] == 0 and count >= len(sizes):
            donor = int(np.argmax(sizes))
            sizes[donor] -= 1
            sizes[index] += 1
    return sizes.tolist()


def assign_splits(
    manifest: pd.DataFrame, ratios: Sequence[float], seed: int, by: str = "identity", train_only: Optional[pd.Series] = None,
) -> pd.Series:
    """Return a ``split`` label (train/val/test) for every manifest row.

    ``by="identity"``: open-set, identities disjoint across splits, shuffled with ``seed``.
    ``by="image"``: closed-set, each identity's images divided at ``ratios``, stratified by
    the masked flag.
    ``train_only`` (a boolean per row, e.g. the rows of ``data.extra_sources``): those rows
    are training data only, and the others are split exactly as they would be without them.
    """
    if train_only is not None and train_only.any():
        train_only = train_only.astype(bool)
        rest = manifest[~train_only]
        split = pd.Series("train", index=manifest.index, name="split")
        if len(rest):
            split.loc[rest.index] = assign_splits(rest, ratios, seed, by)
        return split
    rng = np.random.default_rng(seed)
    if by == "identity":
        identities = np.array(sorted(manifest["identity"].unique()))
        if len(identities) < 3:
            raise InputError(
                f"split.by=identity needs at least 3 identities (train, val, test); found {len(identities)}"
            )
        rng.shuffle(identities)
        sizes = _allocate(len(identities), ratios)
        bounds = np.cumsum([0] + sizes)
        owner = {identity: SPLITS[part] for part in range(3) for identity in identities[bounds[part] : bounds[part + 1]]}
        return manifest["identity"].map(owner).rename("split")
    if by == "image":
        split = pd.Series("train", index=manifest.index, name="split")
        for _, group in manifest.groupby(["identity", "masked"], sort=True):
            order = group.index.to_numpy().copy()
            rng.shuffle(order)
            sizes = _allocate(len(order), ratios) if len(order) >= 3 else [len(order), 0, 0]
            bounds = np.cumsum([0] + sizes)
            for part in range(3):
                split.loc[order[bounds[part] : bounds[part + 1]]] = SPLITS[part]
        return split
    raise ValueError(f"split.by {by!r} is invalid; valid: identity, image")


def _sides(pair_type: str) -> tuple[bool, bool]:
    first, second = pair_type.split("-")
    return first == "masked", second == "masked"


def fold_count(n_identities: int, n_folds: int = N_FOLDS) -> int:
    """Folds for ``n_identities`` people: ``n_folds``, fewer when some fold would hold under
    :data:`MIN_IDENTITIES_PER_FOLD` people, at least 1 (one fold: no k-fold protocol, and
    impostors among all people)."""
    return max(1, min(int(n_folds), n_identities // MIN_IDENTITIES_PER_FOLD))


def assign_folds(identities: Sequence[str], n_folds: int, rng: np.random.Generator) -> dict[str, int]:
    """Deal the (sorted) identities, shuffled by ``rng``, round-robin into ``n_folds`` folds."""
    shuffled = np.array(sorted(identities), dtype=object)
    rng.shuffle(shuffled)
    return {identity: index % n_folds for index, identity in enumerate(shuffled)}


def _origins(images: pd.DataFrame) -> dict[str, str]:
    """Each image's original photo: its ``derived_from`` (a simulated mask's source) or itself.

    Two images with the same origin share the pixels around the eyes, so a pair of them
    proves nothing; the pair builder never joins them.
    """
    paths = images["path"].astype(str).tolist()
    if "derived_from" not in images.columns:
        return dict(zip(paths, paths))
    sources = images["derived_from"].tolist()
    return {
        path: path if source is None or (isinstance(source, float) and np.isnan(source)) or str(source) == "" else str(source)
        for path, source in zip(paths, sources)
    }


def _images_by_identity(images: pd.DataFrame) -> dict[str, dict[bool, list[str]]]:
    """identity -> {masked flag: its image paths, sorted}."""
    return {
        identity: {masked: sorted(group.loc[group["masked"] == masked, "path"].tolist()) for masked in (True, False)}
        for identity, group in images.groupby("identity", sort=True)
    }


def _genuine_pairs(
    identities: list[str],
    by_identity: dict[str, dict[bool, list[str]]],
    origin: dict[str, str],
    pair_type: str,
    max_genuine_per_identity: int,
    rng: np.random.Generator,
) -> tuple[list[tuple], int]:
    """Every genuine pair of ``pair_type`` per identity, a seeded sample beyond the cap;
    and how many same-origin pairs were left out."""
    first_masked, second_masked = _sides(pair_type)
    genuine: list[tuple] = []
    same_origin = 0
    for identity in identities:
        firsts = by_identity[identity][first_masked]
        seconds = by_identity[identity][second_masked]
        if first_masked == second_masked:
            candidates = [(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :]]
        else:
            candidates = [(a, b) for a in firsts for b in seconds]
        unrelated = [(a, b) for a, b in candidates if origin[a] != origin[b]]
        same_origin += len(candidates) - len(unrelated)
        candidates = unrelated
        if len(candidates) > max_genuine_per_identity:
            chosen = rng.choice(len(candidates), size=max_genuine_per_identity, replace=False)
            candidates = [candidates[i] for i in sorted(chosen)]
        genuine.extend((a, b, identity, identity, 1, pair_type) for a, b in candidates)
    return genuine, same_origin


def _impostor_pairs(
    genuine: list[tuple],
    fold_of: dict[str, int],
    n_folds: int,
    by_identity: dict[str, dict[bool, list[str]]],
    origin: dict[str, str],
    pair_type: str,
    rng: np.random.Generator,
) -> list[tuple]:
    """In each fold, as many impostor pairs of ``pair_type`` between the fold's own people as
    it has genuine pairs (fewer where its people have too few images)."""
    first_masked, second_masked = _sides(pair_type)
    identities = sorted(fold_of)
    impostor: list[tuple] = []
    for fold in range(n_folds):
        members = [i for i in identities if fold_of[i] == fold]
        wanted = sum(1 for row in genuine if fold_of[row[2]] == fold)
        firsts_pool = [(p, i) for i in members for p in by_identity[i][first_masked]]
        seconds_pool = [(p, i) for i in members for p in by_identity[i][second_masked]]
        owners = {i for _, i in firsts_pool} | {i for _, i in seconds_pool}
        if not wanted or len(owners) < 2:
            continue
        found = 0
        seen: set[tuple[str, str]] = set()
        attempts = 0
        # Rejection sampling: cheap because most random draws are impostors already.
        while found < wanted and attempts < 50 * wanted:
            attempts += 1
            a, identity_a = firsts_pool[rng.integers(len(firsts_pool))]
            b, identity_b = seconds_pool[rng.integers(len(seconds_pool))]
            key = (a, b) if first_masked != second_masked else tuple(sorted((a, b)))
            if identity_a == identity_b or key in seen or origin[a] == origin[b]:
                continue
            seen.add(key)
            impostor.append((a, b, identity_a, identity_b, 0, pair_type))
            found += 1
    return impostor


def make_pairs(
    images: pd.DataFrame,
    pair_types: Sequence[str],
    max_genuine_per_identity: int,
    seed: int,
    n_folds: int = N_FOLDS,
) -> pd.DataFrame:
    """Balanced genuine/impostor pairs among ``images`` (path, identity, masked[, derived_from]).

    The identities are first dealt into :func:`fold_count` person-disjoint folds (as LFW's
    View 2): ``fold`` (0..k-1) is the fold of both identities of every pair, so a threshold
    chosen on the other folds never saw a person of the held-out one. For each pair type
    (e.g. ``masked-unmasked``: first image masked, second unmasked): every genuine pair of
    an identity up to ``max_genuine_per_identity`` (a seeded sample beyond that), then, in
    each fold, as many impostor pairs of the same type between that fold's identities as
    the fold has genuine pairs. ``n_folds=1`` draws impostors across all identities.

    No pair joins two images of the same origin (:func:`_origins`): a simulated masked
    copy and its source photo, or two copies of one photo.
    """
    if int(n_folds) < 1:
        raise ValueError(f"n_folds {n_folds!r} is invalid; valid: an integer >= 1")
    rng = np.random.default_rng(seed)
    identities = sorted(images["identity"].unique())
    k = fold_count(len(identities), n_folds)
    if k < n_folds and len(identities) > 0:
        logger.info(
            "%d identities: %d person-disjoint folds instead of %d (at least %d people per fold)",
            len(identities), k, n_folds, MIN_IDENTITIES_PER_FOLD,
        )
    fold_of = assign_folds(identities, k, rng)
    origin = _origins(images)
    by_identity = _images_by_identity(images)
    rows: list[tuple] = []
    same_origin = 0
    for pair_type in pair_types:
        genuine, left_out = _genuine_pairs(identities, by_identity, origin, pair_type, max_genuine_per_identity, rng)
        same_origin += left_out
        impostor = _impostor_pairs(genuine, fold_of, k, by_identity, origin, pair_type, rng)
        if not genuine:
            logger.warning("no genuine %s pairs: no identity has images on both sides", pair_type)
        elif len(impostor) < len(genuine):
            logger.warning(
                "only %d impostor %s pairs for %d genuine: some of the %d folds hold too few other people's images",
                len(impostor), pair_type, len(genuine), k,
            )
        rows.extend(genuine)
        rows.extend(impostor)
    if same_origin:
        logger.info("%d same-identity pairs of one photo and its simulated copy (or two copies) left out", same_origin)
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    pairs["label"] = pairs["label"].astype(int)
    pairs["fold"] = pairs["identity_a"].map(fold_of).astype(int)
    return pairs.reset_index(drop=True)


def split_dataset(
    manifest: pd.DataFrame, ratios: Sequence[float], seed: int, by: str, pair_types: Sequence[str], max_genuine_per_identity: int,
    train_only: Optional[pd.Series] = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Add a ``split`` column to ``manifest`` and build the val and test pairs.

    Images flagged as label noise (the same picture under two identities) stay in the
    manifest for training but never enter a verification pair. ``train_only``: see
    :func:`assign_splits`.
    """
    manifest = manifest.copy()
    manifest["split"] = assign_splits(manifest, ratios, seed, by, train_only)
    if "label_noise" in manifest:
        pairable = manifest[~manifest["label_noise"].astype(bool)]
    else:
        pairable = manifest
    pairs = {}
    for offset, name in enumerate(("val", "test"), start=1):
        images = pairable[pairable["split"] == name]
        pairs[name] = make_pairs(images, pair_types, max_genuine_per_identity, seed + offset)
        if pairs[name].empty or pairs[name]["label"].nunique() < 2:
            raise InputError(
                f"the {name} split has no usable {'/'.join(pair_types)} pairs "
                f"({images['identity'].nunique()} identities, {len(images)} images); "
                "more identities, other split.ratios or other split.pair_types are needed"
            )
        logger.info("%s: %d pairs (%d genuine)", name, len(pairs[name]), int(pairs[name]["label"].sum()))
    return manifest, pairs

