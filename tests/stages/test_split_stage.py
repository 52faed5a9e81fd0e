"""The split stage script end to end: outputs declared in dvc.yaml, byte-identical reruns."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import yaml

STAGES = Path(__file__).resolve().parents[2] / "stages"


@pytest.fixture
def split_main(monkeypatch):
    monkeypatch.syspath_prepend(str(STAGES))
    import split as split_stage  # stages/split.py

    return split_stage.main


def _run(split_main, folder: Path) -> dict[str, str]:
    params = {
        "data": {"source": "synthetic", "synthetic": {"identities": 10, "images_per_identity": 6, "min_size": 64, "max_size": 72}},
        "split": {"ratios": [0.6, 0.2, 0.2], "seed": 3},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    # Relative paths, as dvc.yaml passes them (the tables record paths as given).
    outputs = {
        "--manifest": "data/manifest.csv",
        "--rejected": "data/rejected.csv",
        "--pairs-dir": "data/pairs",
        "--data-metrics": "metrics/data.json",
        "--landmarks": "data/landmarks.csv",
        "--filtered-preview": "plots/filtered.png",
    }
    argv = ["--params", "params.yaml", "--synthetic-dir", "data/synthetic"]
    for flag, path in outputs.items():
        argv += [flag, str(path)]
    split_main(argv)
    files = [p for p in sorted((folder / "data").rglob("*")) if p.is_file() and p.suffix in (".csv", ".png")]
    files.append(folder / "metrics/data.json")
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_split_stage_outputs_are_byte_identical_across_runs(split_main, tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    # Paths in the tables are relative to the working directory: run both from their folder.
    monkeypatch.chdir(first)
    hashes_a = _run(split_main, first)
    monkeypatch.chdir(second)
    hashes_b = _run(split_main, second)
    assert hashes_a == hashes_b
    assert {"data/manifest.csv", "data/rejected.csv", "data/pairs/val.csv", "data/pairs/test.csv", "data/landmarks.csv"} <= set(hashes_a)
    assert sys.modules.get("split") is not None
