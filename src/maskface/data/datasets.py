"""Dataset sources for the split stage: real datasets in, nothing lost.

Every file under every configured root ends up in exactly one of two tables:

* the **manifest** (one row per usable image: path, identity, masked, source, width,
  height, mode, sha256, label_noise, derived_from), or
* the **rejected** table (path, reason, detail), with ``reason`` from :data:`REJECT_REASONS`.

Each file is opened and fully decoded once, in ``workers`` processes, and converted with
:func:`maskface.imageio.to_rgb` so anything accepted here loads in every later stage.

File names that are not valid UTF-8 are kept as ``str`` with ``surrogateescape`` (what
``os.fsdecode`` returns), so the recorded path opens the same file again. Write the tables
with :func:`maskface.tables.write_csv` and read a manifest back with :func:`read_manifest`,
which use the same error handler; a plain ``pandas.read_csv`` would fail on such a name.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import os
import re
import stat
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple, Optional

import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError
from pydantic import Field, model_validator
from tqdm import tqdm

from maskface.config import Items, Section, SyntheticConfig, Valid, bad_value
from maskface.errors import UserError, invalid_param
from maskface.imageio import sniff_format, to_rgb
from maskface.tables import read_csv

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "rmfrd", "smfrd", "lfw", "folder", "manifest")
# The synthetic source writes into the one folder the caller gives, so it cannot be repeated.
EXTRA_SOURCES = tuple(s for s in SOURCES if s != "synthetic")

# Pillow's own default for Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485

REJECT_REASONS = (
    "zero_bytes",  # the file is empty
    "not_an_image",  # no image signature and Pillow cannot identify it
    "truncated_or_corrupt",  # an image signature, but the header or pixel data does not decode
    "too_small",  # width or height below data.min_side
    "decompression_bomb",  # width * height above data.max_pixels
    "unsupported_mode",  # decodes, but cannot be converted to RGB
    "unreadable",  # the operating system refused to open or list it (permissions, broken link)
    "not_a_regular_file",  # a FIFO, socket or device: never opened, it could block
    "duplicate",  # same content as an earlier file of the same identity
    "outside_layout",  # a valid image where the source's layout has no identity for it
    "metadata",  # the source's own bookkeeping file (synthetic ground_truth.csv)
    "missing",  # listed by a manifest or ground truth, but no such file
    "listed_twice",  # a manifest lists the same file more than once
    "bad_manifest_row",  # a manifest row without a path or identity, or with an unreadable masked flag
)

# derived_from: the manifest path of the photo a simulated masked copy was made from ("" for
# an original); the pair builder never pairs images of one origin (maskface.data.split).
MANIFEST_COLUMNS = (
    "path", "identity", "masked", "source", "width", "height", "mode", "sha256", "label_noise", "derived_from",
)
REJECTED_COLUMNS = ("path", "reason", "detail")

RMFRD_UNMASKED_DIR = "AFDB_face_dataset"
RMFRD_MASKED_DIR = "AFDB_masked_face_dataset"
RMFRD_WRAPPER_DIR = "self-built-masked-face-recognition-dataset"
GROUND_TRUTH_NAME = "ground_truth.csv"

_NEGATIONS = ("un", "no", "non", "not", "without")
# A negation word ending the text before the pattern, itself starting a word.
_NEGATED = re.compile(r"(?:^|[^a-z])(?:" + "|".join(_NEGATIONS) + r")$")
_TRUE_WORDS = ("1", "true", "yes", "y", "masked", "mask")
_FALSE_WORDS = ("0", "false", "no", "n", "unmasked", "nomask")


class DatasetError(UserError, RuntimeError):
    """A dataset root is missing, malformed, or yields no usable image."""


# One more dataset, "kind:root".
SourceEntry = Annotated[
    str,
    Field(pattern=rf"(?s)^(?:{'|'.join(EXTRA_SOURCES)}):.*\S"),
    Valid(f"'<kind>:<root>' with kind one of {', '.join(EXTRA_SOURCES)}"),
]
NonEmpty = Annotated[str, Field(pattern=r"\S")]
NonEmptyPath = Annotated[NonEmpty, Valid("a non-empty path")]


class DataConfig(Section):
    """The ``data`` params section: where images come from and what counts as usable.

    ``root`` and the roots in ``extra_sources`` ("kind:root") are relative to the working
    directory. ``min_side`` is in pixels; ``max_pixels`` bounds width * height.
    """

    source: Literal[SOURCES] = "synthetic"
    root: NonEmptyPath = "data/external"
    synthetic: SyntheticConfig = SyntheticConfig()
    extra_sources: Items[SourceEntry] = ()
    # Other collections ("kind:root") used only for validation pairs while fine-tuning: never
    # trained on, never in the test pairs; they tell fine-tuning when it starts to forget.
    validation_sources: Items[SourceEntry] = ()
    unmasked_root: Optional[NonEmptyPath] = None
    masked_pattern: Annotated[NonEmpty, Valid("a non-empty string such as 'mask'")] = "mask"
    min_side: Annotated[int, Field(ge=1, description="pixels")] = 32
    max_pixels: Annotated[int, Field(ge=1, description="width * height")] = DEFAULT_MAX_PIXELS
    workers: Annotated[int, Field(ge=1, description="1: no worker processes")] = 2
    min_images_per_identity: Annotated[int, Field(ge=1)] = 2

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        if self.unmasked_root is not None and self.source != "smfrd":
            valid = f"null unless {{section}}.source is smfrd (it is {self.source!r})"
            raise bad_value("unmasked_root", self.unmasked_root, valid)
        if self.max_pixels < self.min_side * self.min_side:
            square = self.min_side * self.min_side
            valid = f"an integer >= min_side**2 = {square}, or no image could pass"
            raise bad_value("max_pixels", self.max_pixels, valid)
        return self


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One dataset to read: ``label`` prefixes its identities and fills the ``source`` column."""

    label: str
    kind: str
    root: str
    unmasked_root: Optional[str] = None


