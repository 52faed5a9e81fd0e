import numpy as np
import pandas as pd
import pytest

from maskface.evaluation.metrics import kfold_accuracy
from maskface.data.split import assign_splits, make_pairs, split_dataset


def _manifest(identities=20, per_identity=6, masked_every=2):
    rows = []
    for i in range(identities):
        for k in range(per_identity):
            rows.append({"path": f"id{i:02d}/{k}.png", "identity": f"id{i:02d}", "masked": k % masked_every == 0})
    return pd.DataFrame(rows)


def test_identity_split_is_disjoint_and_follows_ratios():
    manifest = _manifest(identities=20)
    split = assign_splits(manifest, (0.7, 0.1, 0.2), seed=3)
    owners = manifest.assign(split=split).groupby("identity")["split"].nunique()
    assert (owners == 1).all()
    per_split = manifest.assign(split=split).groupby("split")["identity"].nunique()
    assert per_split.to_dict() == {"train": 14, "val": 2, "test": 4}


def test_identity_split_is_seeded():
    manifest = _manifest()
    assert assign_splits(manifest, (0.7, 0.1, 0.2), 1).equals(assign_splits(manifest, (0.7, 0.1, 0.2), 1))
    assert not assign_splits(manifest, (0.7, 0.1, 0.2), 1).equals(assign_splits(manifest, (0.7, 0.1, 0.2), 2))


@pytest.mark.parametrize("by", ["identity", "image"])
def test_train_only_rows_train_and_leave_the_rest_split_as_without_them(by):
    main = _manifest(identities=20)
    extra = _manifest(identities=8).assign(identity=lambda t: "lfw/" + t["identity"], path=lambda t: "lfw/" + t["path"])
    combined = pd.concat([main, extra], ignore_index=True)
    train_only = pd.Series([False] * len(main) + [True] * len(extra))
    split = assign_splits(combined, (0.7, 0.1, 0.2), 5, by, train_only)
    assert (split[train_only] == "train").all()
    # Oracle: the main rows alone, split with the same seed.
    assert split[~train_only].tolist() == assign_splits(main, (0.7, 0.1, 0.2), 5, by).tolist()
    table, pairs = split_dataset(combined, (0.7, 0.1, 0.2), 5, by, ["masked-unmasked"], 20, train_only)
    assert table["split"].tolist() == split.tolist()
    for frame in pairs.values():
        assert not frame["identity_a"].str.startswith("lfw/").any() and not frame["identity_b"].str.startswith("lfw/").any()


def test_image_split_keeps_every_identity_in_train_and_stratifies_masks():
    manifest = _manifest(identities=5, per_identity=20)
    split = assign_splits(manifest, (0.7, 0.1, 0.2), seed=0, by="image")
    table = manifest.assign(split=split)
    for _, group in table.groupby(["identity", "masked"]):
        counts = group["split"].value_counts().to_dict()
        assert counts == {"train": 7, "val": 1, "test": 2}


def test_pairs_are_balanced_typed_and_valid():
    manifest = _manifest(identities=6, per_identity=6)
    pairs = make_pairs(manifest, ["masked-unmasked"], max_genuine_per_identity=5, seed=0)
    genuine = pairs[pairs["label"] == 1]
    impostor = pairs[pairs["label"] == 0]
    assert len(genuine) == len(impostor) == 6 * 5
    assert (genuine["identity_a"] == genuine["identity_b"]).all()
    assert (impostor["identity_a"] != impostor["identity_b"]).all()
    masked = dict(zip(manifest["path"], manifest["masked"]))
    assert pairs["path_a"].map(masked).all() and not pairs["path_b"].map(masked).any()
    assert set(pairs["pair_type"]) == {"masked-unmasked"}
    assert not pairs.duplicated(["path_a", "path_b"]).any()
    # Folds are assigned by identity: no identity's first images straddle two folds.
    assert (pairs.groupby("identity_a")["fold"].nunique() == 1).all()


