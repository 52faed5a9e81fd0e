import json

import numpy as np
import pytest
from PIL import Image

from maskface.config import CropConfig
from maskface.crop import crop_dataset, crop_face, open_crops, preview_sheet


def _gradient(width=40, height=60):
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], width, axis=1) * 4
    return Image.fromarray(np.stack([rows] * 3, axis=-1))


def test_none_mode_keeps_the_whole_face():
    out = crop_face(_gradient(), "none", 0.5, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    # Bottom row of the output comes from the bottom of the input.
    assert out[-1, 0, 0] > 200


def test_ratio_mode_keeps_only_the_top_share():
    image = _gradient(height=60)
    out = crop_face(image, "ratio", 0.5, 30)
    # Input rows 0..29 have values 0..116: nothing from the lower half (>= 120) survives.
    assert out.max() < 120
    # Oracle: PIL crop of the top 30 rows, resized the same way.
    expected = np.asarray(image.crop((0, 0, 40, 30)).resize((30, 30), Image.Resampling.BILINEAR, reducing_gap=3.0))
    np.testing.assert_array_equal(out, expected)


def test_unknown_mode_names_valid_modes():
    with pytest.raises(ValueError, match="none, ratio"):
        crop_face(_gradient(), "lower", 0.5, 30)


def test_crop_dataset_writes_arrays_index_and_preview(toy_dataset, tmp_path):
    manifest = toy_dataset["manifest"]
    out = tmp_path / "crops"
    crop_dataset(manifest, CropConfig(mode="ratio", keep_ratio=0.6), 32, out)
    images, index = open_crops(out)
    assert images.shape == (len(manifest), 3, 32, 32)
    assert list(index["path"]) == list(manifest["path"])
    assert index["masked"].dtype == bool
    first = crop_face(Image.open(manifest["path"].iloc[0]).convert("RGB"), "ratio", 0.6, 32)
    np.testing.assert_array_equal(images[0], first.transpose(2, 0, 1))
    assert json.loads((out / "preprocess.json").read_text()) == {"crop": {"keep_ratio": 0.6, "mode": "ratio"}, "input_size": 32}
    preview = tmp_path / "preview.png"
    preview_sheet(manifest, out, preview, count=4)
    assert Image.open(preview).size[0] > 100
