"""Face geometry: MTCNN landmarks (with a border for pre-cropped faces) and similarity alignment.

Landmarks are the 5 MTCNN points in this order: left eye centre, right eye centre, nose
tip, left mouth corner, right mouth corner ("left" = image-left), in pixels of the
original image with pixel centres at integer coordinates (the convention of
:mod:`maskface.data.masks` and OpenCV's ``warpAffine``).

The split stage detects once per dataset and writes the **landmark table**
(``data/landmarks.csv``, columns :data:`TABLE_COLUMNS`): ``detected`` (bool), the face box
``x1, y1, x2, y2``, the landmarks ``le_x ... mr_y``, ``confidence`` (MTCNN's final-stage
face probability, empty when no face), ``padded`` (the border added before detection, as
a fraction of the longer image side; 0 = none) and ``landmark_source`` (one of
:data:`LANDMARK_SOURCES`). The crop stage and inference align with
:func:`alignment_matrix` and :func:`warp_affine`.

Why a border: RMFRD and LFW crops are framed so tightly that the face touches the image
edge, and MTCNN's proposal network misses faces it cannot see whole. A flat grey border
restores the context; detections are mapped back to the original pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from maskface.errors import InputError
from maskface.hardware import usable_cpu_cores
from maskface.imageio import load_rgb
from maskface.data.synthetic import GROUND_TRUTH_CSV, LANDMARK_COLUMNS
from maskface.tables import read_csv, write_csv_atomically

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
TABLE_COLUMNS = ("path", "detected", *BOX_COLUMNS, *LANDMARK_COLUMNS, "confidence", "padded", "landmark_source")
# mtcnn: detected here; ground_truth: the synthetic renderer's own landmarks; none: detection
# was not needed by the pipeline settings and was skipped.
LANDMARK_SOURCES = ("mtcnn", "ground_truth", "none")
# Which landmarks drive the alignment: the two eyes (robust to masks, which hide or displace
# nose and mouth), all five (least squares), or auto = all five for images known to be
# unmasked and the eyes for masked or unknown ones.
ALIGN_POINTS = ("eyes", "all", "auto")

# Canonical positions of the 5 landmarks as fractions of the output side (x, y).
# arcface: insightface's 112 x 112 template (arcface_src), a tight crop of eyes-to-chin.
# facenet: the mean landmark positions (mirror-symmetrised) of MTCNN face crops with
#   facenet-pytorch's framing (box + 32 px margin at 160 px), measured on 252 lfw-gray-20
#   images: a looser crop, forehead to below the chin, like the crops FaceNet was trained on.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
TEMPLATES: dict[str, np.ndarray] = {
    "arcface": (_ARCFACE_112 + 0.5) / 112.0,
    "facenet": np.array(
        [
            [0.3194, 0.4074],
            [0.6806, 0.4074],
            [0.5000, 0.5718],
            [0.3456, 0.7122],
            [0.6544, 0.7122],
        ]
    ),
}

# Grey for the detection border: flat, so it can hold no face, and mid-range so that the
# proposal network sees no strong edge against dark or light photos.
_PAD_GREY = 128
# Facenet-pytorch's centre weight for picking one of several faces: area minus 2 x the
# squared distance of the box centre from the image centre (both in pixels^2).
_CENTRE_WEIGHT = 2.0


def _check_points(points: np.ndarray, name: str = "landmarks") -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (5, 2):
        raise ValueError(f"{name} must have shape (5, 2) (left eye, right eye, nose, left mouth, right mouth), got {array.shape}")
    return array


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"alignment template {name!r} is invalid; valid: {', '.join(TEMPLATES)}")
    return name


def template_points(template: str, size: int) -> np.ndarray:
    """The template's 5 landmarks in a ``size`` x ``size`` output -> (5, 2) float64 pixels."""
    check_template(template)
    if size < 1:
        raise ValueError(f"template size {size!r} is invalid; valid: an integer >= 1 (pixels)")
    # Fractions of the side are continuous coordinates; pixel centres sit half a pixel in.
    return TEMPLATES[template] * size - 0.5


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detection:
    """One image's face: box (4,) ``x1, y1, x2, y2`` and landmarks (5, 2) in original pixels.

    ``box`` and ``landmarks`` are None and ``confidence`` NaN when no face was found;
    ``padded`` is the border fraction the detector used.
    """

    box: Optional[np.ndarray]
    landmarks: Optional[np.ndarray]
    confidence: float
    padded: float

    @property
    def detected(self) -> bool:
        return self.landmarks is not None


