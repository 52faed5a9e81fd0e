"""Python API over a trained model folder: embed, verify, enroll and identify faces.

>>> import maskface
>>> model = maskface.load_model("models/facenet")
>>> model.verify("a.jpg", "b.jpg")            # Verification(same=..., score=..., threshold=...)
>>> vectors = model.embed(["a.jpg", pil_image, uint8_array])   # (3, E) float32, unit rows
>>> gallery = model.enroll("gallery/")        # gallery/<identity>/*.jpg
>>> model.identify(["probe.jpg"], gallery, top=3)

Images may be paths, PIL images (any mode) or uint8 arrays (H, W), (H, W, 3), (H, W, 4);
every one goes through :func:`maskface.inference.model_folder.preprocess_image`, the crop stage's own
transform. A bad image raises :class:`maskface.inference.model_folder.ImageError` naming it; the
``*_many`` variants skip bad images and return them as :class:`Failure` rows instead.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from maskface import __version__
from maskface.errors import InputError, UserError
from maskface.hardware import DEVICES, PRECISIONS, usable_cpu_cores
from maskface.inference.model_folder import (
    ImageError,
    ImageInput,
    ModelFolder,
    ModelFolderError,
    PairScorer,
    as_rgb,
    describe_input,
    load_embedder,
    load_pair_scorer,
    needs_face,
    preprocess_image,
    read_model_folder,
)

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
GALLERY_FORMAT = "maskface-gallery"
GALLERY_FORMAT_VERSION = 1
# What a folder argument expands to; named files are always tried whatever their suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm")
# Decoded pixels held ahead of the network: enough to decode a command's images while torch
# and the model load (1,700 faces at 160 px), bounded so memory stays flat for any count.
DECODE_AHEAD_BYTES = 128 * 2**20
# Image files per task sent to a worker process: large enough that the pickling and the
# pipe cost little per image, small enough that results come back while the rest decode.
DECODE_CHUNK = 16
# Below this many image files a call decodes in threads: starting worker processes (and
# their imports) costs more than it saves for a verify of two images.
PROCESS_MIN_FILES = 64


class GalleryError(UserError, ValueError):
    """A gallery file is unreadable or was made by another model (one-line message)."""


@dataclass(frozen=True)
class Failure:
    """An input that could not be used: ``source`` (path or ``array #k``) and ``reason``."""

    source: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """``same`` is ``score >= threshold``; ``cosine`` is the plain embedding similarity."""

    same: bool
    score: float
    threshold: float
    cosine: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    identity: str
    score: float


@dataclass(frozen=True)
class Identification:
    """The best gallery identity, or ``"unknown"`` when its score is below the threshold.

    ``score`` is the best identity's score (the highest pair score over its gallery
    images); ``candidates`` are the top identities, best first, whatever their score.
    """

    source: str
    identity: str
    score: float
    threshold: float
    candidates: tuple[Candidate, ...]

    @property
    def known(self) -> bool:
        return self.identity != UNKNOWN

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "identity": self.identity,
            "known": self.known,
            "score": self.score,
            "threshold": self.threshold,
            "candidates": [asdict(c) for c in self.candidates],
        }


@dataclass
class EmbedResult:
    """``embeddings`` (K, E) float32 for the K usable inputs, in input order; ``sources`` names them."""

    embeddings: np.ndarray
    sources: list[str]
    positions: list[int]
    failures: list[Failure] = field(default_factory=list)


def expand_paths(paths: Iterable[Union[str, os.PathLike]]) -> list[str]:
    """Files as given; folders replaced by their image files (recursive, sorted, hidden skipped).

    A path that does not exist is kept, so the caller reports it as missing.
    """
    expanded: list[str] = []
    for path in paths:
        name = os.fspath(path)
        if os.path.isdir(name):
            found = []
            for folder, subfolders, files in os.walk(name):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                found.extend(
                    os.path.join(folder, f)
                    for f in files
                    if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
                )
            if not found:
                logger.warning("%s: no image files (%s) in this folder", name, ", ".join(IMAGE_SUFFIXES))
            expanded.extend(sorted(found))
        else:
            expanded.append(name)
    return expanded


