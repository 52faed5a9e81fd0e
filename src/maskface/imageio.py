"""The one way images are read: every stage converts to RGB through :func:`load_rgb`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Leading bytes of the formats Pillow reads that face datasets actually ship. Used only to
# tell "not an image at all" from "an image whose header Pillow could not parse".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_NETPBM_MAGIC = tuple(f"P{k}".encode() for k in range(1, 8))


def sniff_format(head: bytes) -> Optional[str]:
    """Name the image format whose signature starts ``head`` (first 16 bytes suffice), else None."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] in _NETPBM_MAGIC and head[2:3].isspace():
        return "PPM"
    return None


def _integer_peak(array: np.ndarray) -> float:
    """The value that maps to white for 32-bit integer ("I") pixels.

    Pillow opens 16-bit PGM/PPM as "I" but 16-bit PNG/TIFF as "I;16"; treating in-range "I"
    data as 16-bit makes the same pixels convert identically whichever file format held them.
    Data that already fits 8 bits (an "L" image converted to "I") maps to itself, and values
    outside [0, 65535] fall back to scaling by the image maximum.
    """
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 255.0:
        return 255.0
    if low >= 0.0 and high <= 65535.0:
        return 65535.0
    return max(high, 1.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the same way everywhere.

    Alpha (LA, PA, RGBA and the premultiplied La/RGBa) is composited on white (not dropped)
    so transparent PNG borders do not turn black; 16-bit greyscale (I;16*) is scaled by
    65535 rather than clipped; CMYK uses Pillow's CMYK->RGB formula
    ``R = 255 - min(255, C * (255 - K) / 255 + K)``.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else _integer_peak(array)
        array = np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "La":
        # Pillow has no La->RGBA path; LA un-premultiplies first.
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open, fully decode and convert an image file to RGB."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)
