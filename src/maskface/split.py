"""Train/val/test assignment and verification pairs.

Pairs are what verification is judged on, so they are built once, seeded, and written
to disk; every later stage (and every classifier) scores exactly the same pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from maskface.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PAIR_COLUMNS = ["path_a", "path_b", "identity_a", "identity_b", "label", "pair_type", "fold"]
N_FOLDS = 10


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


def assign_splits(manifest: pd.DataFrame, ratios: Sequence[float], seed: int, by: str = "identity") -> pd.Series:
    """Return a ``split`` label (train/val/test) for every manifest row.

    ``by="identity"``: open-set, identities disjoint across splits, shuffled with ``seed``.
    ``by="image"``: closed-set, each identity's images divided at ``ratios``, stratified by
    the masked flag.
    """
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


def make_pairs(
    images: pd.DataFrame,
    pair_types: Sequence[str],
    max_genuine_per_identity: int,
    seed: int,
) -> pd.DataFrame:
    """Balanced genuine/impostor pairs among ``images`` (path, identity, masked).

    For each pair type (e.g. ``masked-unmasked``: first image masked, second unmasked):
    every genuine pair of an identity up to ``max_genuine_per_identity`` (a seeded sample
    beyond that), then as many impostor pairs of the same type, drawn across identities.
    ``fold`` (0..9) is assigned by identity of the first image, for LFW-style threshold
    selection that never sees the pairs it is judged on.
    """
    rng = np.random.default_rng(seed)
    identities = sorted(images["identity"].unique())
    shuffled = np.array(identities)
    rng.shuffle(shuffled)
    fold_of = {identity: index % N_FOLDS for index, identity in enumerate(shuffled)}
    by_identity = {
        identity: {
            masked: sorted(group.loc[group["masked"] == masked, "path"].tolist())
            for masked in (True, False)
        }
        for identity, group in images.groupby("identity", sort=True)
    }
    rows: list[tuple] = []
    for pair_type in pair_types:
        first_masked, second_masked = _sides(pair_type)
        genuine: list[tuple] = []
        for identity in identities:
            firsts = by_identity[identity][first_masked]
            seconds = by_identity[identity][second_masked]
            if first_masked == second_masked:
                candidates = [(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :]]
            else:
                candidates = [(a, b) for a in firsts for b in seconds]
            if len(candidates) > max_genuine_per_identity:
                chosen = rng.choice(len(candidates), size=max_genuine_per_identity, replace=False)
                candidates = [candidates[i] for i in sorted(chosen)]
            genuine.extend((a, b, identity, identity, 1, pair_type) for a, b in candidates)
        firsts_pool = [(p, i) for i in identities for p in by_identity[i][first_masked]]
        seconds_pool = [(p, i) for i in identities for p in by_identity[i][second_masked]]
        owners = {i for _, i in firsts_pool} | {i for _, i in seconds_pool}
        impostor: list[tuple] = []
        if genuine and len(owners) >= 2:
            seen: set[tuple[str, str]] = set()
            attempts = 0
            # Rejection sampling: cheap because most random draws are impostors already.
            while len(impostor) < len(genuine) and attempts < 50 * len(genuine):
                attempts += 1
                a, identity_a = firsts_pool[rng.integers(len(firsts_pool))]
                b, identity_b = seconds_pool[rng.integers(len(seconds_pool))]
                key = (a, b) if first_masked != second_masked else tuple(sorted((a, b)))
                if identity_a == identity_b or key in seen:
                    continue
                seen.add(key)
                impostor.append((a, b, identity_a, identity_b, 0, pair_type))
        if not genuine:
            logger.warning("no genuine %s pairs: no identity has images on both sides", pair_type)
        elif len(impostor) < len(genuine):
            logger.warning("only %d impostor %s pairs for %d genuine", len(impostor), pair_type, len(genuine))
        rows.extend(genuine)
        rows.extend(impostor)
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    pairs["label"] = pairs["label"].astype(int)
    pairs["fold"] = pairs["identity_a"].map(fold_of).astype(int)
    return pairs.reset_index(drop=True)


def split_dataset(manifest: pd.DataFrame, ratios: Sequence[float], seed: int, by: str, pair_types: Sequence[str], max_genuine_per_identity: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Add a ``split`` column to ``manifest`` and build the val and test pairs.

    Images flagged as label noise (the same picture under two identities) stay in the
    manifest for training but never enter a verification pair.
    """
    manifest = manifest.copy()
    manifest["split"] = assign_splits(manifest, ratios, seed, by)
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