def source_specs(cfg: DataConfig) -> list[SourceSpec]:
    """The main source and each of ``extra_sources``; a repeated kind is labelled kind-2, kind-3..."""
    entries = [(cfg.source, cfg.root, cfg.unmasked_root)]
    for entry in cfg.extra_sources:
        kind, _, root = entry.partition(":")
        entries.append((kind, root, None))
    seen: Counter = Counter()
    specs = []
    for kind, root, unmasked_root in entries:
        seen[kind] += 1
        label = kind if seen[kind] == 1 else f"{kind}-{seen[kind]}"
        specs.append(SourceSpec(label=label, kind=kind, root=root, unmasked_root=unmasked_root))
    return specs


def build_validation_manifest(cfg: DataConfig) -> Optional["ManifestResult"]:
    """The images of ``cfg.validation_sources`` (None without any), identities prefixed
    ``xval-<kind>/`` so that no name can merge with a training identity."""
    if not cfg.validation_sources:
        return None
    manifests, rejected, reports = [], [], {}
    for index, entry in enumerate(cfg.validation_sources):
        kind, _, root = entry.partition(":")
        alone = {"source": kind, "root": root, "extra_sources": (), "validation_sources": (), "unmasked_root": None}
        one = cfg.model_copy(update=alone)
        result = build_manifest(one)
        manifest = result.manifest.copy()
        manifest["identity"] = f"xval-{kind}-{index}/" + manifest["identity"].astype(str)
        manifests.append(manifest)
        rejected.append(result.rejected)
        reports[entry] = {"images": int(len(manifest)), "identities": int(manifest["identity"].nunique())}
    return ManifestResult(
        pd.concat(manifests, ignore_index=True), pd.concat(rejected, ignore_index=True), {"validation_sources": reports}
    )


@dataclasses.dataclass
class ManifestResult:
    """``manifest`` and ``rejected`` are sorted by path; ``report`` is JSON-ready (metrics/data.json)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    report: dict


class ImageInfo(NamedTuple):
    """What the per-file worker learns about a usable image (sizes in pixels)."""

    width: int
    height: int
    mode: str
    format: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One non-directory entry found by :func:`scan_files`.

    ``relpath`` is POSIX and relative to the scanned root; ``problem`` is ``(reason, detail)``
    when the entry must not be opened as a file.
    """

    relpath: str
    problem: Optional[tuple[str, str]] = None


def scan_files(root: str | Path) -> Iterator[FileEntry]:
    """Yield every non-directory entry below ``root``, hidden ones included, sorted by relpath.

    Symbolic links to folders are followed, each real folder once (a link cycle cannot loop);
    unlistable folders are yielded as entries with an ``unreadable`` problem so they are
    accounted for rather than skipped.
    """
    entries: list[FileEntry] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: str, prefix: str) -> None:
        try:
            info = os.stat(folder)
        except OSError as error:
            entries.append(FileEntry(prefix.rstrip("/") or ".", ("unreadable", f"cannot stat folder: {error}")))
            return
        key = (info.st_dev, info.st_ino)
        if key in visited:
            logger.debug("%s: folder already scanned through another link", folder)
            return
        visited.add(key)
        try:
            with os.scandir(folder) as iterator:
                children = sorted(iterator, key=lambda e: e.name)
        except OSError as error:
            entries.append(FileEntry(prefix.rstrip("/") or ".", ("unreadable", f"cannot list folder: {error}")))
            return
        for child in children:
            relpath = prefix + child.name
            try:
                if child.is_dir(follow_symlinks=True):
                    walk(child.path, relpath + "/")
                    continue
                if child.is_file(follow_symlinks=True):
                    entries.append(FileEntry(relpath))
                elif child.is_symlink() and not os.path.exists(child.path):
                    entries.append(FileEntry(relpath, ("unreadable", "broken symbolic link")))
                else:
                    entries.append(FileEntry(relpath, ("not_a_regular_file", _file_kind(child.path))))
            except OSError as error:
                entries.append(FileEntry(relpath, ("unreadable", str(error))))

    walk(os.fspath(root), "")
    entries.sort(key=lambda e: e.relpath)
    return iter(entries)


