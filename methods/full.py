"""Full fine-tuning: every backbone tensor is trained (the upper reference of the benchmark).

Weight decay: timm's rule (``Method.decays``), as in the full fine-tuning runs of
dongzelian/SSF ``train.py`` (``optim_factory.py`` ``param_groups_weight_decay``): every weight
matrix, not the 1-d tensors (biases, norm affines) nor ``model.no_weight_decay()`` (class token,
position embedding). The VTAB "full" row the papers print comes from VPT, whose
KMnP/vpt ``src/solver/optimizer.py`` decays every tensor but the head's bias; not followed here.
"""
from __future__ import annotations

import torch.nn as nn

from .base import Method, register


@register
class Full(Method):
    name = "full"
    paper = "baseline, no paper of its own (the Full row of Jia et al., VPT, ECCV 2022)"
    code = "dongzelian/SSF train.py (the optimizer of its full fine-tuning runs)"
    deviations = ("none from SSF's; VPT's optimizer, whose Full row the papers print, decays every tensor but the "
                  "head's bias")
    identity_at_init = True  # equals the backbone at init: it trains the backbone's own tensors
    trains_backbone = r".*"  # the backbone tensors it trains (bench.testing): all
    defaults = {}
    help = {}
    mergeable = True  # nothing is added: the model is already plain

    def _adapt(self, model: nn.Module) -> None:
        model.requires_grad_(True)
