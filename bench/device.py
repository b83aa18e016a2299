"""The device a run trains on, measured the way training runs: resolving ``--device``, the
precision it trains in, autocast, timing that waits for the GPU, and memory and peak FLOP/s for
the throughput and utilisation columns. `bench run`, `bench perf` and the dry-run plan share it."""
from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

# dense bf16 peak FLOP/s by device name, for the utilisation column
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

def resolve_device(name: str) -> str:
    from .errors import UserError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return name


def peak_memory_mb(device: str) -> float:
    """CUDA max allocated on GPU; the process's peak resident set on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


PRECISIONS = ("fp32", "bf16")


def precision(device: str) -> str:
    """The precision a run trains in on ``device`` by default (``--precision`` unset): bf16 autocast
    on GPU, fp32 elsewhere (part of the experiment's identity: ``bench.identity``)."""
    return "bf16" if device.startswith("cuda") else "fp32"


def resolve_precision(name: str | None, device: str) -> str:
    """``--precision``: fp32 or bf16; None is the device's default (``precision``)."""
    from .errors import UserError

    if name is None:
        return precision(device)
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r}; use {' or '.join(PRECISIONS)}")
    return name


def autocast(device: str, precision_name: str | None = None):
    """Device-generic autocast: ``torch.autocast(device_type, dtype=torch.bfloat16)`` for bf16 (on
    CPU too), disabled for fp32; ``precision_name`` None is the device's default (``precision``)."""
    device_type = device.split(":")[0]
    if (precision_name or precision(device)) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return torch.autocast(device_type, enabled=False)


# ----------------------------------------------------------------------------- one worker per GPU
def visible_gpus() -> list[str]:
    """The GPUs this process may use, each as ``CUDA_VISIBLE_DEVICES`` names it for a child
    process (an index, or a UUID where the variable lists UUIDs); [] without CUDA. Does not
    create a CUDA context (``torch.cuda.device_count`` asks NVML where it can)."""
    import os

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def pick_gpus(device: str, devices: list[int] | None) -> list[str]:
    """The GPUs local workers are pinned to, one each (``CUDA_VISIBLE_DEVICES``): with ``--device
    cuda`` (or auto on a CUDA machine) every visible GPU, or those ``--devices 0,2,3`` picks (their
    positions among the visible ones, as torch numbers them: cuda:0, cuda:2, cuda:3); [] on CPU
    and for one named GPU (``--device cuda:1``), which a single worker uses unpinned. ``devices``: the
    parsed ``--devices`` (``bench.run.spec.parse_int_list``)."""
    from .errors import UserError

    if devices is None:
        return visible_gpus() if device == "cuda" else []
    if device != "cuda":
        raise UserError(f"--devices picks GPUs for one worker each; it needs --device cuda or auto on a CUDA "
                        f"machine (the device is {device})")
    visible = visible_gpus()
    bad = [p for p in devices if not 0 <= p < len(visible)]
    if bad:
        raise UserError(f"--devices {','.join(map(str, devices))}: no GPU {', '.join(map(str, bad))}; this machine shows {len(visible)} "
                        f"(0 to {len(visible) - 1})")
    return [visible[p] for p in devices]


def pinned_env(env: dict, gpus: list[str], worker: int) -> dict:
    """``env`` for local worker number ``worker``: pinned to one GPU of ``gpus`` (round robin when
    there are more workers than GPUs) by ``CUDA_VISIBLE_DEVICES``; ``env`` unchanged without GPUs.
    A pinned worker sees its GPU alone, as cuda:0."""
    if not gpus:
        return dict(env)
    return {**env, "CUDA_VISIBLE_DEVICES": gpus[worker % len(gpus)]}


def start_measuring(device: str) -> float:
    """The wall-clock start of a fit; on GPU, its peak memory is counted from here."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def seconds_per_call(fn, steps: int, device: str, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (GPU work included: synchronised)."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def median_step_seconds(steps_fns: dict, steps: int, device: str, warmup: int = 3) -> dict:
    """Median seconds of one call of each function in ``steps_fns`` (name -> callable), the calls
    alternating between them (ABBA order), so that every function sees the same machine load."""
    names = list(steps_fns)
    for _ in range(warmup):
        for name in names:
            steps_fns[name]()
    times = {name: [] for name in names}
    for i in range(steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps_fns[name]()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def current_memory_mb(device: str) -> float:
    """Memory in use now: CUDA allocated on GPU, the resident set (from /proc) on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def device_class(device: str) -> str:
    """What a throughput or memory figure was measured on, for the report's columns: the GPU's
    name (e.g. "NVIDIA H100 80GB HBM3") or "CPU"."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"


def peak_flops(device: str) -> float | None:
    """The dense bf16 peak FLOP/s of ``device`` (``PEAK_BF16_FLOPS``, by name); None on CPU and
    for a GPU not in the table."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
