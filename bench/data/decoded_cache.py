"""Decode every image of a split once, to uint8 at its pre-augmentation size, so later epochs decode nothing.

A split that fits the memory budget (``BENCH_DATA_MEMORY_MB``, default 2048) is held in memory,
and kept for the process's later opens of the same files (least recently used dropped beyond the budget).
A larger one goes to a memory-mapped ``.npy`` under the cache folder, named by a hash of the
decoder and the file list (paths, sizes, modification times): it is written under a temporary
name and renamed when complete, so an interrupted run never leaves a half-written cache, and a
later run with the same files maps it without decoding anything.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from .parallel import map_with_progress

MEMORY_BUDGET_ENV = "BENCH_DATA_MEMORY_MB"
CACHE_DIR_ENV = "BENCH_CACHE_DIR"
DEFAULT_MEMORY_MB = 2048
_in_memory: OrderedDict[str, np.ndarray] = OrderedDict()  # this process's decoded splits, most recent last


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/peft-bench``, else ``~/.cache/peft-bench``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-bench"


def memory_budget_bytes() -> int:
    return int(float(os.environ.get(MEMORY_BUDGET_ENV, DEFAULT_MEMORY_MB)) * 2**20)


class MappedImages:
    """A read-only memory map of a cached ``.npy``; opened lazily in each process, pickled as its path."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._array = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self):
        return {"path": self.path, "_array": None}


def decode_all(paths: Sequence[Path], where: Sequence[str], decode: Callable, size: int,
               cache_dir: str | Path | None = None, desc: str = "decoding"):
    """All images of ``paths`` decoded by ``decode`` to (N, 3, size, size) uint8, in memory or memory-mapped.

    ``where`` says where each path is listed (``file:line``), for the error a bad image raises.
    """
    shape = (len(paths), 3, size, size)
    key = _cache_key(paths, decode)
    budget = memory_budget_bytes()
    if int(np.prod(shape)) <= budget:
        if key not in _in_memory:
            images = np.empty(shape, np.uint8)
            _fill(images, paths, where, decode, desc)
            images.setflags(write=False)
            _in_memory[key] = images
        _in_memory.move_to_end(key)
        while sum(a.nbytes for a in _in_memory.values()) > budget:
            _in_memory.popitem(last=False)
        return _in_memory[key]
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    final = folder / "decoded" / f"{key}.npy"
    if final.is_file():
        mapped = MappedImages(final)
        if mapped.array.shape == shape and mapped.array.dtype == np.uint8:
            return mapped
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.stem}.partial-{os.getpid()}.npy")
    try:
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        _fill(images, paths, where, decode, desc)
        images.flush()
        del images
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return MappedImages(final)


def _cache_key(paths: Sequence[Path], decode: Callable) -> str:
    h = hashlib.sha256(repr(decode).encode())
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())  # decoding will report it
    return h.hexdigest()[:32]


def _fill(out: np.ndarray, paths: Sequence[Path], where: Sequence[str], decode: Callable, desc: str) -> None:
    """Decode into ``out``; a bad image is a UserError naming it and where it is listed."""
    def work(i: int) -> None:
        try:
            out[i] = decode(paths[i])
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
            raise UserError(f"cannot read image {paths[i]} (listed at {where[i]}): {exc}") from None

    for _ in map_with_progress(work, range(len(paths)), len(paths), desc):
        pass
