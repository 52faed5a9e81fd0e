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
