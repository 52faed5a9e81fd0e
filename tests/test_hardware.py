import os

import pytest

from maskface.device import inference_dtype, resolve_device
from maskface.errors import InputError
from maskface.hardware import PRECISIONS, usable_cpu_cores


def test_usable_cores_follow_the_affinity_where_the_os_has_one():
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpu_cores() == len(os.sched_getaffinity(0))
    assert 1 <= usable_cpu_cores() <= (os.cpu_count() or 1)


def test_the_torch_side_takes_every_listed_name_and_names_them_when_refusing():
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    for precision in PRECISIONS:
        inference_dtype(cpu, precision)
    with pytest.raises(InputError, match="device 'tpu' is invalid; valid: auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="precision 'fp16' is invalid; valid: auto, fp32, bf16"):
        inference_dtype(cpu, "fp16")
