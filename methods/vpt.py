"""VPT (Jia et al., ECCV 2022): learned prompt tokens placed after the class token.

Each block is wrapped in a ``PromptedBlock``, so every path timm runs block by block
(``forward_features``, ``checkpoint_seq`` under grad checkpointing, ``forward_intermediates``)
goes through the prompts.

Weight decay: the prompts are decayed. KMnP/vpt ``src/solver/optimizer.py`` ``make_optimizer``
(SGD, ``configs/base-prompt.yaml`` WEIGHT_DECAY 1e-4) gives every trainable tensor the weight
decay except ``last_layer.bias``, the head's bias (our ``head.bias``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .families import layout_of
from .surgery import replace_module

MODES = ("deep", "shallow")
MAX_PROMPTS = 1000  # 5x the longest prompt of VPT's paper (200); 1,000,000 exhausted 24 GB in `--dry-run`


class PromptedBlock(nn.Module):
    """A block that may insert prompt tokens before it and drop prompt outputs after it.

    deep: every block inserts its own prompts and drops their outputs, which is the same as
    replacing them before each block, and keeps each block's output the length timm expects.
    shallow: the first block inserts, the prompt tokens travel through the blocks, the last one
    drops them (so intermediates of the middle blocks carry the prompt tokens too).
    """

    def __init__(self, block: nn.Module, num_prefix_tokens: int, prompts: nn.Parameter | None,
                 drop_after: int, dropout: float):
        super().__init__()
        self.block = block
        self.num_prefix_tokens = num_prefix_tokens
        self.prompts = prompts  # (num_prompts, width) or None: this block inserts nothing
        self.drop_after = drop_after  # prompt outputs to remove after the block
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        n = self.num_prefix_tokens
        if self.prompts is not None:
            prompts = self.dropout(self.prompts.expand(x.shape[0], -1, -1))
            x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
        x = self.block(x, **kwargs)
        if self.drop_after:
            x = torch.cat([x[:, :n], x[:, n + self.drop_after:]], dim=1)
        return x


@register
class VPT(Method):
    name = "vpt"
    paper = "Jia et al., VPT, ECCV 2022"
    code = "KMnP/vpt src/models/vit_prompt/vit.py, src/solver/optimizer.py"
    deviations = "AdamW (decoupled weight decay, as for every method here), not VPT's SGD with L2"
    defaults = {"mode": "deep", "num_prompts": 10, "prompt_dropout": 0.1}
    help = {
        "mode": "deep (new prompts before every block) or shallow (prompts at the input only)",
        "num_prompts": "prompt tokens per block (deep) or at the input (shallow), integer in [1, 1000]",
        "prompt_dropout": "dropout on the prompt tokens, in [0, 1)",
    }
    mergeable = False  # the prompts are extra tokens, not a change of weights
    families = ("vit",)
    unsupported_why = "VPT's Swin variant, prompts inside every window, is not implemented"

    def _check(self, hp: dict) -> None:
        check_choice(self.name, hp, "mode", MODES)
        check_int(self.name, hp, "num_prompts", 1)
        check_int(self.name, hp, "num_prompts", 1, MAX_PROMPTS,
                  why="each prompt is a token of every block's attention, whose cost grows with the square "
                      "of the tokens; VPT's paper tries at most 200")
        check_float(self.name, hp, "prompt_dropout", 0, 1, hi_open=True)

    def search_space(self, trial) -> dict:
        # the mode is a variant, not a knob: deep and shallow are compared as separate methods
        # (the literature reports them separately), so it stays at its default here
        return {"num_prompts": trial.suggest_categorical("num_prompts", [1, 5, 10, 20, 50]),
                "prompt_dropout": trial.suggest_categorical("prompt_dropout", [0.0, 0.1])}

    decays_all = True  # VPT's optimizer: everything but the head's bias
    def _adapt(self, model: nn.Module, mode: str, num_prompts: int, prompt_dropout: float) -> None:
        layout = layout_of(model)
        conv = model.get_submodule(layout.stem)
        width = layout.widths[0]
        # uniform +-sqrt(6 / (fan_in + fan_out)) of the patch projection (VPT's Xavier choice)
        bound = math.sqrt(6.0 / (conv.weight[0].numel() + width))
        depth, deep = len(layout.blocks), mode == "deep"
        for i, path in enumerate(layout.blocks):
            prompts = None
            if deep or i == 0:
                prompts = nn.Parameter(conv.weight.new_empty(num_prompts, width).uniform_(-bound, bound))
            drop_after = num_prompts if deep or i == depth - 1 else 0
            replace_module(model, path, PromptedBlock(model.get_submodule(path), layout.num_prefix_tokens,
                                                      prompts, drop_after, prompt_dropout))
