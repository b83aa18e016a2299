"""mlp_scale: one trainable scale per channel on the output of each block's MLP (y = s * fc2(h)).

The scales start at 1, so the adapted model is the backbone at init; after training they fold
into fc2 (W' = diag(s) W, b' = s * b), so the merged model is a plain timm model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import methods
from methods.families import FC2, layout_of
from methods.surgery import Mergeable, merge_wrappers, wrap


class ScaledLinear(Mergeable):
    """``base`` followed by a trainable per-output-channel scale."""

    def __init__(self, base: nn.Linear, init_std: float):
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(1 + init_std * torch.randn_like(base.weight[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Module:
        self.base.weight.mul_(self.scale[:, None])
        if self.base.bias is not None:
            self.base.bias.mul_(self.scale)
        return self.base


@methods.register
class MLPScale(methods.Method):
    name = "mlp_scale"
    group = "baselines"  # a set of --methods (core, baselines, peft); "all" takes every method
    defaults = {"init_std": 0.0}
    help = {"init_std": "the scales start at 1 + init_std * N(0, 1) (number >= 0; 0: the backbone at init)"}
    mergeable = True
    identity_at_init = True  # with its defaults (bench check-method verifies it)
    decays_backbone = False  # the scales are vectors: timm's rule does not decay them

    def _check(self, hp: dict) -> None:
        if not isinstance(hp["init_std"], (int, float)) or not 0 <= hp["init_std"] < float("inf"):
            raise ValueError(f"{self.name}: init_std must be a number >= 0, got {hp['init_std']!r}")

    def search_space(self, trial) -> dict:
        return {"init_std": trial.suggest_categorical("init_std", [0.0, 0.02])}

    def _adapt(self, model: nn.Module, init_std: float) -> None:
        layout = layout_of(model)  # every family: blocks hold timm's mlp.fc2
        wrap(model, layout.paths(FC2), lambda _, fc2: ScaledLinear(fc2, init_std))

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
