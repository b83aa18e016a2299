"""Decode every image of a split once, to uint8 at its pre-augmentation size, so later epochs decode nothing.

A split that fits the memory budget (``BENCH_DATA_MEMORY_MB``, default 2048) is held in memory,
and kept for the process's later opens of the same files (least recently used dropped beyond the budget).
A larger one goes to a memory-mapped ``.npy`` under the cache folder, named by a hash of the
decoder and the file list (paths, sizes, modification times): it is written under a temporary
name and renamed when complete, so an interrupted run never leaves a half-written cache, and a
later run with the same files maps it without decoding anything. Its SHA-256 is written beside it
(``<key>.npy.sha256``) and checked when a process first maps it: a zeroed, truncated or
overwritten cache is decoded again (one warning line), never trained on.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..files import atomic_write_text
from .manifest import sha256_file
from .parallel import map_with_progress

MEMORY_BUDGET_ENV = "BENCH_DATA_MEMORY_MB"
CACHE_DIR_ENV = "BENCH_CACHE_DIR"
DEFAULT_MEMORY_MB = 2048
_in_memory: OrderedDict[str, np.ndarray] = OrderedDict()  # this process's decoded splits, most recent last
_verified: set[tuple] = set()  # memory-mapped caches this process checked: (path, inode, size, mtime, ctime)


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


# --------------------------------------------------------------------------- checksums
# Every file the tool writes and later trusts (a decoded-image cache, a fit's checkpoint) gets its
# SHA-256 beside it, ``<name>.sha256``, written before the file is renamed into place and checked
# before it is used: a zeroed, truncated or overwritten file is rebuilt or restarted, never used.
CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | Path, of: str | Path | bytes | None = None) -> None:
    """Write ``<path>.sha256``: the SHA-256 of ``of`` (the finished temp file about to be renamed to
    ``path``, or the bytes just written there), else of ``path``; atomically, so a reader finds the
    old checksum or the new one."""
    digest = hashlib.sha256(of).hexdigest() if isinstance(of, bytes) else sha256_file(Path(of or path))
    atomic_write_text(checksum_path(path), digest + "\n")


def checksum_problem(path: str | Path, data: bytes | None = None) -> str | None:
    """None when ``path`` (or its already read ``data``) matches the checksum beside it; else what is
    wrong, in a few words."""
    try:
        expected = checksum_path(path).read_text().strip()
    except OSError:
        return "it has no checksum beside it"
    try:
        actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(Path(path))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None if actual == expected else "its checksum does not match (corrupted or overwritten)"


def remove_with_checksum(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


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
        problem = _verify(final, shape)
        if problem is None:
            return MappedImages(final)
        print(f"warning: decoded-image cache {final} not used: {problem}; decoding the images again",
              file=sys.stderr, flush=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.stem}.partial-{os.getpid()}.npy")
    try:
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        _fill(images, paths, where, decode, desc)
        images.flush()
        del images
        write_checksum(final, of=partial)  # before the rename: a crash between them is a mismatch, i.e. a rebuild
        os.replace(partial, final)
        _verified.add(_stamp(final))
    finally:
        partial.unlink(missing_ok=True)
    return MappedImages(final)


def _stamp(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _verify(path: Path, shape: tuple) -> str | None:
    """None when the cache at ``path`` matches its checksum and holds uint8 images of ``shape``;
    else what is wrong. Hashing reads the whole file once per process (and file version): the
    first run that opens the cache pays it, at disk speed."""
    try:
        stamp = _stamp(path)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if stamp not in _verified:
        problem = checksum_problem(path)
        if problem:
            return problem
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"it is not a readable array ({exc})"
        if array.shape != shape or array.dtype != np.uint8:
            return f"it holds {array.dtype} images of shape {array.shape}, not uint8 {shape}"
        _verified.add(stamp)
    return None


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