def test_same_side_pairs_never_pair_an_image_with_itself():
    manifest = _manifest(identities=4, per_identity=8)
    pairs = make_pairs(manifest, ["masked-masked", "unmasked-unmasked"], 100, seed=0)
    assert (pairs["path_a"] != pairs["path_b"]).all()
    # 4 masked images per identity -> C(4, 2) = 6 genuine pairs each, per side type.
    assert (pairs[pairs["label"] == 1].groupby("pair_type").size() == 4 * 6).all()


def test_identity_without_both_sides_gives_no_masked_unmasked_genuine_pairs():
    manifest = _manifest(identities=4, per_identity=4)
    manifest.loc[manifest["identity"] == "id00", "masked"] = False
    pairs = make_pairs(manifest, ["masked-unmasked"], 10, seed=0)
    assert "id00" not in set(pairs.loc[pairs["label"] == 1, "identity_a"])


def test_split_dataset_keeps_label_noise_out_of_pairs():
    manifest = _manifest(identities=30, per_identity=6)
    manifest["label_noise"] = False
    manifest.loc[manifest.index % 7 == 0, "label_noise"] = True
    table, pairs = split_dataset(manifest, (0.7, 0.1, 0.2), 0, "identity", ["masked-unmasked"], 20)
    noisy = set(manifest.loc[manifest["label_noise"], "path"])
    for frame in pairs.values():
        assert not (set(frame["path_a"]) | set(frame["path_b"])) & noisy
    assert "split" in table and len(table) == len(manifest)


def test_split_dataset_fails_clearly_without_pairs():
    manifest = _manifest(identities=10, per_identity=4)
    manifest["masked"] = False
    with pytest.raises(ValueError, match="no usable masked-unmasked pairs"):
        split_dataset(manifest, (0.7, 0.1, 0.2), 0, "identity", ["masked-unmasked"], 20)


# ---------------------------------------------------------------- person-disjoint folds


