"""The split stage's library function: sources, MTCNN landmarks, occlusion filter, splits, pairs, report."""

from __future__ import annotations

import numpy as np
import pytest

from maskface.config import CropConfig, SplitConfig
from maskface.data.datasets import DataConfig
from maskface.face.geometry import detection_rates, face_filter
from maskface.data.prepare import prepare_data
from maskface.data.synthetic import render_face, sample_identity


def _folder(root, people: int, per_side: int, seed: int) -> None:
    """Rendered faces in the folder layout: <person>/<k>.png unmasked, <k>_mask.png masked."""
    for person in range(people):
        folder = root / f"p{person}"
        folder.mkdir(parents=True)
        identity = sample_identity(np.random.default_rng([seed, person]))
        for k in range(2 * per_side):
            masked = k % 2 == 1
            image, _ = render_face(identity, np.random.default_rng([seed, person, k]), 120, masked, None)
            image.save(folder / (f"{k}_mask.png" if masked else f"{k}.png"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    _folder(root / "main", people=3, per_side=3, seed=1)
    _folder(root / "other", people=2, per_side=1, seed=2)
    data = DataConfig(source="folder", root=str(root / "main"), validation_sources=(f"folder:{root / 'other'}",), workers=1)
    split = SplitConfig(by="image", ratios=(0.6, 0.2, 0.2))
    # The least confident face of all is dropped: a filter that certainly removes something.
    crop = CropConfig(landmarks="mtcnn", detect_device="cpu", detect_workers=1, filter=True, min_confidence=0.9)
    cache = root / "landmark-cache.csv"  # the second run detects nothing again
    first = prepare_data(data, split, crop, root / "synthetic", cache)
    threshold = float(np.sort(first.landmarks["confidence"].dropna().to_numpy())[1])
    crop = crop.model_copy(update={"min_confidence": threshold})
    return prepare_data(data, split, crop, root / "synthetic", cache), crop


def test_detection_rates_cover_the_validation_sources_too(prepared):
    result, _ = prepared
    landmarks = result.landmarks
    assert len(landmarks) == 18 + 4 and set(landmarks["landmark_source"]) == {"mtcnn"}
    # Oracle: the rates of the landmark table itself, masked flags from the file names.
    masked = landmarks["path"].str.contains("_mask").to_numpy()
    assert result.report["faces"]["detection"] == detection_rates(landmarks, masked)
    assert result.report["faces"]["detection"]["masked"]["images"] == 9 + 2


def test_filtered_images_are_rejected_and_in_no_pair(prepared):
    result, crop = prepared
    dropped = face_filter(result.landmarks, crop.min_confidence)
    assert len(dropped) >= 1 and set(dropped["path"]) == set(result.dropped["path"])
    gone = set(dropped["path"])
    assert not gone & set(result.manifest["path"])
    assert gone <= set(result.rejected["path"])
    for table in result.pairs.values():
        assert not gone & (set(table["path_a"]) | set(table["path_b"]))
    assert set(result.manifest["split"]) == {"train", "val", "test", "xval"} and len(result.pairs["xval"])
    filtered = result.report["faces"]["filter"]
    assert filtered["enabled"] and sum(filtered["dropped"].values()) == len(dropped)
    assert filtered["images_kept"] == 18 - int(dropped["path"].str.contains("/main/").sum())


def test_extra_sources_only_train(tmp_path):
    _folder(tmp_path / "main", people=3, per_side=3, seed=3)
    _folder(tmp_path / "more", people=2, per_side=2, seed=4)
    data = DataConfig(source="folder", root=str(tmp_path / "main"), extra_sources=(f"folder:{tmp_path / 'more'}",), workers=1)
    split = SplitConfig(by="image", ratios=(0.6, 0.2, 0.2))
    crop = CropConfig(mode="none", align=False, landmarks="none")
    result = prepare_data(data, split, crop, tmp_path / "synthetic")
    extra = result.manifest["source"] == "folder-2"
    assert extra.sum() == 2 * 4 and (result.manifest.loc[extra, "split"] == "train").all()
    # Oracle: the main collection alone is split and paired exactly the same way.
    alone = prepare_data(data.model_copy(update={"extra_sources": ()}), split, crop, tmp_path / "synthetic")
    assert result.manifest.loc[~extra, ["path", "split"]].reset_index(drop=True).equals(alone.manifest[["path", "split"]])
    for name in ("val", "test"):
        assert result.pairs[name].equals(alone.pairs[name]) and len(result.pairs[name])
    assert result.report["split"]["train"]["identities"] == alone.report["split"]["train"]["identities"] + 2
