import dataclasses
import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from maskface.config import SyntheticConfig
from maskface.data.masks import MASK_STYLES
from maskface.data.synthetic import (
    CSV_COLUMNS,
    LANDMARK_COLUMNS,
    FaceIdentity,
    generate_dataset,
    render_face,
    sample_identity,
)

# 10 identities x 8 images, 2 masked each: 6 unmasked per identity for the classifier tests.
SMALL = SyntheticConfig(identities=10, images_per_identity=8, masked_share=0.25, seed=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_dataset(out, SMALL)


def _landmarks(row) -> np.ndarray:
    return np.array([row[c] for c in LANDMARK_COLUMNS], dtype=np.float64).reshape(5, 2)


def _luminance(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_config_gives_byte_identical_files(tmp_path):
    config = SyntheticConfig(identities=3, images_per_identity=4, min_size=64, max_size=80, seed=11)
    first = generate_dataset(tmp_path / "a", config)
    second = generate_dataset(tmp_path / "b", config)
    pd.testing.assert_frame_equal(first, second)
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert len(files_a) == 3 * 4 + 1
    assert files_a == files_b
    # A different seed draws different people.
    other = generate_dataset(tmp_path / "c", config.model_copy(update={"seed": 12}))
    assert _all_files(tmp_path / "c") != files_a
    assert not np.allclose(other[list(LANDMARK_COLUMNS)], first[list(LANDMARK_COLUMNS)])


def test_csv_holds_the_returned_table(small):
    out, table = small
    assert list(table.columns) == list(CSV_COLUMNS)
    stored = pd.read_csv(out / "ground_truth.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(stored, table, check_dtype=False)


def test_rerun_replaces_only_what_it_owns(tmp_path):
    big = SyntheticConfig(identities=4, images_per_identity=4, min_size=64, max_size=64, seed=0)
    generate_dataset(tmp_path, big)
    (tmp_path / "README.txt").write_text("keep me")
    (tmp_path / "previews").mkdir()
    generate_dataset(tmp_path, big.model_copy(update={"identities": 2}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "ground_truth.csv", "id00", "id01", "previews"]
    assert len(pd.read_csv(tmp_path / "ground_truth.csv")) == 2 * 4


def test_layout_counts_and_columns(small):
    out, table = small
    assert len(table) == SMALL.identities * SMALL.images_per_identity
    assert sorted(table["identity"].unique()) == [f"id{i:02d}" for i in range(SMALL.identities)]
    for row in table.itertuples():
        assert re.fullmatch(rf"{row.identity}/{row.identity}_\d{{2}}\.png", row.path)
        with Image.open(out / row.path) as image:
            assert image.mode == "RGB" and image.size == (row.size, row.size)
        assert SMALL.min_size <= row.size <= SMALL.max_size
        if row.masked:
            assert row.mask_style in MASK_STYLES and row.mask_polygon != ""
        else:
            assert row.mask_style == "" and row.mask_polygon == ""
    assert table["size"].nunique() > 5


@pytest.mark.parametrize("share", [0.05, 0.5, 0.95])
def test_every_identity_has_two_masked_and_two_unmasked(tmp_path, share):
    config = SyntheticConfig(identities=3, images_per_identity=6, masked_share=share, min_size=64, max_size=64)
    table = generate_dataset(tmp_path, config)
    per_identity = table.groupby("identity")["masked"].agg(["sum", "count"])
    assert (per_identity["sum"] >= 2).all() and (per_identity["count"] - per_identity["sum"] >= 2).all()
    if share == 0.5:
        assert (per_identity["sum"] == 3).all()


def test_masked_share_and_styles_on_the_default_proportions(tmp_path):
    config = SyntheticConfig(identities=6, images_per_identity=10, masked_share=0.4, min_size=64, max_size=72)
    table = generate_dataset(tmp_path, config)
    assert table["masked"].mean() == pytest.approx(0.4)
    assert set(table.loc[table["masked"], "mask_style"]) == set(MASK_STYLES)


def test_landmarks_lie_inside_and_in_face_order(small):
    _, table = small
    for _, row in table.iterrows():
        lm = _landmarks(row)
        assert (lm >= 0).all() and (lm <= row["size"] - 1).all()
        left_eye, right_eye, nose, mouth_l, mouth_r = lm
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]  # "left" = image-left
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def _sample(grey: np.ndarray, points: np.ndarray) -> np.ndarray:
    cols, rows = np.round(points).astype(int).T
    return grey[rows, cols]


def test_landmarks_sit_on_the_drawn_features(small):
    out, table = small
    for _, row in table[~table["masked"]].iterrows():
        grey = _luminance(out / row["path"])
        smooth = cv2.blur(grey, (3, 3))
        lm = _landmarks(row)
        eye_distance = np.linalg.norm(lm[1] - lm[0])
        along = (lm[1] - lm[0]) / eye_distance
        for side in (0, 1):
            eye, corner = lm[side], lm[3 + side]
            cheek = np.median(_sample(grey, (eye + corner) / 2 + np.mgrid[-2:3, -2:3].reshape(2, -1).T))
            # The pupil: the landmark pixel (or a neighbour) is far darker than the cheek ...
            pupil = _sample(grey, eye + np.mgrid[-1:2, -1:2].reshape(2, -1).T).min()
            assert pupil < min(0.7 * cheek, cheek - 15), row["path"]
            # ... and it is the darkest spot along the eye line between the eye corners
            # (lashes and brows lie above, skin beyond the corners).
            offsets = np.arange(-int(0.15 * eye_distance), int(0.15 * eye_distance) + 1)
            profile = _sample(smooth, eye + offsets[:, None] * along)
            assert abs(offsets[np.argmin(profile)]) <= 2, row["path"]
        # The dark mouth line runs between the two mouth corners.
        mouth = (lm[3] + lm[4]) / 2
        cheek = np.median(_sample(grey, (lm[0] + lm[3]) / 2 + np.mgrid[-2:3, -2:3].reshape(2, -1).T))
        assert _sample(smooth, mouth + np.array([[0, -1], [0, 0], [0, 1], [0, 2]])).min() < cheek - 10, row["path"]


def test_mask_polygon_covers_nose_and_mouth_not_eyes(small):
    _, table = small
    masked = table[table["masked"]]
    assert len(masked) == 2 * SMALL.identities
    for _, row in masked.iterrows():
        polygon = np.array(json.loads(row["mask_polygon"]))
        assert polygon.ndim == 2 and polygon.shape[1] == 2 and len(polygon) >= 8
        assert (polygon >= 0).all() and (polygon <= row["size"]).all()
        inside = MplPath(polygon).contains_points(_landmarks(row))
        assert inside.tolist() == [False, False, True, True, True], row["path"]


def test_render_face_region_matches_the_drawn_mask():
    identity = sample_identity(np.random.default_rng(3))
    for seed, style in enumerate(MASK_STYLES):
        image, truth = render_face(identity, np.random.default_rng(seed), 128, True, style)
        assert truth["mask_style"] == style and truth["masked"]
        region = truth["mask_region"]
        assert region.shape == (128, 128) and region.dtype == bool
        expected = MplPath(truth["mask_polygon"]).contains_points(
            np.stack(np.meshgrid(np.arange(128), np.arange(128)), axis=-1).reshape(-1, 2)
        )
        assert (region.ravel() == expected).mean() > 0.99
        lm = np.round(truth["landmarks"]).astype(int)
        assert region[lm[2:, 1], lm[2:, 0]].all() and not region[lm[:2, 1], lm[:2, 0]].any()
        # The mask is fabric: smooth inside, unlike the face features it hides (checked on
        # hue: the mask is drawn in its own colours, not skin).
        pixels = np.asarray(image, dtype=np.float64)
        assert pixels[region].std(axis=0).mean() < pixels[~region].std(axis=0).mean()


def test_render_face_api():
    identity = sample_identity(np.random.default_rng(0))
    assert isinstance(identity, FaceIdentity)
    assert identity == sample_identity(np.random.default_rng(0))
    assert identity != sample_identity(np.random.default_rng(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.eye_spacing = 0.5
    image, truth = render_face(identity, np.random.default_rng(0), 100, False, None)
    assert image.size == (100, 100) and image.mode == "RGB"
    assert truth["landmarks"].shape == (5, 2) and truth["mask_polygon"] is None and truth["mask_style"] == ""
    with pytest.raises(ValueError, match="bandana") as info:
        render_face(identity, np.random.default_rng(0), 100, True, "bandana")
    assert all(style in str(info.value) for style in MASK_STYLES)


def _aligned_regions(out: Path, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-face and lower-face pixels of every unmasked image after landmark alignment.

    Landmarks are warped onto a 48 x 48 template (eyes at y=16, nose tip 28, mouth 35),
    then reduced to 24 x 24 grey; each region is standardised per image so that the
    classifier must use shapes, not overall brightness.
    """
    template = np.array([[16, 16], [32, 16], [24, 28], [18, 35], [30, 35]], dtype=np.float64)
    upper, lower, labels = [], [], []
    for _, row in table[~table["masked"]].iterrows():
        image = cv2.imread(str(out / row["path"]))
        matrix, _ = cv2.estimateAffinePartial2D(_landmarks(row), template)
        aligned = cv2.warpAffine(image, matrix, (48, 48), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        grey = cv2.resize(aligned, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float64).mean(axis=2)
        for region, rows in ((upper, slice(2, 11)), (lower, slice(12, 22))):
            values = grey[rows, 4:20].ravel()  # forehead..eyes / nose..chin, inside the cheeks
            region.append((values - values.mean()) / (values.std() + 1e-6))
        labels.append(row["identity"])
    return np.array(upper), np.array(lower), np.array(labels)


def test_identity_lives_in_the_upper_and_in_the_lower_face(small):
    out, table = small
    upper, lower, labels = _aligned_regions(out, table)
    chance = 1.0 / SMALL.identities
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    for name, features in (("upper", upper), ("lower", lower)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = cross_val_score(model, features, labels, cv=folds).mean()
        assert accuracy > 0.6 > 5 * chance, f"{name} face: accuracy {accuracy:.2f}"


def test_pose_varies_so_a_fixed_half_crop_sometimes_cuts_the_eyes(small):
    _, table = small
    size = table["size"].to_numpy(dtype=np.float64)
    eye_line = (table["le_y"] + table["re_y"]).to_numpy() / 2 / size
    assert eye_line.min() < 0.5
    assert eye_line.max() - eye_line.min() >= 0.1
    lowest_eye = np.maximum(table["le_y"], table["re_y"]).to_numpy() / size
    assert (lowest_eye > 0.47).any()  # the eye then straddles a cut at half height
    roll = np.degrees(np.arctan2(table["re_y"] - table["le_y"], table["re_x"] - table["le_x"]))
    assert roll.min() < -6 and roll.max() > 6 and roll.abs().max() < 13
    eye_distance = np.hypot(table["re_x"] - table["le_x"], table["re_y"] - table["le_y"]) / size
    assert eye_distance.max() / eye_distance.min() > 1.3  # scale and identity vary


def test_generation_logs_a_summary(tmp_path, caplog):
    config = SyntheticConfig(identities=2, images_per_identity=4, min_size=64, max_size=64)
    with caplog.at_level(logging.INFO, logger="maskface.data.synthetic"):
        generate_dataset(tmp_path, config)
    summary = [r.getMessage() for r in caplog.records if r.name == "maskface.data.synthetic"]
    assert len(summary) == 1 and "2 identities x 4 images (4 masked" in summary[0]
