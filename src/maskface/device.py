"""Device choice and mixed precision, the same code on CPU and GPU."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from maskface.errors import InputError
from maskface.hardware import DEVICES, PRECISIONS

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when one exists, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA device is available; valid here: auto, cpu")
    if name not in DEVICES:
        raise InputError(f"device {name!r} is invalid; valid: {', '.join(DEVICES)}")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Training autocast dtype: bf16 where the GPU supports it, else fp16; none on CPU.

    CPU training stays fp32: bf16 CPU autocast speeds up inference but its gradients are
    noisy enough on small batches to change which epoch is best.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def inference_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype for embedding: None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise InputError(f"precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
