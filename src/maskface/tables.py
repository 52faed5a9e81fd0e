"""CSV tables between stages, lossless for file names that are not valid UTF-8.

RMFRD ships mojibake file names; they are carried as their original bytes
(surrogateescape) so that a path read back from any table opens the same file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_csv(frame: pd.DataFrame, path: str | Path, **options) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8", errors="surrogateescape", lineterminator="\n", **options)


def read_csv(path: str | Path, **options) -> pd.DataFrame:
    return pd.read_csv(path, encoding="utf-8", encoding_errors="surrogateescape", keep_default_na=False, **options)
