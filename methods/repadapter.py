"""RepAdapter (Luo et al., arXiv 2302.08106): a linear adapter in front of ``attn.qkv`` and
``mlp.fc1`` of every block that folds into them after training, as luogen1996/RepAdapter
``repadapter.py`` builds it (``set_RepAdapter``, method ``repblock``; ``forward_vit_block_adapter``:
``attn(adapter_attn(norm1(x)))`` and ``mlp(adapter_mlp(norm2(x)))``; the attention's only reader of
its input is qkv, the MLP's is fc1).

The adapter (class ``RepAdapter``): x + s * B(dropout_0.1(A(x))) per token, A = ``conv_A`` (a
1x1 Conv1d width -> dim, bias), B = ``conv_B`` (a 1x1 Conv1d dim -> width with ``groups`` groups,
bias). Init: A xavier-uniform, A's bias, B's weight and bias zero, so the adapted model equals the
base at init. Default dim 8, groups 2: 239,808 parameters on ViT-B/16 (``mode="attn"``, official
``repattn``, only in front of qkv: 119,904). A and B are kept as matrices (A: dim x width,
B: width x dim/groups), the same numbers as the 1x1 convs' weights.

Merge: the official re-parameterisation (``set_RepWeight`` with ``reparameterize`` and
``sparse2dense``): W' = W (I + s B A), b' = b + s W (B a + b_B), with B the dense block-diagonal
form of the grouped conv. The merged model is a plain timm model.

Search space: the official scripts ``scripts/search_repblock.sh`` / ``search_repattn.sh`` search
s in {0.1, 0.5, 1, 5, 10} at dim 8 (``scripts/train_*.sh`` then use the per-task
``configs/repblock/*.yaml``). Default s 1: the default of ``RepAdapter(..., scale=1)``.

Weight decay: every adapter tensor, biases included, is decayed: ``train.py`` line 133,
``AdamW(trainable, lr=args.lr, weight_decay=args.wd)`` over every trainable tensor. Deviation: the
head's bias is not decayed (this project's rule for every method).

Families: ViT and Swin (the official code adapts timm's ``SwinTransformerBlock`` the same way). On
Swin the adapter sits in front of ``attn.qkv`` of the windowed attention, which is where the
official re-parameterisation folds it (the official training forward applies it before the window
partition; the two differ only on the zero padding of maps that do not divide into windows).
Deviations: a Linear without a bias (not the case in timm's ViTs and Swins) gets an adapter
without biases, so that it still merges into the same state_dict keys; the official scripts build
the backbone with ``drop_path_rate=0.1``, ours keep their own drop path (none).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .families import FC1, QKV, layout_of
from .surgery import Mergeable, merge_wrappers, wrap

MODES = ("block", "attn")  # official method names: repblock, repattn
SCALES = [0.1, 0.5, 1.0, 5.0, 10.0]  # scripts/search_repblock.sh
DROPOUT = 0.1


class RepAdapter(nn.Module):
    """x + scale * up(dropout(down(x))), ``up`` grouped (a block-diagonal width x dim matrix)."""

    def __init__(self, width: int, dim: int, groups: int, scale: float, bias: bool, like: torch.Tensor):
        super().__init__()
        dd = dict(device=like.device, dtype=like.dtype)
        self.groups, self.scale = groups, scale
        self.down = nn.Linear(width, dim, bias=bias, **dd)  # conv_A
        self.dropout = nn.Dropout(DROPOUT)
        self.up_weight = nn.Parameter(torch.zeros(width, dim // groups, **dd))  # conv_B.weight (width, dim/g, 1)
        self.up_bias = nn.Parameter(torch.zeros(width, **dd)) if bias else None  # conv_B.bias
        nn.init.xavier_uniform_(self.down.weight)
        if bias:
            nn.init.zeros_(self.down.bias)

    def up(self) -> torch.Tensor:
        """The grouped 1x1 conv as a dense (width x dim) block-diagonal matrix (``sparse2dense``)."""
        width, per_group = self.up_weight.shape
        return torch.block_diag(*self.up_weight.view(self.groups, width // self.groups, per_group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(self.dropout(self.down(x)), self.up(), self.up_bias)
        return torch.add(x, h, alpha=self.scale)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, c) with adapter(x) = x M^T + c in eval mode: M = I + s B A, c = s (B a + b_B)."""
        up = self.up()
        m = torch.addmm(torch.eye(up.shape[0], dtype=up.dtype, device=up.device), up, self.down.weight,
                        alpha=self.scale)
        c = None if self.up_bias is None else self.scale * (up @ self.down.bias + self.up_bias)
        return m, c


