"""Plot tables against numpy / scikit-learn oracles; figures are written and sized as asked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_curve

from maskface.evaluation.plots import (
    confusion_table,
    curves_figure,
    det_table,
    natural_range,
    roc_table,
    score_histogram,
    worst_pairs,
    worst_pairs_sheet,
)

PAIR_TYPES = ["masked-unmasked", "masked-masked", "unmasked-unmasked"]


def scored_pairs(n: int = 300, seed: int = 0, paths: list[str] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(int)
    score = np.clip(rng.normal(0.35 + 0.3 * label, 0.15), 0, 1)
    paths = paths or [f"img{k}.png" for k in range(10)]
    return pd.DataFrame(
        {
            "path_a": [paths[k % len(paths)] for k in range(n)],
            "path_b": [paths[(3 * k + 1) % len(paths)] for k in range(n)],
            "identity_a": [f"id{k % 25}" for k in range(n)],
            # Genuine pairs repeat the identity; impostor pairs take one 7 further on.
            "identity_b": [f"id{(k + (0 if label[k] else 7)) % 25}" for k in range(n)],
            "label": label,
            "pair_type": [PAIR_TYPES[k % 3] for k in range(n)],
            "fold": np.arange(n) % 10,
            "score": score,
            "cosine": np.clip(score * 2 - 1 + rng.normal(0, 0.1, n), -1, 1),
        }
    )


def test_confusion_table_counts_match_sklearn():
    test = scored_pairs()
    table = confusion_table(test["score"], test["label"], 0.5)
    predicted = (test["score"] >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(test["label"], predicted).ravel()
    counts = table.value_counts()
    assert counts[("same", "same")] == tp and counts[("different", "same")] == fp
    assert counts[("different", "different")] == tn and counts[("same", "different")] == fn
    assert list(table.columns) == ["actual", "predicted"]


def test_roc_and_det_tables_lie_on_sklearn_curve():
    test = scored_pairs(seed=1)
    fpr, tpr, _ = roc_curve(test["label"], test["score"])
    roc = roc_table(test["score"], test["label"], max_points=50)
    det = det_table(test["score"], test["label"], max_points=50)
    assert list(roc.columns) == ["fpr", "tpr"] and list(det.columns) == ["fpr", "fnr"]
    assert len(roc) <= 50
    on_curve = {(round(a, 12), round(b, 12)) for a, b in zip(fpr, tpr)}
    assert all((round(a, 12), round(b, 12)) in on_curve for a, b in zip(roc["fpr"], roc["tpr"]))
    np.testing.assert_allclose(det["fnr"], 1 - roc["tpr"])
    np.testing.assert_allclose(det["fpr"], roc["fpr"])


def test_score_histogram_matches_numpy_and_sums_to_one():
    test = scored_pairs(seed=2)
    table = score_histogram(test["score"], test["label"], 20, (0.0, 1.0))
    edges = np.linspace(0, 1, 21)
    genuine, _ = np.histogram(test.loc[test["label"] == 1, "score"], bins=edges)
    impostor, _ = np.histogram(test.loc[test["label"] == 0, "score"], bins=edges)
    np.testing.assert_allclose(table["genuine"], genuine / genuine.sum())
    np.testing.assert_allclose(table["impostor"], impostor / impostor.sum())
    np.testing.assert_allclose(table["score"], (edges[:-1] + edges[1:]) / 2)
    # One distinct score still gets a bin; an absent class is all zeros, not NaN.
    single = score_histogram([0.3, 0.3], [1, 1], 4)
    assert single["genuine"].sum() == pytest.approx(1.0) and single["impostor"].sum() == 0.0


def test_natural_range_follows_the_score_kind():
    assert natural_range([0.1, 0.9]) == (0.0, 1.0)
    assert natural_range([-0.4, 0.9]) == (-1.0, 1.0)
    assert natural_range([-3.0, 2.0]) == (-3.0, 2.0)


def test_worst_pairs_are_highest_impostors_and_lowest_genuines():
    test = pd.DataFrame(
        {
            "label": [0, 0, 0, 1, 1, 1],
            "score": [0.9, 0.2, 0.6, 0.1, 0.8, 0.55],
        }
    )
    accepts, rejects = worst_pairs(test, threshold=0.5, count=2)
    assert accepts["score"].tolist() == [0.9, 0.6] and accepts["error"].tolist() == [True, True]
    assert rejects["score"].tolist() == [0.1, 0.55] and rejects["error"].tolist() == [True, False]


def test_worst_pairs_sheet_loads_images_and_survives_a_missing_one(tmp_path):
    paths = []
    for k in range(4):
        path = tmp_path / f"face{k}.png"
        Image.fromarray(np.full((40, 30, 3), 60 * k, dtype=np.uint8)).save(path)
        paths.append(str(path))
    paths.append(str(tmp_path / "gone.png"))  # deleted since classify ran
    test = scored_pairs(n=40, paths=paths)
    loaded = []

    def loader(path):
        loaded.append(path)
        return Image.open(path)

    destination = tmp_path / "sheet" / "b.png"
    accepts, rejects = worst_pairs_sheet(test, 0.5, destination, count=3, loader=loader)
    assert len(accepts) == len(rejects) == 3
    expected = set(accepts["path_a"]) | set(accepts["path_b"]) | set(rejects["path_a"]) | set(rejects["path_b"])
    assert set(loaded) == expected
    with Image.open(destination) as image:
        assert image.size[0] > image.size[1] / 4 and image.size[1] > 500


def test_worst_pairs_sheet_draws_unreadable_images_blank_whatever_the_failure(tmp_path):
    # A lazy loader (Image.open) only fails when pixels are read: truncated data must be caught
    # there too. One pair of each kind: the sheet is still wide enough for its title.
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])
    test = scored_pairs(n=2, paths=[str(truncated), str(good)])
    destination = tmp_path / "one.png"
    accepts, rejects = worst_pairs_sheet(test, 0.5, destination, count=1, loader=Image.open)
    assert len(accepts) == len(rejects) == 1
    with Image.open(destination) as image:
        assert image.size[0] >= 480


def test_worst_pairs_sheet_with_no_pairs_of_a_kind(tmp_path):
    test = scored_pairs(n=40)
    only_impostors = test[test["label"] == 0]
    accepts, rejects = worst_pairs_sheet(only_impostors, 0.5, tmp_path / "half.png", count=4, loader=lambda p: Image.new("RGB", (8, 8)))
    assert len(accepts) == 4 and rejects.empty
    assert (tmp_path / "half.png").stat().st_size > 0


def test_curves_figure_adds_a_cmc_panel(tmp_path):
    test = scored_pairs(seed=3)
    curves_figure(test, 0.5, tmp_path / "three.png", "t")
    cmc = pd.DataFrame({"rank": [1, 2, 3], "rate": [0.5, 0.7, 0.8]})
    curves_figure(test, 0.5, tmp_path / "four.png", "t", cmc=cmc)
    with Image.open(tmp_path / "three.png") as three, Image.open(tmp_path / "four.png") as four:
        assert four.size[0] > three.size[0] * 1.2 and four.size[1] == three.size[1]