class FaceDetector:
    """facenet-pytorch's MTCNN on batches of images, with a border and a size cap.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        pad: border added on every side before detection, as a fraction of the longer
            image side (0 = none).
        thresholds: MTCNN's three stage thresholds (P-, R-, O-Net face probability). The
            defaults sit below facenet-pytorch's (0.6, 0.7, 0.7) because masks lower the
            face probability; ``confidence`` keeps the O-Net probability for filtering.
        min_face_size: smallest face searched for, pixels of the (padded) image.
        batch_size: images per MTCNN call.
        max_side: larger images are downscaled to this longer side before detection
            (the result is mapped back), bounding time and memory on camera photos.
        min_face_share: smallest face searched for as a share of the image's shorter side
            (before the border; 0 = only ``min_face_size``). It drops the finest levels of
            the scale pyramid ``min_face_size`` starts (see :func:`pyramid_min_face`), which
            hold most of the proposals the later stages must check, so pre-cropped faces
            that fill the image are found faster (with the same landmarks on rmfrd-dev).
            An image where nothing is found that way is searched again with the full
            pyramid, so a small face in a large photo is still found.
    """

    def __init__(
        self,
        device: str = "auto",
        pad: float = 0.3,
        thresholds: Sequence[float] = (0.2, 0.3, 0.3),
        min_face_size: int = 20,
        batch_size: int = 16,
        max_side: int = 1024,
        min_face_share: float = 0.0,
    ):
        from facenet_pytorch import MTCNN

        from maskface.device import resolve_device

        if not 0.0 <= pad <= 2.0:
            raise ValueError(f"detection pad {pad!r} is invalid; valid: a fraction of the image side in [0, 2]")
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or any(not 0.0 < t < 1.0 for t in thresholds):
            raise ValueError(f"MTCNN thresholds {list(thresholds)!r} are invalid; valid: three probabilities in (0, 1)")
        if min_face_size < 12:
            raise ValueError(f"min_face_size {min_face_size!r} is invalid; valid: an integer >= 12 (pixels)")
        if batch_size < 1:
            raise ValueError(f"detection batch_size {batch_size!r} is invalid; valid: an integer >= 1")
        if max_side < 64:
            raise ValueError(f"detection max_side {max_side!r} is invalid; valid: an integer >= 64 (pixels)")
        if not 0.0 <= min_face_share <= 1.0:
            raise ValueError(f"min_face_share {min_face_share!r} is invalid; valid: a share of the shorter image side in [0, 1]")
        self.device = resolve_device(device)
        self.pad = float(pad)
        self.batch_size = int(batch_size)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self.min_face_share = float(min_face_share)
        # What a worker process needs to build the same detector (detect_table's workers).
        self.arguments = {
            "device": self.device.type, "pad": self.pad, "thresholds": thresholds, "min_face_size": self.min_face_size,
            "batch_size": self.batch_size, "max_side": self.max_side, "min_face_share": self.min_face_share,
        }
        # Everything that can change a detection: a cached one is reused only under the same.
        # A zero share adds nothing, so caches written before the setting existed stay valid.
        self.settings = (
            f"mtcnn pad={self.pad} thresholds={list(thresholds)} min_face={self.min_face_size} "
            f"max_side={self.max_side} batch={self.batch_size} device={self.device.type}"
            + (f" min_face_share={self.min_face_share} retry=full" if self.min_face_share else "")
        )
        self._mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            thresholds=list(thresholds),
            min_face_size=self.min_face_size,
            device=self.device,
        )
        self._mtcnn.eval()

    def _prepare(self, image: Image.Image) -> tuple[np.ndarray, float, int]:
        """RGB image -> (padded uint8 HWC array, downscale factor, border in pixels)."""
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        if scale < 1.0:
            image = image.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR, reducing_gap=3.0
            )
            # The exact factor per axis differs by rounding; one factor keeps the mapping a similarity.
            scale = image.size[0] / width
        array = np.asarray(image, dtype=np.uint8)
        border = int(round(self.pad * max(array.shape[:2])))
        if border:
            array = np.pad(array, ((border, border), (border, border), (0, 0)), constant_values=_PAD_GREY)
        return array, scale, border

    def detect(self, images: Sequence[Image.Image]) -> list[Detection]:
        """One :class:`Detection` per RGB image, in order (several faces: the central, large one).

        Only images of the same (prepared) size share a batch: MTCNN's scale pyramid follows
        the input size, so a shared larger canvas would change what it finds, and an image
        must get the same landmarks in a dataset batch as alone at inference.
        """
        prepared = [self._prepare(image) for image in images]
        results: list[Optional[Detection]] = [None] * len(images)
        cut = self._detect_groups(images, prepared, range(len(images)), results, self.min_face_share)
        # A face smaller than the share (a person in a press photo, a video still) is not
        # searched for above: where a cut pyramid found nothing, the full pyramid looks again.
        missed = [i for i in cut if results[i].box is None]
        if missed:
            self._detect_groups(images, prepared, missed, results, 0.0)
        return results  # type: ignore[return-value]

    def _detect_groups(self, images, prepared, indices, results, share: float) -> list[int]:
        """Detect ``indices`` in same-size batches into ``results``; -> the indices whose batch
        searched a pyramid cut by ``share`` (the others already had the full pyramid)."""
        import torch

        groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for i in indices:
            array, _, border = prepared[i]
            groups.setdefault((array.shape, border), []).append(i)
        cut: list[int] = []
        for shape, border in sorted(groups):
            members = groups[(shape, border)]
            shorter = min(shape[0], shape[1]) - 2 * border
            self._mtcnn.min_face_size = pyramid_min_face(self.min_face_size, share, shorter, self._mtcnn.factor)
            if self._mtcnn.min_face_size > self.min_face_size:
                cut += members
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = np.stack([prepared[i][0] for i in chunk])
                with torch.no_grad():
                    boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
                for slot, i in enumerate(chunk):
                    _, scale, border = prepared[i]
                    results[i] = self._pick(boxes[slot], probs[slot], points[slot], images[i].size, scale, border)
        return cut

    def detect_one(self, image: Image.Image) -> Detection:
        return self.detect([image])[0]

    def _pick(self, boxes, probs, points, size: tuple[int, int], scale: float, border: int) -> Detection:
        if boxes is None or len(boxes) == 0:
            return Detection(None, None, float("nan"), self.pad)
        boxes = (np.asarray(boxes, dtype=np.float64) - border) / scale
        points = (np.asarray(points, dtype=np.float64) - border) / scale
        probs = np.asarray(probs, dtype=np.float64)
        centre = np.array(size, dtype=np.float64) / 2.0
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        offsets = (boxes[:, :2] + boxes[:, 2:]) / 2.0 - centre
        best = int(np.argmax(areas - _CENTRE_WEIGHT * (offsets**2).sum(axis=1)))
        return Detection(boxes[best], points[best], float(probs[best]), self.pad)


