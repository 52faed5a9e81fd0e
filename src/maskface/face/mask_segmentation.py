"""Find the face mask in a photo from its landmarks, colour and texture (no trained model).

The mask is what hides the face below the nose bridge, so the search runs in a *face
frame* fixed by the two eyes (the landmarks a mask never hides): origin at the eye
midpoint, ``u`` across the face and ``v`` down it, both in units of the eye distance
``d``. Nose and mouth landmarks are used only when they sit where a face has them;
otherwise typical proportions stand in for them (masks make MTCNN guess those points).

Steps of :func:`segment_mask`:

1. **Prior**: the union of the three procedural mask outlines of :mod:`maskface.data.masks`
   (surgical, cloth, N95) on the (regularised) landmarks: where a mask can be. The search
   area is this prior widened by :data:`SEARCH_MARGIN` ``d``.
2. **Skin model**: robust median and spread of grey level and rg chromaticity over skin
   that a mask never covers and hair rarely does (the nose bridge, under the eyes).
3. **Decision**: a mask is ``found`` when the median colour of the *core* (between the
   nose and the chin, where every mask lies) is at least :data:`FOUND_CONTRAST` units
   from the skin's. Without a mask, ``region`` is the prior, so a caller can blank the
   same area of every face.
4. **Region**: pixels in the search area that are not skin by colour (chromaticity
   weighted over lightness, which shading changes; lightness alone for greyscale photos)
   or by texture, cleaned by morphology; the parts touching the core are kept and their
   holes filled (printed patterns and valves stay inside).
5. **Refinement**: GrabCut, seeded with the region as probable mask, the core as sure
   mask and the skin and everything outside the search area as background, splits the
   mask from a collar, neck or scenery of a similar non-skin colour along its edges.

:func:`mask_iou` measures agreement with a ground-truth region; the synthetic dataset's
``draw_mask`` regions are the reference (see ``tests/face/test_mask_segmentation.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskface.data.masks import MASK_STYLES, mask_polygon

logger = logging.getLogger(__name__)

# Typical landmark depths below the eye line and mouth half-width, in eye distances, from
# the 'facenet' alignment template (maskface.face.geometry.TEMPLATES): stand-ins for nose and
# mouth points a mask displaced.
NOMINAL_NOSE_DEPTH = 0.455
NOMINAL_MOUTH_DEPTH = 0.845
NOMINAL_MOUTH_HALF_WIDTH = 0.428
# Plausible ranges (eye distances) outside which a detected nose/mouth point is replaced.
_NOSE_RANGE = (0.25, 0.8)
_MOUTH_RANGE = (0.55, 1.35)
_MOUTH_SIDEWAYS = 0.35

SEARCH_MARGIN = 0.25  # eye distances the search area extends beyond the prior
# Not-skin threshold on the colour distance, in robust standard deviations of the skin.
SKIN_DISTANCE = 3.0


@dataclass(frozen=True)
class MaskSegmentation:
    """``region``: bool (H, W), the mask (``found``) or the prior where no mask was found.

    ``prior``: bool (H, W), where a mask can be; ``contrast``: how far the core's median
    colour lies from the skin's, in :data:`_CONTRAST_UNIT` units (the evidence behind
    ``found``: at least :data:`FOUND_CONTRAST`).
    """

    region: np.ndarray
    prior: np.ndarray
    found: bool
    contrast: float


def regularise_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) landmarks with implausible nose/mouth points replaced by typical ones.

    The eyes are kept. A nose or mouth that lies outside :data:`_NOSE_RANGE` /
    :data:`_MOUTH_RANGE` eye distances below the eye line (or a mouth centre more than
    :data:`_MOUTH_SIDEWAYS` to the side) is what a detector guesses under a mask.
    """
    points = np.array(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points[:2])):
        raise ValueError(f"landmarks must be (5, 2) with finite eye points, got {np.asarray(landmarks).tolist()}")
    left, right = points[0], points[1]
    d = float(np.hypot(*(right - left)))
    if d < 1e-6:
        raise ValueError(f"landmarks: the two eye centres coincide at {left.tolist()}")
    ex = (right - left) / d
    ey = np.array([-ex[1], ex[0]])
    origin = (left + right) / 2

    def depth(p):
        return float((p - origin) @ ey) / d

    nose_ok = np.all(np.isfinite(points[2])) and _NOSE_RANGE[0] <= depth(points[2]) <= _NOSE_RANGE[1]
    mouth = (points[3] + points[4]) / 2
    mouth_ok = (
        np.all(np.isfinite(points[3:]))
        and _MOUTH_RANGE[0] <= depth(mouth) <= _MOUTH_RANGE[1]
        and abs(float((mouth - origin) @ ex)) / d <= _MOUTH_SIDEWAYS
        and float((points[4] - points[3]) @ ex) > 0.3 * d
    )
    if not nose_ok:
        points[2] = origin + NOMINAL_NOSE_DEPTH * d * ey
    if not mouth_ok:
        for row, side in ((3, -1.0), (4, 1.0)):
            points[row] = origin + side * NOMINAL_MOUTH_HALF_WIDTH * d * ex + NOMINAL_MOUTH_DEPTH * d * ey
    return points


