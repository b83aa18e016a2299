"""Full fine-tuning: every backbone tensor is trained (the upper reference of the benchmark)."""
from __future__ import annotations

import torch.nn as nn

from .base import Method, mark_no_weight_decay, register


@register
class Full(Method):
    name = "full"
    defaults = {}
    help = {}
    mergeable = True  # nothing is added: the model is already plain

    def _adapt(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        # timm's own list (class token, position embedding): decaying them hurts, as in timm.
        for attr in model.no_weight_decay():
            param = getattr(model, attr, None)
            if isinstance(param, nn.Parameter):
                mark_no_weight_decay(param)