def _as_list(images: Any) -> list:
    """One image or a collection of images -> a list of images."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        # (H, W) or (H, W, C) is one image; (N, H, W[, C]) a stack of them.
        if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (3, 4)):
            return [images]
        if images.ndim in (3, 4):
            return list(images)
        raise ImageError("array", f"shape {images.shape} is neither one image nor a stack of images")
    from PIL import Image

    if isinstance(images, Image.Image):
        return [images]
    return list(images)


def default_decode_workers() -> int:
    """Decoding processes for this machine: one per two cores, 1 to 4.

    The network's own threads use the cores too; on 2 cores one worker decodes a command's
    images while torch and the model load, and is idle once the network runs. (Threads:
    at least 2, see :class:`_Decoder`.)
    """
    return max(1, min(4, usable_cpu_cores() // 2))


def prepare_image(image: ImageInput, position: Optional[int], settings: Mapping[str, Any]) -> np.ndarray:
    """One input -> the uint8 (3, S, S) network input; :class:`ImageError` naming the input."""
    source = describe_input(image, position)
    rgb = as_rgb(image, position)
    try:
        return preprocess_image(rgb, settings)
    except ImageError as error:
        raise ImageError(source, error.reason) from None
    except ValueError as error:
        # Crop modes that locate the face (alignment) raise ValueError when they cannot.
        raise ImageError(source, f"preprocessing failed: {' '.join(str(error).split())}") from None


def _prepare_or_fail(image: ImageInput, position: int, settings: Mapping[str, Any]) -> Union[np.ndarray, ImageError]:
    try:
        return prepare_image(image, position, settings)
    except ImageError as error:
        return error


# Set in each decoding process by _start_decode_worker: preprocess.json of the model.
_worker_settings: Optional[Mapping[str, Any]] = None


def _start_decode_worker(settings: Mapping[str, Any]) -> None:
    global _worker_settings
    _worker_settings = settings
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the pool, the workers must
    # not die mid-task printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The transform's module now, while the parent loads torch and the model.
    import maskface.face.crop  # noqa: F401


def _decode_files(chunk: list[tuple[int, str]]) -> list[Union[np.ndarray, tuple[str, str]]]:
    """In a decoding process: each file's pixels, or (source, reason) when it fails."""
    out: list[Union[np.ndarray, tuple[str, str]]] = []
    for position, path in chunk:
        prepared = _prepare_or_fail(path, position, _worker_settings)
        out.append((prepared.source, prepared.reason) if isinstance(prepared, ImageError) else prepared)
    return out


