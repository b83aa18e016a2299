"""The ViT family: timm's ``VisionTransformer`` (ViT-B/L/H, DINOv2 with LayerScale, CLIP with a
pre-norm and a bias-free patch conv, MAE). Blocks are ``blocks.<i>``, the patch conv is
``patch_embed.proj``, tokens are (batch, prefix tokens + patches, width)."""
from __future__ import annotations

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from . import Layout, family, has_bias


@family(VisionTransformer)
def layout(model: VisionTransformer) -> Layout:
    # the final norm in use: ``norm``, or ``fc_norm`` for models that pool before normalising
    final = "fc_norm" if isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity) else "norm"
    return Layout(
        family="vit",
        blocks=tuple(f"blocks.{i}" for i in range(len(model.blocks))),
        widths=(model.embed_dim,) * len(model.blocks),
        stem="patch_embed.proj",
        stem_bias=has_bias(model.patch_embed.proj),
        final_norm=final,
        extra_norms=() if isinstance(model.norm_pre, nn.Identity) else ("norm_pre",),
        tokens="nlc",
        num_prefix_tokens=model.num_prefix_tokens,
    )
