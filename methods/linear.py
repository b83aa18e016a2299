"""Linear probing: the backbone stays frozen, only the new head is trained."""
from __future__ import annotations

import torch.nn as nn

from .base import Method, register


@register
class Linear(Method):
    name = "linear"
    defaults = {}
    help = {}
    mergeable = True  # nothing is added: the model is already plain

    def _adapt(self, model: nn.Module) -> None:
        """Nothing to insert; ``apply`` froze the backbone and adds the trainable head."""