def _file_kind(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot stat: {error}"
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, name in kinds:
        if test(mode):
            return f"{name}, not a regular file"
    return "not a regular file"


class _PixelLimit:
    """Make Pillow's decompression-bomb check use ``max_pixels`` and raise instead of warn.

    Also forces strict decoding: a caller that set ``ImageFile.LOAD_TRUNCATED_IMAGES`` would
    otherwise let truncated files through as grey-padded images.
    """

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __enter__(self):
        self._saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # Bulk scans of web-scraped data trip many harmless plugin warnings (odd EXIF, ...);
        # only the bomb warning matters and it becomes an exception.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self

    def __exit__(self, *exc_info):
        self._warnings.__exit__(*exc_info)
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = self._saved
        return False


def _describe(error: BaseException) -> str:
    text = str(error).strip() or "no message"
    return f"{type(error).__name__}: {text}"


def validate_image(
    path: str | Path, min_side: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Optional[ImageInfo], Optional[str], str]:
    """Open, fully decode and RGB-convert one file; never raises for a bad file.

    Returns ``(info, None, "")`` for a usable image, else ``(None, reason, detail)`` with
    ``reason`` from :data:`REJECT_REASONS`. Pixels are dropped before returning, so a worker
    holds at most one decoded image.
    """
    try:
        info = os.stat(path)
    except OSError as error:
        return None, "unreadable", _describe(error)
    if not stat.S_ISREG(info.st_mode):
        return None, "not_a_regular_file", _file_kind(os.fspath(path))
    if info.st_size == 0:
        return None, "zero_bytes", "the file is empty"
    try:
        handle = open(path, "rb")
    except OSError as error:
        return None, "unreadable", _describe(error)
    with handle, _PixelLimit(max_pixels):
        try:
            image = Image.open(handle)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            return None, "decompression_bomb", f"{error} (data.max_pixels = {max_pixels})"
        except UnidentifiedImageError:
            handle.seek(0)
            signature = sniff_format(handle.read(16))
            if signature is None:
                return None, "not_an_image", f"no image signature ({info.st_size} bytes)"
            return None, "truncated_or_corrupt", f"{signature} signature but its header does not parse"
        except Exception as error:  # noqa: BLE001 - any plugin failure means a bad file
            return None, "truncated_or_corrupt", _describe(error)
        with image:
            width, height = image.size
            mode, fmt = image.mode, image.format or "unknown"
            if width * height > max_pixels:
                return (
                    None,
                    "decompression_bomb",
                    f"{width}x{height} = {width * height} pixels > data.max_pixels = {max_pixels}",
                )
            try:
                image.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
                return None, "decompression_bomb", f"{error} (data.max_pixels = {max_pixels})"
            except Exception as error:  # noqa: BLE001
                return None, "truncated_or_corrupt", _describe(error)
            if min(width, height) < min_side:
                return None, "too_small", f"{width}x{height} < data.min_side = {min_side}"
            try:
                converted = to_rgb(image)
            except Exception as error:  # noqa: BLE001
                return None, "unsupported_mode", f"mode {mode}: {_describe(error)}"
            if converted.mode != "RGB":
                return None, "unsupported_mode", f"mode {mode} converted to {converted.mode}, not RGB"
            del converted
        handle.seek(0)
        digest = hashlib.sha256()
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return ImageInfo(width, height, mode, fmt, digest.hexdigest()), None, ""


def marks_masked(name: str, pattern: str = "mask") -> bool:
    """True when ``name`` contains ``pattern`` (case-insensitive) not negated by un/no/non/not/without.

    "with_mask", "Masked", "0_0_mask.jpg" mark masked; "unmasked", "no_mask", "without-mask",
    "non masked" do not: the negations guard against the common with/without folder pairs.
    """
    lowered, needle = name.lower(), pattern.lower()
    for match in re.finditer(re.escape(needle), lowered):
        before = lowered[: match.start()].rstrip("_- .")
        if not _NEGATED.search(before):
            return True
    return False


def _parse_masked(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    return None


class _Candidate(NamedTuple):
    """A file to validate; ``identity`` None means the layout has no place for it (``detail`` says why)."""

    open_path: str
    source: str
    identity: Optional[str]
    masked: Optional[bool]
    detail: str = ""
    derived_from: str = ""  # a source manifest's declared original (a path to open), or ""


class _Collector:
    """Gathers candidates and direct rejections for all sources, with display paths."""

    def __init__(self, cwd: str):
        self.cwd = cwd
        self.candidates: list[tuple[str, _Candidate]] = []
        self.rejected: list[tuple[str, str, str, str]] = []  # path, reason, detail, source

    def display(self, path: str) -> str:
        """Relative to the working directory when under it, else as given; POSIX separators."""
        absolute = os.path.abspath(path)
        if absolute == self.cwd or absolute.startswith(self.cwd.rstrip(os.sep) + os.sep):
            path = os.path.relpath(absolute, self.cwd)
        return Path(path).as_posix()

    def add(self, candidate: _Candidate) -> None:
        self.candidates.append((self.display(candidate.open_path), candidate))

    def reject(self, path: str, reason: str, detail: str, source: str, displayed: bool = False) -> None:
        self.rejected.append((path if displayed else self.display(path), reason, detail, source))


def _require_dir(path: str, key: str) -> None:
    if not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise DatasetError(f"{key} = {path!r} {what} (working directory {os.getcwd()!r})")


def _walk_into(collector: _Collector, spec: SourceSpec, root: str, assign, key: str) -> None:
    """Scan ``root``; ``assign(parts)`` gives ``(identity, masked)`` or a string saying why not."""
    _require_dir(root, key)
    for entry in scan_files(root):
        open_path = os.path.join(root, entry.relpath)
        if entry.problem is not None:
            collector.reject(open_path, entry.problem[0], entry.problem[1], spec.label)
            continue
        placed = assign(entry.relpath.split("/"))
        if isinstance(placed, str):
            collector.add(_Candidate(open_path, spec.label, None, None, placed))
        else:
            identity, masked = placed
            collector.add(_Candidate(open_path, spec.label, f"{spec.label}/{identity}", masked))


def _find_rmfrd_base(root: str) -> str:
    """The folder holding AFDB_face_dataset / AFDB_masked_face_dataset: root or one level below."""
    names = (RMFRD_UNMASKED_DIR, RMFRD_MASKED_DIR)
    if any(os.path.isdir(os.path.join(root, n)) for n in names):
        return ""
    preferred = os.path.join(root, RMFRD_WRAPPER_DIR)
    if any(os.path.isdir(os.path.join(preferred, n)) for n in names):
        return RMFRD_WRAPPER_DIR
    children = sorted(
        c for c in os.listdir(root) if any(os.path.isdir(os.path.join(root, c, n)) for n in names)
    )
    if len(children) == 1:
        return children[0]
    found = f"; candidates: {', '.join(children)}" if children else ""
    raise DatasetError(
        f"rmfrd root {root!r} has neither {RMFRD_UNMASKED_DIR}/ nor {RMFRD_MASKED_DIR}/, "
        f"directly or one level below (e.g. {RMFRD_WRAPPER_DIR}/){found}"
    )


def _collect_rmfrd(collector: _Collector, spec: SourceSpec, key: str) -> None:
    _require_dir(spec.root, key)
    base = _find_rmfrd_base(spec.root)
    base_parts = base.split("/") if base else []
    for side in (RMFRD_UNMASKED_DIR, RMFRD_MASKED_DIR):
        if not os.path.isdir(os.path.join(spec.root, base, side)):
            logger.warning("rmfrd %s: no %s/ folder; only one side of the dataset is read", spec.root, side)

    def assign(parts: list[str]):
        if parts[: len(base_parts)] != base_parts:
            return f"outside {base}/ (the RMFRD folder)"
        inner = parts[len(base_parts) :]
        if inner[0] not in (RMFRD_UNMASKED_DIR, RMFRD_MASKED_DIR):
            return f"not under {RMFRD_UNMASKED_DIR}/ or {RMFRD_MASKED_DIR}/"
        if len(inner) < 3:
            return f"directly in {inner[0]}/, not in an identity folder"
        return inner[1], inner[0] == RMFRD_MASKED_DIR

    _walk_into(collector, spec, spec.root, assign, key)


def _identity_folder(masked: bool):
    def assign(parts: list[str]):
        if len(parts) < 2:
            return "directly in the root, not in an identity folder"
        return parts[0], masked

    return assign


def _collect_lfw(collector: _Collector, spec: SourceSpec, key: str) -> None:
    def assign(parts: list[str]):
        if len(parts) != 2:
            return "LFW layout is <Name>/<Name>_NNNN.jpg" if len(parts) < 2 else "nested below an identity folder"
        name, file_name = parts
        if not re.fullmatch(re.escape(name) + r"_\d+", PurePosixPath(file_name).stem):
            return f"file name does not match its folder ({name}_NNNN)"
        return name, False

    _walk_into(collector, spec, spec.root, assign, key)


def _collect_folder(collector: _Collector, spec: SourceSpec, key: str, pattern: str) -> None:
    def assign(parts: list[str]):
        if len(parts) < 2:
            return "directly in the root, not in an identity folder"
        return parts[0], any(marks_masked(part, pattern) for part in parts[1:])

    _walk_into(collector, spec, spec.root, assign, key)


def _require_columns(table: pd.DataFrame, needed: Sequence[str], where: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{where} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, table.columns))}; "
            f"needed: {', '.join(needed)}"
        )


