"""DTL (Fu, Zhu & Wu, "DTL: Disentangled Transfer Learning for Visual Recognition", AAAI 2024): a
Compact Side Network (CSN) beside the frozen blocks, as heekhero/DTL builds it (commit bf6c51e,
``models/vision_transformer.py`` ``LoRALinear`` and ``VisionTransformer.forward``; settings from
``train_scripts/vit/vtab/*/train_dtl.sh`` and ``train_dtl+.sh``; trainable tensors from
``train_vit_vtab.py`` ``mark_trainable_parameters``).

Forward (``VisionTransformer.forward``): before every block i (``--lora_before_blocks 0-11``) a
low-rank map of the block's input is added to a running sum, ``r += x_i A_i^T B_i^T`` (rank
``--r 2``); after each of the later blocks (``--add_after_blocks 6-11``: here the second half,
blocks depth // 2 ... depth - 1, which is 6-11 on 12 blocks) ``x = block(x) + swish(r)``,
swish(r) = r * sigmoid(beta r) (``--beta 100``). DTL+ (``fusion_size`` > 0; the official scripts use
3, 4 or 5 per task) passes the patch tokens of swish(r) through one depthwise k x k convolution over
the patch grid (``padding='same'``, no bias) shared by all those blocks; the class token (here every
prefix token) bypasses it. Only A, B and the fusion conv train (``'lora_' in name``) and the head.

Pooling and final norm: the official ViT averages the patch tokens and then applies the final norm
(``x = x[:, self.num_tokens:].mean(dim=1); x = self.norm(x)``), where timm's ViT-B normalises every
token and takes the class token. ``pool="avg"`` (default) reproduces that on timm's model
(``global_pool='avg'``, the final norm moved to ``fc_norm``); ``pool="token"`` keeps the backbone's
class-token pooling (then the adapted model equals the backbone at init, as B starts at zero).

Init (official): A kaiming-uniform(a=sqrt(5)) with fan_in = width, B zero; the fusion conv as
torch's ``Conv2d`` default (kaiming-uniform a=sqrt(5), fan_in = k*k), created after the model's own
``init_weights``. Count on ViT-B/16: 12 x (2*768 + 768*2) = 36,864 (DTL+ with k=3: + 768*9 = 43,776).

Weight decay: ``train_vit_vtab.py`` gives AdamW weight decay (``--weight_decay 0.05``) to every
trainable tensor whose name does not end in ``.bias``: A, B and the fusion kernel (no bias) are
decayed, the head's weight too, its bias not. That is timm's rule for these tensors (``Method.decays``).

Search space: the official scripts fix r 2, beta 100 and the blocks, and vary lr and drop path per
task (the runner's); so the method searches nothing of its own, and ``fusion_size`` (DTL vs DTL+ and
its kernel) is a variant, not searched.

The CSN lives in the blocks container (``blocks``, an ``nn.Sequential`` subclass whose children are
still the original blocks, so ``blocks.<i>`` paths and names stay): its forward runs the side
network. Deviations: timm's gradient checkpointing (``checkpoint_seq``) and ``forward_intermediates``
iterate the blocks one by one and would skip the side network (the bench uses neither); the
patch-grid side is read from the token count instead of the hard-coded 14. Not mergeable: swish and
the side sum are not a change of weights. Families: ViT only (the official ViT code; its Swin
variant is not implemented here).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .families import layout_of

POOLS = ("avg", "token")


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    return x * torch.sigmoid(x * beta)


class CSNBlocks(nn.Sequential):
    """The backbone's blocks (its children, unchanged) run together with DTL's Compact Side Network.

    ``lora_A`` (depth, rank, width) and ``lora_B`` (depth, width, rank) hold each block's low-rank
    map; ``lora_fusion`` (width, 1, k, k) the DTL+ depthwise kernel (absent for DTL). They are
    parameters of this container, not children, so iterating the container still yields the blocks.
    """

    def __init__(self, blocks: nn.Sequential, width: int, rank: int, beta: float, fusion_size: int,
                 add_from: int, prefix_tokens: int):
        super().__init__(*blocks)
        like = next(blocks.parameters())
        dd = dict(device=like.device, dtype=like.dtype)
        self.beta, self.add_from, self.prefix_tokens = beta, add_from, prefix_tokens
        self.lora_A = nn.Parameter(torch.empty(len(blocks), rank, width, **dd))
        self.lora_B = nn.Parameter(torch.zeros(len(blocks), width, rank, **dd))
        for a in self.lora_A:  # per block, as LoRALinear: fan_in = width
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if fusion_size:
            # nn.Conv2d(width, width, k, padding='same', groups=width, bias=False), default init
            self.lora_fusion = nn.Parameter(torch.empty(width, 1, fusion_size, fusion_size, **dd))
            nn.init.kaiming_uniform_(self.lora_fusion, a=math.sqrt(5))
        else:
            self.lora_fusion = None

    def side(self, r: torch.Tensor) -> torch.Tensor:
        """swish(r), its patch tokens through the DTL+ depthwise conv (when there is one)."""
        act = swish(r, self.beta)
        if self.lora_fusion is None:
            return act
        p = self.prefix_tokens
        b, n, c = act.shape
        side = math.isqrt(n - p)
        if side * side != n - p:
            raise ValueError(f"dtl: {n - p} patch tokens do not form a square grid")
        grid = act[:, p:].reshape(b, side, side, c).permute(0, 3, 1, 2)
        k = self.lora_fusion.shape[-1]
        lo, hi = (k - 1) // 2, k // 2  # padding "same" as torch pads it (the extra row/column after)
        fused = F.conv2d(F.pad(grid, (lo, hi, lo, hi)), self.lora_fusion, groups=c)
        return torch.cat([act[:, :p], fused.permute(0, 2, 3, 1).reshape(b, side * side, c)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = 0.0
        for i, block in enumerate(self):
            r = r + F.linear(F.linear(x, self.lora_A[i]), self.lora_B[i])
            x = block(x)
            if i >= self.add_from:
                x = x + self.side(r)
        return x


@register
class DTL(Method):
    name = "dtl"
    paper = "Fu, Zhu & Wu, DTL, AAAI 2024"
    code = "heekhero/DTL@bf6c51e models/vision_transformer.py, train_scripts/vit/vtab/*/train_dtl.sh"
    deviations = ("the side network runs in the blocks container, so timm's checkpoint_seq and forward_intermediates "
                  "would skip it (the bench uses neither); grid side read from the token count (official: 14)")
    group = "vision"
    defaults = {"rank": 2, "beta": 100.0, "fusion_size": 0, "pool": "avg"}
    help = {
        "rank": "rank of each block's low-rank map, integer in [1, model width] (official 2)",
        "beta": "swish(x) = x sigmoid(beta x) on the side sum (number > 0; official 100)",
        "fusion_size": "0: DTL; k > 0: DTL+ with a k x k depthwise conv over the patch grid (official 3, 4, 5)",
        "pool": "avg (official: mean of the patch tokens, then the final norm) or token (the backbone's class token)",
    }
    mergeable = False
    width_bounded = ("rank",)
    families = ("vit",)
    unsupported_why = "the side network adds token sequences of one width; DTL's Swin variant is not implemented"

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "rank", 1)
        check_float(self.name, hp, "beta", 0, lo_open=True)
        check_int(self.name, hp, "fusion_size", 0, 15)
        check_choice(self.name, hp, "pool", POOLS)

    def _adapt(self, model: nn.Module, rank: int, beta: float, fusion_size: int, pool: str) -> None:
        layout = layout_of(model)
        depth = len(layout.blocks)
        model.blocks = CSNBlocks(model.blocks, layout.widths[0], rank, beta, fusion_size, add_from=depth // 2,
                                 prefix_tokens=layout.num_prefix_tokens)
        if pool == "avg" and layout.final_norm == "norm":
            # mean of the patch tokens, then the final norm (timm: pool "avg", then fc_norm)
            model.global_pool = "avg"
            model.fc_norm, model.norm = model.norm, nn.Identity()
        elif pool == "avg":  # already pools the patch tokens before its final norm
            model.global_pool = "avg"
