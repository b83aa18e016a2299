"""Where the adaptable parts of a timm VisionTransformer live, and how wrappers fold back.

Every method finds its targets through these helpers, so the module paths of timm's ViT
(fused ``attn.qkv``, ``mlp.fc1`` ...) are spelled out in one place only.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .base import replace_module, swap_modules

QKV = "attn.qkv"
QKV_GROUPS = 3  # timm fuses q, k, v into one Linear: three row chunks of the width each
BLOCK_LINEARS = (QKV, "attn.proj", "mlp.fc1", "mlp.fc2")
BLOCK_NORMS = ("norm1", "norm2")
PATCH_CONV = "patch_embed.proj"


def block_paths(model: nn.Module, *suffixes: str) -> list[str]:
    """``blocks.<i>.<suffix>`` for every block and suffix, block by block."""
    return [f"blocks.{i}.{s}" for i in range(len(model.blocks)) for s in suffixes]


def final_norm_path(model: nn.Module) -> str:
    """The final norm in use: ``norm``, or ``fc_norm`` for models that pool before normalising."""
    if isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity):
        return "fc_norm"
    return "norm"


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
