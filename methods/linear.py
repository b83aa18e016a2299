"""Linear probing: the backbone stays frozen, only the new head is trained.

Weight decay: the head's weight, not its bias (timm's rule; KMnP/vpt ``src/solver/optimizer.py``
exempts the same ``last_layer.bias``)."""
from __future__ import annotations

import torch.nn as nn

from .base import Method, register


@register
class Linear(Method):
    name = "linear"
    paper = "baseline, no paper of its own (the Linear row of Jia et al., VPT, ECCV 2022)"
    code = "KMnP/vpt src/models/vit_models.py (transfer type linear), src/solver/optimizer.py"
    deviations = "AdamW (decoupled weight decay, as for every method here), not VPT's SGD with L2"
    identity_at_init = True  # equals the backbone at init: only the head is new
    defaults = {}
    help = {}
    mergeable = True  # nothing is added: the model is already plain
    decays_backbone = False  # nothing trains but the head

    def _adapt(self, model: nn.Module) -> None:
        """Nothing to insert; ``apply`` froze the backbone and adds the trainable head."""