def rasterise(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W): pixels at least half covered by the polygon (K, 2), pixel centres at integers.

    The same rule as :func:`maskface.data.masks.draw_mask`'s region: drawn at 4x and averaged.
    """
    from PIL import ImageDraw

    scale = 4
    height, width = shape
    canvas = Image.new("L", (width * scale, height * scale), 0)
    if len(polygon) >= 3:
        offset = (scale - 1) / 2  # pixel centres stay at integer coordinates at both scales
        points = [tuple(p) for p in (np.asarray(polygon, dtype=np.float64) * scale + offset).tolist()]
        ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas.reduce(scale), dtype=np.uint8) >= 128


def prior_region(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W): union of the mask outlines of every style on the regularised landmarks."""
    points = regularise_landmarks(landmarks)
    height, width = shape
    region = np.zeros(shape, dtype=bool)
    for style in MASK_STYLES:
        region |= rasterise(mask_polygon(points, style, (width, height)), shape)
    return region


def _frame_coordinates(landmarks: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """(u, v) of every pixel in eye distances, and the eye distance d in pixels."""
    left, right = landmarks[0], landmarks[1]
    d = float(np.hypot(*(right - left)))
    ex = (right - left) / d
    ey = np.array([-ex[1], ex[0]])
    origin = (left + right) / 2
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    rel_x, rel_y = xs - origin[0], ys - origin[1]
    u = (rel_x * ex[0] + rel_y * ex[1]) / d
    v = (rel_x * ey[0] + rel_y * ey[1]) / d
    return u, v, d


def _skin_sample(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool (H, W): skin no mask covers and hair rarely does: the nose bridge and under the eyes."""
    bridge = (np.abs(u) < 0.15) & (v > -0.1) & (v < 0.15)
    under_eyes = (np.abs(u) > 0.25) & (np.abs(u) < 0.7) & (v > 0.1) & (v < 0.22)
    return bridge | under_eyes


def _robust_stats(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based standard deviation per column, after dropping gross outliers."""
    centre = np.median(samples, axis=0)
    spread = 1.4826 * np.median(np.abs(samples - centre), axis=0) + 1e-6
    keep = (np.abs(samples - centre) <= 3.0 * spread).all(axis=1)
    if keep.sum() >= 10:
        samples = samples[keep]
        centre = np.median(samples, axis=0)
        spread = 1.4826 * np.median(np.abs(samples - centre), axis=0) + 1e-6
    return centre, spread


def _features(image: np.ndarray, d: float) -> np.ndarray:
    """float32 (H, W, 3): grey level and rg chromaticity (100 R / (R+G+B), 100 G / (R+G+B)).

    Chromaticity does not change with shading: the lower face is often darker than the
    skin sample above it, but not differently coloured, while a mask almost always is.
    """
    import cv2

    # Smooth away JPEG noise and fabric grain at a scale well below the features.
    pixels = cv2.GaussianBlur(image.astype(np.float32), (0, 0), max(0.6, 0.03 * d))
    total = pixels.sum(axis=2) + 1.0
    return np.stack(
        [pixels.mean(axis=2), 100.0 * pixels[..., 0] / total, 100.0 * pixels[..., 1] / total], axis=-1
    ).astype(np.float32)


# Per-feature scales of the skin model: floors for the per-pixel spread (a very uniform
# sample must not make every small change "not skin"), and the unit of the core contrast.
# From rmfrd-dev: unmasked faces differ from their skin sample by a median of 7 grey levels
# and 0.6 / 0.3 chromaticity points (90th percentile 23 / 2.0 / 0.8); masked ones by 62 /
# 6.0 / 1.0. Lightness gets a low weight: light falls off across a face.
_SPREAD_FLOOR = np.array([10.0, 1.0, 0.6], dtype=np.float32)
_CONTRAST_UNIT = np.array([25.0, 1.5, 1.0], dtype=np.float32)
_LIGHTNESS_WEIGHT = 0.1
FOUND_CONTRAST = 2.0  # core contrast above which a mask is found


def _colourful(samples: np.ndarray) -> bool:
    """Whether the skin sample has colour (a greyscale photo has r = g = 100/3)."""
    return float(np.abs(samples[:, 1:] - 100.0 / 3.0).mean()) > 0.5


def _texture(image: np.ndarray, d: float) -> np.ndarray:
    """float (H, W): local standard deviation of grey level (pleats, weave, print edges)."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    size = max(3, int(round(0.12 * d)) | 1)
    mean = cv2.blur(grey, (size, size))
    mean_sq = cv2.blur(grey * grey, (size, size))
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def _fill_holes(region: np.ndarray) -> np.ndarray:
    import cv2

    padded = np.pad(region.astype(np.uint8), 1)
    flood = padded.copy()
    mask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), dtype=np.uint8)
    cv2.floodFill(flood, mask, (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return region | holes


def _depth(point: np.ndarray, points: np.ndarray, d: float) -> float:
    """Distance of ``point`` below the eye line, in eye distances."""
    left, right = points[0], points[1]
    down = np.array([-(right - left)[1], (right - left)[0]]) / d
    return float((point - (left + right) / 2) @ down) / d


def segment_mask(image: np.ndarray, landmarks: np.ndarray) -> MaskSegmentation:
    """Find the face mask in ``image`` (uint8 (H, W, 3) RGB) given its 5 landmarks (pixels).

    See the module docstring for the method; a few milliseconds at 160 px.
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"segment_mask needs a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    shape = image.shape[:2]
    points = regularise_landmarks(landmarks)
    prior = prior_region(points, shape)
    u, v, d = _frame_coordinates(points, shape)
    radius = max(1, int(round(SEARCH_MARGIN * d)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    search = cv2.dilate(prior.astype(np.uint8), kernel).astype(bool) & (v > 0.12)
    nose_v = _depth(points[2], points, d)
    mouth_v = _depth((points[3] + points[4]) / 2, points, d)
    core = prior & (np.abs(u) < 0.55) & (v > nose_v) & (v < mouth_v + 0.25)

    features = _features(image, d)
    sample = _skin_sample(u, v)
    samples = features[sample]
    if len(samples) < 10 or not core.any():
        # The face is (almost) outside the image: nothing to measure.
        return MaskSegmentation(region=prior.copy(), prior=prior, found=False, contrast=0.0)
    centre, spread = _robust_stats(samples)
    spread = np.maximum(spread, _SPREAD_FLOOR)
    weights = np.array([_LIGHTNESS_WEIGHT, 1.0, 1.0] if _colourful(samples) else [1.0, 0.0, 0.0], dtype=np.float32)

    # Decision on the core as a whole: its median colour against the skin's.
    core_shift = (np.median(features[core], axis=0) - centre) / _CONTRAST_UNIT
    core_weights = np.array([1.0, 1.0, 1.0] if weights[1] else [1.0, 0.0, 0.0], dtype=np.float32)
    contrast = float(np.sqrt((core_weights * core_shift**2).sum()))
    if contrast < FOUND_CONTRAST:
        return MaskSegmentation(region=prior.copy(), prior=prior, found=False, contrast=contrast)

    # Per pixel: not skin by colour, or by texture with some colour evidence.
    distance = np.sqrt((weights * ((features - centre) / spread) ** 2).sum(axis=-1))
    texture = _texture(image, d)
    skin_texture = float(np.median(texture[sample]))
    not_skin = (distance > SKIN_DISTANCE) | ((texture > max(3.0 * skin_texture, 6.0)) & (distance > 0.5 * SKIN_DISTANCE))
    candidate = (not_skin & search).astype(np.uint8)
    small = max(1, int(round(0.04 * d)))
    small_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * small + 1, 2 * small + 1))
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, small_kernel)
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_CLOSE, kernel)
    _, labels = cv2.connectedComponents(candidate, connectivity=8)
    touching = np.unique(labels[core & (labels > 0)])
    region = _fill_holes(np.isin(labels, touching) & (labels > 0)) & search
    if not (region & core).any():
        # The core differs as a whole but no pixel stands out: trust the prior's shape.
        region = prior.copy()
    region = _grabcut(image, region, core, search, skin=distance < 1.0)
    return MaskSegmentation(region=region, prior=prior, found=True, contrast=contrast)


