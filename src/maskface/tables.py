"""The one CSV layer for every table the pipeline, ``maskface eval`` and the CLI write or read.

File names are kept as their bytes: a name that is not valid UTF-8 is a ``str`` holding
surrogate escapes (what ``os.fsdecode`` returns), written back as the original bytes
(``surrogateescape`` on both sides), so a path read back from any table opens the same file.
A plain ``pandas.read_csv`` fails on such a name.

Columns that hold file names or identities are always read as text: a file or folder named
``NA``, ``null`` or ``0012`` must not become a missing value or the number 12.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ENCODING = "utf-8"
ERRORS = "surrogateescape"
# Read as pandas' default text dtype, what plain read_csv gives text columns. Its python
# storage holds surrogate escapes; pyarrow storage would not (tests/test_tables.py would fail).
NAME_COLUMNS = (
    "path", "path_a", "path_b", "identity", "identity_a", "identity_b", "file", "source", "source_path",
    "relative_path", "derived_from",
)


def write_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], path: str | Path) -> None:
    """The bytes :func:`write_csv` writes for a frame of these columns and rows, without
    importing pandas (~0.2 s of a short command's start-up): pandas formats its CSV through
    the same :mod:`csv` writer (tests/test_cli.py compares the two)."""
    import csv

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=ENCODING, errors=ERRORS, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        writer.writerows(rows)


def write_csv(frame: pd.DataFrame, path: str | Path, **options) -> None:
    """Write ``frame`` (no index, ``\\n`` line ends), file names as their original bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding=ENCODING, errors=ERRORS, lineterminator="\n", **options)


def read_csv(path: str | Path, **options) -> pd.DataFrame:
    """Read a table written by :func:`write_csv`; name columns stay exact text, empty cells stay ``""``."""
    import pandas as pd

    dtype = options.pop("dtype", None)
    if dtype is None:
        dtype = dict.fromkeys(NAME_COLUMNS, str)
    return pd.read_csv(path, encoding=ENCODING, encoding_errors=ERRORS, keep_default_na=False, dtype=dtype, **options)


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    """:func:`write_csv` to a temporary file beside ``path``, then renamed over it: a reader
    (or a run stopped half way) never sees half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write_csv(frame, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
