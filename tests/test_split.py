import pandas as pd
import pytest

from maskface.split import assign_splits, make_pairs, split_dataset


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
