"""Model surgery shared by every method: replacing a submodule by its dotted path, wrapping the
modules a method adapts, and ``Mergeable`` wrappers that fold themselves back into a plain module.

It depends on nothing else in the package, so the method interface (``base``) and the backbone
layouts (``families``) can both use it without importing each other.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Swap the submodule at ``dotted`` (e.g. ``blocks.3.attn.qkv``) for ``new``."""
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def swap_modules(model: nn.Module, predicate: Callable[[str, nn.Module], bool],
                 build: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule for which ``predicate(name, module)`` holds by ``build(module)``."""
    targets = [(n, m) for n, m in model.named_modules() if n and predicate(n, m)]
    for n, m in targets:
        replace_module(model, n, build(m))
    return len(targets)


def wrap(model: nn.Module, paths: list[str], build: Callable[[str, nn.Module], nn.Module]) -> None:
    """Replace the module at each path by ``build(path, module)``."""
    for path in paths:
        replace_module(model, path, build(path, model.get_submodule(path)))


class Mergeable(nn.Module):
    """A wrapper that can fold itself into the plain module it wraps (see ``merge_wrappers``)."""

    def merged(self) -> nn.Module:
        """The wrapped module with this wrapper's effect folded into its weights (in place)."""
        raise NotImplementedError


def merge_wrappers(model: nn.Module) -> None:
    """Replace every ``Mergeable`` wrapper in ``model`` by its folded plain module."""
    swap_modules(model, lambda _, m: isinstance(m, Mergeable), lambda m: m.merged())
