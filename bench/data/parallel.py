"""Run an I/O-bound function over many files on a few threads, with a progress bar on terminals."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_with_progress(fn: Callable[[T], R], items: Iterable[T], total: int, desc: str) -> Iterator[R]:
    """``fn(item)`` for each item, in order, on one thread per core (PIL and hashlib release the GIL).

    The bar shows only when stderr is a terminal. The first exception stops the work still queued.
    """
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        with tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr, leave=False) as bar:
            for result in pool.map(fn, items):
                bar.update()
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
