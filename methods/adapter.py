"""Bottleneck adapters beside (AdaptFormer, Chen et al. 2022) or after (Houlsby et al. 2019)
the MLP of every block."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._checks import check_choice, check_float, check_int
from .base import Method, register

MODES = ("parallel", "sequential")


class Bottleneck(nn.Sequential):
    """down (width -> bottleneck), ReLU, up (bottleneck -> width, zero-init: adds 0 at init)."""

    def __init__(self, width: int, bottleneck: int, like: torch.Tensor):
        dd = dict(device=like.device, dtype=like.dtype)
        super().__init__()
        self.down = nn.Linear(width, bottleneck, **dd)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, width, **dd)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


class ParallelAdapter(nn.Module):
    """Stands in for ``block.mlp`` while ``block.norm2`` becomes Identity, so that it receives
    the residual stream x: mlp(norm(x)) + scale * adapter(x)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: nn.Module, scale: float):
        super().__init__()
        self.norm, self.mlp, self.adapter, self.scale = norm, mlp, adapter, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.scale * self.adapter(x)


class SequentialAdapter(nn.Module):
    """Stands in for ``block.mlp``: y = mlp(x); y + adapter(y), before the residual add."""

    def __init__(self, mlp: nn.Module, adapter: nn.Module):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.adapter(y)


@register
class Adapter(Method):
    name = "adapter"
    defaults = {"mode": "parallel", "bottleneck": 8, "scale": 0.1}
    help = {
        "mode": "parallel (AdaptFormer: beside the MLP, scaled) or sequential (Houlsby: after the MLP)",
        "bottleneck": "hidden width of the adapter, integer in [1, model width]",
        "scale": "fixed factor on the adapter output in parallel mode (number)",
    }
    mergeable = False  # the ReLU between down and up cannot be folded into a Linear

    def _check(self, hp: dict) -> None:
        check_choice(self.name, hp, "mode", MODES)
        check_int(self.name, hp, "bottleneck", 1)
        check_float(self.name, hp, "scale", -math.inf)

    def search_space(self, trial) -> dict:
        # the mode is a variant (AdaptFormer vs Houlsby, reported separately), not searched
        return {"bottleneck": trial.suggest_categorical("bottleneck", [4, 8, 16, 32, 64]),
                "scale": trial.suggest_categorical("scale", [0.01, 0.1, 1.0])}

    def _adapt(self, model: nn.Module, mode: str, bottleneck: int, scale: float) -> None:
        width = model.embed_dim
        check_int(self.name, {"bottleneck": bottleneck}, "bottleneck", 1, width)
        for block in model.blocks:
            adapter = Bottleneck(width, bottleneck, like=next(block.parameters()))
            if mode == "parallel":
                block.mlp = ParallelAdapter(block.norm2, block.mlp, adapter, scale)
                block.norm2 = nn.Identity()
            else:
                block.mlp = SequentialAdapter(block.mlp, adapter)
