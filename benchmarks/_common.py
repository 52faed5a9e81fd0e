"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    root = Path(os.environ.get("MASKFACE_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
    if not root.is_dir():
        raise SystemExit(f"real datasets not found at {root}; set MASKFACE_DATASETS")
    return root


def real_face_paths(count: int) -> list[Path]:
    """``count`` real face files: rmfrd-dev first, then lfw-gray-20."""
    root = datasets_root()
    paths = sorted(p for p in (root / "rmfrd-dev").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths += sorted((root / "lfw-gray-20").rglob("*.jpg"))
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} real images under {root}, {count} asked for")
    return paths[:count]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
