"""The compute a setting can name, and the CPU cores this process may use, without torch.

The config sections, the API's arguments and :mod:`maskface.device` check device and
precision names against these; the API and the split stage's detection size their worker
pools from :func:`usable_cpu_cores`. Importing torch or pydantic here would cost the
``maskface`` command's start-up what its lazy loading saves.
"""

from __future__ import annotations

import os

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def usable_cpu_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
