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


def precision(device: str) -> str:
    """The precision a run trains in on ``device``: bf16 autocast on GPU, fp32 elsewhere (part of
    the experiment's identity: ``bench.identity``)."""
    return "bf16" if device.startswith("cuda") else "fp32"


def autocast(device: str):
    """bf16 autocast on GPU; a no-op context on CPU."""
    if precision(device) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


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


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
