"""The split stage script end to end: outputs declared in dvc.yaml, byte-identical reruns,
one-line exit 2 for bad data and full tracebacks for bugs (via stages/_common.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

STAGES = Path(__file__).resolve().parents[2] / "stages"


@pytest.fixture
def split_stage(monkeypatch):
    monkeypatch.syspath_prepend(str(STAGES))
    import split as split_stage  # stages/split.py

    return split_stage


@pytest.fixture
def split_main(split_stage):
    return split_stage.main


@pytest.fixture
def stage_logging():
    """_common.run configures the root logger as a stage process would; undo it for later tests."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
    # What ran is the stage script, not a same-named module found first on the path.
    assert Path(sys.modules[split_main.__module__].__file__) == STAGES / "split.py"


SPLIT_ARGV = [
    "--params", "params.yaml", "--synthetic-dir", "data/synthetic", "--manifest", "data/manifest.csv",
    "--rejected", "data/rejected.csv", "--pairs-dir", "data/pairs", "--data-metrics", "metrics/data.json",
    "--landmarks", "data/landmarks.csv", "--filtered-preview", "plots/filtered.png",
]


def test_bad_data_is_one_line_and_exit_2(tmp_path):
    """As DVC runs it: a missing dataset folder (DatasetError) gives one line, no traceback."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "folder", "root": "no-such-folder"}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAGES.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(STAGES / "split.py"), *SPLIT_ARGV], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and errors[0].startswith("split: error: data.root = 'no-such-folder'"), done.stderr


def _crash(*args, **kwargs):
    os._exit(9)  # what a decoder segfault or the out-of-memory killer does to a worker


def test_a_crashed_validation_worker_is_one_line_and_exit_2(split_stage, stage_logging, tmp_path, monkeypatch, capsys):
    import _common

    import maskface.data.datasets

    params = {"data": {"source": "synthetic", "workers": 2, "synthetic": {"identities": 4, "images_per_identity": 4}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(maskface.data.datasets, "validate_image", _crash)  # the workers are forked with it
    with pytest.raises(SystemExit) as exit_:
        _common.run(split_stage.main, SPLIT_ARGV)
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("split: error: a worker process validating images died"), errors
    assert "data.workers: 1" in errors[0]


@pytest.mark.parametrize("bug", [ValueError("a library bug"), KeyError("column"), TypeError("bad call")])
def test_a_library_bug_keeps_its_traceback(split_stage, stage_logging, tmp_path, monkeypatch, bug):
    import _common

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "synthetic"}}))
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(split_stage, "build_manifest", broken)
    # Not converted to exit 2: the exception propagates, and Python prints its traceback (status 1).
    with pytest.raises(type(bug)) as raised:
        _common.run(split_stage.main, SPLIT_ARGV)
    assert raised.value is bug


def test_validation_sources_become_xval_pairs_never_train_or_test(split_main, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from PIL import Image

    other = tmp_path / "other"
    rng = np.random.default_rng(0)
    for person in range(6):
        folder = other / f"p{person}"
        folder.mkdir(parents=True)
        for k in range(4):
            name = f"{k}_mask.png" if k % 2 else f"{k}.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    params = {
        "data": {
            "source": "synthetic",
            "synthetic": {"identities": 10, "images_per_identity": 6, "min_size": 64, "max_size": 72},
            "validation_sources": [f"folder:{other}"],
        },
        "split": {"ratios": [0.6, 0.2, 0.2], "seed": 3},
    }
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    split_main(SPLIT_ARGV)
    manifest = pd.read_csv(tmp_path / "data" / "manifest.csv")
    xval_images = manifest[manifest["split"] == "xval"]
    assert len(xval_images) == 24 and xval_images["identity"].str.startswith("xval-folder-0/").all()
    xval = pd.read_csv(tmp_path / "data" / "pairs" / "xval.csv")
    assert len(xval) and set(xval["path_a"]) | set(xval["path_b"]) <= set(xval_images["path"])
    for name in ("val", "test"):
        pairs = pd.read_csv(tmp_path / "data" / "pairs" / f"{name}.csv")
        assert not (set(pairs["path_a"]) | set(pairs["path_b"])) & set(xval_images["path"])
    data = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert data["split"]["xval"]["images"] == 24 and data["pairs"]["xval"]["total"] == len(xval)


def test_without_validation_sources_xval_is_an_empty_table(split_main, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    _run(split_main, tmp_path)
    xval = pd.read_csv(tmp_path / "data" / "pairs" / "xval.csv")
    assert xval.empty and "path_a" in xval.columns