class RepAdapterLinear(Mergeable):
    """A frozen Linear that reads its input through a ``RepAdapter``."""

    def __init__(self, base: nn.Linear, dim: int, groups: int, scale: float):
        super().__init__()
        self.base = base
        self.adapter = RepAdapter(base.in_features, dim, groups, scale, bias=base.bias is not None,
                                  like=base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.adapter(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        m, c = self.adapter.affine()
        w = self.base.weight
        if c is not None:  # the official reparameterize: b' = b + W c
            self.base.bias += (w @ c.to(w.dtype))
        w.copy_(w @ m.to(w.dtype))
        return self.base


@register
class RepAdapterMethod(Method):
    name = "repadapter"
    paper = "Luo et al., RepAdapter, arXiv 2302.08106"
    code = "luogen1996/RepAdapter repadapter.py, train.py"
    deviations = ("the backbone keeps its own drop path (official: 0.1); head bias not decayed; on Swin in front of "
                  "the windowed attention's qkv, where the official re-parameterisation folds it")
    identity_at_init = True  # equals the backbone at init: the up projection starts at zero
    group = "baselines"
    defaults = {"mode": "block", "dim": 8, "groups": 2, "scale": 1.0}
    help = {
        "mode": "block (official repblock: in front of qkv and fc1) or attn (repattn: in front of qkv only)",
        "dim": "hidden width of the adapter, integer in [1, model width], a multiple of groups; the official runs use 8",
        "groups": "groups of the adapter's up projection (integer >= 1 dividing dim and the width); official 2",
        "scale": "s, the factor on the adapter output (number); searched in 0.1, 0.5, 1, 5, 10",
    }
    mergeable = True

    def check_fits(self, hp: dict, layout) -> None:
        check_int(self.name, hp, "dim", hp["groups"], layout.min_width, why="at most the backbone's width")
        bad = sorted({w for w in layout.widths if w % hp["groups"]})
        if bad:
            raise ValueError(f"{self.name}: groups must divide every block width; {hp['groups']} does not divide {bad}")

    def _check(self, hp: dict) -> None:
        check_choice(self.name, hp, "mode", MODES)
        check_int(self.name, hp, "groups", 1)
        check_int(self.name, hp, "dim", hp["groups"])
        if hp["dim"] % hp["groups"]:
            raise ValueError(f"{self.name}: dim must be a multiple of groups ({hp['groups']}), got {hp['dim']!r}")
        check_float(self.name, hp, "scale", -math.inf)

    def search_space(self, trial) -> dict:
        # mode is a variant (repblock vs repattn), not searched; dim and groups are fixed officially
        return {"scale": trial.suggest_categorical("scale", SCALES)}

    decays_all = True  # the official AdamW decays every adapter tensor, biases included

    def _adapt(self, model: nn.Module, mode: str, dim: int, groups: int, scale: float) -> None:
        layout = layout_of(model)
        check_int(self.name, {"dim": dim}, "dim", groups, layout.min_width)
        bad = sorted({w for w in layout.widths if w % groups})
        if bad:
            raise ValueError(f"{self.name}: groups must divide every block width; {groups} does not divide {bad}")
        wrap(model, layout.paths(*((QKV, FC1) if mode == "block" else (QKV,))),
             lambda _, linear: RepAdapterLinear(linear, dim, groups, scale))

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