def _collect_manifest(collector: _Collector, spec: SourceSpec, key: str) -> None:
    if not os.path.isfile(spec.root):
        raise DatasetError(
            f"{key} = {spec.root!r} is not a CSV file (source manifest needs columns path, identity, masked)"
        )
    try:
        table = read_csv(spec.root, dtype=object)
    except (ValueError, OSError) as error:
        raise DatasetError(f"{key} = {spec.root!r} is not a readable CSV: {error}") from None
    _require_columns(table, ("path", "identity", "masked"), f"manifest {spec.root!r}")
    folder = os.path.dirname(spec.root)
    listed: dict[str, int] = {}
    for row_number, row in enumerate(table.itertuples(index=False), start=1):
        raw_path, identity, masked = str(row.path), str(row.identity).strip(), _parse_masked(row.masked)
        where = f"{collector.display(spec.root)} row {row_number}"
        if not raw_path.strip():
            collector.reject(where, "bad_manifest_row", "empty path", spec.label, displayed=True)
            continue
        open_path = raw_path if os.path.isabs(raw_path) else os.path.join(folder, raw_path)
        if not identity:
            collector.reject(open_path, "bad_manifest_row", f"{where}: empty identity", spec.label)
            continue
        if masked is None:
            collector.reject(
                open_path, "bad_manifest_row",
                f"{where}: masked = {row.masked!r}; valid: {', '.join(_TRUE_WORDS + _FALSE_WORDS)}", spec.label,
            )
            continue
        canonical = os.path.realpath(open_path)
        if canonical in listed:
            detail = f"{where}: already listed on row {listed[canonical]}"
            collector.reject(open_path, "listed_twice", detail, spec.label)
            continue
        listed[canonical] = row_number
        if not os.path.lexists(open_path):
            collector.reject(open_path, "missing", f"{where}: no such file", spec.label)
            continue
        derived = str(getattr(row, "derived_from", "") or "").strip()
        if derived and not os.path.isabs(derived):
            derived = os.path.join(folder, derived)
        collector.add(_Candidate(open_path, spec.label, f"{spec.label}/{identity}", masked, derived_from=derived))


