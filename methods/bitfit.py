"""BitFit / bias tuning (Ben Zaken et al., ACL 2022; the "Bias" row of VPT's tables): train every
bias of the backbone and nothing else.

Which tensors, as KMnP/vpt applies it: ``src/models/vit_models.py`` (``ViT.build_backbone`` and
``Swin.build_backbone``, transfer type ``tinytl-bias``) freezes every encoder parameter whose name
does not contain ``bias``. On a timm ViT that is the patch embedding's bias, the biases of
``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``norm1``, ``norm2`` in every block and the
final norm's bias (102,912 on ViT-B/16), plus whatever else the model names a bias (CLIP's
``norm_pre.bias``; a bias-free patch conv has none to train). On Swin the same substring rule
also trains ``relative_position_bias_table``, as VPT's ``Swin`` class does.

Nothing is added: the adapted model is the timm model with some biases unfrozen, so ``merge`` is
a copy (mergeable, exactly).

Weight decay: every trainable bias is decayed. KMnP/vpt ``src/solver/optimizer.py``
``make_optimizer`` (SGD branch, lines 58-62: ``weight_decay = train_params.WEIGHT_DECAY`` for every
trainable tensor except ``last_layer.bias``) is the optimizer of VPT's non-end-to-end protocols
(``configs/base-linear.yaml`` and ``configs/base-prompt.yaml`` set ``OPTIMIZER: "sgd"``; only
full fine-tuning, ``base-finetune.yaml``, uses its AdamW branch, which exempts ``bias`` names).
The same rule as ``vpt``'s. Deviation: our recipe's optimizer is AdamW (decoupled decay) for every
method, not SGD with L2.
"""
from __future__ import annotations

import torch.nn as nn

from .base import Method, register


def is_bias(name: str) -> bool:
    """VPT's rule: a backbone tensor is trained when its name contains ``bias``."""
    return "bias" in name and not name.startswith("head.")


@register
class BitFit(Method):
    name = "bitfit"
    paper = "Ben Zaken et al., BitFit, ACL 2022"
    code = "KMnP/vpt src/models/vit_models.py (transfer type tinytl-bias), src/solver/optimizer.py"
    deviations = "AdamW (decoupled weight decay, as for every method here), not VPT's SGD with L2"
    identity_at_init = True  # equals the backbone at init: it trains the backbone's own biases
    trains_backbone = r".*bias.*"  # the backbone tensors it trains (bench.testing): ``is_bias``
    group = "baselines"
    defaults = {}
    help = {}
    mergeable = True

    decays_all = True  # VPT's SGD optimizer decays every trainable bias of the backbone

    def _adapt(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if is_bias(name):
                param.requires_grad_(True)

    def _merge(self, model: nn.Module) -> None:
        """Nothing to fold: the trained biases are the timm model's own."""
