"""Convpass (Jie & Deng, arXiv 2207.07039): convolutional bypasses beside the attention and the
MLP of every block, as JieShibo/PETL-ViT ``convpass/vtab/convpass.py`` builds them.

Each bypass reads what its branch reads (norm1(x) beside attention, norm2(x) beside the MLP) and
its output, times s, is added to the branch's output (``forward_block``:
``x + attn(norm1(x)) + adapter_attn(norm1(x)) * s``). The bypass (class ``Convpass``):
down (Linear width -> dim) -> QuickGELU -> 3x3 conv (dim -> dim, padding 1) on the patch tokens
laid out as their 2-D grid -> QuickGELU -> dropout 0.1 -> up (Linear dim -> width). The class
token goes through the same conv as a 1x1 map (only the centre tap and the bias act), as the
official code does; here every prefix token (class and register tokens) is treated that way, and
the grid's side is the square root of the number of patch tokens (the official code hard-codes
14 x 14).

Init (official): down xavier-uniform, its bias zero; conv ``identity`` (weight zero with the
identity at the centre tap, ``xavier_init=False``) or ``xavier`` (xavier-uniform,
``xavier_init=True``), its bias zero; up weight and bias zero, so the adapted model equals the
base at init. 327,552 parameters on ViT-B/16 at dim 8 (``mode="attn"``, official
``convpass_attn``: the bypass beside attention only, 163,776).

Search space: the official per-task configs (``convpass/vtab/configs/convpass/*.yaml``): scale in
{0.01, 0.1, 1, 10, 100} and xavier_init in {True, False}; ``train.py`` fixes dim 8. Defaults:
``set_Convpass(model, method, dim=8, s=1, xavier_init=False)``.

Weight decay: every bypass tensor (biases included) is decayed: ``convpass/vtab/train.py`` line 83,
``AdamW(trainable, lr=args.lr, weight_decay=args.wd)`` over every trainable tensor. Deviation: the
head's bias is not decayed (this project's rule for every method).

Not mergeable: the activations and the conv over neighbouring tokens cannot be folded into a Linear.

Deviations: we wrap the branch module (``block.attn`` / ``block.mlp``) so that the bypass is added
inside the block's LayerScale and drop path: identical for ViTs without LayerScale and drop path
(timm's ViT-B, CLIP); on DINOv2-like models the bypass is scaled by the frozen LayerScale too (the
official code predates LayerScale), and with drop path the branch and its bypass share one mask
(the official scripts use ``drop_path_rate=0.1`` with separate masks; our backbones have none).
Swin is refused: the official ``Convpass_swin`` replaces the block forward of timm 0.4.12 to see
the whole (H, W) map beside the windowed attention; timm's ``SwinTransformerBlock`` gives its
attention module only window partitions and its MLP a flattened sequence, so no wrapped
sub-module sees the map.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import QuickGELU

from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .families import MLP, QKV, layout_of

MODES = ("block", "attn")  # official method names: convpass, convpass_attn
CONV_INITS = ("identity", "xavier")  # official xavier_init False / True
SCALES = [0.01, 0.1, 1.0, 10.0, 100.0]  # the official configs' scale values
DROPOUT = 0.1
ATTN = QKV.rpartition(".")[0]  # a block's attention module (it holds attn.qkv)


class ConvBypass(nn.Module):
    """The official ``Convpass`` module for (batch, prefix + patch tokens, width) sequences."""

    def __init__(self, width: int, dim: int, conv_init: str, prefix_tokens: int, like: torch.Tensor):
        super().__init__()
        dd = dict(device=like.device, dtype=like.dtype)
        self.prefix_tokens = prefix_tokens
        self.down = nn.Linear(width, dim, **dd)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, **dd)
        self.up = nn.Linear(dim, width, **dd)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(DROPOUT)
        with torch.no_grad():
            if conv_init == "xavier":
                nn.init.xavier_uniform_(self.conv.weight)
            else:
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] += torch.eye(dim, **dd)
            nn.init.zeros_(self.conv.bias)
            nn.init.xavier_uniform_(self.down.weight)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        p = self.prefix_tokens
        side = math.isqrt(n - p)
        if side * side != n - p:
            raise ValueError(f"convpass: {n - p} patch tokens do not form a square grid")
        h = self.act(self.down(x))
        dim = h.shape[-1]
        grid = h[:, p:].reshape(b, side, side, dim).permute(0, 3, 1, 2)
        patches = self.conv(grid).permute(0, 2, 3, 1).reshape(b, side * side, dim)
        if p:  # a 1x1 map through the padded 3x3 conv: the centre tap and the bias
            prefix = F.linear(h[:, :p], self.conv.weight[:, :, 1, 1], self.conv.bias)
            patches = torch.cat([prefix, patches], dim=1)
        return self.up(self.dropout(self.act(patches)))


class Bypassed(nn.Module):
    """Stands in for a block's branch (``attn`` or ``mlp``): branch(x) + scale * adapter(x)."""

    def __init__(self, branch: nn.Module, adapter: ConvBypass, scale: float):
        super().__init__()
        self.branch, self.adapter, self.scale = branch, adapter, scale

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.add(self.branch(x, *args, **kwargs), self.adapter(x), alpha=self.scale)