def _collect_synthetic(collector: _Collector, spec: SourceSpec, synthetic_dir: Path, cfg: DataConfig) -> None:
    from maskface.data.synthetic import generate_dataset

    out_dir = os.fspath(synthetic_dir)
    logger.info("generating the synthetic dataset in %s", out_dir)
    generate_dataset(Path(out_dir), cfg.synthetic)
    truth_path = os.path.join(out_dir, GROUND_TRUTH_NAME)
    if not os.path.isfile(truth_path):
        raise DatasetError(f"synthetic generator wrote no {GROUND_TRUTH_NAME} in {out_dir!r}")
    truth = read_csv(truth_path, dtype=object)
    _require_columns(truth, ("path", "identity", "masked"), f"{truth_path!r}")
    labels: dict[str, tuple[str, Optional[bool], int, Any]] = {}
    for row_number, row in enumerate(truth.itertuples(index=False), start=1):
        relpath = PurePosixPath(str(row.path).replace("\\", "/")).as_posix()
        labels[relpath] = (str(row.identity), _parse_masked(row.masked), row_number, row.masked)
    seen: set[str] = set()
    for entry in scan_files(out_dir):
        open_path = os.path.join(out_dir, entry.relpath)
        if entry.relpath == GROUND_TRUTH_NAME:
            collector.reject(open_path, "metadata", "the synthetic source's ground truth, not an image", spec.label)
            continue
        if entry.problem is not None:
            collector.reject(open_path, entry.problem[0], entry.problem[1], spec.label)
            continue
        label = labels.get(entry.relpath)
        if label is None:
            collector.add(_Candidate(open_path, spec.label, None, None, f"not listed in {GROUND_TRUTH_NAME}"))
            continue
        seen.add(entry.relpath)
        identity, masked, row_number, raw_masked = label
        if masked is None:
            collector.reject(
                open_path, "bad_manifest_row",
                f"{GROUND_TRUTH_NAME} row {row_number}: masked = {raw_masked!r} is not a flag", spec.label,
            )
            continue
        collector.add(_Candidate(open_path, spec.label, f"{spec.label}/{identity}", masked))
    for relpath in sorted(set(labels) - seen):
        collector.reject(
            os.path.join(out_dir, relpath), "missing",
            f"{GROUND_TRUTH_NAME} row {labels[relpath][2]}: no such file", spec.label,
        )


