"""Benchmark scripts that only a GPU session can measure must still run: a CPU smoke run.

benchmarks/gpu_throughput.py (figure 6) is run for real only when a GPU is lent; running
the same code on the CPU at toy sizes here keeps it from rotting in between. No timing
is asserted, only that every figure is produced and positive.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_throughput_script_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--device", "cpu", "--backbones", "alexnet",
         "--batch-size", "2", "--embed-images", "4", "--steps", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("alexnet"))
    rates = [float(value) for value in re.findall(r"([\d.]+) img/s", line)]
    assert len(rates) == 4 and all(rate > 0 for rate in rates), line
    assert "device:" in result.stdout and "mixed precision here" in result.stdout


def test_scale_script_runs_every_pipeline_stage_and_computes_growth(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # stages/ has a `_common` too: the benchmarks' one must be the one `scale` imports.
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    import scale

    monkeypatch.delitem(sys.modules, "scale")
    monkeypatch.delitem(sys.modules, "_common")

    # The commands are dvc.yaml's own, in pipeline order.
    assert [name for name, _ in scale.stage_commands()] == ["scan", "split", "crop", "finetune", "embed", "classify", "evaluate"]
    rows = scale.measure(tmp_path, 200, keep=True)
    assert [row["stage"] for row in rows] == ["scan", "split", "crop", "finetune", "embed", "classify", "evaluate"]
    assert all(row["seconds"] > 0 and row["peak_rss_mib"] > 0 for row in rows)
    assert (tmp_path / "faces-200" / "manifest.csv").is_file()  # rendered once, kept for reuse

    # --stages split classify on the kept project: those two run again, nothing else does.
    project = tmp_path / "project-200"
    untouched = {path: path.stat().st_mtime_ns for path in (project / "data" / "crops" / "alexnet").iterdir()}
    untouched[project / "metrics" / "evaluate.json"] = (project / "metrics" / "evaluate.json").stat().st_mtime_ns
    manifest_written = (project / "data" / "manifest.csv").stat().st_mtime_ns
    rows = scale.measure(tmp_path, 200, ["split", "classify"], keep=True)
    assert [row["stage"] for row in rows] == ["split", "classify"]
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    assert (project / "data" / "manifest.csv").stat().st_mtime_ns > manifest_written
    # Without --keep the project is new, and removed after.
    assert [row["stage"] for row in scale.measure(tmp_path, 200, ["scan"])] == ["scan"]
    assert not project.exists()

    # Growth against hand-computed values: 10x the images in 20x the time is exponent log 20 / log 10.
    import math

    import pandas as pd

    table = pd.DataFrame([
        {"images": 100, "stage": "embed", "seconds": 2.0, "peak_rss_mib": 100.0},
        {"images": 1000, "stage": "embed", "seconds": 40.0, "peak_rss_mib": 150.0},
    ])
    growth = scale.growth(table)
    assert growth.loc[0, "time_exponent"] == pytest.approx(math.log(20) / math.log(10))
    assert growth.loc[0, "time_per_image_ratio"] == pytest.approx(2.0)
    assert growth.loc[0, "peak_rss_ratio"] == pytest.approx(1.5)
    full = scale.extrapolate(table, growth)
    assert full.loc[0, "RMFRD (extrapolated, s)"] == pytest.approx(40.0 * (92_671 / 1000) ** (math.log(20) / math.log(10)))
