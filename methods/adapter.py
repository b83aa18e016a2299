"""Bottleneck adapters on the MLP of every block, in two modes that each follow one official code.

parallel: AdaptFormer (Chen et al., NeurIPS 2022), ShoufaChen/AdaptFormer ``models/adapter.py``
``Adapter`` and ``models/custom_modules.py`` ``Block``, as ``main_image.py`` configures it
(ffn_option "parallel", adapter_scalar "0.1", init_option "lora", no layernorm): the adapter
reads the block's residual stream (before norm2), down -> ReLU -> dropout 0.1 -> up, times the
scale, added to the MLP branch output. Init: down weight kaiming-uniform a=sqrt(5), down bias, up
weight and up bias zero, so the adapted model equals the base model at init.

sequential: NOAH's adapter (Zhang et al. 2022; the 0.16M "Adapter" row of its Table 1),
ZhangYuanhan-AI/NOAH ``model/module/adapter_super.py`` ``AdapterSuper`` in
``model/supernet_vision_transformer_timm.py`` ``Block``: one adapter on the MLP branch output y,
before the residual add: y + up(dropout 0.1(QuickGELU(down(y)))), QuickGELU(x) = x sigmoid(1.702 x).
Init: ``AdapterSuper.init_weights`` sets xavier-uniform weights and N(0, 1e-6) biases, but the
model's ``init_weights`` then runs ``_init_vit_weights`` on every ``nn.Linear`` (the adapter's
too) before the pretrained checkpoint, which holds no adapter, is loaded: the weights NOAH trains
from are trunc_normal(std=0.02) and the biases zero. We use that init; the adapted model does
not equal the base model at init (up is not zero).

Weight decay (both modes): timm's rule, ``Method.decays``'s default: down and up weights decayed,
their biases not. NOAH builds its optimizer with timm's ``create_optimizer``
(``supernet_train_prompt.py``; ``configs/Adapter/VTAB/slurm_train_adapter_vtab.sh`` weight decay
1e-4). AdaptFormer's ``main_image.py`` gives one SGD weight decay (default 0) to every trainable
tensor; not followed here.

Drop path: the adapter stands in for ``block.mlp``, so the block's ``drop_path2`` (timm's stochastic
depth, ``--drop-path-rate``) also drops the adapter's output; both official blocks add the adapter
outside the MLP branch's drop path. At the default rate 0 the two are the same; the comparison
script (``python -m benchmarks.official.adapter``) compares them at rate 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import QuickGELU

from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .families import layout_of

MODES = ("parallel", "sequential")
DROPOUT = 0.1  # on the bottleneck activations, in AdaptFormer's Block and NOAH's training script


class Bottleneck(nn.Sequential):
    """down (width -> bottleneck), activation, dropout, up (bottleneck -> width), with the
    activation and the init of the reference of ``mode`` (see the module docstring)."""

    def __init__(self, width: int, bottleneck: int, mode: str, like: torch.Tensor):
        dd = dict(device=like.device, dtype=like.dtype)
        super().__init__()
        self.down = nn.Linear(width, bottleneck, **dd)  # weight: kaiming-uniform a=sqrt(5)
        self.act = nn.ReLU() if mode == "parallel" else QuickGELU()
        self.dropout = nn.Dropout(DROPOUT)
        self.up = nn.Linear(bottleneck, width, **dd)
        if mode == "parallel":  # AdaptFormer, init_option "lora"
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
        else:  # NOAH: timm's _init_vit_weights, which overwrites AdapterSuper's xavier init
            nn.init.trunc_normal_(self.down.weight, std=0.02)
            nn.init.trunc_normal_(self.up.weight, std=0.02)
            nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)


class ParallelAdapter(nn.Module):
    """AdaptFormer. Stands in for ``block.mlp`` while ``block.norm2`` becomes Identity, so that it
    receives the residual stream x: mlp(norm(x)) + scale * adapter(x)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: nn.Module, scale: float):
        super().__init__()
        self.norm, self.mlp, self.adapter, self.scale = norm, mlp, adapter, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.scale * self.adapter(x)


class SequentialAdapter(nn.Module):
    """NOAH's adapter. Stands in for ``block.mlp``: y = mlp(x); y + adapter(y), before the
    residual add."""

    def __init__(self, mlp: nn.Module, adapter: nn.Module):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.adapter(y)


@register
class Adapter(Method):
    name = "adapter"
    paper = "Chen et al., AdaptFormer, NeurIPS 2022 (parallel); Zhang et al., NOAH, 2022: its Adapter row (sequential)"
    code = ("parallel: ShoufaChen/AdaptFormer models/adapter.py, models/custom_modules.py; "
            "sequential: ZhangYuanhan-AI/NOAH model/module/adapter_super.py")
    deviations = ("parallel: AdamW with timm's weight decay rule, not AdaptFormer's SGD with one weight decay "
                  "(default 0) for every tensor; both: the adapter stands in for the block's MLP, so under "
                  "--drop-path-rate > 0 its output passes the block's drop path, which both official blocks "
                  "apply to the MLP branch alone (no effect at the default rate 0)")
    identity_at_init = True  # equals the backbone at init: parallel (default) adds a zero-initialised up
    defaults = {"mode": "parallel", "bottleneck": 8, "scale": 0.1}
    help = {
        "mode": "parallel (AdaptFormer: beside the MLP, scaled) or sequential (NOAH's adapter: after the MLP)",
        "bottleneck": "hidden width of the adapter, integer in [1, model width]",
        "scale": "fixed factor on the adapter output in parallel mode (number)",
    }
    mergeable = False  # the activation between down and up cannot be folded into a Linear
    width_bounded = ("bottleneck",)

    def _check(self, hp: dict) -> None:
        check_choice(self.name, hp, "mode", MODES)
        check_int(self.name, hp, "bottleneck", 1)
        check_float(self.name, hp, "scale", -math.inf)

    def search_space(self, trial) -> dict:
        # the mode is a variant (AdaptFormer vs NOAH's adapter, reported separately), not searched
        return {"bottleneck": trial.suggest_categorical("bottleneck", [4, 8, 16, 32, 64]),
                "scale": trial.suggest_categorical("scale", [0.01, 0.1, 1.0])}

    def _adapt(self, model: nn.Module, mode: str, bottleneck: int, scale: float) -> None:
        layout = layout_of(model)
        check_int(self.name, {"bottleneck": bottleneck}, "bottleneck", 1, layout.min_width)
        for path, width in zip(layout.blocks, layout.widths):
            block = model.get_submodule(path)
            adapter = Bottleneck(width, bottleneck, mode, like=next(block.parameters()))
            if mode == "parallel":
                block.mlp = ParallelAdapter(block.norm2, block.mlp, adapter, scale)
                block.norm2 = nn.Identity()
            else:
                block.mlp = SequentialAdapter(block.mlp, adapter)
