"""Training augmentation: landmark sources and crop geometry, simulated masks, low resolution, moves, flips, colour jitter."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from maskface.training.augment import (
    ARCFACE_TEMPLATE_112,
    adjust_colors,
    augment_batch,
    color_jitter,
    crop_landmarks,
    flip_horizontal,
    lower_resolution,
    map_through_crop,
    shift_images,
    simulate_masks,
    template_landmarks,
)
from maskface.face.crop import crop_details
from maskface.data.synthetic import GROUND_TRUTH_CSV, LANDMARK_COLUMNS


def _blob_image(width, height, centre, sigma=2.5):
    ys, xs = np.mgrid[0:height, 0:width]
    blob = 255 * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return Image.fromarray(np.repeat(blob[..., None], 3, axis=2).astype(np.uint8))


def _centroid(face):
    weight = face[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : face.shape[0], 0 : face.shape[1]]
    return np.array([(xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()])


@pytest.mark.parametrize("crop", [{"mode": "none"}, {"mode": "ratio", "keep_ratio": 0.5}])
def test_map_through_crop_follows_the_crop_stage_pixels(crop):
    # Oracle: where the crop stage's own resize puts a bright blob.
    centre = (30.3, 20.7)
    source = _blob_image(80, 100, centre)
    face = crop_details(source, None, crop, 160).image
    mapped = map_through_crop(np.array([centre]), (80, 100), crop, 160)[0]
    np.testing.assert_allclose(mapped, _centroid(face), atol=0.25)


def test_map_through_crop_by_hand():
    # none: x' = (x + .5) * S / W - .5; ratio 0.5 of H=100 keeps 50 rows.
    point = np.array([[9.5, 24.5]])
    np.testing.assert_allclose(map_through_crop(point, (20, 100), {"mode": "none"}, 40), [[19.5, 9.5]])
    np.testing.assert_allclose(map_through_crop(point, (20, 100), {"mode": "ratio", "keep_ratio": 0.5}, 40), [[19.5, 19.5]])
    with pytest.raises(ValueError, match="none, ratio"):
        map_through_crop(point, (20, 100), {"mode": "eyes"}, 40)


def test_template_is_insightface_arcface_src_scaled():
    np.testing.assert_allclose(template_landmarks(112)[0], [38.2946, 51.6963])
    np.testing.assert_allclose(template_landmarks(160), ARCFACE_TEMPLATE_112 * 160 / 112)
    with pytest.raises(ValueError, match=">= 1"):
        template_landmarks(0)


def test_crop_landmarks_prefers_index_then_ground_truth_then_template(tmp_path):
    # A synthetic-style folder: <root>/ground_truth.csv beside <root>/<identity>/<file>.
    root = tmp_path / "synthetic"
    truth_points = np.array([[40, 50], [80, 50], [60, 75], [45, 95], [75, 95]], dtype=float)
    row = {"path": "id0/id0_00.png", "size": 120}
    row.update(dict(zip(LANDMARK_COLUMNS, truth_points.reshape(-1))))
    root.mkdir()
    pd.DataFrame([row]).to_csv(root / GROUND_TRUTH_CSV, index=False)

    given = np.arange(10, dtype=float).reshape(5, 2) + 20
    index = pd.DataFrame(
        {
            "path": [str(root / "id0" / "id0_00.png"), str(tmp_path / "rmfrd" / "a" / "1.jpg"), str(tmp_path / "x" / "b" / "2.jpg")],
            "identity": ["s/id0", "r/a", "x/b"],
        }
    )
    for k, column in enumerate(LANDMARK_COLUMNS):
        index[column] = [np.nan, np.nan, given.reshape(-1)[k]]
    crop = {"mode": "ratio", "keep_ratio": 0.5}
    landmarks, sources = crop_landmarks(index, crop, 64)

    assert sources.tolist() == ["ground_truth", "template", "index"]
    np.testing.assert_allclose(landmarks[0], map_through_crop(truth_points, (120, 120), crop, 64))
    np.testing.assert_allclose(landmarks[1], map_through_crop(template_landmarks(64), (64, 64), crop, 64))
    np.testing.assert_allclose(landmarks[2], given)


def test_crop_landmarks_without_any_source_uses_the_template(tmp_path):
    index = pd.DataFrame({"path": [str(tmp_path / "a" / "1.jpg")]})
    landmarks, sources = crop_landmarks(index, {"mode": "none"}, 160)
    assert sources.tolist() == ["template"]
    np.testing.assert_allclose(landmarks[0], ARCFACE_TEMPLATE_112 * 160 / 112)


def _faces(count=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, size=(count, 3, size, size), dtype=np.uint8)


def test_simulate_masks_covers_the_lower_face_of_chosen_rows_only():
    images = _faces()
    landmarks = np.repeat(template_landmarks(64)[None], 4, axis=0)
    apply = np.array([True, False, True, False])
    out = simulate_masks(images, landmarks, apply, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out[~apply], images[~apply])
    eye_line = int(template_landmarks(64)[:2, 1].min())
    mouth_line = int(template_landmarks(64)[3:, 1].mean())
    for row in np.flatnonzero(apply):
        changed = np.any(out[row] != images[row], axis=0)
        assert not changed[: eye_line - 2].any(), "a mask must leave the forehead and eyes alone"
        assert changed[mouth_line, 20:44].mean() > 0.9, "the mouth must be covered"
    with pytest.raises(ValueError, match="surgical, cloth, n95"):
        simulate_masks(images, landmarks, apply, np.random.default_rng(1), styles=("scarf",))


def test_flip_horizontal_mirrors_chosen_rows():
    images = _faces()
    flip = np.array([True, False, False, True])
    out = flip_horizontal(images, flip)
    np.testing.assert_array_equal(out[flip], np.flip(images[flip], axis=3))
    np.testing.assert_array_equal(out[~flip], images[~flip])


@pytest.mark.parametrize(
    "name, reference",
    [
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
    ],
)
def test_adjust_colors_matches_torchvision(name, reference):
    images = _faces(count=3, size=24)
    factors = np.array([0.6, 1.0, 1.35])
    ours = adjust_colors(images, **{name: factors})
    for row, factor in enumerate(factors):
        # torchvision on float [0, 1] images (its uint8 path truncates intermediate greys).
        theirs = reference(torch.from_numpy(images[row]).float() / 255, float(factor)) * 255
        np.testing.assert_allclose(ours[row], np.rint(theirs.numpy()), atol=1)


def test_color_jitter_factors_stay_in_range_and_zero_strength_is_identity():
    grey = np.full((50, 3, 4, 4), 100, dtype=np.uint8)
    out = color_jitter(grey, np.random.default_rng(0), brightness=0.3)
    ratio = out[:, 0, 0, 0] / 100.0
    assert ratio.min() >= 0.7 - 0.005 and ratio.max() <= 1.3 + 0.005
    assert ratio.std() > 0.1
    images = _faces()
    np.testing.assert_array_equal(color_jitter(images, np.random.default_rng(0)), images)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        color_jitter(images, np.random.default_rng(0), contrast=1.5)


def test_augment_batch_never_masks_a_masked_image_and_is_seeded():
    images = _faces()
    landmarks = np.repeat(template_landmarks(64)[None], 4, axis=0)
    masked = np.array([True, True, False, False])
    out = augment_batch(images, masked, landmarks, np.random.default_rng(3), mask_p=1.0)
    np.testing.assert_array_equal(out[masked], images[masked])
    assert all(np.any(out[row] != images[row]) for row in (2, 3))
    settings = dict(mask_p=0.5, flip_p=0.5, brightness=0.2, contrast=0.2, saturation=0.2)
    first = augment_batch(images, masked, landmarks, np.random.default_rng(7), **settings)
    again = augment_batch(images, masked, landmarks, np.random.default_rng(7), **settings)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(augment_batch(images, masked, landmarks, np.random.default_rng(7)), images)


def _checkerboard(size=64):
    board = ((np.indices((size, size)).sum(axis=0) % 2) * 255).astype(np.uint8)
    return np.repeat(board[None, None], 3, axis=1)


def test_lower_resolution_removes_detail_finer_than_the_drawn_side():
    board = np.concatenate([_checkerboard(), _checkerboard()])
    out = lower_resolution(board, np.array([16, 64]))
    # A one-pixel checkerboard has no detail a 16-pixel image can hold: antialiased, it is
    # mid-grey; at the crop's own side nothing changes.
    assert np.abs(out[0].astype(float) - 127.5).mean() < 8
    np.testing.assert_array_equal(out[1], board[1])
    flat = np.full((1, 3, 64, 64), 90, dtype=np.uint8)
    np.testing.assert_array_equal(lower_resolution(flat, np.array([7])), flat)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        lower_resolution(flat, np.array([0]))


def test_augment_batch_draws_low_resolution_sides_in_range():
    boards = np.concatenate([_checkerboard()] * 200)
    landmarks = np.repeat(template_landmarks(64)[None], 200, axis=0)
    masked = np.ones(200, dtype=bool)
    out = augment_batch(boards, masked, landmarks, np.random.default_rng(1), low_resolution_p=0.5, low_resolution_min=0.5)
    detail = np.abs(out.astype(float) - 127.5).mean(axis=(1, 2, 3))
    untouched = np.all(out == boards, axis=(1, 2, 3))
    # About half are shrunk (each is then visibly blurred); the rest are left exactly as they were.
    assert 70 < (~untouched).sum() < 130
    assert detail[~untouched].max() < 127.5
    # min 1.0 draws the crop's own side: nothing to lower.
    same = augment_batch(boards[:8], masked[:8], landmarks[:8], np.random.default_rng(1), low_resolution_p=1.0, low_resolution_min=1.0)
    np.testing.assert_array_equal(same, boards[:8])


def _moved_by_padding(image, right, down):
    """Oracle: pad by the move with edge values (numpy), then cut the original frame back out."""
    reach = max(abs(right), abs(down))
    padded = np.pad(image, ((0, 0), (reach, reach), (reach, reach)), mode="edge")
    size_y, size_x = image.shape[-2:]
    return padded[:, reach - down : reach - down + size_y, reach - right : reach - right + size_x]


def test_shift_images_matches_edge_padding():
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 12, 12), dtype=np.uint8)
    moves = np.array([[3, 0], [0, -2], [-1, 4], [0, 0]])
    out = shift_images(images, moves)
    for image, (right, down), moved in zip(images, moves, out):
        np.testing.assert_array_equal(moved, _moved_by_padding(image, right, down))


def test_augment_batch_moves_about_shift_p_of_the_images_within_shift_max():
    images = np.random.default_rng(1).integers(0, 256, (300, 3, 50, 50), dtype=np.uint8)
    landmarks = np.repeat(template_landmarks(50)[None], 300, axis=0)
    masked = np.ones(300, dtype=bool)
    out = augment_batch(images, masked, landmarks, np.random.default_rng(2), shift_p=0.5, shift_max=0.04)
    reach = 2  # 0.04 x 50 px
    found = []
    for image, moved in zip(images, out):
        matches = [(r, d) for r in range(-reach, reach + 1) for d in range(-reach, reach + 1)
                   if np.array_equal(moved, _moved_by_padding(image, r, d))]
        assert matches, "every image is itself moved by at most shift_max x its side"
        found.append(matches[0])
    moved_count = sum(move != (0, 0) for move in found)
    # Half drawn, and a drawn move is (0, 0) with probability 1/25.
    assert 115 < moved_count < 175
    assert {r for r, _ in found} == set(range(-reach, reach + 1))
