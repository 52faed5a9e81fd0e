"""The one CSV layer: file names of any bytes survive a write and a read, byte for byte."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from maskface.tables import read_csv, write_csv

# Latin-1 é, a lone continuation byte, an invalid lead byte: none of them is UTF-8.
ODD_NAMES = [b"caf\xe9/ren\xe9e_0001.jpg", b"x/\x80\xff.png", b"NA/null.jpg", b"0012/0001.jpg", b'a,b/"q"\n.jpg']


def test_names_of_any_bytes_round_trip(tmp_path: Path):
    names = [os.fsdecode(raw) for raw in ODD_NAMES]
    frame = pd.DataFrame({"path": names, "identity": ["NA", "0012", "", "null", "é"], "score": [0.5, 1.0, -2.0, 0.0, 3.25]})
    write_csv(frame, tmp_path / "t.csv")
    back = read_csv(tmp_path / "t.csv")
    assert [os.fsencode(name) for name in back["path"]] == ODD_NAMES
    assert back["identity"].tolist() == ["NA", "0012", "", "null", "é"]
    assert back["score"].tolist() == [0.5, 1.0, -2.0, 0.0, 3.25]


def test_the_file_holds_the_original_bytes(tmp_path: Path):
    write_csv(pd.DataFrame({"path": [os.fsdecode(b"caf\xe9.jpg")]}), tmp_path / "t.csv")
    # Independent oracle: the raw file, not our reader.
    assert (tmp_path / "t.csv").read_bytes() == b"path\ncaf\xe9.jpg\n"


def test_a_read_path_opens_the_same_file(tmp_path: Path):
    raw = os.path.join(os.fsencode(tmp_path), b"ren\xe9e.bin")
    with open(raw, "wb") as handle:
        handle.write(b"payload")
    write_csv(pd.DataFrame({"path": [os.fsdecode(raw)]}), tmp_path / "t.csv")
    with open(read_csv(tmp_path / "t.csv")["path"].iloc[0], "rb") as handle:
        assert handle.read() == b"payload"


def test_plain_pandas_cannot_read_them(tmp_path: Path):
    # Why the layer exists: the default reader fails on the same file.
    write_csv(pd.DataFrame({"path": [os.fsdecode(b"caf\xe9.jpg")]}), tmp_path / "t.csv")
    with pytest.raises(UnicodeDecodeError):
        pd.read_csv(tmp_path / "t.csv")


def test_no_module_reads_or_writes_csv_around_the_layer():
    # Every table goes through maskface.tables: a plain pandas call would fail on such names.
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*root.joinpath("src", "maskface").rglob("*.py"), *root.joinpath("stages").glob("*.py")]):
        if path.name == "tables.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"pd\.read_csv\(|\.to_csv\(", line):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "use maskface.tables.read_csv / write_csv instead:\n" + "\n".join(offenders)
