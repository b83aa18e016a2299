"""LoRA (Hu et al., ICLR 2022) on the query and value projections of every block.

Weight decay: A and B are decayed (timm's rule, ``Method.decays``'s default). NOAH runs LoRA with
timm's ``create_optimizer`` (ZhangYuanhan-AI/NOAH ``supernet_train_prompt.py``,
``configs/LoRA/VTAB/slurm_train_lora_vtab.sh`` weight decay 1e-4), which decays every tensor of
more than one dimension, ``LoRA_a`` / ``LoRA_b`` included; huggingface/peft leaves the optimizer
to the trainer, whose default (transformers ``Trainer``) also decays all but biases and norms.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_float, check_int
from .families import QKV, QKV_GROUPS, layout_of
from .base import Method, register
from .surgery import Mergeable, merge_wrappers, wrap

POWERS_OF_TWO = [1, 2, 4, 8, 16, 32, 64]


class LoRALinear(Mergeable):
    """A frozen fused ``nn.Linear`` plus (alpha/rank) * B A on some of its output row chunks.

    For timm's qkv (three chunks of the width) ``chunks=(0, 2)`` adapts q and v. A is
    kaiming-uniform (a=sqrt(5), as torch's Linear and peft), B is zero, so at init the output
    is exactly the frozen Linear's.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, chunks=(0, 2), groups: int = QKV_GROUPS):
        super().__init__()
        out_features, in_features = base.weight.shape
        self.base, self.chunks = base, tuple(chunks)
        self.chunk_size = out_features // groups
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(w.new_empty(len(self.chunks), rank, in_features))
        self.lora_B = nn.Parameter(w.new_zeros(len(self.chunks), self.chunk_size, rank))
        for a in self.lora_A:  # per chunk, so that fan_in is in_features
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No split/cat of the fused output: one matmul against the stacked A of every chunk, one
        # batched matmul against B, and each chunk's (alpha/r) x A^T B^T added in place into its
        # rows of the base output (F.linear's backward needs its input, never its output).
        out = self.base(x)
        n, r, _ = self.lora_A.shape
        h = F.linear(x, self.lora_A.view(n * r, -1))                            # (..., n r)
        low = torch.bmm(h.reshape(-1, n, r).transpose(0, 1), self.lora_B.transpose(1, 2))  # (n, T, c)
        rows = out.view(-1, out.shape[-1] // self.chunk_size, self.chunk_size)  # (T, groups, c)
        for j, i in enumerate(self.chunks):
            rows.select(1, i).add_(low[j], alpha=self.scaling)
        return out

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        for j, i in enumerate(self.chunks):
            rows = slice(i * self.chunk_size, (i + 1) * self.chunk_size)
            self.base.weight[rows] += self.scaling * (self.lora_B[j] @ self.lora_A[j])
        return self.base


@register
class LoRA(Method):
    name = "lora"
    paper = "Hu et al., LoRA, ICLR 2022"
    code = "microsoft/LoRA loralib/layers.py (MergedLinear, enable_lora=[True, False, True] on the fused qkv)"
    identity_at_init = True  # equals the backbone at init: B starts at zero
    defaults = {"rank": 8, "alpha": 8}
    help = {
        "rank": "rank r of the update B A on q and v (integer >= 1, at most the width)",
        "alpha": "the update is scaled by alpha / r (number > 0)",
    }
    mergeable = True
    width_bounded = ("rank",)

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "rank", 1)
        check_float(self.name, hp, "alpha", 0, lo_open=True)

    def search_space(self, trial) -> dict:
        return {"rank": trial.suggest_categorical("rank", POWERS_OF_TWO),
                "alpha": trial.suggest_categorical("alpha", POWERS_OF_TWO)}

    def _adapt(self, model: nn.Module, rank: int, alpha: float) -> None:
        layout = layout_of(model)
        check_int(self.name, {"rank": rank}, "rank", 1, layout.min_width)
        wrap(model, layout.paths(QKV), lambda _, qkv: LoRALinear(qkv, rank, alpha))

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