def pyramid_min_face(min_face_size: float, share: float, shorter_side: float, factor: float = 0.709) -> float:
    """The minimum face size to give MTCNN so that its scale pyramid skips the levels for
    faces smaller than ``share`` of the image's shorter side.

    MTCNN's pyramid is ``12 / m * factor**k`` for a minimum face ``m``; a minimum face of
    ``min_face_size / factor**n`` gives the same levels without the first ``n``. The
    largest such ``n`` whose face size stays within ``share * shorter_side`` is taken, so
    what remains is a subset of the full pyramid: the levels kept propose the same boxes,
    only the finest levels are not searched. Where those levels' boxes took part in the
    non-maximum suppression the landmarks can move (figure 8 in benchmarks/README.md: none
    of rmfrd-dev's, about 1 % of 250 px LFW photos by about 2 px). Share 0:
    ``min_face_size`` itself.
    """
    limit = share * shorter_side
    size = float(min_face_size)
    # Exact to a rounding error whatever the float formatting: 1e-9 px never decides a level.
    while size / factor <= limit + 1e-9:
        size /= factor
    return size


# --------------------------------------------------------------------------- landmark table

# The landmark table's numeric columns, in TABLE_COLUMNS order.
_NUMBER_COLUMNS = (*BOX_COLUMNS, *LANDMARK_COLUMNS, "confidence", "padded")
# Processes start with a fresh interpreter (spawn: torch's thread pools do not survive a
# fork), about two seconds of imports each: below this many images one process is faster.
MIN_IMAGES_PER_PROCESS = 128