def _is_file_input(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


class _Decoder:
    """Prepares ``items`` in order, ahead of the caller, within a bounded window.

    Image files go to worker processes in chunks when there are many of them (forked,
    so they start in milliseconds and import only PIL and the crop stage's transform);
    PIL images and arrays, short lists, and models that detect the face first (alignment)
    are prepared in threads of this process: MTCNN runs in torch, which releases the GIL
    and which a worker process would import again (seconds of CPU on each). Their detector
    is built in the creating thread, before the decoding threads start.
    Creating the decoder starts the work: a caller that creates it before importing torch
    and loading the model has images decoded by the time the network is ready.

    ``workers``: processes and threads; None: :func:`default_decode_workers` processes,
    at least 2 threads.
    """

    def __init__(self, items: list, settings: Mapping[str, Any], workers: Optional[int], window: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.items = items
        self.settings = settings
        self.window = max(1, window)
        self.pending: deque = deque()
        self.next = 0
        self.consumed = 0
        self.processes = None
        self.threads = ThreadPoolExecutor(max_workers=workers or max(2, default_decode_workers()))
        if needs_face(settings):
            # The detector (facenet_pytorch, torchvision) is built here, before any decoding
            # thread: a thread importing torchvision while this one imports it to load the
            # model can find its modules half-initialised (an ImportError, now and then).
            from maskface.face.crop import detector_for_settings

            detector_for_settings(settings["crop"])
        files = sum(1 for item in items if _is_file_input(item))
        try:
            # fork: a worker inherits the imports made so far instead of redoing them; spawn would
            # pay a fresh interpreter per worker, so without fork (macOS, Windows) threads decode.
            if files >= PROCESS_MIN_FILES and not needs_face(settings) and "fork" in multiprocessing.get_all_start_methods():
                self.processes = ProcessPoolExecutor(
                    max_workers=workers or default_decode_workers(), mp_context=multiprocessing.get_context("fork"),
                    initializer=_start_decode_worker, initargs=(dict(settings),),
                )
                # The first submission forks every worker: now, before any decoding thread exists
                # (the thread pool starts its threads at its first submission).
                self.processes.submit(os.getpid)
            self._fill()
        except BaseException:
            self.close()
            raise

    def _submit(self) -> None:
        start = self.next
        if self.processes is not None and _is_file_input(self.items[start]):
            stop = start
            while stop < len(self.items) and stop - start < DECODE_CHUNK and _is_file_input(self.items[stop]):
                stop += 1
            chunk = [(k, self.items[k]) for k in range(start, stop)]
            self.pending.append((chunk, self.processes.submit(_decode_files, chunk)))
        else:
            stop = start + 1
            future = self.threads.submit(_prepare_or_fail, self.items[start], start, self.settings)
            self.pending.append(([(start, self.items[start])], future))
        self.next = stop

    def _fill(self) -> None:
        while self.next < len(self.items) and self.next - self.consumed < self.window:
            self._submit()

    def results(self) -> Iterator[tuple[int, Union[np.ndarray, ImageError]]]:
        """(position, pixels or the ImageError) for every item, in input order."""
        from concurrent.futures.process import BrokenProcessPool

        while self.pending:
            chunk, future = self.pending.popleft()
            try:
                prepared = future.result()
            except BrokenProcessPool:
                names = [describe_input(item, k) for k, item in chunk]
                raise InputError(
                    f"a process decoding images died abruptly (a file that crashes the image decoder, or out of memory) "
                    f"while it read one of {len(names)} files: {names[0]} ... {names[-1]}; move the file away or free memory"
                ) from None
            if not isinstance(prepared, list):  # one item prepared in a thread
                prepared = [prepared]
            self.consumed += len(chunk)
            self._fill()
            for (position, _), result in zip(chunk, prepared):
                yield position, ImageError(*result) if isinstance(result, tuple) else result

    def close(self) -> None:
        for pool in (self.processes, self.threads):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "_Decoder":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Gallery:
    """Enrolled faces: per-image embeddings with their identities and source paths.

    Saved as one ``.npz`` (no pickles) holding ``embeddings`` (M, E) float32,
    ``identities`` (M,), ``paths`` (M,) and ``meta`` (JSON: the model's backbone,
    fingerprint and folder) so a search with another model is refused.
    """

    def __init__(self, embeddings: np.ndarray, identities: Sequence[str], paths: Sequence[str], meta: dict):
        self.embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(identities), -1)
        self.identities = np.asarray(list(identities), dtype=str)
        self.paths = np.asarray(list(paths), dtype=str)
        self.meta = dict(meta)
        if len(self.paths) != len(self.identities):
            raise ValueError(f"gallery has {len(self.identities)} identities but {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.identities)

    @property
    def identity_names(self) -> list[str]:
        return sorted(set(self.identities.tolist()))

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the gallery; ``.npz`` is appended when ``path`` lacks it (as numpy does)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            embeddings=self.embeddings,
            identities=self.identities,
            paths=self.paths,
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Gallery":
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"{path}: gallery file missing")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                gallery = cls(data["embeddings"], data["identities"].tolist(), data["paths"].tolist(), meta)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise GalleryError(f"{path}: not a maskface gallery: {' '.join(str(error).split())}") from None
        if meta.get("format") != GALLERY_FORMAT:
            raise GalleryError(f"{path}: not a maskface gallery (format {meta.get('format')!r})")
        if meta.get("format_version") != GALLERY_FORMAT_VERSION:
            raise GalleryError(
                f"{path}: gallery format version {meta.get('format_version')!r} is incompatible with maskface "
                f"{__version__} (reads {GALLERY_FORMAT_VERSION}); enroll again"
            )
        gallery.meta["file"] = str(path)
        return gallery

    def check_model(self, model: "FaceModel") -> None:
        """Refuse a model whose embeddings differ from the ones this gallery was enrolled with."""
        where = self.meta.get("file", "gallery")
        if self.meta.get("model_fingerprint") != model.folder.fingerprint():
            raise GalleryError(
                f"{where}: enrolled with another model ({self.meta.get('backbone')} from "
                f"{self.meta.get('model_dir')}), not {model.backbone} from {model.folder.root}; enroll again with this model"
            )


class FaceModel:
    """A loaded model folder: embedder, pair classifier and threshold (see module docstring).

    ``lazy``: read the weights and the classifier (and import torch) on first use rather
    than now; the first :meth:`embed_many` then starts decoding its images before it loads
    the network, so the two overlap (what the ``maskface`` command does).
    """

    def __init__(
        self,
        folder: ModelFolder,
        device: Any = "auto",
        batch_size: int = 64,
        precision: str = "auto",
        channels_last: bool = True,
        decode_workers: Optional[int] = None,
        lazy: bool = False,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size {batch_size!r} is invalid; valid: an integer >= 1")
        if decode_workers is not None and decode_workers < 1:
            raise InputError(f"decode_workers {decode_workers!r} is invalid; valid: an integer >= 1, or None (automatic)")
        if precision not in PRECISIONS:  # refused before any work, lazy or not
            raise InputError(f"precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
        if isinstance(device, str) and device not in DEVICES:
            raise InputError(f"device {device!r} is invalid; valid: {', '.join(DEVICES)}")
        self.decode_workers = decode_workers
        self.folder = folder
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.batch_size = int(batch_size)
        self._device_request = device
        self._device = None
        self._embedder = None
        self._scorer: Optional[PairScorer] = None
        if not lazy:  # load both now, so that errors in them surface at load_model
            self._embedder = load_embedder(folder, self.device)
            self._scorer = load_pair_scorer(folder)

    @property
    def device(self):
        """The torch device the network runs on (resolving it imports torch)."""
        if self._device is None:
            from maskface.device import resolve_device

            request = self._device_request
            self._device = resolve_device(request) if isinstance(request, str) else request
        return self._device

    @property
    def embedder(self):
        """The network (:class:`maskface.models.backbones.FaceEmbedder`), batch norms folded, on :attr:`device`."""
        if self._embedder is None:
            self._embedder = load_embedder(self.folder, self.device)
        return self._embedder

    @property
    def scorer(self) -> PairScorer:
        if self._scorer is None:
            self._scorer = load_pair_scorer(self.folder)
        return self._scorer

    # ------------------------------------------------------------------ facts

    @property
    def backbone(self) -> str:
        return self.folder.backbone

    @property
    def threshold(self) -> float:
        return self.folder.threshold

    @property
    def embedding_size(self) -> int:
        return int(self.folder.model_config["embedding_size"])

    @property
    def input_size(self) -> int:
        return self.folder.input_size

    def summary(self) -> dict:
        return {**self.folder.summary(), "device": str(self.device), "precision": self.precision}

    def __repr__(self) -> str:
        return f"FaceModel({self.backbone}, {self.folder.classifier}, threshold={self.threshold:.4g}, {self.folder.root})"

    # ------------------------------------------------------------------ embeddings

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """One image -> the uint8 (3, S, S) tensor the network sees (the training transform)."""
        return preprocess_image(image, self.folder.preprocess)

    def _decoder(self, items: list, batch_size: int) -> _Decoder:
        """Starts preparing ``items`` (see :class:`_Decoder`): worker processes for many image
        files, threads otherwise; at most DECODE_AHEAD_BYTES of pixels (two batches at least)
        are decoded ahead of the network."""
        size = self.input_size
        window = max(2 * batch_size, DECODE_AHEAD_BYTES // (3 * size * size))
        return _Decoder(items, self.folder.preprocess, self.decode_workers, window)

    def embed_many(self, images: Any, batch_size: Optional[int] = None, progress: Optional[bool] = False) -> EmbedResult:
        """Embed every usable image, skipping (and reporting) the ones that fail.

        ``progress``: True shows a tqdm bar, None shows it only on a terminal.
        """
        items = _as_list(images)
        batch_size = batch_size or self.batch_size
        chunks: list[np.ndarray] = []
        sources: list[str] = []
        positions: list[int] = []
        failures: list[Failure] = []
        # Decoding starts first (the pool forks before torch or tqdm start threads), then the
        # network loads, when the model is lazy, while the workers decode.
        with self._decoder(items, batch_size) as decoder:
            embedder = self.embedder
            from maskface.inference.embed import embed_array

            # tqdm: disable=None hides the bar when stderr is not a terminal.
            disable = {True: False, None: None}.get(progress, True)
            bar = tqdm(total=len(items), desc=f"embed ({self.backbone})", unit="img", disable=disable)
            pixels: list[np.ndarray] = []
            seen = 0

            def flush() -> None:
                if pixels:
                    chunks.append(
                        embed_array(
                            embedder, np.stack(pixels), batch_size=len(pixels), device=self.device,
                            progress=False, precision=self.precision, channels_last=self.channels_last,
                            flip=self.folder.flip, shift=self.folder.shift,
                        )
                    )
                    pixels.clear()

            # Batches by input position, as before: a failure leaves its batch one image short.
            for position, prepared in decoder.results():
                if isinstance(prepared, ImageError):
                    failures.append(Failure(prepared.source, prepared.reason))
                    logger.info("skipping %s", prepared)
                else:
                    pixels.append(prepared)
                    sources.append(describe_input(items[position], position))
                    positions.append(position)
                seen += 1
                if seen % batch_size == 0 or seen == len(items):
                    flush()
                    bar.update(seen - bar.n)
            bar.close()
        embeddings = np.concatenate(chunks) if chunks else np.empty((0, self.embedding_size), dtype=np.float32)
        return EmbedResult(embeddings, sources, positions, failures)

    def embed(self, images: Any, batch_size: Optional[int] = None, progress: Optional[bool] = False) -> np.ndarray:
        """Images -> float32 (N, E) unit-norm embeddings; raises ImageError on the first bad image."""
        items = _as_list(images)
        result = self.embed_many(items, batch_size, progress)
        if result.failures:
            first = result.failures[0]
            more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
            raise ImageError(first.source, first.reason + more)
        return result.embeddings

    # ------------------------------------------------------------------ verification

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pair scores of embedding rows (N, E) x (N, E) -> (N,); same person when >= threshold."""
        return self.scorer.score(a, b)

    def decision_threshold(self, threshold: Optional[float] = None) -> float:
        """``threshold`` when given (an operating point of your own, e.g. a TAR@FAR threshold
        from ``maskface eval``), else the model folder's."""
        if threshold is None:
            return self.threshold
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise InputError(f"threshold {threshold!r} is invalid; valid: a finite number in score units")
        return threshold

    def verify(self, a: ImageInput, b: ImageInput, threshold: Optional[float] = None) -> Verification:
        """Are the two faces the same person? Raises ImageError naming a bad image."""
        threshold = self.decision_threshold(threshold)
        embeddings = self.embed([a, b])
        score = float(self.score(embeddings[:1], embeddings[1:])[0])
        cosine = float(np.dot(embeddings[0], embeddings[1]))
        return Verification(same=score >= threshold, score=score, threshold=threshold, cosine=cosine)

    # ------------------------------------------------------------------ identification

    def gallery_meta(self) -> dict:
        return {
            "format": GALLERY_FORMAT,
            "format_version": GALLERY_FORMAT_VERSION,
            "maskface_version": __version__,
            "backbone": self.backbone,
            "embedding_size": self.embedding_size,
            "model_dir": str(self.folder.root.resolve()),
            "model_fingerprint": self.folder.fingerprint(),
        }

    def enroll_many(
        self, gallery: Union[str, os.PathLike, Mapping[str, Sequence[ImageInput]]], progress: Optional[bool] = False
    ) -> tuple[Gallery, list[Failure]]:
        """Build a gallery, skipping bad images; returns it with the failures.

        ``gallery``: a folder (``<identity>/<images>`` at any depth below the identity folder;
        an image directly in the folder is its own identity, named by the file stem) or a
        mapping identity -> images.
        """
        if isinstance(gallery, Mapping):
            pairs = [(str(identity), image) for identity, images in gallery.items() for image in _as_list(images)]
        else:
            root = Path(gallery)
            if not root.is_dir():
                raise GalleryError(f"{root}: gallery folder missing" if not root.exists() else f"{root}: not a folder")
            pairs = []
            for path in expand_paths([root]):
                relative = Path(path).relative_to(root)
                identity = relative.parts[0] if len(relative.parts) > 1 else relative.stem
                pairs.append((identity, path))
        if not pairs:
            raise GalleryError(f"{gallery}: no images to enroll")
        result = self.embed_many([image for _, image in pairs], progress=progress)
        identities = [pairs[position][0] for position in result.positions]
        if not identities:
            raise GalleryError(f"{gallery}: none of the {len(pairs)} images could be used")
        return Gallery(result.embeddings, identities, result.sources, self.gallery_meta()), result.failures

    def enroll(self, gallery: Union[str, os.PathLike, Mapping[str, Sequence[ImageInput]]]) -> Gallery:
        """Build a gallery; raises ImageError on the first bad image (see :meth:`enroll_many`)."""
        built, failures = self.enroll_many(gallery)
        if failures:
            raise ImageError(failures[0].source, failures[0].reason)
        return built

    def rank(self, embedding: np.ndarray, gallery: Gallery, top: int = 5) -> tuple[list[Candidate], float]:
        """Top identities for one probe embedding (E,): best pair score over each identity's images."""
        if len(gallery) == 0:
            raise GalleryError(f"{gallery.meta.get('file', 'gallery')}: empty")
        scores = self.score(np.repeat(embedding[None, :], len(gallery), axis=0), gallery.embeddings)
        names, inverse = np.unique(gallery.identities, return_inverse=True)
        best = np.full(len(names), -np.inf)
        np.maximum.at(best, inverse, scores)
        # Stable sort on the negated score: ties keep alphabetical order, so output is deterministic.
        order = np.argsort(-best, kind="stable")[: max(1, top)]
        return [Candidate(str(names[k]), float(best[k])) for k in order], float(best[order[0]])

    def identify_many(
        self,
        images: Any,
        gallery: Gallery,
        top: int = 5,
        progress: Optional[bool] = False,
        threshold: Optional[float] = None,
    ) -> tuple[list[Identification], list[Failure]]:
        """Open-set identification of each usable probe; bad probes come back as failures.

        A probe is its best identity when that identity's score >= ``threshold`` (default:
        the model folder's), else ``"unknown"``.
        """
        threshold = self.decision_threshold(threshold)
        if top < 1:
            raise InputError(f"top {top!r} is invalid; valid: an integer >= 1")
        gallery.check_model(self)
        result = self.embed_many(images, progress=progress)
        found = []
        for source, embedding in zip(result.sources, result.embeddings):
            candidates, best = self.rank(embedding, gallery, top)
            identity = candidates[0].identity if best >= threshold else UNKNOWN
            found.append(Identification(source, identity, best, threshold, tuple(candidates)))
        return found, result.failures

    def identify(self, images: Any, gallery: Gallery, top: int = 5, threshold: Optional[float] = None) -> list[Identification]:
        """One :class:`Identification` per probe; raises ImageError on the first bad probe."""
        found, failures = self.identify_many(images, gallery, top, threshold=threshold)
        if failures:
            raise ImageError(failures[0].source, failures[0].reason)
        return found


def load_model(
    path: Union[str, os.PathLike],
    device: Any = "auto",
    batch_size: int = 64,
    precision: str = "auto",
    channels_last: bool = True,
    decode_workers: Optional[int] = None,
    lazy: bool = False,
) -> FaceModel:
    """Load a model folder (``models/<backbone>`` or an exported copy); see :mod:`maskface.inference.model_folder`.

    ``decode_workers``: processes (for many image files; threads for other inputs and for
    models that detect the face first) that decode and preprocess images ahead of the
    network; None: one process per two cores (1 to 4), at least 2 threads.
    ``lazy``: read the weights on first use (see :class:`FaceModel`); errors in them then
    surface there instead of here.

    ``precision``: ``auto`` (as the embed stage: bf16 on GPUs and on CPUs with native bf16,
    else fp32), ``fp32`` or ``bf16``. ``channels_last`` and ``batch_size`` default to the
    embed stage's settings too (channels-last is what oneDNN and cuDNN convolve fastest;
    in bf16 on the CPU the NCHW path is ~1.5x slower, benchmarks/README.md figure 1).

    Raises :class:`maskface.inference.model_folder.ModelFolderError` for a missing, incomplete,
    corrupt (checksum) or incompatible folder.
    """
    return FaceModel(
        read_model_folder(path, check_backbone=not lazy), device=device, batch_size=batch_size, precision=precision, channels_last=channels_last,
        decode_workers=decode_workers, lazy=lazy,
    )


def load_gallery(path: Union[str, os.PathLike]) -> Gallery:
    return Gallery.load(path)


__all__ = [
    "Candidate",
    "EmbedResult",
    "FaceModel",
    "Failure",
    "Gallery",
    "GalleryError",
    "Identification",
    "ImageError",
    "ModelFolderError",
    "UNKNOWN",
    "Verification",
    "expand_paths",
    "load_gallery",
    "load_model",
]