def _grabcut(image: np.ndarray, region: np.ndarray, core: np.ndarray, search: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Split the not-skin region into mask and background (neck, collar, scenery) by colour.

    The not-skin region can run on into a shirt or a background that touches the mask;
    GrabCut learns a colour model for the mask from the core and one for everything else
    from outside the search area and the skin, and cuts along the strongest edges.
    """
    import cv2

    labels = np.full(region.shape, cv2.GC_BGD, dtype=np.uint8)
    labels[search] = cv2.GC_PR_BGD
    labels[search & region] = cv2.GC_PR_FGD
    labels[search & skin & ~core] = cv2.GC_BGD
    sure = cv2.erode((region & core).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    labels[sure] = cv2.GC_FGD
    if not (labels == cv2.GC_FGD).any() or not np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        return region
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models by k-means on OpenCV's per-thread generator, whose
    # state depends on every earlier call: fix it so a face segments the same in training
    # and at inference.
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), labels, None, background, foreground, 4, cv2.GC_INIT_WITH_MASK)
    cut = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    count, components = cv2.connectedComponents(cut.astype(np.uint8), connectivity=8)
    keep = np.unique(components[core & (components > 0)])
    cut = np.isin(components, keep) & (components > 0)
    return _fill_holes(cut) & search


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) regions (1.0 when both are empty)."""
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask_iou: shapes differ, {predicted.shape} vs {truth.shape}")
    union = int((predicted | truth).sum())
    return float((predicted & truth).sum() / union) if union else 1.0
