"""GPUs for local trials: which ones this machine has, and which one the next trial gets.

A GPU is named as CUDA_VISIBLE_DEVICES takes it: an index as nvidia-smi numbers it, or a GPU-/MIG-
UUID. Each trial process gets CUDA_VISIBLE_DEVICES set to one of them, so it sees exactly one GPU,
as a trial pod with `nvidia.com/gpu: 1` does. Found without importing torch (seconds of start-up):
CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else torch only where an NVIDIA driver is loaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from trainer.errors import UsageError

NVIDIA_DRIVER = Path("/proc/driver/nvidia/gpus")
GPU_LINE = re.compile(r"GPU (\d+):")
MIG_LINE = re.compile(r"MIG .*\(UUID: (MIG-[^)]+)\)")
GPU_NAME = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z-]+")


def from_cuda_visible_devices(value: str) -> list[str]:
    """The GPUs a CUDA_VISIBLE_DEVICES value leaves visible: CUDA stops at the first invalid entry (-1)."""
    found = []
    for item in (part.strip() for part in value.split(",")):
        if not GPU_NAME.fullmatch(item):
            break
        found.append(item)
    return found


def from_nvidia_smi(text: str) -> list[str]:
    """GPU indices from `nvidia-smi -L`; a GPU split into MIG instances gives their UUIDs instead."""
    gpus: list[list[str]] = []  # [index, MIG UUIDs...] per GPU
    for line in text.splitlines():
        gpu, mig = GPU_LINE.match(line.strip()), MIG_LINE.search(line)
        if gpu:
            gpus.append([gpu.group(1)])
        elif mig and gpus:
            gpus[-1].append(mig.group(1))
    return [name for gpu in gpus for name in (gpu[1:] or gpu[:1])]


def visible_gpus() -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return from_cuda_visible_devices(os.environ["CUDA_VISIBLE_DEVICES"])
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            listed = None
        if listed and listed.returncode == 0:
            return from_nvidia_smi(listed.stdout)
    if not NVIDIA_DRIVER.is_dir():
        return []  # no driver: no CUDA device, and no reason to load torch
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(value) -> list[str] | None:
    """--gpus as given: None when absent; "none" (or empty) for the CPU; else "0,1", fire's (0, 1), 0."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(item).strip() for item in items if str(item).strip()]
    shown = ",".join(names)  # as typed, not as fire parsed it: (0, 1)
    if names in ([], ["none"]):
        return []
    for name in names:
        if not GPU_NAME.fullmatch(name):
            raise UsageError(f"--gpus={shown}: {name!r} is not a GPU index or UUID "
                             "(e.g. --gpus=0,1; --gpus=none for the CPU)")
    if len(set(names)) != len(names):
        raise UsageError(f"--gpus={shown} names a GPU twice (use --trials_per_gpu to share one)")
    return names


def next_gpu(gpus: list[str], busy: list[str], per_gpu: int, last: str | None = None) -> str | None:
    """Round-robin: of the GPUs running the fewest trials, the first after `last` (the GPU given
    out before); None when every GPU already runs per_gpu trials, or there are none."""
    start = gpus.index(last) + 1 if last in gpus else 0
    order = [g for g in gpus[start:] + gpus[:start] if busy.count(g) < per_gpu]
    return min(order, key=busy.count) if order else None