def _rounded(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded as Python's ``round`` does (correctly, in decimal; NaN where not finite).

    Vectorised: ``rint(x * 10**digits) / 10**digits`` is the same float wherever the product
    is not within rounding error of a half (or huge); those few go through ``round`` itself. The
    table's text must not depend on which path made it, and one Python float per value
    would be most of the split stage's memory.
    """
    values = np.asarray(values, dtype=np.float64)
    unit = 10.0**digits
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values * unit
        out = np.rint(scaled) / unit
        # Also beyond 2**52, where the product no longer holds the fraction.
        exact = (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6) | ~(np.abs(scaled) < 2.0**52)
    exact &= np.isfinite(values)
    out[exact] = [round(value, digits) for value in values[exact].tolist()]
    out[~np.isfinite(values)] = np.nan
    return out


def _numbers(detections: Sequence[Detection]) -> np.ndarray:
    """(N, 16) float64 rows of :data:`_NUMBER_COLUMNS` for detections, rounded as the table stores them."""
    numbers = np.full((len(detections), len(_NUMBER_COLUMNS)), np.nan)
    for i, detection in enumerate(detections):
        if detection.box is not None:
            numbers[i, 0:4] = detection.box
        if detection.landmarks is not None:
            numbers[i, 4:14] = np.asarray(detection.landmarks).reshape(-1)
        numbers[i, 14] = detection.confidence
        numbers[i, 15] = detection.padded
    numbers[:, :14] = _rounded(numbers[:, :14], 2)
    numbers[:, 14] = _rounded(numbers[:, 14], 6)
    return numbers


def _table(paths: Sequence[str], detected: np.ndarray, numbers: np.ndarray, sources) -> pd.DataFrame:
    """The landmark table from columns: ``numbers`` (N, 16) in :data:`_NUMBER_COLUMNS` order,
    ``sources`` one landmark source for all rows or one per row."""
    columns: dict = {"path": pd.Series(list(paths), dtype=object), "detected": np.asarray(detected, dtype=bool)}
    numbers = np.asarray(numbers, dtype=np.float64).reshape(len(columns["detected"]), len(_NUMBER_COLUMNS))
    columns.update({name: numbers[:, j].copy() for j, name in enumerate(_NUMBER_COLUMNS)})
    columns["landmark_source"] = [sources] * len(numbers) if isinstance(sources, str) else list(sources)
    return pd.DataFrame(columns, columns=list(TABLE_COLUMNS))


def _sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """Each image's (width, height) from its header, (0, 0) where unreadable (the detection
    itself then raises on it, as it would have)."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, ValueError):
            sizes.append((0, 0))
    return sizes


