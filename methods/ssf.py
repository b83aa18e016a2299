"""SSF (Lian et al., NeurIPS 2022): a learned per-channel scale and shift after each operation.

``SSF`` is also what rlrr puts after its norms and the patch embedding.

Weight decay: none on the scales and shifts. dongzelian/SSF ``train.py`` builds its optimizer
with ``optim_factory.py`` ``create_optimizer_v2`` -> ``param_groups_weight_decay``, timm's rule,
which exempts every 1-d tensor: ``ssf_scale_*`` / ``ssf_shift_*`` are 1-d, so only the head's
weight is decayed. That is ``Method.decays``'s default.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .families import BLOCK_LINEARS, BLOCK_NORMS, Layout, layout_of
from .base import Method, register
from .surgery import Mergeable, merge_wrappers, wrap


class SSF(Mergeable):
    """``inner`` followed by y = scale * y + shift per output channel.

    Works for Linear, LayerNorm and Conv2d: their weights index output channels on dim 0, so the
    scale and shift fold into weight and bias. Channels are dim 1 of a conv's NCHW output and
    the last dim otherwise.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        weight = inner.weight
        channels = weight.shape[0]
        self.inner = inner
        self.channel_dim = 1 if isinstance(inner, nn.Conv2d) else -1
        self.scale = nn.Parameter(weight.new_empty(channels))
        self.shift = nn.Parameter(weight.new_empty(channels))
        nn.init.normal_(self.scale, 1.0, 0.02)
        nn.init.normal_(self.shift, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        # (C,) -> (C, 1, ..., 1) so it broadcasts over the dims after the channel dim
        shape = (-1,) + (1,) * (y.ndim - 1 - self.channel_dim % y.ndim)
        return torch.addcmul(self.shift.view(shape), y, self.scale.view(shape))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        inner = self.inner
        inner.weight.mul_(self.scale.view((-1,) + (1,) * (inner.weight.ndim - 1)))
        if inner.bias is None:  # a bias-free module gains a bias (not the case in timm's ViTs)
            inner.bias = nn.Parameter(self.shift.detach().clone(), requires_grad=inner.weight.requires_grad)
        else:
            inner.bias.mul_(self.scale).add_(self.shift)
        return inner


def add_ssf(model: nn.Module, paths: list[str]) -> None:
    """Put an ``SSF`` after the modules at ``paths``."""
    wrap(model, paths, lambda _, module: SSF(module))


def outside_blocks(layout: Layout) -> list[str]:
    """The SSF targets outside the blocks: the patch conv, the other norms (CLIP's pre-norm,
    Swin's patch and merging norms) and the final norm. A bias-free patch conv (CLIP) gets none:
    its shift could not be folded into it, and the pre-norm right after it takes the role."""
    return ([layout.stem] if layout.stem_bias else []) + list(layout.extra_norms) + [layout.final_norm]


@register
class SSFMethod(Method):
    name = "ssf"
    paper = "Lian et al., SSF, NeurIPS 2022"
    code = "dongzelian/SSF models/vision_transformer.py, train.py"
    defaults = {}
    help = {}
    mergeable = True
    decays_backbone = False  # its scales and shifts are 1-d: timm's rule exempts them

    def _adapt(self, model: nn.Module) -> None:
        layout = layout_of(model)
        add_ssf(model, layout.paths(*BLOCK_LINEARS, *BLOCK_NORMS) + outside_blocks(layout))

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
