"""The Swin family: timm's ``SwinTransformer`` (Swin-B). Blocks are ``layers.<s>.blocks.<j>``,
each stage's width is its own; a stage after the first starts with a patch merging (a norm, then
a bias-free Linear ``reduction``). Blocks see (batch, height, width, channels) feature maps; their
``attn.qkv`` / ``attn.proj`` / ``mlp`` / ``norm1`` / ``norm2`` have ViT's names and roles.

What the methods adapt here, against the official Swin code of each method:
- SSF exactly as dongzelian/SSF ``models/swin_transformer.py``: after qkv, proj, fc1, fc2, norm1,
  norm2 of every block, after the patch conv and the patch-embedding norm, after each patch
  merging's norm (4C channels, before its ``reduction``; never after the bias-free reduction,
  whose shift could not be folded) and after the final norm.
- RLRR follows zstarN70/RLRR ``models/swin.py`` (one ``s_in`` for the fused qkv; SSF after norm1,
  norm2 and the final norm only) except that it does not rescale the patch mergings' bias-free
  ``reduction``: its bias shift would add a bias the plain model does not have, so merging could
  not give back timm's state_dict keys. Swin-B: 350,976 trainable parameters here, 358,144 in that
  code (the difference is exactly the three reductions' 7,168). See ``methods/rlrr.py``.
- VPT refuses Swin (``methods/vpt.py``): its Swin variant puts prompts inside every window.
"""
from __future__ import annotations

import torch.nn as nn
from timm.models.swin_transformer import PatchMerging, SwinTransformer

from . import Layout, family, has_bias


@family(SwinTransformer)
def layout(model: SwinTransformer) -> Layout:
    blocks, widths, merge_norms = [], [], []
    for s, stage in enumerate(model.layers):
        if isinstance(stage.downsample, PatchMerging):
            merge_norms.append(f"layers.{s}.downsample.norm")
        for j, block in enumerate(stage.blocks):
            blocks.append(f"layers.{s}.blocks.{j}")
            widths.append(block.dim)
    patch_norm = () if isinstance(model.patch_embed.norm, nn.Identity) else ("patch_embed.norm",)
    return Layout(
        family="swin",
        blocks=tuple(blocks),
        widths=tuple(widths),
        stem="patch_embed.proj",
        stem_bias=has_bias(model.patch_embed.proj),
        final_norm="norm",
        extra_norms=patch_norm + tuple(merge_norms),
        tokens="nhwc",
        num_prefix_tokens=0,
    )
