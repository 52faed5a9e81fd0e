import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from maskface.data.masks import MASK_STYLES, draw_mask, mask_polygon

# An upright face in a 200 x 200 image: eye distance 60 px, mouth 62 px below the eyes.
UPRIGHT = np.array([[70.0, 80.0], [130.0, 80.0], [100.0, 115.0], [78.0, 142.0], [122.0, 142.0]])


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - centre) @ rot.T + centre


def _raster(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Independent oracle: which pixel centres (integer coordinates) lie inside the polygon."""
    ys, xs = np.mgrid[0:height, 0:width]
    inside = MplPath(polygon).contains_points(np.stack([xs.ravel(), ys.ravel()], axis=1))
    return inside.reshape(height, width)


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("style", MASK_STYLES)
def test_polygon_covers_nose_mouth_and_chin_but_not_eyes(style):
    polygon = mask_polygon(UPRIGHT, style, (200, 200))
    path = MplPath(polygon)
    assert path.contains_points(UPRIGHT[2:]).all()  # nose tip, both mouth corners
    assert not path.contains_points(UPRIGHT[:2]).any()
    # Top on the nose bridge: below the eye line but above the nose tip.
    assert 80.0 + 5 < polygon[:, 1].min() < 115.0
    # Bottom below the chin: the mouth is 62 px below the eyes, the chin ~half that again.
    assert polygon[:, 1].max() > 142.0 + 0.35 * 62
    # Across the face: wider than the eye distance, centred on the face.
    assert polygon[:, 0].max() - polygon[:, 0].min() > 1.5 * 60
    assert abs((polygon[:, 0].max() + polygon[:, 0].min()) / 2 - 100.0) < 1.0


def test_styles_have_distinct_shapes():
    areas = {style: _polygon_area(mask_polygon(UPRIGHT, style, (200, 200))) for style in MASK_STYLES}
    assert len({round(a) for a in areas.values()}) == len(MASK_STYLES)
    # The N95 cup is the narrowest of the three.
    widths = {s: np.ptp(mask_polygon(UPRIGHT, s, (200, 200))[:, 0]) for s in MASK_STYLES}
    assert widths["n95"] < widths["cloth"] < widths["surgical"]


@pytest.mark.parametrize("style", MASK_STYLES)
def test_polygon_follows_rotation_and_scale(style):
    centre = np.array([300.0, 300.0])
    base = UPRIGHT + 200.0  # far from the borders of a 600 x 600 image: no clipping
    polygon = mask_polygon(base, style, (600, 600))
    rotated = mask_polygon(_rotate(base, 30.0, centre), style, (600, 600))
    np.testing.assert_allclose(rotated, _rotate(polygon, 30.0, centre), atol=1e-6)
    scaled = mask_polygon(base * 1.5, style, (900, 900))
    np.testing.assert_allclose(scaled, polygon * 1.5, atol=1e-6)


def test_polygon_is_clipped_to_the_image():
    # Face near the bottom-right corner of a 160 x 150 image: the mask runs off both edges.
    landmarks = UPRIGHT + np.array([40.0, 20.0])
    unclipped = mask_polygon(landmarks, "surgical", (1000, 1000))
    clipped = mask_polygon(landmarks, "surgical", (160, 150))
    assert clipped[:, 0].min() >= 0 and clipped[:, 0].max() <= 160
    assert clipped[:, 1].min() >= 0 and clipped[:, 1].max() <= 150
    assert np.isclose(clipped[:, 0].max(), 160) and np.isclose(clipped[:, 1].max(), 150)
    # Clipping is an intersection: same pixels inside the image as the unclipped outline.
    np.testing.assert_array_equal(_raster(clipped, 160, 150), _raster(unclipped, 160, 150))
    # The drawn region runs to the border pixels and agrees with the clipped outline.
    _, region = draw_mask(Image.new("RGB", (160, 150)), landmarks, "surgical", np.random.default_rng(0))
    expected = _raster(clipped, 160, 150)
    assert region[-1].any() and region[:, -1].any()
    assert (region != expected).mean() < 0.01


def test_swapped_eyes_still_give_a_mask_over_the_mouth():
    swapped = UPRIGHT[[1, 0, 2, 4, 3]]
    polygon = mask_polygon(swapped, "cloth", (200, 200))
    assert MplPath(polygon).contains_points(UPRIGHT[2:]).all()
    assert polygon[:, 1].min() > 80.0


def test_invalid_style_and_landmarks_are_refused():
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (200, 200), (90, 90, 90))
    for call in (
        lambda: mask_polygon(UPRIGHT, "bandana", (200, 200)),
        lambda: draw_mask(image, UPRIGHT, "bandana", rng),
    ):
        with pytest.raises(ValueError, match="bandana") as info:
            call()
        assert all(style in str(info.value) for style in MASK_STYLES)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        mask_polygon(UPRIGHT[:4], "n95", (200, 200))
    with pytest.raises(ValueError, match="coincide"):
        mask_polygon(np.array([[50.0, 50.0]] * 5), "n95", (200, 200))


@pytest.mark.parametrize("style", MASK_STYLES)
def test_draw_mask_region_matches_polygon_and_changes_only_the_lower_face(style):
    # A non-square image catches width/height mix-ups.
    width, height = 220, 190
    image = Image.new("RGB", (width, height), (120, 30, 30))
    out, region = draw_mask(image, UPRIGHT, style, np.random.default_rng(1))
    assert out.size == (width, height) and out.mode == "RGB"
    assert region.shape == (height, width) and region.dtype == bool

    expected = _raster(mask_polygon(UPRIGHT, style, (width, height)), width, height)
    iou = (region & expected).sum() / (region | expected).sum()
    assert iou > 0.97
    rows, cols = np.round(UPRIGHT[:, 1]).astype(int), np.round(UPRIGHT[:, 0]).astype(int)
    assert region[rows[2:], cols[2:]].all() and not region[rows[:2], cols[:2]].any()

    before = np.asarray(image, dtype=np.int16)
    after = np.asarray(out, dtype=np.int16)
    changed = np.abs(after - before).max(axis=2) > 0
    assert np.abs(after - before)[region].mean() > 40  # the fabric replaces the face
    assert not changed[: int(UPRIGHT[0, 1]) - 5].any()  # nothing above the eyes is touched
    # Ear loops reach towards the ears but no further than ~1.5 eye distances from the centre.
    changed_cols = np.nonzero(changed.any(axis=0))[0]
    assert changed_cols.min() > 100 - 1.6 * 60 and changed_cols.max() < 100 + 1.6 * 60


@pytest.mark.parametrize("style", ["surgical", "n95"])
def test_mask_is_shaded_darker_towards_the_chin(style):
    image = Image.new("RGB", (200, 200), (128, 128, 128))
    polygon = mask_polygon(UPRIGHT, style, (200, 200))
    top, bottom = polygon[:, 1].min(), polygon[:, 1].max()
    for seed in range(3):
        out, region = draw_mask(image, UPRIGHT, style, np.random.default_rng(seed))
        grey = np.asarray(out.convert("L"), dtype=np.float64)
        rows = np.arange(200)[:, None].repeat(200, axis=1)
        upper_band = region & (rows > top + 0.1 * (bottom - top)) & (rows < top + 0.3 * (bottom - top))
        lower_band = region & (rows > top + 0.75 * (bottom - top)) & (rows < top + 0.92 * (bottom - top))
        assert np.median(grey[upper_band]) > np.median(grey[lower_band]) + 8


def test_draw_mask_random_style_is_seeded():
    image = Image.new("RGB", (160, 160), (200, 170, 150))
    landmarks = UPRIGHT * 0.8
    first, region_a = draw_mask(image, landmarks, None, np.random.default_rng(7))
    again, region_b = draw_mask(image, landmarks, None, np.random.default_rng(7))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    np.testing.assert_array_equal(region_a, region_b)
    # Over many seeds every style shows up.
    regions = {draw_mask(image, landmarks, None, np.random.default_rng(s))[1].sum() for s in range(12)}
    assert len(regions) == len(MASK_STYLES)


def test_draw_mask_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        draw_mask(Image.new("L", (200, 200), 128), UPRIGHT, "cloth", np.random.default_rng(0))
