"""Adapter+ (Steitz & Roth, "Adapters Strike Back", CVPR 2024): one bottleneck adapter after every
block, with a learned per-channel output scale, as visinf/adapter_plus builds it (commit 191c4ab,
``adapter_plus/vit_adapter.py`` ``Adapter`` and ``AdapterBlock.forward_post``, configured by
``conf/adapter/adapter_plus.yaml`` over ``conf/adapter/base_adapter.yaml``: config "post",
scaling "channel", act_layer true (the block's GELU), norm_layer false, bias true, init "houlsby",
dim 8, dropout 0, drop_path 0.1).

Placement ("post", Adapter+'s position): after the whole block, on its output x, as a residual:
``x = block(x); x = x + s * drop_path(up(GELU(down(x))))`` (``forward_post``:
``x = self.adapter(x, skip=x)``), s a learned vector of the width (``scaling="channel"``,
``nn.Parameter(torch.ones(embed_dim))``). No LayerNorm inside the adapter. The adapter's own
stochastic depth (``drop_path_a = DropPath(0.1)``) is a hyperparameter here (``drop_path``,
default 0.1); the backbone's own drop path (``vit.drop_path`` 0.1 in ``conf/config.yaml``) is the
runner's, as for every method.

Init ("houlsby"): down and up weights trunc_normal(std=0.01, cut at +-0.02), biases zero, the
scale ones; so the adapted model does NOT equal the backbone at init (as in the official code).

Count on ViT-B/16 at bottleneck 8: 12 x (768*8 + 8 + 8*768 + 768 + 768) = 12 x 13,832 = 165,984.

Weight decay: the official ``modeling/adaptermodel.py`` ``add_weight_decay`` exempts 1-d tensors,
``.bias`` and ``.scaling`` names and ``no_weight_decay()`` (AdamW, ``conf/train/optimizer/adamw.yaml``
weight decay 1e-4): down and up weights decayed, their biases and the scale not. That is timm's rule,
``Method.decays``'s default.

Search space: the bottleneck in {1, 2, 4, 8, 16, 32}, the per-task dims of
``conf/experiment/vtab/adapter_plus_dim1-32.yaml`` (the official "dim1-32" runs pick one per task).

Not mergeable (GELU between down and up). Families: ViT only (the official module patches timm's
ViT ``Block``/``ResPostBlock``). Deviation: we wrap each block instead of subclassing it (same
math); the block keeps its own drop path and LayerScale.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath

from ._checks import check_float, check_int
from .base import Method, register
from .families import layout_of
from .surgery import replace_module

HOULSBY_STD = 0.01  # "paper value" in the official Adapter.__init__ (trunc at +-2 std)
BOTTLENECKS = [1, 2, 4, 8, 16, 32]  # conf/experiment/vtab/adapter_plus_dim1-32.yaml


class AdapterPlus(nn.Module):
    """s * drop_path(up(GELU(down(x)))), s a learned per-channel scale (the official ``Adapter`` with
    norm_layer None, scaling "channel", init "houlsby", no dropout)."""

    def __init__(self, width: int, bottleneck: int, drop_path: float, like: torch.Tensor):
        super().__init__()
        dd = dict(device=like.device, dtype=like.dtype)
        self.down = nn.Linear(width, bottleneck, **dd)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.scale = nn.Parameter(torch.ones(width, **dd))
        with torch.no_grad():
            for linear in (self.down, self.up):
                nn.init.trunc_normal_(linear.weight, std=HOULSBY_STD, a=-2 * HOULSBY_STD, b=2 * HOULSBY_STD)
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.up(self.act(self.down(x)))) * self.scale


class PostAdapterBlock(nn.Module):
    """A block followed by its Adapter+: y = block(x); y + adapter(y)."""

    def __init__(self, block: nn.Module, adapter: AdapterPlus):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.block(x, *args, **kwargs)
        return y + self.adapter(y)


@register
class AdapterPlusMethod(Method):
    name = "adapter_plus"
    paper = "Steitz & Roth, Adapters Strike Back (Adapter+), CVPR 2024"
    code = "visinf/adapter_plus@191c4ab adapter_plus/vit_adapter.py, conf/adapter/adapter_plus.yaml"
    deviations = "each block is wrapped instead of subclassed (same math)"
    group = "vision"
    defaults = {"bottleneck": 8, "drop_path": 0.1}
    help = {
        "bottleneck": "hidden width of each adapter, integer in [1, model width]; the official runs use 1 to 32",
        "drop_path": "stochastic depth on the adapter's output, in [0, 1) (official 0.1)",
    }
    mergeable = False  # GELU between down and up
    width_bounded = ("bottleneck",)
    families = ("vit",)
    unsupported_why = "the official Adapter+ patches timm's ViT blocks only"

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "bottleneck", 1)
        check_float(self.name, hp, "drop_path", 0, 1, hi_open=True)

    def search_space(self, trial) -> dict:
        return {"bottleneck": trial.suggest_categorical("bottleneck", BOTTLENECKS)}

    def _adapt(self, model: nn.Module, bottleneck: int, drop_path: float) -> None:
        layout = layout_of(model)
        for path, width in zip(layout.blocks, layout.widths):
            block = model.get_submodule(path)
            adapter = AdapterPlus(width, bottleneck, drop_path, like=next(block.parameters()))
            replace_module(model, path, PostAdapterBlock(block, adapter))