def _check_roots_apart(roots: list[tuple[str, str]]) -> None:
    """Refuse overlapping roots: a file read twice would be counted twice."""
    resolved = [(key, os.path.realpath(path)) for key, path in roots]
    for i, (key_a, a) in enumerate(resolved):
        for key_b, b in resolved[i + 1 :]:
            if a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep):
                raise DatasetError(f"{key_a} ({a}) and {key_b} ({b}) overlap; each file must belong to one source")


def _validate_all(paths: list[str], cfg: DataConfig) -> Iterator[tuple[Optional[ImageInfo], Optional[str], str]]:
    """Validate in order, in ``cfg.workers`` processes; results stream back in chunks."""
    worker = functools.partial(validate_image, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
    if cfg.workers == 1 or len(paths) < 2:
        with tqdm(total=len(paths), desc="validating images", unit="file") as progress:
            for path in paths:
                yield worker(path)
                progress.update()
        return
    chunksize = max(1, min(64, len(paths) // (cfg.workers * 8)))
    # The pool starts before tqdm's monitor thread exists: forking a threaded process is unsafe.
    with concurrent.futures.ProcessPoolExecutor(max_workers=cfg.workers) as pool:
        results = pool.map(worker, paths, chunksize=chunksize)
        with tqdm(total=len(paths), desc="validating images", unit="file") as progress:
            for result in results:
                yield result
                progress.update()


def build_manifest(cfg: DataConfig, synthetic_dir: Optional[Path] = None) -> ManifestResult:
    """Read every configured source into a manifest, a rejected table and a report.

    ``synthetic_dir`` is where the synthetic source (if used) is generated. Raises
    :class:`DatasetError` when a root is missing, malformed or overlaps another, or when no
    image survives.

    Report keys: ``files_seen`` (== ``accepted`` + ``rejected``), ``rejected_by_reason``
    (every reason, zeros included), ``images`` and ``identity_sides`` ({total, masked,
    unmasked}), ``identities``, ``by_source`` (per source label: kind, root, files_seen,
    rejected, images, identities), ``label_noise`` ({images, groups, list of {sha256,
    identities, paths}}), ``identities_masked_only``, ``identities_unmasked_only``,
    ``identities_below_min_images`` (with ``min_images_per_identity``). Identities are
    reported, never dropped: the split decides what to do with them.
    """
    collector = _Collector(os.getcwd())
    specs = source_specs(cfg)
    roots: list[tuple[str, str]] = []
    for index, spec in enumerate(specs):
        key = "data.root" if index == 0 else f"data.extra_sources[{index - 1}]"
        if spec.kind == "synthetic":
            if synthetic_dir is None:
                raise DatasetError("data.source = 'synthetic' needs a synthetic_dir to generate into")
            roots.append(("synthetic_dir", os.fspath(synthetic_dir)))
        else:
            roots.append((key, spec.root))
        if spec.unmasked_root is not None:
            roots.append(("data.unmasked_root", spec.unmasked_root))
    for key, path in roots:
        if key != "synthetic_dir" and not os.path.exists(path):
            raise DatasetError(f"{key} = {path!r} does not exist (working directory {os.getcwd()!r})")
    _check_roots_apart(roots)

    for index, spec in enumerate(specs):
        key = "data.root" if index == 0 else f"data.extra_sources[{index - 1}]"
        if spec.kind == "synthetic":
            _collect_synthetic(collector, spec, Path(synthetic_dir), cfg)
        elif spec.kind == "rmfrd":
            _collect_rmfrd(collector, spec, key)
        elif spec.kind == "smfrd":
            _walk_into(collector, spec, spec.root, _identity_folder(masked=True), key)
            if spec.unmasked_root is not None:
                _walk_into(collector, spec, spec.unmasked_root, _identity_folder(masked=False), "data.unmasked_root")
        elif spec.kind == "lfw":
            _collect_lfw(collector, spec, key)
        elif spec.kind == "folder":
            _collect_folder(collector, spec, key, cfg.masked_pattern)
        elif spec.kind == "manifest":
            _collect_manifest(collector, spec, key)
        else:  # validate() refuses other kinds; this guards a hand-built DataConfig
            raise invalid_param("data.source", spec.kind, ", ".join(SOURCES))

    collector.candidates.sort(key=lambda item: item[0])
    accepted: list[dict] = []
    rejected = list(collector.rejected)
    results = _validate_all([c.open_path for _, c in collector.candidates], cfg)
    for (path, candidate), (info, reason, detail) in zip(collector.candidates, results, strict=True):
        if reason is not None:
            rejected.append((path, reason, detail, candidate.source))
        elif candidate.identity is None:
            rejected.append((path, "outside_layout", candidate.detail, candidate.source))
        else:
            accepted.append(
                {
                    "path": path,
                    "identity": candidate.identity,
                    "masked": bool(candidate.masked),
                    "source": candidate.source,
                    "width": info.width,
                    "height": info.height,
                    "mode": info.mode,
                    "sha256": info.sha256,
                    "derived_from": candidate.derived_from,
                }
            )

    # Exact duplicates within one identity: keep the first path, the rest add nothing.
    kept: list[dict] = []
    first_of: dict[tuple[str, str], str] = {}
    for row in accepted:
        key = (row["identity"], row["sha256"])
        if key in first_of:
            rejected.append((row["path"], "duplicate", f"same content as {first_of[key]}", row["source"]))
        else:
            first_of[key] = row["path"]
            kept.append(row)

    identities_of: dict[str, set[str]] = defaultdict(set)
    for row in kept:
        identities_of[row["sha256"]].add(row["identity"])
    for row in kept:
        row["label_noise"] = len(identities_of[row["sha256"]]) > 1
    _link_derived(kept, {spec.label: spec.kind for spec in specs}, collector)

    manifest = _frame(kept, MANIFEST_COLUMNS)
    rejected_frame = _frame(
        [{"path": p, "reason": r, "detail": d} for p, r, d, _ in rejected], REJECTED_COLUMNS
    )
    report = _report(cfg, specs, roots, manifest, rejected, collector)
    if manifest.empty:
        raise DatasetError(
            f"no usable image in {', '.join(f'{k} = {p!r}' for k, p in roots)}: "
            f"{report['files_seen']} files seen, rejected by reason: {report['rejected_by_reason_nonzero']}"
        )
    logger.info(
        "%d files: %d images of %d identities accepted, %d rejected %s",
        report["files_seen"], report["accepted"], report["identities"], report["rejected"],
        report["rejected_by_reason_nonzero"],
    )
    return ManifestResult(manifest=manifest, rejected=rejected_frame, report=report)


# Suffixes simulators add to the original's name: MaskTheFace "_surgical", "_KN95",
# "_surgical_blue"; a tail starting with a digit ("0_0_3") is a photo number, not a mask.
_COPY_PREFIX = "crop_"
_NAMED_KINDS = ("rmfrd", "smfrd", "folder")


def _original_stems(stem: str) -> Iterator[str]:
    """Names a masked copy's original may have, longest first: the stem itself, then the stem
    without ``crop_`` and without each trailing ``_<word>`` tail that starts with a letter."""
    yield stem
    bare = stem.removeprefix(_COPY_PREFIX)
    if bare != stem:
        yield bare
    parts = bare.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        if parts[cut][:1].isalpha():
            yield "_".join(parts[:cut])


def _link_derived(rows: list[dict], kinds: dict[str, str], collector: _Collector) -> None:
    """Fill ``derived_from`` in place: every masked image made from another photo names it.

    A source manifest's declared ``derived_from`` (resolved as its paths are) becomes that
    photo's manifest path. In the rmfrd, smfrd and folder layouts a masked file is a copy
    of the unmasked photo of the same identity whose name :func:`_original_stems` gives
    (``AFDB_masked_face_dataset/<Name>/<Name>_0001_surgical.jpg`` and
    ``crop_<Name>_0001_KN95.jpg`` from ``AFDB_face_dataset/<Name>/<Name>_0001.jpg``; an
    SMFRD copy with the original's own name); a real masked photo matches no such name.
    """
    declared = [row for row in rows if row["derived_from"]]
    if declared:
        path_of = {os.path.realpath(row["path"]): row["path"] for row in rows}
        for row in declared:
            target = os.path.normpath(row["derived_from"])
            row["derived_from"] = path_of.get(os.path.realpath(target), collector.display(target))
    originals: dict[tuple[str, str], str] = {}
    for row in rows:
        if not row["masked"] and kinds.get(row["source"]) in _NAMED_KINDS:
            originals.setdefault((row["identity"], PurePosixPath(row["path"]).stem), row["path"])
    linked = 0
    for row in rows:
        if not row["masked"] or row["derived_from"] or kinds.get(row["source"]) not in _NAMED_KINDS:
            continue
        for stem in _original_stems(PurePosixPath(row["path"]).stem):
            original = originals.get((row["identity"], stem))
            if original is not None:
                row["derived_from"] = original
                linked += 1
                break
    if linked or declared:
        logger.info("%d masked images are copies of another photo (%d by name, %d declared)", linked + len(declared), linked, len(declared))


def _frame(rows: list[dict], columns: Sequence[str]) -> pd.DataFrame:
    """A table sorted by path (then all columns), object dtype for text so surrogates survive."""
    frame = pd.DataFrame(rows, columns=list(columns))
    for column in columns:
        if column in ("masked", "label_noise"):
            frame[column] = frame[column].astype(bool)
        elif column in ("width", "height"):
            frame[column] = frame[column].astype("int64")
        else:
            frame[column] = frame[column].astype(object)
    return frame.sort_values(list(columns), kind="mergesort", ignore_index=True)


def _report(
    cfg: DataConfig,
    specs: list[SourceSpec],
    roots: list[tuple[str, str]],
    manifest: pd.DataFrame,
    rejected: list[tuple[str, str, str, str]],
    collector: _Collector,
) -> dict:
    reasons = Counter(r for _, r, _, _ in rejected)
    rejected_by_source = Counter(s for _, _, _, s in rejected)
    by_source = {}
    for spec in specs:
        rows = manifest[manifest["source"] == spec.label]
        by_source[spec.label] = {
            "kind": spec.kind,
            "root": spec.root if spec.kind != "synthetic" else dict(roots)["synthetic_dir"],
            "unmasked_root": spec.unmasked_root,
            "files_seen": int(len(rows) + rejected_by_source[spec.label]),
            "rejected": int(rejected_by_source[spec.label]),
            "images": _image_counts(rows),
            "identities": _identity_counts(rows),
        }
    sides = manifest.groupby("identity")["masked"].agg(["any", "all", "size"]) if not manifest.empty else None
    masked_only = sorted(sides.index[sides["all"]]) if sides is not None else []
    unmasked_only = sorted(sides.index[~sides["any"]]) if sides is not None else []
    below = sorted(sides.index[sides["size"] < cfg.min_images_per_identity]) if sides is not None else []
    noisy = manifest[manifest["label_noise"]]
    groups = [
        {
            "sha256": sha,
            "identities": sorted(set(group["identity"])),
            "paths": sorted(group["path"]),
        }
        for sha, group in sorted(noisy.groupby("sha256"), key=lambda item: item[0])
    ]
    files_seen = len(manifest) + len(rejected)
    return {
        "files_seen": int(files_seen),
        "accepted": int(len(manifest)),
        "rejected": int(len(rejected)),
        "rejected_by_reason": {reason: int(reasons[reason]) for reason in REJECT_REASONS},
        "rejected_by_reason_nonzero": {r: int(n) for r, n in sorted(reasons.items())},
        "images": _image_counts(manifest),
        "identities": int(manifest["identity"].nunique()),
        "identity_sides": _identity_counts(manifest),
        "by_source": by_source,
        "label_noise": {"images": int(len(noisy)), "groups": len(groups), "list": groups},
        "identities_masked_only": masked_only,
        "identities_unmasked_only": unmasked_only,
        "min_images_per_identity": cfg.min_images_per_identity,
        "identities_below_min_images": below,
    }


def _image_counts(rows: pd.DataFrame) -> dict:
    masked = int(rows["masked"].sum())
    return {"total": int(len(rows)), "masked": masked, "unmasked": int(len(rows)) - masked}


def _identity_counts(rows: pd.DataFrame) -> dict:
    """Identities overall, and those with at least one masked / unmasked image."""
    return {
        "total": int(rows["identity"].nunique()),
        "masked": int(rows.loc[rows["masked"], "identity"].nunique()),
        "unmasked": int(rows.loc[~rows["masked"], "identity"].nunique()),
    }


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`maskface.tables.write_csv`; text stays exact, flags are bool, sizes int."""
    frame = read_csv(path, dtype=object)
    for column in ("masked", "label_noise"):
        if column in frame.columns:
            flags = frame[column].map({"True": True, "False": False})
            if flags.isna().any():
                bad = frame.loc[flags.isna(), column].iloc[0]
                raise DatasetError(f"{path}: column {column} holds {bad!r}; valid: True, False")
            frame[column] = flags.astype(bool)
    for column in ("width", "height"):
        if column in frame.columns:
            frame[column] = frame[column].astype("int64")
    return frame
