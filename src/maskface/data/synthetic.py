"""The embedded default dataset: seeded, procedurally drawn faces, some wearing masks.

Identity lives in the upper face (eye spacing/shape, iris colour, brows, forehead
height, hairline and hair colour, skin tone) and in the lower face (nose, mouth, lips,
jaw and chin), so a model can lean on either. Each image varies pose (in-plane
rotation, scale, shift: the eye line lands at varying heights), lighting and noise.

Faces are drawn in a *canonical frame* (coordinates are fractions of the image side,
face centred at x = 0.5, eye line at y = ``EYE_LINE``); every point goes through the
image's similarity transform before it is drawn, so the ground-truth landmarks are
exact. Drawing happens on a supersampled canvas that is box-downsampled for
antialiasing; masks are added afterwards by :func:`maskface.data.masks.draw_mask` from the
landmarks, exactly as on real photos.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from maskface.config import SyntheticConfig
from maskface.data.masks import MASK_STYLES, draw_mask, mask_polygon
from maskface.tables import write_csv

logger = logging.getLogger(__name__)

EYE_LINE = 0.42  # canonical eye-line height, fraction of the image side
LANDMARK_COLUMNS = ("le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y", "ml_x", "ml_y", "mr_x", "mr_y")
CSV_COLUMNS = ("path", "identity", "masked", "mask_style", "size", *LANDMARK_COLUMNS, "mask_polygon")
GROUND_TRUTH_CSV = "ground_truth.csv"

_SS = 3  # supersampling factor of the face canvas
_IDENTITY_DIR = re.compile(r"^id\d{2,}$")

# Skin tones from light to dark; an identity interpolates between neighbours.
_SKIN_TONES = np.array(
    [(255, 226, 204), (241, 194, 160), (224, 172, 128), (198, 134, 92), (150, 96, 62), (96, 60, 40)],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [(20, 16, 14), (52, 36, 24), (92, 60, 34), (150, 104, 60), (214, 178, 118), (150, 60, 30), (160, 158, 156)],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [(60, 36, 20), (104, 66, 34), (70, 110, 160), (90, 130, 90), (120, 140, 150), (140, 100, 50)],
    dtype=np.float64,
)
_LIP_TINTS = np.array([(0.9, 0.6, 0.65), (0.92, 0.5, 0.48), (0.75, 0.55, 0.5), (0.8, 0.58, 0.7)])
_HAIR_STYLES = ("short", "side_part", "long", "buzz")


@dataclass(frozen=True)
class FaceIdentity:
    """The traits of one synthetic person.

    Lengths are fractions of the image side in the canonical frame; colours are RGB in
    [0, 255]; angles in degrees.
    """

    # upper face
    skin: tuple[float, float, float]
    eye_spacing: float  # distance between eye centres
    eye_width: float
    eye_aspect: float  # eye height / eye width
    eye_tilt: float  # outer corners up (+) or down (-), degrees
    iris: tuple[float, float, float]
    brow_gap: float  # eye centre to brow
    brow_thickness: float
    brow_arch: float
    brow_slope: float  # outer end lower (+) or higher (-)
    forehead: float  # eye line to hairline
    hairline_peak: float  # widow's peak (+) or rounded (-) hairline
    hair_part: float  # hairline tilt for a side parting
    hair: tuple[float, float, float]
    hair_style: str
    hair_volume: float
    # face outline
    face_width: float
    jaw_width: float  # jaw-angle half width / face half width
    chin_width: float  # chin half width / face half width
    # lower face
    nose_length: float  # eye line to nose tip
    nose_width: float
    nose_tip: float  # tip bulb size, relative
    mouth_gap: float  # nose tip to mouth line
    mouth_width: float
    lip: tuple[float, float, float]
    lip_upper: float
    lip_lower: float
    chin_gap: float  # mouth line to chin
    moustache: bool


def _lerp_palette(palette: np.ndarray, t: float) -> np.ndarray:
    position = t * (len(palette) - 1)
    i = min(int(position), len(palette) - 2)
    f = position - i
    return palette[i] * (1 - f) + palette[i + 1] * f


def _colour(values: np.ndarray) -> tuple[float, float, float]:
    clipped = np.clip(values, 0, 255)
    return (float(clipped[0]), float(clipped[1]), float(clipped[2]))


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    """Draw the traits of a new person; ranges are wide enough to tell ~24 people apart."""
    skin = _lerp_palette(_SKIN_TONES, rng.uniform(0, 1)) + rng.normal(0, 6, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2) + rng.normal(0, 8, 3)
    # Lips: the skin tinted towards one of a few lip hues (pink, red, brown, mauve).
    lip_hue = _LIP_TINTS[rng.integers(len(_LIP_TINTS))]
    lip = skin * lip_hue * rng.uniform(0.7, 1.0)
    eye_spacing = rng.uniform(0.26, 0.33)
    return FaceIdentity(
        skin=_colour(skin),
        eye_spacing=eye_spacing,
        eye_width=rng.uniform(0.38, 0.48) * eye_spacing,
        eye_aspect=rng.uniform(0.34, 0.55),
        eye_tilt=rng.uniform(-8, 8),
        iris=_colour(iris),
        brow_gap=rng.uniform(0.045, 0.075),
        brow_thickness=rng.uniform(0.010, 0.026),
        brow_arch=rng.uniform(0.0, 0.022),
        brow_slope=rng.uniform(-0.012, 0.014),
        forehead=rng.uniform(0.16, 0.27),
        hairline_peak=rng.uniform(-0.03, 0.035),
        hair_part=rng.uniform(-0.06, 0.06),
        hair=_colour(hair),
        hair_style=_HAIR_STYLES[int(rng.integers(len(_HAIR_STYLES)))],
        hair_volume=rng.uniform(0.005, 0.05),
        face_width=rng.uniform(2.15, 2.45) * eye_spacing,
        jaw_width=rng.uniform(0.6, 0.92),
        chin_width=rng.uniform(0.1, 0.45),
        nose_length=rng.uniform(0.15, 0.21),
        nose_width=rng.uniform(0.07, 0.13),
        nose_tip=rng.uniform(0.7, 1.4),
        mouth_gap=rng.uniform(0.075, 0.11),
        mouth_width=rng.uniform(0.1, 0.18),
        lip=_colour(lip),
        lip_upper=rng.uniform(0.007, 0.02),
        lip_lower=rng.uniform(0.01, 0.028),
        chin_gap=rng.uniform(0.11, 0.16),
        moustache=bool(rng.random() < 0.2),
    )


class _Canvas:
    """A supersampled RGB canvas that draws canonical-frame shapes through a similarity."""

    def __init__(self, size: int, matrix: np.ndarray, background: tuple[int, int, int]):
        self.size = size
        self.matrix = matrix  # (2, 3): canonical fraction -> output pixel
        self.image = Image.new("RGB", (size * _SS, size * _SS), background)
        self.draw = ImageDraw.Draw(self.image)
        self.scale = float(np.hypot(*matrix[:, 0]))  # output px per canonical unit

    def to_output(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def _to_canvas(self, points: np.ndarray) -> list[tuple[float, float]]:
        # Output pixel centres are integers; on the supersampled grid the centre of
        # output pixel k is at _SS*k + (_SS-1)/2.
        pts = self.to_output(points) * _SS + (_SS - 1) / 2
        return [tuple(p) for p in pts.tolist()]

    def polygon(self, points: np.ndarray, fill) -> None:
        self.draw.polygon(self._to_canvas(points), fill=_rgb(fill))

    def line(self, points: np.ndarray, fill, width: float) -> None:
        w = max(1, int(round(width * self.scale * _SS)))
        self.draw.line(self._to_canvas(points), fill=_rgb(fill), width=w, joint="curve")

    def mask_of(self, points: np.ndarray) -> Image.Image:
        mask = Image.new("L", self.image.size, 0)
        ImageDraw.Draw(mask).polygon(self._to_canvas(points), fill=255)
        return mask


def _rgb(colour) -> tuple[int, int, int]:
    c = np.clip(np.rint(np.asarray(colour, dtype=np.float64)), 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _scaled(colour, factor: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float64) * factor


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = np.deg2rad(angle_deg)
    return np.stack([cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a)], axis=1)


def _catmull_rom(points: np.ndarray, samples: int = 8, closed: bool = True) -> np.ndarray:
    """Uniform Catmull-Rom spline through ``points`` (K, 2), ``samples`` points per segment."""
    p = np.asarray(points, dtype=np.float64)
    if not closed:
        # Reflected end points make the open curve start and end on the given points.
        p = np.concatenate([p[:1] * 2 - p[1:2], p, p[-1:] * 2 - p[-2:-1]])
    k = len(p)
    index = np.arange(k) if closed else np.arange(1, k - 2)
    p0, p1, p2, p3 = (p[(index + shift) % k][:, None, :] for shift in (-1, 0, 1, 2))
    t = np.linspace(0, 1, samples, endpoint=False)[None, :, None]
    curve = 0.5 * (
        2 * p1
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    curve = curve.reshape(-1, 2)
    return curve if closed else np.concatenate([curve, p[-2:-1]])


def _mirror(points: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - points[:, 0], points[:, 1]], axis=1)


@dataclass(frozen=True)
class _Layout:
    """Canonical positions of one rendered face (after per-image expression jitter)."""

    eye_y: float
    nose_y: float
    mouth_y: float
    chin_y: float
    half_w: float
    mouth_w: float
    brow_lift: float


def _face_outline(f: FaceIdentity, lay: _Layout) -> np.ndarray:
    """Closed head outline (forehead to chin), canonical frame, (K, 2)."""
    hw, ey = lay.half_w, lay.eye_y
    top = ey - f.forehead - 0.12
    right = np.array(
        [
            [0.5 + 0.62 * hw, top + 0.04],
            [0.5 + 0.93 * hw, ey - 0.12],
            [0.5 + hw, ey + 0.04],
            [0.5 + 0.95 * hw, lay.nose_y + 0.01],
            [0.5 + f.jaw_width * hw, lay.mouth_y + 0.03],
            [0.5 + max(f.chin_width * hw, 0.04), lay.chin_y - 0.025],
        ]
    )
    control = np.concatenate([[[0.5, top]], right, [[0.5, lay.chin_y]], _mirror(right)[::-1]])
    return _catmull_rom(control, samples=10)


def _hair_shapes(f: FaceIdentity, lay: _Layout) -> tuple[np.ndarray | None, np.ndarray]:
    """(back hair polygon or None, front hair polygon) in the canonical frame."""
    hw, ey = lay.half_w, lay.eye_y
    vol = f.hair_volume if f.hair_style != "buzz" else 0.004
    top = ey - f.forehead - 0.12 - vol
    hairline = ey - f.forehead
    # Outer contour of the hair over the skull, right temple -> top -> left temple.
    outer_right = np.array(
        [
            [0.5 + hw + vol * 0.6, ey - 0.02],
            [0.5 + 0.97 * hw + vol, ey - 0.14],
            [0.5 + 0.66 * hw + vol, top + 0.045],
        ]
    )
    outer = np.concatenate([outer_right, [[0.5, top]], _mirror(outer_right)[::-1]])
    # Hairline, left temple -> centre -> right temple; part tilts it, peak dips the centre.
    xs = np.array([-1.0, -0.8, -0.45, 0.0, 0.45, 0.8, 1.0])
    ys = hairline + 0.06 * xs**2 + f.hair_part * xs * 0.5 + f.hairline_peak * np.exp(-((xs / 0.25) ** 2))
    ys[0] = ys[-1] = ey - 0.04  # sideburns reach down to the temples
    ys[1] = ys[-2] = min(ys[1], ey - 0.09)
    xs_canon = 0.5 + xs * hw * np.array([1.0, 0.93, 1, 1, 1, 0.93, 1.0])
    hairline_pts = np.stack([xs_canon, ys], axis=1)
    front = np.concatenate([_catmull_rom(outer, 6, closed=False), _catmull_rom(hairline_pts, 6, closed=False)])
    back = None
    if f.hair_style == "long":
        drop = lay.chin_y + 0.08
        back_right = np.array(
            [[0.5 + 0.7 * hw + vol, top + 0.03], [0.5 + hw + 0.05 + vol, ey], [0.5 + hw + 0.07, drop]]
        )
        back = np.concatenate(
            [[[0.5, top - 0.005]], back_right, [[0.5 + hw * 0.5, drop + 0.03]], [[0.5 - hw * 0.5, drop + 0.03]]]
            + [_mirror(back_right)[::-1]]
        )
        back = _catmull_rom(back, samples=8)
    elif f.hair_style == "side_part" or vol > 0.03:
        back = _ellipse(0.5, ey - 0.05, hw + vol + 0.01, ey - 0.05 - top + 0.005)
    return back, front


def _eye(canvas: _Canvas, f: FaceIdentity, cx: float, cy: float, outer_sign: float, socket) -> None:
    """Draw one eye centred (pupil) at (cx, cy); outer_sign is -1 for image-left."""
    ew, eh = f.eye_width, f.eye_width * f.eye_aspect
    tilt = -f.eye_tilt * outer_sign  # image y points down: raise the outer corner
    canvas.polygon(_ellipse(cx, cy, ew * 0.68, eh * 1.15, tilt), socket)
    t = np.linspace(-1, 1, 17)
    upper = np.stack([cx + t * ew / 2, cy - eh / 2 * (1 - t**2) ** 0.7], axis=1)
    lower = np.stack([cx - t * ew / 2, cy + eh / 2 * 0.85 * (1 - t**2) ** 0.9], axis=1)
    a = np.deg2rad(tilt)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    def turn(points: np.ndarray) -> np.ndarray:
        return (points - (cx, cy)) @ rot.T + (cx, cy)

    almond = turn(np.concatenate([upper, lower]))
    canvas.polygon(almond, (236, 232, 226))
    # Iris ~0.4 of the eye width, as in real eyes; the lids below hide its top and bottom.
    radius = min(0.2 * ew, 0.62 * eh)
    canvas.polygon(_ellipse(cx, cy, radius, radius, n=28), f.iris)
    canvas.polygon(_ellipse(cx, cy, radius * 0.55, radius * 0.55, n=20), (14, 12, 12))
    canvas.polygon(_ellipse(cx + radius * 0.3, cy - radius * 0.3, radius * 0.16, radius * 0.16, n=12), (250, 250, 250))
    # The iris circle overhangs the almond near its top and bottom; cover it with lids.
    lid_top = turn(np.concatenate([upper, upper[::-1] - (0, eh * 0.55)]))
    lid_bottom = turn(np.concatenate([lower, lower[::-1] + (0, eh * 0.4)]))
    canvas.polygon(lid_top, socket)
    canvas.polygon(lid_bottom, socket)
    canvas.line(turn(upper), (40, 28, 24), 0.006)
    canvas.line(turn(upper - (0, eh * 0.28)), _scaled(socket, 0.82), 0.003)  # crease


def _brow(canvas: _Canvas, f: FaceIdentity, cx: float, cy: float, outer_sign: float, lift: float) -> None:
    length = f.eye_width * 1.35
    t = np.linspace(0, 1, 12)  # inner end -> outer end
    x = cx + outer_sign * (-0.35 * length + t * length)
    y = cy - f.brow_gap - lift - f.brow_arch * np.sin(np.pi * (0.3 + 0.7 * t)) + f.brow_slope * t
    thickness = f.brow_thickness * (1.1 - 0.6 * t)
    top = np.stack([x, y - thickness / 2], axis=1)
    bottom = np.stack([x, y + thickness / 2], axis=1)
    canvas.polygon(np.concatenate([top, bottom[::-1]]), _scaled(f.hair, 0.75) + 10)


def _nose(canvas: _Canvas, f: FaceIdentity, lay: _Layout, skin) -> None:
    nw, ny = f.nose_width, lay.nose_y
    for side in (-1.0, 1.0):
        bridge = np.array(
            [
                [0.5 + side * nw * 0.22, lay.eye_y + 0.03],
                [0.5 + side * nw * 0.26, ny - 0.04],
                [0.5 + side * nw * 0.42, ny - 0.01],
            ]
        )
        canvas.line(_catmull_rom(bridge, 6, closed=False), _scaled(skin, 0.88), 0.006)
    canvas.polygon(_ellipse(0.5, ny + nw * 0.2, nw * 0.55, nw * 0.12), _scaled(skin, 0.8))  # shadow under the nose
    for side in (-1.0, 1.0):
        canvas.polygon(_ellipse(0.5 + side * nw * 0.36, ny + nw * 0.04, nw * 0.19, nw * 0.16), _scaled(skin, 0.9))
    canvas.polygon(_ellipse(0.5, ny, nw * 0.27 * f.nose_tip, nw * 0.2 * f.nose_tip), _scaled(skin, 1.04))
    for side in (-1.0, 1.0):
        nostril = _ellipse(0.5 + side * nw * 0.2, ny + nw * 0.15, nw * 0.09, nw * 0.05, side * 15)
        canvas.polygon(nostril, _scaled(skin, 0.35))


def _mouth(canvas: _Canvas, f: FaceIdentity, lay: _Layout, smile: float) -> None:
    mw, my = lay.mouth_w, lay.mouth_y
    t = np.linspace(-1, 1, 21)
    x = 0.5 + t * mw / 2
    line = my + smile * (1 - t**2)  # smile > 0: centre lower; the corners stay on the landmarks
    bow = f.lip_upper * (1 - t**2) ** 0.6 * (1 - 0.35 * np.exp(-((t / 0.12) ** 2)))
    upper = np.stack([x, line - bow], axis=1)
    lower = np.stack([x, line + f.lip_lower * (1 - t**2) ** 0.6], axis=1)
    mouth_line = np.stack([x, line], axis=1)
    if f.moustache:
        band = np.stack([x * 1.1 - 0.05, line - bow - 0.004], axis=1)
        canvas.polygon(np.concatenate([band, band[::-1] - (0, 0.022)]), _scaled(f.hair, 0.85))
    canvas.polygon(np.concatenate([upper, mouth_line[::-1]]), _scaled(f.lip, 0.9))
    canvas.polygon(np.concatenate([mouth_line, lower[::-1]]), f.lip)
    canvas.line(mouth_line, _scaled(f.lip, 0.45), 0.005)


def _similarity(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """Per-image pose: canonical fraction -> output pixels, (2, 3)."""
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.88, 1.12)
    # Shifts are skewed downward so the eye line sometimes falls to mid-height and a
    # fixed upper-half crop cuts into the eyes, as in the study.
    shift = np.array([rng.uniform(-0.06, 0.06), rng.uniform(-0.07, 0.1)])
    a = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([0.5, 0.5])
    offset = centre - rot @ centre + shift
    # Output pixel centres run 0..size-1, so the canonical unit square maps onto [-0.5, size-0.5].
    matrix = np.concatenate([rot * size, (offset * size - 0.5)[:, None]], axis=1)
    return matrix, {"angle": angle, "scale": scale, "shift": shift}


def render_face(
    identity: FaceIdentity,
    rng: np.random.Generator,
    size: int,
    masked: bool,
    mask_style: str | None,
) -> tuple[Image.Image, dict]:
    """Render one image of ``identity``.

    Args:
        identity: the person (see :func:`sample_identity`).
        rng: source of the per-image variation (pose, lighting, noise, mask look).
        size: output side in pixels (square).
        masked: draw a mask over nose, mouth and chin.
        mask_style: one of :data:`maskface.data.masks.MASK_STYLES`, or None for a random
            style; ignored when ``masked`` is False (an unknown name is refused either way).

    Returns:
        (RGB image size x size, ground truth) where ground truth holds ``landmarks``
        (5, 2) float64 pixels (MTCNN order, image-left first, pixel centres at integer
        coordinates), ``masked`` bool, ``mask_style`` ("" when unmasked),
        ``mask_polygon`` (K, 2) float64 pixels or None, ``mask_region`` bool (size, size)
        or None, and ``pose`` (angle degrees, scale, shift as fractions of the side).
    """
    if mask_style is not None and mask_style not in MASK_STYLES:
        raise ValueError(f"unknown mask style {mask_style!r}; valid styles: {', '.join(MASK_STYLES)}")
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    f = identity
    matrix, pose = _similarity(rng, size)

    # Small per-image expression changes: the same person, not a frozen template.
    mouth_w = f.mouth_width * rng.uniform(0.95, 1.05)
    smile = rng.uniform(-0.002, 0.008)
    lay = _Layout(
        eye_y=EYE_LINE,
        nose_y=EYE_LINE + f.nose_length,
        mouth_y=EYE_LINE + f.nose_length + f.mouth_gap,
        chin_y=EYE_LINE + f.nose_length + f.mouth_gap + f.chin_gap,
        half_w=f.face_width / 2,
        mouth_w=mouth_w,
        brow_lift=rng.uniform(-0.004, 0.008),
    )
    skin = np.asarray(f.skin)
    background = _rgb(rng.uniform(40, 220, 3) * np.array([1.0, rng.uniform(0.85, 1.1), rng.uniform(0.8, 1.15)]))
    canvas = _Canvas(size, matrix, background)

    # Body: shoulders in a per-image shirt colour (clothes are not identity), then neck.
    hw = lay.half_w
    shirt = rng.uniform(20, 230, 3)
    shoulders = np.array([[0.5 - 0.5 * hw, lay.chin_y + 0.05], [-0.3, lay.chin_y + 0.2], [-0.3, 2.0]])
    shoulders = np.concatenate([shoulders, _mirror(shoulders)[::-1]])
    canvas.polygon(_catmull_rom(shoulders, 6), shirt)
    back, front = _hair_shapes(f, lay)
    if back is not None:
        canvas.polygon(back, _scaled(f.hair, 0.8))
    neck = np.array(
        [
            [0.5 - 0.45 * hw, lay.mouth_y],
            [0.5 + 0.45 * hw, lay.mouth_y],
            [0.5 + 0.5 * hw, lay.chin_y + 0.12],
            [0.5 - 0.5 * hw, lay.chin_y + 0.12],
        ]
    )
    canvas.polygon(neck, _scaled(skin, 0.78))
    canvas.polygon(np.concatenate([neck[2:], neck[2:][::-1] + (0, 0.3)]), shirt)  # collar line
    for side in (-1.0, 1.0):
        ear_x, ear_y = 0.5 + side * (hw + 0.012), (lay.eye_y + lay.nose_y) / 2
        canvas.polygon(_ellipse(ear_x, ear_y, 0.04, 0.085), _scaled(skin, 0.9))
        canvas.polygon(_ellipse(ear_x + side * 0.008, ear_y, 0.018, 0.05), _scaled(skin, 0.72))

    outline = _face_outline(f, lay)
    canvas.polygon(outline, skin)
    socket = _scaled(skin, 0.94)
    eyes = np.array([[0.5 - f.eye_spacing / 2, lay.eye_y], [0.5 + f.eye_spacing / 2, lay.eye_y]])
    for (cx, cy), outer_sign in zip(eyes, (-1.0, 1.0)):
        _eye(canvas, f, cx, cy, outer_sign, socket)
    _nose(canvas, f, lay, skin)
    _mouth(canvas, f, lay, smile)
    canvas.polygon(front, f.hair)
    for (cx, cy), outer_sign in zip(eyes, (-1.0, 1.0)):
        _brow(canvas, f, cx, cy, outer_sign, lay.brow_lift)

    # Rounded-face shading: darken skin towards the outline (at output resolution: the
    # shading is smooth, so supersampling it buys nothing).
    face_mask = canvas.mask_of(outline).reduce(_SS)
    blur = face_mask.filter(ImageFilter.BoxBlur(max(1, int(0.06 * size))))
    pixels = np.asarray(canvas.image.reduce(_SS), dtype=np.float32)
    inside = np.asarray(face_mask, dtype=np.float32) / 255.0
    roundness = np.asarray(blur, dtype=np.float32) / 255.0
    pixels *= (1.0 - inside * 0.25 * (1.0 - roundness))[..., None]
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

    landmarks = canvas.to_output(
        np.array(
            [
                eyes[0],
                eyes[1],
                [0.5, lay.nose_y],
                [0.5 - mouth_w / 2, lay.mouth_y],
                [0.5 + mouth_w / 2, lay.mouth_y],
            ]
        )
    )

    polygon = region = None
    style = ""
    if masked:
        style = mask_style if mask_style is not None else MASK_STYLES[int(rng.integers(len(MASK_STYLES)))]
        polygon = mask_polygon(landmarks, style, image.size)
        image, region = draw_mask(image, landmarks, style, rng)

    image = _photograph(image, rng)
    truth = {
        "landmarks": landmarks,
        "masked": bool(masked),
        "mask_style": style,
        "mask_polygon": polygon,
        "mask_region": region,
        "pose": pose,
    }
    return image, truth


def _photograph(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera effects: slight blur, brightness, a lighting gradient, colour cast, noise."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    pixels = np.asarray(image, dtype=np.float32)
    h, w = pixels.shape[:2]
    direction = rng.uniform(0, 2 * np.pi)
    ramp_x = (np.arange(w, dtype=np.float32) - w / 2) * np.float32(np.cos(direction) / w)
    ramp_y = (np.arange(h, dtype=np.float32) - h / 2) * np.float32(np.sin(direction) / w)
    ramp = ramp_y[:, None] + ramp_x[None, :]
    gain = np.float32(rng.uniform(0.75, 1.2)) * (1.0 + np.float32(rng.uniform(0.0, 0.5)) * ramp)
    cast = 1.0 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    pixels = pixels * gain[..., None] * cast[None, None, :]
    pixels += rng.normal(0.0, rng.uniform(1.0, 6.0), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _masked_per_identity(config: SyntheticConfig) -> int:
    """Masked images per identity: the share, but always >= 2 masked and >= 2 unmasked."""
    n = config.images_per_identity
    return int(min(max(round(config.masked_share * n), 2), n - 2))


def _clear_owned(out_dir: Path) -> None:
    """Remove what a previous run wrote (identity folders, the CSV); leave anything else."""
    if not out_dir.is_dir():
        return
    for child in out_dir.iterdir():
        if child.is_dir() and _IDENTITY_DIR.match(child.name):
            shutil.rmtree(child)
    (out_dir / GROUND_TRUTH_CSV).unlink(missing_ok=True)


def _round(value: float) -> float:
    return float(round(float(value), 2))


def generate_dataset(out_dir: Path, config: SyntheticConfig) -> pd.DataFrame:
    """Render the dataset to ``out_dir`` and return its ground-truth table.

    Writes ``out_dir/<identity>/<identity>_<k:02d>.png`` and ``out_dir/ground_truth.csv``
    (columns :data:`CSV_COLUMNS`; landmark and polygon coordinates in pixels rounded to
    0.01). Same config -> byte-identical files. Previous identity folders and the CSV in
    ``out_dir`` are replaced; other content is left alone.
    """
    out_dir = Path(out_dir)
    _clear_owned(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(config.identities - 1)))
    n_masked = _masked_per_identity(config)
    total = config.identities * config.images_per_identity
    rows = []
    with tqdm(total=total, desc="synthetic faces", unit="img") as progress:
        for i in range(config.identities):
            name = f"id{i:0{width}d}"
            # Independent streams per identity and per image, so changing one count does
            # not reshuffle every other face.
            identity_rng = np.random.default_rng([config.seed, 0, i])
            identity = sample_identity(identity_rng)
            masked_flags = np.zeros(config.images_per_identity, dtype=bool)
            masked_flags[identity_rng.permutation(config.images_per_identity)[:n_masked]] = True
            (out_dir / name).mkdir()
            for k in range(config.images_per_identity):
                rng = np.random.default_rng([config.seed, 1, i, k])
                size = int(rng.integers(config.min_size, config.max_size + 1))
                image, truth = render_face(identity, rng, size, bool(masked_flags[k]), None)
                relative = f"{name}/{name}_{k:02d}.png"
                # Fast zlib level: the noise makes these PNGs nearly incompressible anyway.
                image.save(out_dir / relative, format="PNG", compress_level=1)
                row = {
                    "path": relative,
                    "identity": name,
                    "masked": truth["masked"],
                    "mask_style": truth["mask_style"],
                    "size": size,
                }
                for column, value in zip(LANDMARK_COLUMNS, truth["landmarks"].reshape(-1)):
                    row[column] = _round(value)
                polygon = truth["mask_polygon"]
                row["mask_polygon"] = (
                    json.dumps([[_round(x), _round(y)] for x, y in polygon]) if polygon is not None else ""
                )
                rows.append(row)
                progress.update(1)
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    write_csv(table, out_dir / GROUND_TRUTH_CSV)
    masked = int(table["masked"].sum())
    styles = table.loc[table["masked"], "mask_style"].value_counts().sort_index()
    logger.info(
        "synthetic dataset: %d identities x %d images (%d masked: %s), sizes %d-%d px, seed %d -> %s",
        config.identities,
        config.images_per_identity,
        masked,
        ", ".join(f"{style} {count}" for style, count in styles.items()),
        config.min_size,
        config.max_size,
        config.seed,
        out_dir,
    )
    return table
