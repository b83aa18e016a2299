"""RLRR (Dong et al., CVPR 2024): residual low-rank rescaling of every frozen Linear.

For a Linear with weight W (out x in) and bias b: W' = W + W * (s_out s_in^T), b' = b + t,
plus SSF after norm1, norm2, the patch embedding and the final norm.

Weight decay, as the official code applies it: zstarN70/RLRR ``models/networks.py``
``RLRRVisionTransformer.get_parameters`` (AdamW; ``RLRRDatasets/VTABConfig.py`` weight_decay per
task) exempts the parameter names containing ``bias`` or ``norm`` and decays all others. Its
names, by role (``train_vtab.py`` trains the names with ``head``, ``scale`` or ``shift``):
``scale_col`` (s_in) and ``scale_line`` (s_out) are decayed; ``shift_bias`` (t) is not;
the SSF after norm1, norm2 and the final norm (``ssf_scale_attn_norm``, ``..._ffn_norm``,
``..._enc_norm`` and their shifts) is not; the SSF after the patch embedding
(``ssf_scale_patch``, ``ssf_shift_patch``) is decayed; ``head.weight`` is, ``head.bias`` is not.
``RLRR.decays`` applies that by role, not to our own names (``blocks.0.attn.qkv.t`` has no
``bias`` in it, ``patch_embed.proj.scale`` no ``norm``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import BLOCK_LINEARS, BLOCK_NORMS, QKV, QKV_GROUPS, layout_of
from .base import Method, register
from .ssf import add_ssf, outside_blocks
from .surgery import Mergeable, merge_wrappers, wrap


class _RescaledLinear(torch.autograd.Function):
    """y = x W'^T + b + t with W' = W * (1 + s_out s_in^T), materialised once per step.

    Plain autograd would keep both W' and the full-size rescale matrix for every layer; here only
    W' (needed for dL/dx) is kept, and the scales' gradients come from dL/dW' = g^T x times W,
    reduced per row and per column: what full fine-tuning computes for its weight gradient,
    without its optimizer state."""

    # Autocast, on every device type it runs on (CUDA, CPU, ...): what ``torch.amp.custom_fwd`` and
    # ``custom_bwd`` do for the one device type they name. The forward runs in the caller's autocast
    # state (under bf16 autocast F.linear computes in bf16) and records it for the input's device
    # type; the backward runs in that same state, on whichever device (tests/test_gpu_path.py).
    @staticmethod
    def forward(ctx, x, w, b, s_in, s_out, t, groups: int):
        device_type = x.device.type
        ctx.autocast = ((device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
                        if torch.amp.is_autocast_available(device_type) else None)
        rescale = (s_out.view(groups, -1, 1) * s_in.view(groups, 1, -1)).view_as(w)
        w_new = torch.addcmul(w, w, rescale)
        del rescale
        ctx.groups = groups
        ctx.save_for_backward(x, w, w_new, s_in, s_out)
        return F.linear(x, w_new, t if b is None else b + t)

    @staticmethod
    def backward(ctx, g):
        if ctx.autocast is None:  # a device type without autocast (meta)
            return _RescaledLinear._backward(ctx, g)
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, enabled=enabled, dtype=dtype):
            return _RescaledLinear._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, w, w_new, s_in, s_out = ctx.saved_tensors
        groups = ctx.groups
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = (g2 @ w_new.to(g2.dtype)).view(x.shape) if ctx.needs_input_grad[0] else None
        m = (g2.t() @ x2.to(g2.dtype)).to(w.dtype).mul_(w).view(groups, -1, w.shape[1])  # dL/d(rescale)
        grad_s_in = torch.einsum("goi,go->gi", m, s_out.view(groups, -1))
        grad_s_out = torch.einsum("goi,gi->go", m, s_in).reshape(-1, 1)
        grad_t = g2.sum(0).to(s_out.dtype)
        return grad_x, None, None, grad_s_in, grad_s_out, grad_t, None


class RLRRLinear(Mergeable):
    """A frozen ``nn.Linear`` with the RLRR rescaling of its weight and a shift of its bias.

    ``groups`` splits the output rows into equal chunks with one ``s_in`` row each: 3 for the
    fused qkv, so q, k and v are rescaled independently. W' is materialised once per forward
    and used in one matmul; that is cheaper than extra matmuls on the activations.
    """

    def __init__(self, base: nn.Linear, groups: int = 1):
        super().__init__()
        out_features, in_features = base.weight.shape
        if out_features % groups:
            raise ValueError(f"{out_features} output rows do not split into {groups} groups")
        self.base, self.groups = base, groups
        w = base.weight
        # kaiming-uniform with a=0: bound sqrt(6 / fan_in), fan_in = the second dimension
        self.s_in = nn.Parameter(nn.init.kaiming_uniform_(w.new_empty(groups, in_features)))
        self.s_out = nn.Parameter(nn.init.kaiming_uniform_(w.new_empty(out_features, 1)))
        self.t = nn.Parameter(w.new_zeros(out_features))

    def weight(self) -> torch.Tensor:
        """W + W * (s_out s_in^T), with each row chunk using its own row of s_in."""
        w = self.base.weight
        rescale = self.s_out.view(self.groups, -1, 1) * self.s_in.view(self.groups, 1, -1)
        return torch.addcmul(w, w, rescale.view_as(w))

    def bias(self) -> torch.Tensor:
        return self.t if self.base.bias is None else self.base.bias + self.t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return _RescaledLinear.apply(x, self.base.weight, self.base.bias, self.s_in, self.s_out, self.t,
                                         self.groups)
        return F.linear(x, self.weight(), self.bias())

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        base = self.base
        base.weight.copy_(self.weight())
        if base.bias is None:  # a bias-free Linear gains a bias (not the case in timm's ViTs)
            base.bias = nn.Parameter(self.t.detach().clone(), requires_grad=base.weight.requires_grad)
        else:
            base.bias.add_(self.t)
        return base


@register
class RLRR(Method):
    name = "rlrr"
    paper = "Dong et al., RLRR, CVPR 2024"
    code = "zstarN70/RLRR models/networks.py (ViT), models/swin.py (Swin)"
    deviations = ("Swin: the patch mergings' bias-free reduction is not rescaled (the bias shift it would gain "
                  "could not merge into timm's state_dict keys)")
    defaults = {}
    help = {}
    mergeable = True

    def decays(self, model: nn.Module, name: str, param: nn.Parameter) -> bool:
        """The official rule by role (see the module docstring): the rank-1 scales and the patch
        embedding's SSF are decayed; the bias shifts and the SSF after the norms are not."""
        module, _, leaf = name.rpartition(".")
        if leaf in ("s_in", "s_out"):
            return True
        if leaf == "t":
            return False
        if leaf in ("scale", "shift"):
            return module == layout_of(model).stem
        return super().decays(model, name, param)  # the head: weight decayed, bias not

    def _adapt(self, model: nn.Module) -> None:
        layout = layout_of(model)
        if layout.family == "swin":
            # zstarN70/RLRR models/swin.py: the fused qkv is one RLRRLinear (one s_in for q, k and v
            # together) and the SSF sits after norm1, norm2 and the final norm only. It also rescales
            # each patch merging's bias-free ``reduction`` with a bias shift; not here, because that
            # bias could not be merged back into timm's state_dict keys (7,168 parameters on Swin-B).
            qkv_groups, outside = 1, [layout.final_norm]
        else:
            # the ViT code (models/networks.py) has separate query, key and value Linears: one s_in each
            qkv_groups, outside = QKV_GROUPS, outside_blocks(layout)
        wrap(model, layout.paths(*BLOCK_LINEARS),
             lambda path, linear: RLRRLinear(linear, groups=qkv_groups if path.endswith(QKV) else 1))
        add_ssf(model, layout.paths(*BLOCK_NORMS) + outside)

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
