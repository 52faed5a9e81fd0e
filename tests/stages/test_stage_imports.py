"""Which heavy libraries each stage script pulls in at start-up.

An experiment on the classifier reruns only classify and evaluate (benchmarks/README.md,
figure 3); their run is mostly Python start-up, so they must not import torch (1-2 s
each); scikit-learn (metrics, classifiers) is theirs to use. Checked in a fresh
interpreter, as DVC starts them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

STAGES = Path(__file__).resolve().parents[2] / "stages"

PROBE = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("stage_under_test", sys.argv[2])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(name for name in ("torch", "torchvision", "sklearn", "cv2") if name in sys.modules)))
"""


def heavy_imports(stage: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(STAGES), str(STAGES / f"{stage}.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("stage", "allowed"), [("classify", {"sklearn"}), ("evaluate", {"sklearn"})])
def test_classifier_experiment_stages_start_without_torch(stage, allowed):
    assert set(heavy_imports(stage)) <= allowed


def test_probe_sees_torch_where_a_stage_needs_it():
    # Guards the probe itself: the embed stage runs a network, so torch must show up.
    assert "torch" in heavy_imports("embed")