def detection_batches(paths: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``paths`` in batches of one image size each, full but for the last of a size.

    MTCNN batches only images of one size; in path order a dataset of mixed sizes (RMFRD's
    masked photos) would give mostly batches of one.
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(_sizes(paths)):
        by_size.setdefault(size, []).append(i)
    return [members[start : start + batch_size] for members in by_size.values() for start in range(0, len(members), batch_size)]


def detect_table(
    paths: Sequence[str], detector: FaceDetector, desc: str = "detecting faces", workers: int = 1
) -> pd.DataFrame:
    """Detect a face in every image file -> the landmark table (see module docstring), in order.

    Images are batched by size (:func:`detection_batches`). ``workers`` > 1 runs the
    batches in that many processes with one torch thread each (a CPU detector; MTCNN's
    many small operations keep one core busy better than several threads do); the table is
    the same as with one.
    """
    paths = [str(p) for p in paths]
    batches = detection_batches(paths, max(detector.batch_size, 1))
    detected = np.zeros(len(paths), dtype=bool)
    numbers = np.full((len(paths), len(_NUMBER_COLUMNS)), np.nan)
    processes = process_count(workers, len(paths), detector.device.type)
    with tqdm(total=len(paths), desc=desc, unit="img") as progress:
        for batch, found in zip(batches, _detections(paths, batches, detector, processes)):
            detected[batch] = [detection.detected for detection in found]
            numbers[batch] = _numbers(found)
            progress.update(len(batch))
    logger.info(
        "faces found in %d of %d images (border %.2f of the side; %d process(es))", int(detected.sum()), len(paths), detector.pad, processes
    )
    return _table(paths, detected, numbers, "mtcnn")


def process_count(workers: int, images: int, device: str) -> int:
    """Processes for ``images`` detections: ``workers`` (0 = one per usable CPU core), one on
    a GPU or for fewer than :data:`MIN_IMAGES_PER_PROCESS` images per process."""
    if workers < 0:
        raise ValueError(f"detection workers {workers!r} is invalid; valid: 0 (one per CPU core) or a count >= 1")
    if device != "cpu":
        return 1
    if workers == 0:
        workers = usable_cpu_cores()
    return max(1, min(workers, images // MIN_IMAGES_PER_PROCESS))


def _detections(paths: list[str], batches: list[list[int]], detector: FaceDetector, processes: int):
    """Each batch's detections, in batch order; batches go to ``processes`` worker processes."""
    if processes <= 1:
        for batch in batches:
            yield detector.detect([load_rgb(paths[i]) for i in batch])
        return
    import concurrent.futures.process
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=context, initializer=_start_worker, initargs=(detector.arguments,)
        ) as pool:
            yield from pool.map(_detect_files, ([paths[i] for i in batch] for batch in batches))
    except concurrent.futures.process.BrokenProcessPool as error:
        raise InputError(
            "a face detection process died abruptly (out of memory, or a file that crashes the image decoder); "
            f"rerun with crop.detect_workers: 1 to find the file, or free memory ({error})"
        ) from error


_WORKER_DETECTOR: Optional[FaceDetector] = None


def _start_worker(arguments: dict) -> None:
    global _WORKER_DETECTOR
    import torch

    # One thread per process: the processes share the cores, threads on top would oversubscribe.
    torch.set_num_threads(1)
    _WORKER_DETECTOR = FaceDetector(**arguments)


def _detect_files(paths: list[str]) -> list[Detection]:
    assert _WORKER_DETECTOR is not None, "worker not started"
    return _WORKER_DETECTOR.detect([load_rgb(path) for path in paths])


def ground_truth_table(paths: Sequence[str]) -> pd.DataFrame:
    """The landmark table from the synthetic renderer's ``ground_truth.csv`` files.

    Each image's table is ``<folder>/../ground_truth.csv`` (the synthetic layout
    ``<root>/<identity>/<file>``). Confidence is 1 and the box spans the landmarks. An
    image without a ground-truth row raises :class:`ValueError` naming it: ground-truth
    landmarks exist only for the synthetic source.
    """
    paths = [str(p) for p in paths]
    keys: list[pd.Series] = []
    points: list[np.ndarray] = []
    for folder in sorted({os.path.dirname(os.path.dirname(p)) for p in paths}):
        table_path = os.path.join(folder, GROUND_TRUTH_CSV)
        if not os.path.isfile(table_path):
            continue
        # Only the columns used: the mask polygons beside them are most of the file.
        truth = read_csv(table_path, usecols=lambda column: column in ("path", *LANDMARK_COLUMNS))
        if not {"path", *LANDMARK_COLUMNS} <= set(truth.columns):
            raise InputError(f"{table_path} lacks landmark columns; needed: path, {', '.join(LANDMARK_COLUMNS)}")
        keys.append(truth["path"].map(lambda relative, folder=folder: os.path.normpath(os.path.join(folder, str(relative)))))
        points.append(truth[list(LANDMARK_COLUMNS)].to_numpy(dtype=np.float64))
    known = pd.Index(pd.concat(keys, ignore_index=True) if keys else [], dtype=object)
    landmarks = np.concatenate(points) if points else np.empty((0, len(LANDMARK_COLUMNS)))
    # A file listed twice: the last row counts.
    last = ~known.duplicated(keep="last")
    known, landmarks = known[last], landmarks[last]
    rows = known.get_indexer([os.path.normpath(p) for p in paths]) if len(paths) else np.empty(0, dtype=int)
    if (rows < 0).any():
        raise InputError(
            f"{paths[int(np.argmax(rows < 0))]}: no ground-truth landmarks ({GROUND_TRUTH_CSV} beside its identity folder); "
            "crop.landmarks = ground_truth works only for data.source = synthetic; valid otherwise: mtcnn"
        )
    found = landmarks[rows].reshape(-1, 5, 2)
    numbers = np.concatenate(
        [found.min(axis=1), found.max(axis=1), found.reshape(-1, 10), np.ones((len(paths), 1)), np.zeros((len(paths), 1))], axis=1
    )
    numbers[:, :14] = _rounded(numbers[:, :14], 2)
    return _table(paths, np.ones(len(paths), dtype=bool), numbers, "ground_truth")


def skipped_table(paths: Sequence[str]) -> pd.DataFrame:
    """The landmark table when no stage needs landmarks: every row undetected, source ``none``."""
    numbers = np.full((len(paths), len(_NUMBER_COLUMNS)), np.nan)
    numbers[:, -1] = 0.0
    return _table([str(p) for p in paths], np.zeros(len(paths), dtype=bool), numbers, "none")


CACHE_KEY_COLUMNS = ("sha256", "settings")


def _read_cache(cache_path: Path, settings: str) -> pd.DataFrame:
    """The cache's rows for ``settings``, one per SHA-256 (the last), indexed by it; empty when
    there is no cache or it cannot be read (a cache only ever saves time)."""
    empty = pd.DataFrame(columns=list(TABLE_COLUMNS[1:]), index=pd.Index([], dtype=object, name="sha256"))
    if not cache_path.is_file():
        return empty
    try:
        cache = read_csv(cache_path)
        if not {*CACHE_KEY_COLUMNS, *TABLE_COLUMNS[1:]} <= set(cache.columns):
            raise ValueError(f"columns {list(cache.columns)}")
        cache = _typed(cache[cache["settings"].astype(str) == settings].copy())
    except (OSError, ValueError) as error:
        logger.warning("ignoring the unreadable landmark cache %s (%s)", cache_path, error)
        return empty
    cache = cache.assign(sha256=cache["sha256"].astype(str)).drop_duplicates("sha256", keep="last")
    return cache.set_index("sha256")[list(TABLE_COLUMNS[1:])]


def _append_to_cache(cache_path: Path, fresh: pd.DataFrame, digests: Sequence[str], settings: str) -> None:
    """Add ``fresh`` detections (rows of a landmark table) under their digests and ``settings``;
    every setting's rows are kept, so switching settings back and forth detects nothing twice."""
    columns = [*CACHE_KEY_COLUMNS, *TABLE_COLUMNS[1:]]
    added = fresh.drop(columns="path").assign(sha256=list(digests), settings=settings)[columns]
    try:
        kept = read_csv(cache_path) if cache_path.is_file() else None
        kept = _typed(kept[columns].copy()) if kept is not None and set(columns) <= set(kept.columns) else None
    except (OSError, ValueError):
        kept = None
    table = added if kept is None else pd.concat([kept, added], ignore_index=True)
    write_csv_atomically(table.drop_duplicates(list(CACHE_KEY_COLUMNS), keep="last", ignore_index=True), cache_path)


def cached_detect_table(
    paths: Sequence[str],
    detector: FaceDetector,
    cache_path: Path,
    digests: Optional[Sequence[str]] = None,
    workers: int = 1,
) -> pd.DataFrame:
    """:func:`detect_table`, reusing the detections of earlier runs kept in ``cache_path``.

    The cache is keyed by each file's SHA-256 and the detector's settings, so an image is
    detected again only when its bytes or the settings change; a renamed or moved file is
    found by its content. It only ever saves time: an unreadable cache is ignored, and the
    table is the same as :func:`detect_table` gives (the cached rows are what it wrote).

    ``digests``: each path's SHA-256 where the caller has them already (the manifest's
    ``sha256`` column); None hashes the files here. The tables stay columns of arrays, never
    a Python object per image: a full dataset's cache holds hundreds of thousands of rows.
    """
    paths = [str(p) for p in paths]
    if digests is None:
        from maskface.artifacts import file_sha256

        digests = [file_sha256(path) for path in tqdm(paths, desc="hashing for the landmark cache", unit="img")]
    elif len(digests) != len(paths):
        raise ValueError(f"{len(digests)} digests for {len(paths)} paths")
    digests = [str(d) for d in digests]
    known = _read_cache(cache_path, detector.settings)
    rows = known.index.get_indexer(digests) if len(known) else np.full(len(paths), -1)
    hits, missing = rows >= 0, np.flatnonzero(rows < 0)
    detected = np.zeros(len(paths), dtype=bool)
    numbers = np.full((len(paths), len(_NUMBER_COLUMNS)), np.nan)
    if hits.any():
        detected[hits] = known["detected"].to_numpy(dtype=bool)[rows[hits]]
        numbers[hits] = known[list(_NUMBER_COLUMNS)].to_numpy(dtype=np.float64)[rows[hits]]
    if len(missing):
        fresh = detect_table([paths[i] for i in missing], detector, workers=workers)
        detected[missing] = fresh["detected"].to_numpy(dtype=bool)
        numbers[missing] = fresh[list(_NUMBER_COLUMNS)].to_numpy(dtype=np.float64)
        _append_to_cache(cache_path, fresh, [digests[i] for i in missing], detector.settings)
    logger.info("landmarks: %d of %d images from the cache %s, %d detected", int(hits.sum()), len(paths), cache_path, len(missing))
    return _table(paths, detected, numbers, "mtcnn")


def landmark_table(
    paths: Sequence[str], config, cache_path: Optional[Path] = None, digests: Optional[Sequence[str]] = None
) -> pd.DataFrame:
    """The landmark table the settings call for (``config``: :class:`maskface.config.CropConfig`).

    Detection is skipped (source ``none``) when no stage uses landmarks
    (``config.needs_landmarks`` False); ``landmarks: ground_truth`` reads the synthetic
    renderer's; otherwise MTCNN runs with the ``detect_*`` settings, through the cache at
    ``cache_path`` when one is given (:func:`cached_detect_table`).
    """
    paths = [str(p) for p in paths]
    if not config.needs_landmarks:
        return skipped_table(paths)
    if config.landmarks == "ground_truth":
        return ground_truth_table(paths)
    detector = FaceDetector(
        device=config.detect_device,
        pad=config.detect_pad,
        thresholds=config.detect_thresholds,
        min_face_size=config.detect_min_face,
        batch_size=config.detect_batch_size,
        min_face_share=config.detect_min_face_share,
    )
    if cache_path is not None:
        return cached_detect_table(paths, detector, cache_path, digests, config.detect_workers)
    return detect_table(paths, detector, workers=config.detect_workers)


FILTER_REASONS = ("no_face", "low_confidence")


def face_filter(table: pd.DataFrame, min_confidence: float) -> pd.DataFrame:
    """Images the occlusion filter drops: (path, reason, detail), reason in :data:`FILTER_REASONS`.

    ``no_face``: MTCNN found no face (after the border); ``low_confidence``: its face
    probability is below ``min_confidence``. Rows in table order.
    """
    rows = []
    for path, detected, confidence, padded in zip(table["path"], table["detected"], table["confidence"], table["padded"]):
        if not detected:
            rows.append({"path": path, "reason": "no_face", "detail": f"MTCNN found no face (border {float(padded):.2f} of the side)"})
        elif not float(confidence) >= min_confidence:
            rows.append(
                {"path": path, "reason": "low_confidence", "detail": f"face probability {float(confidence):.4f} < {min_confidence}"}
            )
    return pd.DataFrame(rows, columns=["path", "reason", "detail"])


def filtered_sheet(dropped: pd.DataFrame, table: pd.DataFrame, destination: str | Path, note: str, limit: int = 24) -> None:
    """Contact sheet of dropped images (up to ``limit``), titled with reason and confidence.

    ``note`` heads the sheet (e.g. that the filter is off, or how many were dropped); with
    nothing dropped the sheet holds only the note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = dropped.head(limit)
    columns = 8
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.7 * rows + 0.5), squeeze=False)
    points = table_landmarks(table) if len(shown) else {}
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (_, row) in zip(axes.ravel(), shown.iterrows()):
        axis.imshow(load_rgb(row["path"]))
        landmarks = points.get(str(row["path"]))
        if landmarks is not None:
            axis.scatter(landmarks[:, 0], landmarks[:, 1], s=4, c="red")
        confidence = table.loc[table["path"] == row["path"], "confidence"]
        text = row["reason"] if row["reason"] == "no_face" else f"p={float(confidence.iloc[0]):.2f}"
        axis.set_title(text, fontsize=7)
    figure.suptitle(note, fontsize=8)
    figure.tight_layout()
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=80)
    plt.close(figure)


def read_landmark_table(path: str | Path) -> pd.DataFrame:
    """Read ``data/landmarks.csv``; ``detected`` is bool, coordinates float (NaN when absent)."""
    table = read_csv(path)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}; rerun the split stage")
    return _typed(table)


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """A landmark table read from CSV with its types back: bool ``detected``, float coordinates."""
    table["detected"] = table["detected"].astype(str).str.lower().isin(["true", "1"])
    for column in (*BOX_COLUMNS, *LANDMARK_COLUMNS, "confidence", "padded"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(np.float64)
    return table


def table_landmarks(table: pd.DataFrame) -> dict[str, Optional[np.ndarray]]:
    """path -> (5, 2) landmarks of a detected face, or None."""
    points = table[list(LANDMARK_COLUMNS)].to_numpy(dtype=np.float64).reshape(-1, 5, 2)
    found = table["detected"].to_numpy(dtype=bool) & np.isfinite(points).all(axis=(1, 2))
    return {str(path): (points[i] if found[i] else None) for i, path in enumerate(table["path"])}


def detection_rates(table: pd.DataFrame, masked: Optional[Iterable[bool]] = None) -> dict:
    """Share of images with a face: overall and, given the masked flags, per side."""
    detected = table["detected"].to_numpy(dtype=bool)
    report = {"images": int(len(detected)), "detected": int(detected.sum())}
    report["rate"] = round(float(detected.mean()), 4) if len(detected) else None
    if masked is not None:
        flags = np.asarray(list(masked), dtype=bool)
        for name, side in (("masked", flags), ("unmasked", ~flags)):
            count = int(side.sum())
            report[name] = {
                "images": count,
                "detected": int(detected[side].sum()),
                "rate": round(float(detected[side].mean()), 4) if count else None,
            }
    return report


# --------------------------------------------------------------------------- alignment


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection).

    Umeyama's closed form. ``source`` and ``target`` are (K, 2) matching points, K >= 2;
    returns the (2, 3) matrix A with ``target ~= A @ [x, y, 1]``. Exact for K = 2.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity_transform needs two (K, 2) arrays with K >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = (src_c**2).sum() / len(src)
    if variance < 1e-12:
        raise ValueError(f"similarity_transform: the source points coincide at {src_mean.tolist()}")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # the best fit is a reflection: take the best proper rotation instead
    rotation = u @ np.diag(sign) @ vt
    scale = float((singular * sign).sum() / variance)
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def alignment_matrix(landmarks: np.ndarray, size: int, template: str = "facenet", points: str = "eyes") -> np.ndarray:
    """(2, 3) similarity from image pixels to a ``size`` x ``size`` aligned face.

    ``points``: ``eyes`` maps the two eye centres exactly onto the template's; ``all`` fits
    all five landmarks in the least-squares sense (``auto`` is resolved by the caller).
    """
    landmarks = _check_points(landmarks)
    target = template_points(template, size)
    if points == "eyes":
        return similarity_transform(landmarks[:2], target[:2])
    if points == "all":
        return similarity_transform(landmarks, target)
    raise ValueError(f"alignment points {points!r} are invalid; valid: eyes, all")


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to points (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine ``outer(inner(x))``."""
    outer3 = np.vstack([outer, [0.0, 0.0, 1.0]])
    inner3 = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (outer3 @ inner3)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], fill: int | None = None) -> np.ndarray:
    """Warp uint8 (H, W, 3) by the (2, 3) matrix (source -> output pixels) into ``size = (width, height)``.

    Bilinear; pixels from outside the image repeat its edge, or are ``fill`` (a grey level)
    when given. A reduction (scale < 0.8) is first done by an area-averaging resize so that
    the warp does not alias.
    """
    import cv2

    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.8:
        # Area-average down to the output scale; the warp then resamples at about 1:1,
        # where bilinear interpolation does not alias.
        factor = scale
        height, width = image.shape[:2]
        small = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        # Pixel-centre mapping of that resize: x_small = (x + 0.5) * sx - 0.5.
        sx, sy = small[0] / width, small[1] / height
        inverse_resize = np.array([[1.0 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1.0 / sy, 0.5 / sy - 0.5]])
        matrix = compose(matrix, inverse_resize)
    if fill is None:
        return cv2.warpAffine(np.ascontiguousarray(image), matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill, fill, fill),
    )
