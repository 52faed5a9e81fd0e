import json

import numpy as np
import pytest
from PIL import Image

from maskface.config import CropConfig
from maskface.face.crop import crop_dataset, crop_details, open_crops, preview_sheet


def _gradient(width=40, height=60):
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], width, axis=1) * 4
    return Image.fromarray(np.stack([rows] * 3, axis=-1))


def test_none_mode_keeps_the_whole_face():
    out = crop_details(_gradient(), None, {"mode": "none"}, 30).image
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    # Bottom row of the output comes from the bottom of the input.
    assert out[-1, 0, 0] > 200


def test_ratio_mode_keeps_only_the_top_share():
    image = _gradient(height=60)
    out = crop_details(image, None, {"mode": "ratio", "keep_ratio": 0.5}, 30).image
    # Input rows 0..29 have values 0..116: nothing from the lower half (>= 120) survives.
    assert out.max() < 120
    # Oracle: PIL crop of the top 30 rows, resized the same way.
    expected = np.asarray(image.crop((0, 0, 40, 30)).resize((30, 30), Image.Resampling.BILINEAR, reducing_gap=3.0))
    np.testing.assert_array_equal(out, expected)


def test_unknown_mode_names_valid_modes():
    with pytest.raises(ValueError, match="none, ratio, eyes, mask, nose"):
        crop_details(_gradient(), None, {"mode": "lower"}, 30)


def test_crop_dataset_writes_arrays_index_and_preview(toy_dataset, tmp_path):
    manifest = toy_dataset["manifest"]
    out = tmp_path / "crops"
    crop_dataset(manifest, CropConfig(mode="ratio", keep_ratio=0.6), 32, out)
    images, index = open_crops(out)
    # Read through a memory map: embed and finetune hold only the rows they touch, so their
    # memory stays flat as the dataset grows (benchmarks/scale.py).
    assert isinstance(images, np.memmap) and images.dtype == np.uint8
    assert images.shape == (len(manifest), 3, 32, 32)
    assert list(index["path"]) == list(manifest["path"])
    assert index["masked"].dtype == bool
    first = crop_details(Image.open(manifest["path"].iloc[0]).convert("RGB"), None, {"mode": "ratio", "keep_ratio": 0.6}, 32).image
    np.testing.assert_array_equal(images[0], first.transpose(2, 0, 1))
    assert json.loads((out / "preprocess.json").read_text()) == {"crop": {"keep_ratio": 0.6, "mode": "ratio"}, "input_size": 32}
    preview = tmp_path / "preview.png"
    preview_sheet(manifest, out, preview, count=4)
    assert Image.open(preview).size[0] > 100


# --------------------------------------------------------------------------- landmarks, modes, preprocess.json


def _synthetic_files(tmp_path, count=4, size=120):
    """Synthetic faces on disk with a landmark table of their true landmarks (and one blank image)."""
    import pandas as pd

    from maskface.face.geometry import TABLE_COLUMNS
    from maskface.data.synthetic import LANDMARK_COLUMNS, render_face, sample_identity

    rows, table = [], []
    for i in range(count):
        image, truth = render_face(sample_identity(np.random.default_rng([9, i])), np.random.default_rng([9, 50 + i]), size, i % 2 == 0, None)
        path = str(tmp_path / f"face{i}.png")
        image.save(path)
        rows.append({"path": path, "identity": f"id{i // 2}", "masked": i % 2 == 0, "split": "test"})
        entry = {"path": path, "detected": True, "x1": 0.0, "y1": 0.0, "x2": float(size), "y2": float(size)}
        entry.update(dict(zip(LANDMARK_COLUMNS, truth["landmarks"].reshape(-1))))
        entry.update({"confidence": 1.0, "padded": 0.0, "landmark_source": "ground_truth"})
        table.append(entry)
    blank = str(tmp_path / "blank.png")
    Image.new("RGB", (size, size), (100, 100, 100)).save(blank)
    rows.append({"path": blank, "identity": "id9", "masked": False, "split": "test"})
    table.append({"path": blank, "detected": False, "confidence": np.nan, "padded": 0.3, "landmark_source": "mtcnn"})
    return pd.DataFrame(rows), pd.DataFrame(table, columns=list(TABLE_COLUMNS))


