"""to_rgb / load_rgb against hand-computed conversions, one test per PIL mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskface.imageio import load_rgb, sniff_format, to_rgb

RNG = np.random.default_rng(7)


def _rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(np.int64)


def _composite_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return colour.astype(np.float64) * a + 255.0 * (1.0 - a)


def test_rgb_is_returned_unchanged():
    image = Image.fromarray(RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    assert to_rgb(image) is image


def test_greyscale_copies_the_level_into_all_three_channels():
    grey = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    out = _rgb(Image.fromarray(grey))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_bilevel_maps_to_black_and_white():
    bits = RNG.integers(0, 2, (6, 8)).astype(bool)
    out = _rgb(Image.fromarray(bits))
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


@pytest.mark.parametrize("mode", ["LA", "La"])
def test_grey_with_alpha_is_composited_on_white(mode):
    grey = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    image = Image.fromarray(np.dstack([grey, alpha]), mode="LA").convert(mode)
    expected = _composite_on_white(grey[..., None], alpha)[..., 0]
    out = _rgb(image)
    # La stores premultiplied levels: un-premultiplying loses up to 255/alpha levels per pixel.
    tolerance = 1.0 if mode == "LA" else 2.0
    assert np.abs(out[..., 0] - expected).max() <= tolerance
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("mode", ["RGBA", "RGBa"])
def test_rgba_is_composited_on_white_not_dropped(mode):
    colour = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    alpha = np.array([[0, 64, 128, 255]] * 5, dtype=np.uint8)
    image = Image.fromarray(np.dstack([colour, alpha])).convert(mode)
    out = _rgb(image)
    expected = _composite_on_white(colour, alpha)
    # Fully transparent pixels are white whatever colour they stored.
    np.testing.assert_array_equal(out[:, 0], 255)
    np.testing.assert_array_equal(out[:, 3], colour[:, 3])
    assert np.abs(out - expected).max() <= 1.0 + (mode == "RGBa")


def test_palette_without_transparency_is_a_lookup():
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    image = Image.fromarray(index, mode="L").convert("P")
    image.putpalette(palette.reshape(-1).tolist())
    np.testing.assert_array_equal(_rgb(image), palette[index])


def test_palette_transparency_becomes_white():
    index = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    image = Image.fromarray(index, mode="L").convert("P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 0
    out = _rgb(image)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])


def test_cmyk_follows_the_subtractive_formula():
    cmyk = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    image = Image.frombytes("CMYK", (5, 6), cmyk.tobytes())
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = 255.0 - np.minimum(255.0, c * (255.0 - k) / 255.0 + k)
    assert np.abs(_rgb(image) - expected).max() <= 1.0


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 771, 32768], [40000, 65280, 65534, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = _rgb(image)
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 65535.0 * 255.0))
    # The 8 -> 16 bit expansion v * 257 comes back to v exactly.
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    np.testing.assert_array_equal(_rgb(Image.fromarray(levels * 257))[..., 1], levels)


def test_big_endian_sixteen_bit_matches_little_endian():
    values = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    big = Image.frombytes("I;16B", (6, 5), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(_rgb(big), _rgb(Image.fromarray(values)))


def test_sixteen_bit_pgm_and_png_convert_identically(tmp_path):
    # Pillow opens 16-bit PGM as "I" but 16-bit PNG as "I;16": same pixels, same result.
    values = RNG.integers(0, 65536, (9, 8)).astype(np.uint16)
    pgm = tmp_path / "deep.pgm"
    pgm.write_bytes(b"P5\n8 9\n65535\n" + values.astype(">u2").tobytes())
    png = tmp_path / "deep.png"
    Image.fromarray(values).save(png)
    with Image.open(pgm) as opened:
        assert opened.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_rgb(pgm)), np.asarray(load_rgb(png)))


def test_integer_image_holding_eight_bit_levels_matches_greyscale():
    grey = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(_rgb(Image.fromarray(grey).convert("I")), _rgb(Image.fromarray(grey)))


def test_integer_image_out_of_sixteen_bit_range_is_scaled_by_its_maximum():
    values = np.array([[0, 50_000], [100_000, 200_000]], dtype=np.int32)
    out = _rgb(Image.fromarray(values))
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 200_000.0 * 255.0))


def test_load_rgb_decodes_files_of_other_modes(tmp_path):
    grey = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (10, 12)
    np.testing.assert_array_equal(np.asarray(image)[..., 2], grey)


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"BM\x00\x00", "BMP"),
        (b"II*\x00\x08\x00", "TIFF"),
        (b"MM\x00*\x00\x00", "TIFF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"P5\n92 112\n", "PPM"),
        (b"Plain text", None),
        (b"", None),
        (b"\xff\xd8", None),
    ],
)
def test_sniff_format(head, expected):
    assert sniff_format(head) == expected
