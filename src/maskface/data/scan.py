"""What DVC sees of the dataset: a table of every file the split stage reads, with its SHA-256.

DVC hashes a folder dependency itself and stops on a file name that is not UTF-8 (RMFRD has
such names): ``'utf-8' codec can't encode character '\\udce9'``. The pipeline therefore lists
the dataset in ``data/scan.csv`` (path as its bytes, size, content SHA-256, no times) and the
stages depend on that file instead of the folder: the table changes exactly when a file is
edited, added, removed or renamed, and is byte-identical on every machine holding the same
files.

Hashing every image on each ``dvc repro`` would take minutes on a full dataset, so hashes are
kept in a side cache keyed by (path, size, mtime_ns, inode): a file whose stat is unchanged
is not read again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Optional

import pandas as pd

from maskface.data.datasets import DataConfig, SourceSpec, scan_files, source_specs
from maskface.tables import read_csv, write_csv_atomically

logger = logging.getLogger(__name__)

SCAN_COLUMNS = ("path", "size", "sha256", "problem")
CACHE_COLUMNS = ("path", "size", "mtime_ns", "inode", "sha256")
_CHUNK = 1 << 20


class _Stat(NamedTuple):
    size: int
    mtime_ns: int
    inode: int


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_files(config: DataConfig) -> Iterator[tuple[str, Optional[str]]]:
    """``(path, problem)`` of every file the split stage reads for ``config``, as it opens them.

    Folder roots are listed with :func:`maskface.data.datasets.scan_files` (the reader's own walk);
    a CSV root (``source: manifest``) is listed with every file it names. A root that does
    not exist yields nothing: the split stage reports it.
    """
    validation = [SourceSpec(f"xval-{k}", *entry.partition(":")[::2]) for k, entry in enumerate(config.validation_sources)]
    for spec in [*source_specs(config), *validation]:
        if spec.kind == "synthetic":
            continue  # rendered by the split stage itself, from params
        for root in (spec.root, spec.unmasked_root):
            if not root:
                continue
            if os.path.isdir(root):
                for entry in scan_files(root):
                    yield os.path.join(root, entry.relpath), None if entry.problem is None else ": ".join(entry.problem)
            elif os.path.isfile(root):
                yield root, None
                if spec.kind == "manifest":
                    yield from _manifest_files(root)


def _manifest_files(csv_path: str) -> Iterator[tuple[str, Optional[str]]]:
    try:
        table = read_csv(csv_path, dtype=object)
    except (ValueError, OSError):
        return  # the split stage names what is wrong with it
    if "path" not in table.columns:
        return
    folder = os.path.dirname(csv_path)
    for raw in table["path"]:
        if raw.strip():
            yield (raw if os.path.isabs(raw) else os.path.join(folder, raw)), None


def _load_cache(path: Optional[Path]) -> dict[tuple[str, _Stat], str]:
    if path is None or not path.is_file():
        return {}
    try:
        table = read_csv(path)
        return {
            (row.path, _Stat(int(row.size), int(row.mtime_ns), int(row.inode))): str(row.sha256)
            for row in table.itertuples(index=False)
        }
    except (ValueError, OSError, AttributeError, KeyError) as error:
        # Only a speed-up: a damaged cache means hashing everything again.
        logger.warning("ignoring the unreadable hash cache %s (%s)", path, error)
        return {}


def scan_dataset(
    files: Iterable[tuple[str, Optional[str]]], cache_path: Optional[Path] = None, workers: int = 4
) -> pd.DataFrame:
    """The scan table of ``files`` (columns :data:`SCAN_COLUMNS`), sorted by the paths' bytes.

    ``cache_path`` (optional) holds hashes by (path, size, mtime_ns, inode); it is rewritten
    with exactly the files seen now.
    """
    cache = _load_cache(cache_path)
    rows: dict[str, dict] = {}
    to_hash: list[tuple[str, _Stat]] = []
    for path, problem in files:
        if path in rows:
            continue
        if problem is None:
            try:
                info = os.stat(path)
            except OSError as error:
                problem = f"unreadable: {error.strerror}"
            else:
                stat = _Stat(info.st_size, info.st_mtime_ns, info.st_ino)
                rows[path] = {"path": path, "size": stat.size, "sha256": cache.get((path, stat)), "problem": "", "_stat": stat}
                if rows[path]["sha256"] is None:
                    to_hash.append((path, stat))
                continue
        rows[path] = {"path": path, "size": -1, "sha256": "", "problem": problem, "_stat": None}

    if to_hash:
        logger.info("hashing %d new or changed file(s) of %d", len(to_hash), len(rows))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # hashlib releases the GIL on large buffers: threads overlap reading and hashing.
        for (path, _), digest in zip(to_hash, pool.map(lambda item: _try_sha256(item[0]), to_hash)):
            if isinstance(digest, OSError):
                rows[path].update(size=-1, sha256="", problem=f"unreadable: {digest.strerror}", _stat=None)
            else:
                rows[path]["sha256"] = digest

    ordered = sorted(rows.values(), key=lambda row: os.fsencode(row["path"]))
    if cache_path is not None:
        cached = [
            {"path": r["path"], "size": r["_stat"].size, "mtime_ns": r["_stat"].mtime_ns, "inode": r["_stat"].inode, "sha256": r["sha256"]}
            for r in ordered
            if r["_stat"] is not None
        ]
        write_csv_atomically(pd.DataFrame(cached, columns=list(CACHE_COLUMNS)), cache_path)
    return pd.DataFrame([{k: r[k] for k in SCAN_COLUMNS} for r in ordered], columns=list(SCAN_COLUMNS))


def _try_sha256(path: str):
    try:
        return _sha256(path)
    except OSError as error:
        return error


def write_scan(config: DataConfig, out: Path, cache_path: Optional[Path] = None) -> pd.DataFrame:
    """Scan the dataset ``config`` names and write its table to ``out``."""
    skip = {os.path.realpath(p) for p in (out, cache_path) if p is not None}
    files = ((path, problem) for path, problem in dataset_files(config) if os.path.realpath(path) not in skip)
    table = scan_dataset(files, cache_path, workers=config.workers)
    write_csv_atomically(table, Path(out))
    logger.info("%s: %d file(s), %d with problems", out, len(table), int((table["problem"] != "").sum()))
    return table


def write_weights_records(params, out_dir: Path) -> dict[str, dict]:
    """``out_dir/<backbone>.json`` for every entry of ``backbones``: the pretrained file it will
    start from (:func:`maskface.models.weights.pretrained_record`); stale files of removed backbones go."""
    from maskface.models.backbones import get_spec
    from maskface.config import backbone_configs
    from maskface.models.weights import pretrained_record

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, config in backbone_configs(params).items():
        records[name] = pretrained_record(name, config.weights, get_spec(name).default_weights)
        target = out_dir / f"{name}.json"
        text = json.dumps(records[name], indent=2, sort_keys=True) + "\n"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    for stale in out_dir.glob("*.json"):
        if stale.stem not in records:
            stale.unlink()  # inside this stage's own output folder
    return records
