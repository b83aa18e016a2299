"""timm's reader of the original Google ``.npz`` ViT checkpoints (ViT-B_16.npz, AugReg):
``timm.models.vision_transformer._load_weights``, private but the only code that maps those
archives onto timm's ViT (key names, transposes, the fused qkv). ``bench.backbones.weights``
checks every shape before calling it."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn


def load_npz(model: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load the ``.npz`` at ``path`` (arrays under ``prefix``: ``""`` or AugReg's ``opt/target/``) into ``model``."""
    from timm.models.vision_transformer import _load_weights

    _load_weights(model, str(path), prefix=prefix)