def _random_manifest(rng, identities: int) -> pd.DataFrame:
    rows = []
    for i in range(identities):
        for k in range(int(rng.integers(2, 9))):
            rows.append({"path": f"p{i:03d}/{k}.jpg", "identity": f"p{i:03d}", "masked": bool(rng.random() < 0.5)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(6))
def test_folds_never_share_a_person_and_are_balanced(seed):
    rng = np.random.default_rng(seed)
    n_identities = int(rng.integers(10, 80))
    manifest = _random_manifest(rng, n_identities)
    types = ["masked-unmasked", "masked-masked", "unmasked-unmasked"]
    pairs = make_pairs(manifest, types, 6, seed)
    # Brute force: every person, as either image of any pair, is found in one fold only.
    folds_of: dict[str, set] = {}
    for row in pairs.itertuples(index=False):
        folds_of.setdefault(row.identity_a, set()).add(row.fold)
        folds_of.setdefault(row.identity_b, set()).add(row.fold)
    assert all(len(folds) == 1 for folds in folds_of.values()), {p: f for p, f in folds_of.items() if len(f) > 1}
    n_folds = max(1, min(10, n_identities // 5))
    assert set(pairs["fold"]) == set(range(n_folds))
    people = pd.Series({p: next(iter(f)) for p, f in folds_of.items()}).value_counts()
    assert people.max() - people.min() <= 1 or len(people) < n_folds  # dealt round-robin
    # Each fold: as many impostor pairs of a type as genuine ones, where its people allow it.
    counts = pairs.groupby(["pair_type", "fold", "label"]).size().unstack(fill_value=0)
    assert (counts[0] <= counts[1]).all()
    assert (counts[0] == counts[1]).mean() > 0.8


def test_ten_folds_from_fifty_people_and_five_people_per_fold_below():
    rng = np.random.default_rng(0)
    assert make_pairs(_random_manifest(rng, 57), ["masked-unmasked"], 5, 0)["fold"].nunique() == 10
    assert make_pairs(_random_manifest(rng, 17), ["masked-unmasked"], 5, 0)["fold"].nunique() == 3
    # Under ten people: one fold, impostors among all of them (the k-fold metric is skipped).
    assert make_pairs(_random_manifest(rng, 9), ["masked-unmasked"], 5, 0)["fold"].nunique() == 1


def test_kfold_accuracy_on_built_folds_matches_hand_computation():
    # 10 people, one masked and one unmasked photo each: 2 folds of 5 people, each with
    # 5 genuine pairs and 5 impostor pairs between its own people.
    manifest = pd.DataFrame(
        [{"path": f"{p}/{side}.jpg", "identity": p, "masked": side == "m"} for p in "PQRSTUVWXY" for side in "mu"]
    )
    pairs = make_pairs(manifest, ["masked-unmasked"], 5, seed=0)
    assert pairs.groupby(["fold", "label"]).size().tolist() == [5, 5, 5, 5]
    given = {
        (0, 1): [0.9, 0.9, 0.8, 0.8, 0.8],
        (0, 0): [0.2, 0.1, 0.1, 0.1, 0.1],
        (1, 1): [0.6, 0.6, 0.6, 0.4, 0.4],
        (1, 0): [0.55, 0.55, 0.1, 0.1, 0.1],
    }
    scores = np.empty(len(pairs))
    for (fold, label), values in given.items():
        scores[((pairs["fold"] == fold) & (pairs["label"] == label)).to_numpy()] = values
    result = kfold_accuracy(scores, pairs["label"], pairs["fold"])
    # Held-out fold 0, threshold on fold 1 (3 I at 0.1, 2 G at 0.4, 2 I at 0.55, 3 G at 0.6):
    # 8 of 10 right below 0.4 and again below 0.6; the lower tie, the midpoint 0.25, accepts
    # every fold-0 genuine and rejects every fold-0 impostor: 10/10.
    # Held-out fold 1, threshold on fold 0: the gap 0.2..0.8, midpoint 0.5: the three 0.6
    # genuines and three 0.1 impostors right, the 0.4 genuines and 0.55 impostors wrong: 6/10.
    assert result["fold_ids"] == [0, 1]
    assert result["thresholds"] == pytest.approx([0.25, 0.5])
    assert result["per_fold"] == [1.0, 0.6]
    assert result["mean"] == pytest.approx(0.8) and result["std"] == pytest.approx(0.2)


# ---------------------------------------------------------------- simulated copies


def _manifest_with_copies() -> pd.DataFrame:
    """6 people x 4 photos; photos 0 and 1 also have two simulated masked copies each."""
    rows = []
    for i in range(6):
        person = f"id{i}"
        for k in range(4):
            rows.append({"path": f"orig/{person}/{k}.jpg", "identity": person, "masked": False, "derived_from": ""})
        for k in range(2):
            for style in ("surgical", "cloth"):
                source = f"orig/{person}/{k}.jpg"
                rows.append({"path": f"sim/{person}/{k}_{style}.jpg", "identity": person, "masked": True, "derived_from": source})
    return pd.DataFrame(rows)


def test_pairs_never_join_a_copy_with_its_source_or_a_sibling_copy():
    manifest = _manifest_with_copies()
    origin = {p: (d or p) for p, d in zip(manifest["path"], manifest["derived_from"])}
    types = ["masked-unmasked", "masked-masked", "unmasked-unmasked"]
    pairs = make_pairs(manifest, types, 100, seed=0)
    assert not (pairs["path_a"].map(origin) == pairs["path_b"].map(origin)).any()
    genuine = pairs[pairs["label"] == 1]
    # Every other genuine pair is still built: per person, masked-unmasked 4 copies x 4 photos
    # less the 4 copy-source pairs; masked-masked C(4, 2) less the 2 sibling pairs.
    per_type = genuine.groupby("pair_type").size().to_dict()
    assert per_type == {"masked-unmasked": 6 * 12, "masked-masked": 6 * 4, "unmasked-unmasked": 6 * 6}
    # Without the column the same photos do form such pairs (the guard is what removes them).
    loose = make_pairs(manifest.drop(columns="derived_from"), types, 100, seed=0)
    assert (loose["path_a"].map(origin) == loose["path_b"].map(origin)).sum() == 6 * (4 + 2)
