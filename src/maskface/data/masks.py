"""Procedural face masks anchored on the 5 MTCNN landmarks.

Used three ways: by :mod:`maskface.data.synthetic` for the embedded dataset, by
``maskface simulate-masks`` on real photos, and as a training augmentation. Everything
here therefore works on any RGB image given 5 landmarks (left eye centre, right eye
centre, nose tip, left mouth corner, right mouth corner; image coordinates in pixels,
pixel centres at integer coordinates, "left" = image-left).

Geometry is built in a *face frame* derived from the landmarks so that masks follow
in-plane rotation and scale: the origin is the eye midpoint, ``ex`` points from the
left to the right eye, ``ey`` is perpendicular and points towards the mouth, and the
unit is the eye distance ``d``. Face width and chin are not landmarks, so they are
derived from ``d`` and the eye-to-mouth depth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

MASK_STYLES = ("surgical", "cloth", "n95")

# Supersampling factor for the antialiased mask edge.
_SS = 4

_SURGICAL_COLOURS = ((152, 196, 226), (236, 238, 240), (150, 204, 178), (178, 214, 236))
_N95_COLOURS = ((238, 238, 232), (214, 214, 210), (226, 224, 216))
_VALVE_COLOURS = ((120, 124, 128), (232, 120, 40), (60, 110, 180), (228, 228, 224))


@dataclass(frozen=True)
class _FaceFrame:
    """Similarity frame of a face; lengths in pixels."""

    origin: np.ndarray  # (2,) eye midpoint
    ex: np.ndarray  # (2,) unit vector, left eye -> right eye
    ey: np.ndarray  # (2,) unit vector, eyes -> mouth
    d: float  # eye distance, px
    nose_depth: float  # nose tip below the eye line, px
    mouth_depth: float  # mouth centre below the eye line, px
    mouth_offset: float  # mouth centre along ex (yaw), px

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Face-frame points (K,2) [px along ex, px along ey] -> image points (K,2).

        The centre line leans towards the mouth centre, so a yawed face gets a mask
        that follows the lower face instead of the eye midpoint.
        """
        u = uv[:, 0] + self.mouth_offset * uv[:, 1] / self.mouth_depth
        v = uv[:, 1]
        return self.origin[None, :] + u[:, None] * self.ex[None, :] + v[:, None] * self.ey[None, :]

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_image` for image points (..., 2)."""
        rel = xy - self.origin
        v = rel @ self.ey
        u = rel @ self.ex - self.mouth_offset * v / self.mouth_depth
        return np.stack([u, v], axis=-1)


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(
            f"landmarks must have shape (5, 2) (left eye, right eye, nose, left mouth, right mouth), "
            f"got {points.shape}"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError(f"landmarks must be finite, got {points.tolist()}")
    return points


def _check_style(style: str) -> str:
    if style not in MASK_STYLES:
        raise ValueError(f"unknown mask style {style!r}; valid styles: {', '.join(MASK_STYLES)}")
    return style


def _face_frame(landmarks: np.ndarray) -> _FaceFrame:
    points = _check_landmarks(landmarks)
    left_eye, right_eye, nose, mouth_l, mouth_r = points
    eye_vec = right_eye - left_eye
    d = float(np.hypot(*eye_vec))
    if d < 1e-6:
        raise ValueError(f"landmarks: the two eye centres coincide at {left_eye.tolist()}")
    ex = eye_vec / d
    ey = np.array([-ex[1], ex[0]])
    origin = (left_eye + right_eye) / 2
    mouth = (mouth_l + mouth_r) / 2
    # Landmark detectors sometimes swap the eyes; keep ey pointing at the mouth anyway.
    if float((mouth - origin) @ ey) < 0:
        ey = -ey
    # Clamp depths to plausible face proportions so a bad landmark gives an odd but
    # still face-sized mask rather than a degenerate one.
    mouth_depth = float(np.clip((mouth - origin) @ ey, 0.6 * d, 1.8 * d))
    nose_depth = float(np.clip((nose - origin) @ ey, 0.3 * d, 0.85 * mouth_depth))
    mouth_offset = float(np.clip((mouth - origin) @ ex, -0.5 * d, 0.5 * d))
    return _FaceFrame(origin, ex, ey, d, nose_depth, mouth_depth, mouth_offset)


def _catmull_rom_closed(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """Closed uniform Catmull-Rom spline through ``points`` (K,2) -> (K*samples, 2)."""
    p = np.asarray(points, dtype=np.float64)
    k = len(p)
    index = np.arange(k)
    p0, p1, p2, p3 = (p[(index + shift) % k][:, None, :] for shift in (-1, 0, 1, 2))
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    curve = 0.5 * (
        2 * p1
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    return curve.reshape(-1, 2)


def _style_outline(frame: _FaceFrame, style: str) -> tuple[np.ndarray, dict]:
    """Mask outline in face-frame pixels (K,2) and the style's key measures."""
    d, ny, my = frame.d, frame.nose_depth, frame.mouth_depth
    top = 0.45 * ny  # nose bridge
    if style == "surgical":
        chin = 1.55 * my
        half_w = 1.12 * d
        control = np.array(
            [
                [0.0, top],
                [0.55 * d, top + 0.25 * (ny - top)],
                [half_w, 0.95 * ny],
                [1.08 * d, 0.5 * (ny + my)],
                [0.98 * d, 1.1 * my],
                [0.62 * d, chin - 0.12 * my],
                [0.0, chin],
            ]
        )
    elif style == "cloth":
        chin = 1.5 * my
        half_w = 1.06 * d
        control = np.array(
            [
                [0.0, top - 0.05 * d],
                [0.5 * d, top + 0.15 * (ny - top)],
                [0.92 * d, 0.85 * ny],
                [half_w, 0.5 * (ny + my)],
                [0.9 * d, 1.08 * my],
                [0.5 * d, chin - 0.1 * my],
                [0.0, chin],
            ]
        )
    elif style == "n95":
        chin = 1.45 * my
        half_w = 0.98 * d
        # A cup: a slightly squared ellipse between nose bridge and chin.
        centre = 0.5 * (top + chin)
        half_h = 0.5 * (chin - top)
        angles = np.linspace(-np.pi / 2, np.pi / 2, 7)
        c, s = np.cos(angles), np.sin(angles)
        control = np.stack(
            [half_w * np.sign(c) * np.abs(c) ** 0.85, centre + half_h * np.sign(s) * np.abs(s) ** 0.95], axis=1
        )
        control[:, 0] = np.abs(control[:, 0])
    else:
        raise ValueError(f"unknown mask style {style!r}; valid styles: {', '.join(MASK_STYLES)}")
    # control runs top centre -> right side -> bottom centre; mirror for the left side.
    mirrored = control[-2:0:-1] * np.array([-1.0, 1.0])
    outline = _catmull_rom_closed(np.concatenate([control, mirrored]), samples=8)
    return outline, {"top": float(top), "chin": float(chin), "half_w": float(half_w)}


def _clip_to_rect(polygon: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clip of polygon (K,2) to the rectangle [0,width] x [0,height]."""
    edges = (
        (0, 0.0, True),  # x >= 0
        (0, width, False),  # x <= width
        (1, 0.0, True),  # y >= 0
        (1, height, False),  # y <= height
    )
    points = [np.asarray(p, dtype=np.float64) for p in polygon]
    for axis, bound, keep_greater in edges:
        if not points:
            break

        def inside(p, axis=axis, bound=bound, keep_greater=keep_greater):
            return p[axis] >= bound if keep_greater else p[axis] <= bound

        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    clipped.append(_intersect(previous, current, axis, bound))
                clipped.append(current)
            elif inside(previous):
                clipped.append(_intersect(previous, current, axis, bound))
        points = clipped
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def _intersect(a: np.ndarray, b: np.ndarray, axis: int, bound: float) -> np.ndarray:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    point = a + t * (b - a)
    point[axis] = bound
    return point


def mask_polygon(landmarks: np.ndarray, style: str, image_size: tuple[int, int]) -> np.ndarray:
    """The mask outline for a face, clipped to the image.

    Args:
        landmarks: (5, 2) float, MTCNN order, image pixels.
        style: one of :data:`MASK_STYLES`.
        image_size: ``(width, height)`` in pixels, as PIL's ``Image.size``.

    Returns:
        (K, 2) float64 polygon in image pixels (x, y), from the nose bridge (below the eye
        line) down to below the chin and across the face width; K may be 0 when the face
        lies entirely outside the image.
    """
    _check_style(style)
    width, height = image_size
    frame = _face_frame(landmarks)
    outline, _ = _style_outline(frame, style)
    return _clip_to_rect(frame.to_image(outline), float(width), float(height))


def _supersampled_layer(shapes, size: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons/lines at _SS x and box-downsample; returns float (H, W) in [0, 1].

    ``shapes`` holds ("polygon", points) or ("line", points, width_px) in image pixels.
    """
    width, height = size
    canvas = Image.new("L", (width * _SS, height * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    offset = (_SS - 1) / 2  # pixel centres sit at integer coordinates at both scales
    for shape in shapes:
        points = [tuple(p) for p in (np.asarray(shape[1]) * _SS + offset).tolist()]
        if shape[0] == "polygon":
            if len(points) >= 3:
                draw.polygon(points, fill=255)
        else:
            draw.line(points, fill=255, width=max(1, int(round(shape[2] * _SS))), joint="curve")
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour, amount: float = 8.0) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.normal(0.0, amount, 3), 0, 255)


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    """A random cloth colour: any hue, moderate saturation and value."""
    h = rng.uniform(0, 1)
    s = rng.uniform(0.25, 0.8)
    v = rng.uniform(0.3, 0.9)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _texture(style: str, u: np.ndarray, tv: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """Colour (H, W, 3) float of the mask fabric at face-frame coordinates.

    ``u`` is across the face in units of eye distance (0 on the centre line), ``tv`` runs
    0 at the mask top to 1 at its bottom.
    """
    shape = u.shape
    if style == "surgical":
        base = _jitter(rng, _pick(rng, _SURGICAL_COLOURS), 6.0)
        colour = np.broadcast_to(base, shape + (3,)).copy()
        # Three pleats: a light crest with a shadow just below, drawn as smooth profiles so
        # they stay antialiased at any size.
        relief = np.zeros(shape, dtype=np.float32)
        for centre in (0.34, 0.52, 0.70):
            bend = centre + 0.03 * u**2  # pleats sag towards the ear loops
            relief += 0.10 * np.exp(-(((tv - bend) / 0.03) ** 2))
            relief -= 0.22 * np.exp(-(((tv - bend - 0.045) / 0.02) ** 2))
        # Stiff nose wire along the top edge.
        relief += 0.08 * np.exp(-(((tv - 0.06) / 0.04) ** 2)) * (np.abs(u) < 0.45)
        colour *= (1.0 + relief)[..., None]
    elif style == "cloth":
        base = _hsv_colour(rng)
        second = _hsv_colour(rng)
        colour = np.broadcast_to(base, shape + (3,)).copy()
        pattern = _pick(rng, ("plain", "stripes", "dots", "checks"))
        period = rng.uniform(0.18, 0.32)
        if pattern == "stripes":
            angle = rng.uniform(0, np.pi)
            phase = (u * np.cos(angle) + tv * 1.6 * np.sin(angle)) / period
            weight = (np.sin(2 * np.pi * phase) > 0.2).astype(np.float32)
        elif pattern == "dots":
            gu = (u / period) % 1.0 - 0.5
            gv = ((tv * 1.6) / period) % 1.0 - 0.5
            weight = (gu**2 + gv**2 < 0.07).astype(np.float32)
        elif pattern == "checks":
            weight = (((np.floor(u / period) + np.floor(tv * 1.6 / period)) % 2) == 0).astype(np.float32)
        else:
            weight = np.zeros(shape, dtype=np.float32)
        colour = colour * (1 - weight[..., None]) + second * weight[..., None]
        # Woven texture and the centre seam of a two-piece cloth mask.
        weave = 0.05 * np.sin(2 * np.pi * u * d / 2.2) * np.sin(2 * np.pi * tv * d / 1.7)
        seam = -0.28 * np.exp(-((u / 0.035) ** 2))
        colour *= (1.0 + weave + seam)[..., None]
    elif style == "n95":
        base = _jitter(rng, _pick(rng, _N95_COLOURS), 5.0)
        colour = np.broadcast_to(base, shape + (3,)).copy()
        # Moulded cup: a vertical centre seam and a faint ridge across the cup.
        relief = -0.18 * np.exp(-((u / 0.03) ** 2)) + 0.06 * np.exp(-(((tv - 0.45) / 0.12) ** 2))
        colour *= (1.0 + relief)[..., None]
        if rng.random() < 0.5:
            side = 1.0 if rng.random() < 0.5 else -1.0
            valve_u, valve_v, radius = 0.42 * side, 0.6, 0.2
            dist = np.hypot(u - valve_u, (tv - valve_v) * 1.5)
            valve = np.clip((radius - dist) / 0.02, 0.0, 1.0)
            valve_colour = _jitter(rng, _pick(rng, _VALVE_COLOURS), 5.0)
            ring = np.exp(-(((dist - 0.6 * radius) / 0.015) ** 2))
            # Slits across the valve cover.
            slits = 0.25 * (np.sin(2 * np.pi * (tv - valve_v) * 1.5 / 0.07) > 0.3)
            valve_rgb = valve_colour[None, None, :] * (1.0 - 0.3 * ring - slits)[..., None]
            colour = colour * (1 - valve[..., None]) + valve_rgb * valve[..., None]
    else:
        raise ValueError(f"unknown mask style {style!r}; valid styles: {', '.join(MASK_STYLES)}")
    return colour


def _straps(frame: _FaceFrame, style: str, measures: dict) -> list[np.ndarray]:
    """Ear loops / head straps as face-frame polylines (outside the mask region)."""
    d, ny, my = frame.d, frame.nose_depth, frame.mouth_depth
    half_w = measures["half_w"]
    ear_x = 1.42 * d
    if style == "n95":
        centre = 0.5 * (measures["top"] + measures["chin"])
        return [
            np.array([[half_w * 0.97, centre - 0.35 * my], [ear_x, 0.15 * d]]),
            np.array([[half_w * 0.97, centre + 0.25 * my], [ear_x, 0.9 * my]]),
        ]
    top_y = 0.95 * ny if style == "surgical" else 0.85 * ny
    return [
        np.array([[half_w * 0.97, top_y], [ear_x, 0.3 * d], [ear_x + 0.05 * d, 0.45 * d]]),
        np.array([[0.95 * d, 1.05 * my], [ear_x - 0.05 * d, 0.8 * my], [ear_x + 0.05 * d, 0.6 * d]]),
    ]


def draw_mask(
    image: Image.Image,
    landmarks: np.ndarray,
    style: str | None,
    rng: np.random.Generator,
) -> tuple[Image.Image, np.ndarray]:
    """Draw a face mask onto ``image``.

    Args:
        image: RGB image (any size); not modified.
        landmarks: (5, 2) float, MTCNN order, pixels of ``image``.
        style: one of :data:`MASK_STYLES`, or None for a random one.
        rng: source of colours, patterns and the optional valve.

    Returns:
        (masked RGB image of the same size, bool (H, W) ground-truth mask region). The
        region is the rasterised :func:`mask_polygon` (pixels at least half covered);
        thin ear loops are drawn outside it and are not part of the region.
    """
    if style is None:
        style = _pick(rng, MASK_STYLES)
    _check_style(style)
    if image.mode != "RGB":
        raise ValueError(f"draw_mask needs an RGB image, got mode {image.mode!r}")
    width, height = image.size
    frame = _face_frame(landmarks)
    outline, measures = _style_outline(frame, style)
    # Drawn unclipped: clipping would put a half-covered pixel and a hem on the image border.
    polygon = frame.to_image(outline)

    alpha = _supersampled_layer([("polygon", polygon)], image.size)
    edge_width = max(1.0, 0.05 * frame.d)
    edge = _supersampled_layer([("line", np.concatenate([polygon, polygon[:1]]), edge_width)], image.size)
    edge *= alpha  # only the inner half of the stroke: the hem lies on the mask

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    uv = frame.to_frame(np.stack([xs, ys], axis=-1))
    u = (uv[..., 0] / frame.d).astype(np.float32)
    tv = ((uv[..., 1] - measures["top"]) / (measures["chin"] - measures["top"])).astype(np.float32)

    colour = _texture(style, u, tv, frame.d, rng)
    # Vertical shading: the mask turns away from the light towards the chin; plus a
    # cylindrical fall-off towards the cheeks.
    across = u / (measures["half_w"] / frame.d)
    shade = 1.08 - 0.26 * np.clip(tv, 0.0, 1.0) - 0.2 * np.clip(across, -1.0, 1.0) ** 2
    colour = colour * shade[..., None] * (1.0 - 0.22 * edge)[..., None]
    colour += rng.normal(0.0, 2.5, colour.shape).astype(np.float32)  # fabric grain

    strap_colour = colour[alpha > 0.5].mean(axis=0) * 0.92 if np.any(alpha > 0.5) else np.full(3, 200.0)
    strap_width = max(0.8, 0.035 * frame.d)
    strap_lines = []
    for strap in _straps(frame, style, measures):
        for sign in (1.0, -1.0):
            strap_lines.append(("line", frame.to_image(strap * np.array([sign, 1.0])), strap_width))
    straps = _supersampled_layer(strap_lines, image.size) * (1.0 - alpha)

    pixels = np.asarray(image, dtype=np.float32)
    out = pixels * (1 - straps[..., None]) + strap_colour[None, None, :] * straps[..., None]
    out = out * (1 - alpha[..., None]) + colour * alpha[..., None]
    result = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    return result, alpha >= 0.5