def test_aligned_eyes_crop_writes_output_landmarks_and_matches_preprocess_face(tmp_path):
    from maskface.face.crop import preprocess_face
    from maskface.face.geometry import TEMPLATES
    from maskface.data.synthetic import LANDMARK_COLUMNS

    manifest, table = _synthetic_files(tmp_path)
    config = CropConfig(mode="eyes", align=True, landmarks="mtcnn", eye_line=0.5)
    out = tmp_path / "crops"
    crop_dataset(manifest, config, 80, out, landmarks=table)
    images, index = open_crops(out)
    # Oracle from the template fractions: eyes at x = t_x * S; the kept height is the eye
    # line plus half an eye distance, stretched to S.
    (lx, ty), (rx, _) = TEMPLATES["facenet"][:2]
    kept = (ty + 0.5 * (rx - lx)) * 80
    expected = np.array([[lx * 80 - 0.5, ty * 80 * 80 / kept - 0.5], [rx * 80 - 0.5, ty * 80 * 80 / kept - 0.5]])
    points = index[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(-1, 5, 2)
    np.testing.assert_allclose(points[:4, :2], np.broadcast_to(expected, (4, 2, 2)), atol=0.02)
    assert list(index["landmark_source"]) == ["ground_truth"] * 4 + ["template"]
    assert list(index["aligned"]) == [True] * 4 + [False]
    assert np.isfinite(points).all()  # the faceless image gets the template's points

    settings = json.loads((out / "preprocess.json").read_text())
    assert settings["crop"]["mode"] == "eyes" and settings["crop"]["align"] is True and settings["crop"]["eye_line"] == 0.5
    assert "blank" not in settings["crop"] and "preview_images" not in settings["crop"]
    for row in range(4):
        landmarks = table.loc[row, list(LANDMARK_COLUMNS)].to_numpy(float).reshape(5, 2)
        face = preprocess_face(Image.open(manifest.at[row, "path"]).convert("RGB"), landmarks, settings)
        np.testing.assert_array_equal(face, images[row].transpose(1, 2, 0))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aligned"] == 4 and summary["no_face_fallback"] == 1


def test_preprocess_face_detects_landmarks_when_none_are_given(tmp_path):
    from maskface.face.crop import detect_for_settings, preprocess_face

    manifest, _ = _synthetic_files(tmp_path, count=2)
    image = Image.open(manifest.at[1, "path"]).convert("RGB")
    settings = {"input_size": 64, "crop": {"mode": "none", "align": True}}
    landmarks = detect_for_settings(image, settings["crop"])
    assert landmarks is not None
    np.testing.assert_array_equal(preprocess_face(image, None, settings), crop_details(image, landmarks, settings["crop"], 64).image)
    # Without alignment or a landmark mode, nothing is detected: the old transform.
    np.testing.assert_array_equal(
        preprocess_face(image, None, {"input_size": 64, "crop": {"mode": "ratio", "keep_ratio": 0.5}}),
        crop_details(image, None, {"mode": "ratio", "keep_ratio": 0.5}, 64).image,
    )


def test_skipped_detection_leaves_index_landmarks_empty(tmp_path, toy_dataset):
    out = tmp_path / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 32, out)
    _, index = open_crops(out)
    assert index["le_x"].isna().all() and set(index["landmark_source"]) == {"none"} and not index["aligned"].any()


def test_preview_shows_every_mode(tmp_path):
    manifest, table = _synthetic_files(tmp_path)
    out = tmp_path / "crops"
    crop_dataset(manifest, CropConfig(mode="mask", align=True, landmarks="mtcnn"), 48, out, landmarks=table)
    preview = tmp_path / "modes.png"
    preview_sheet(manifest, out, preview, count=4, landmarks=table)
    width, height = Image.open(preview).size
    assert height > width  # one row per mode plus the originals, four columns


def _face_points(size):
    from maskface.face.geometry import template_points

    return template_points("arcface", size)


