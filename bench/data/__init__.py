"""Data loading for every suite: on-disk VTAB-1k and FGVC, and the generated demo tasks.

``open_split``, ``split_size`` and ``manifest_hash`` are the runner's entry points; ``bench data check`` is in ``check``.
"""
from .loading import manifest_hash, open_split, split_size

__all__ = ["manifest_hash", "open_split", "split_size"]