@register
class Convpass(Method):
    name = "convpass"
    paper = "Jie & Deng, Convpass, arXiv 2207.07039"
    code = "JieShibo/PETL-ViT convpass/vtab/convpass.py, convpass/vtab/train.py"
    deviations = ("the bypass sits inside the block's LayerScale and drop path (no difference on ViT-B); grid side "
                  "read from the token count (official: 14); head bias not decayed")
    identity_at_init = True  # equals the backbone at init: the up projection starts at zero
    group = "baselines"
    defaults = {"mode": "block", "dim": 8, "scale": 1.0, "conv_init": "identity"}
    help = {
        "mode": "block (official convpass: beside attention and MLP) or attn (convpass_attn: beside attention only)",
        "dim": "channels of the bypass and its 3x3 conv, integer in [1, model width]; the official runs use 8",
        "scale": "s, the factor on the bypass output (number); searched in 0.01, 0.1, 1, 10, 100",
        "conv_init": "identity (official xavier_init=False: identity centre tap) or xavier; searched",
    }
    mergeable = False
    width_bounded = ("dim",)
    families = ("vit",)
    unsupported_why = ("the bypass convolves the token grid beside the whole attention; timm's Swin block "
                       "exposes no sub-module that sees the (H, W) map")

    def _check(self, hp: dict) -> None:
        check_choice(self.name, hp, "mode", MODES)
        check_int(self.name, hp, "dim", 1)
        check_float(self.name, hp, "scale", -math.inf)
        check_choice(self.name, hp, "conv_init", CONV_INITS)

    def search_space(self, trial) -> dict:
        # the mode is a variant (convpass vs convpass_attn, reported separately), not searched
        return {"scale": trial.suggest_categorical("scale", SCALES),
                "conv_init": trial.suggest_categorical("conv_init", list(CONV_INITS))}

    decays_all = True  # the official AdamW decays every bypass tensor, biases included

    def _adapt(self, model: nn.Module, mode: str, dim: int, scale: float, conv_init: str) -> None:
        layout = layout_of(model)
        check_int(self.name, {"dim": dim}, "dim", 1, layout.min_width)
        for path, width in zip(layout.blocks, layout.widths):
            block = model.get_submodule(path)
            like = next(block.parameters())
            for branch in (ATTN, MLP) if mode == "block" else (ATTN,):
                adapter = ConvBypass(width, dim, conv_init, layout.num_prefix_tokens, like)
                setattr(block, branch, Bypassed(getattr(block, branch), adapter, scale))