def test_nose_mode_greys_every_row_below_the_template_nose_and_nothing_else():
    from maskface.face.crop import crop_details
    from maskface.face.geometry import template_points

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    # Landmarks exactly on the template: alignment is the identity map.
    points = _face_points(112)
    settings = {"align": True, "template": "arcface", "align_points": "eyes"}
    whole = crop_details(image, points, {**settings, "mode": "none"}, 112).image
    nosed = crop_details(image, points, {**settings, "mode": "nose"}, 112).image
    # Oracle: the nose tip's pixel row (continuous y + 0.5, rounded up) and everything below.
    nose_y = template_points("arcface", 112)[2, 1]
    first = int(np.ceil(nose_y))
    assert np.all(nosed[first:] == 128)
    np.testing.assert_array_equal(nosed[:first], whole[:first])


def test_nose_mode_uses_the_template_nose_not_a_misplaced_detected_one():
    from maskface.face.crop import crop_details

    image = Image.fromarray(np.full((112, 112, 3), 200, dtype=np.uint8))
    points = _face_points(112).copy()
    points[2, 1] += 25  # a detector's nose far down on a mask
    out = crop_details(image, points, {"mode": "nose", "align": True, "template": "arcface", "align_points": "eyes"}, 112)
    # Eyes-only alignment ignores the nose point; the cut follows the template's nose.
    # Template nose at y 71.7: row 75 is greyed; the misplaced nose (y ~97) would have kept it.
    assert out.image[75, 56, 0] == 128 and out.image[70, 56, 0] == 200


def test_nose_line_moves_the_cut_by_eye_distances():
    from maskface.face.crop import nose_cut

    points = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
    assert nose_cut(points, 0.0) == pytest.approx(60.5)
    assert nose_cut(points, 0.25) == pytest.approx(60.5 + 10.0)


def test_template_auto_becomes_the_backbones_own_in_preprocess_json(tmp_path, toy_dataset):
    from maskface.face.crop import preprocess_settings

    config = CropConfig(mode="nose", align=True, template="auto", landmarks="mtcnn")
    assert preprocess_settings(config, 112, "arcface")["crop"]["template"] == "arcface"
    with pytest.raises(ValueError, match="auto"):
        preprocess_settings(config, 112)


def test_landmarks_auto_follows_the_data_source():
    config = CropConfig(align=True, landmarks="auto")
    assert config.for_source("synthetic").landmarks == "ground_truth"
    assert config.for_source("rmfrd").landmarks == "mtcnn"
    assert CropConfig(landmarks="mtcnn").for_source("synthetic").landmarks == "mtcnn"


def test_grey_border_fills_only_the_frame_beyond_the_photo():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    # The face 20 px further right than the template: aligning moves the photo 20 px left,
    # so output columns 92-111 sample x = 112-131, beyond the photo.
    points = _face_points(112) + np.array([20.0, 0.0])
    settings = {"mode": "none", "align": True, "template": "arcface", "align_points": "eyes"}
    grey = crop_details(Image.fromarray(photo), points, {**settings, "border": "grey"}, 112).image
    edge = crop_details(Image.fromarray(photo), points, {**settings, "border": "edge"}, 112).image
    np.testing.assert_array_equal(grey[:, :92], photo[:, 20:])
    assert np.all(grey[:, 92:] == 128)
    np.testing.assert_array_equal(edge[:, :92], photo[:, 20:])
    np.testing.assert_array_equal(edge[:, 92:], np.repeat(photo[:, 111:], 20, axis=1))  # the edge column, repeated
    # preprocess.json files written before the setting existed keep the edge.
    np.testing.assert_array_equal(crop_details(Image.fromarray(photo), points, settings, 112).image, edge)


def test_border_is_an_alignment_setting_and_a_bad_one_names_the_valid_ones():
    from maskface.face.crop import crop_settings

    assert crop_settings(CropConfig(mode="nose", align=True, landmarks="mtcnn", border="grey"))["border"] == "grey"
    assert "border" not in crop_settings(CropConfig(mode="ratio"))  # unaligned: the photo is resized, never warped
    with pytest.raises(ValueError, match="crop.border 'black' is invalid; valid: edge, grey"):
        crop_details(_gradient(), _face_points(60), {"mode": "none", "align": True, "border": "black"}, 32)
