"""GPS (Zhang et al., "Gradient-based Parameter Selection for Efficient Fine-Tuning", CVPR 2024):
before tuning, one pass over the training data accumulates the gradient of every weight; in every
weight matrix each row (output neuron) keeps its ``k`` entries of largest |gradient| trainable, and
only those entries (plus the biases and the head) are tuned. As FightingFighting/GPS builds it
(commit 72e0c31): ``train_gps.py`` (``calculate_gradient``, then
``utils/pruning.py`` ``prune_by_percentile_gradient_perCell(model, times_para)``, the mask applied to
the gradients in ``utils/cuda.py`` ``NativeScaler.maks_gradient`` under ``--tuning-mode part``), with
the settings of ``train_scripts/vit/vtab/*/train_gps.sh``.

What trains (``prune_by_percentile_gradient_perCell``): names with ``norm``, ``pos_embed``,
``cls_token`` frozen; ``head``, ``bias`` and ``gamma`` (LayerScale) names fully trainable; every
other tensor (the patch conv, read as a width x (3*16*16) matrix, and the weights of qkv, proj, fc1,
fc2) keeps the top-``k`` entries of each row by accumulated |gradient| (``--times_para``: 1 on 18 of
the 19 VTAB tasks, 2 on patch_camelyon). Here each such weight gets a ``GPSWeight`` wrapper holding
``delta`` (rows x k, zero at init) and the selected column ``index`` (a buffer): the layer computes
with W + scatter(index, delta), which is what the official masked update of W computes (Adam's
update of an entry depends on that entry's gradients only, and the masked entries get zero
gradients, so they never move). Count on ViT-B/16 at k=1: patch conv 768 + its bias 768, and per
block qkv 2304 + 2304, proj 768 + 768, fc1 3072 + 3072, fc2 768 + 768 = 13,824:
1,536 + 12 x 13,824 = 167,424.

The selection pass (``select``, called by ``bench.train.fit`` on the fit's training split only,
before the optimizer exists; ``calculate_gradient``): the model in train mode, every batch of the
training split seen once, two augmented views of each image (``--contrast-aug``:
``data/transforms_factory.py`` ``transforms_contrastaug_train``), the supervised contrastive loss
(``--contrastive``: ``utils/loss_utils.py`` ``SupConLoss``, temperature 0.07, features L2-normalised)
on the pooled pre-logit features of the two views, gradients summed over all batches; then the
top-``k`` per row of |gradient| of each weight. ``delta`` is zero during the pass (the pass sees the
backbone's weights) and after it. Until ``select`` runs (e.g. ``apply`` alone), each row's first
``k`` columns stand in as its selection.

Weight decay: none on the method's tensors. Every official script trains with
``--opt adam --weight-decay 0`` (and decay on masked entries would move frozen weights), so
``decays`` is False for ``delta``, the biases and LayerScale; the head keeps the project's rule.

Deviations: the two views are made on the normalised tensors the fit's data loader gives (already
resized to the model's input) rather than on the decoded images, with the geometric part of the
official augmentation only (random resized crop, scale (0.08, 1), ratio (3/4, 4/3), bicubic: the
model's interpolation, which the VTAB scripts' ``--no-aug`` selects; and a horizontal flip with
p 0.5; drawn from a generator seeded by the fit's seed); the colour jitter (p 0.8) and random
grayscale (p 0.2) need the unnormalised image, which a method does not see, and are left out. The pass runs in float32 (the official one under AMP) and
keeps every batch (the official training loader drops the last partial batch). On resume from a
checkpoint the selection is recomputed (deterministic for the same data, seed and device).
Mergeable: W + scatter(index, delta) folds into the weight exactly. Families: ViT only (the official
code selects per row of ViT weights; its Swin code is not followed here).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ._checks import check_int
from .base import Method, register
from .families import BLOCK_LINEARS, layout_of
from .surgery import Mergeable, merge_wrappers, wrap

TEMPERATURE = 0.07  # SupConLoss(temperature=0.07, base_temperature=0.07)
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCropAndInterpolation's defaults


class GPSWeight(Mergeable):
    """A frozen Linear or Conv2d whose weight, read as rows x columns, gains ``delta`` at the columns
    ``index`` of each row: W' = W + scatter(index, delta). ``delta`` (rows x k) trains; ``index`` is a
    buffer set by ``select``."""

    def __init__(self, base: nn.Module, k: int):
        super().__init__()
        rows = base.weight.shape[0]
        columns = base.weight[0].numel()
        if k > columns:
            raise ValueError(f"gps: k={k} is more than the {columns} entries of a row")
        self.base = base
        w = base.weight
        self.delta = nn.Parameter(w.new_zeros(rows, k))
        self.register_buffer("index", torch.arange(k, device=w.device).expand(rows, k).contiguous())

    def weight(self) -> torch.Tensor:
        w = self.base.weight
        return w.reshape(w.shape[0], -1).scatter_add(1, self.index, self.delta).view_as(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, self.weight(), self.base.bias)
        return F.linear(x, self.weight(), self.base.bias)

    @torch.no_grad()
    def choose(self, grad: torch.Tensor) -> None:
        """The top-k columns of each row of |grad| (the accumulated gradient of the base weight)."""
        k = self.delta.shape[1]
        self.index.copy_(grad.reshape(grad.shape[0], -1).abs().topk(k, dim=1).indices)
        self.delta.zero_()  # a delta belongs to the entries it was trained for

    @torch.no_grad()
    def merged(self) -> nn.Module:
        self.base.weight.copy_(self.weight())
        return self.base


def supcon_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SupConLoss (contrast_mode "all", temperature = base_temperature = 0.07) of ``features``
    (batch, views, dim) with ``labels`` (batch)."""
    b, views, _ = features.shape
    features = F.normalize(features, dim=2)
    same = (labels.view(-1, 1) == labels.view(1, -1)).float().repeat(views, views)
    anchors = torch.cat(features.unbind(1), dim=0)  # (views * b, dim), view-major
    logits = anchors @ anchors.T / TEMPERATURE
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(views * b, device=features.device)
    positives = same * not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()


def _crop_box(h: int, w: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop, sampled as torchvision's
    ``RandomResizedCrop.get_params`` samples it (10 tries, then a centre crop of bounded ratio)."""
    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    for _ in range(10):
        area = h * w * uniform(*CROP_SCALE)
        ratio = math.exp(uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return top, left, ch, cw
    if w / h < CROP_RATIO[0]:
        cw, ch = w, round(w / CROP_RATIO[0])
    elif w / h > CROP_RATIO[1]:
        ch, cw = h, round(h * CROP_RATIO[1])
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crops(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W): a random resized crop (scale (0.08, 1), ratio (3/4, 4/3),
    bicubic back to H x W) and a horizontal flip with p 0.5, drawn from ``generator``."""
    h, w = x.shape[-2:]
    views = []
    for image in x:
        view = TF.resized_crop(image, *_crop_box(h, w, generator), [h, w], InterpolationMode.BICUBIC,
                               antialias=True)
        views.append(view.flip(-1) if torch.rand((), generator=generator).item() < 0.5 else view)
    return torch.stack(views)


@register
class GPS(Method):
    name = "gps"
    paper = "Zhang et al., GPS (Gradient-based Parameter Selection), CVPR 2024"
    code = "FightingFighting/GPS@72e0c31 train_gps.py, utils/pruning.py"
    deviations = ("selection pass: geometric augmentation only (colour jitter and grayscale need the unnormalised "
                  "image), on the loader's tensors, in fp32 (official: AMP), keeping the last partial batch")
    group = "vision"
    defaults = {"k": 1}
    help = {"k": "entries selected per row of each weight matrix (official times_para: 1, 2 on patch_camelyon)"}
    mergeable = True
    decays_backbone = False  # the official scripts train with weight decay 0
    needs_training_data = True
    identity_at_init = True  # equals the backbone at init: the deltas start at zero
    # the backbone tensors it trains (bench.testing): the biases of the patch conv and the block Linears,
    # and LayerScale's gammas where there are (official: "bias" and "gamma" names, not the norms')
    trains_backbone = (r"(patch_embed\.proj|blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2))\.bias"
                       r"|blocks\.\d+\.ls[12]\.gamma")
    families = ("vit",)
    unsupported_why = "the official selection follows the rows of ViT weight matrices; its Swin code is not ported"

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "k", 1, 64)

    def search_space(self, trial) -> dict:
        return {"k": trial.suggest_categorical("k", [1, 2])}  # the official VTAB values

    def decays(self, model: nn.Module, name: str, param: nn.Parameter) -> bool:
        if not name.startswith("head."):
            return False
        return super().decays(model, name, param)

    def _adapt(self, model: nn.Module, k: int) -> None:
        layout = layout_of(model)
        wrap(model, [layout.stem] + layout.paths(*BLOCK_LINEARS), lambda _, module: GPSWeight(module, k))
        for name, p in model.named_parameters():
            leaf = name.rpartition(".")[2]
            # official: norms frozen (even their biases), biases and LayerScale gammas trained
            if "norm" not in name and not name.startswith("head.") and leaf in ("bias", "gamma", "delta"):
                p.requires_grad_(True)

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)

    def select(self, model: nn.Module, batches: Iterable, seed: int) -> None:
        wrappers = [m for m in model.modules() if isinstance(m, GPSWeight)]
        trainable = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        generator = torch.Generator().manual_seed(seed)
        try:
            model.requires_grad_(False)
            for m in wrappers:  # the pass sees the backbone's weights, as the official pass does
                with torch.no_grad():
                    m.delta.zero_()
                m.base.weight.grad = None
                m.base.weight.requires_grad_(True)
            model.train()
            for x, y in batches:
                views = torch.cat([random_resized_crops(x, generator), random_resized_crops(x, generator)])
                features = model.forward_head(model.forward_features(views), pre_logits=True)
                f1, f2 = features.float().split(len(x))
                supcon_loss(torch.stack([f1, f2], dim=1), y).backward()
            for m in wrappers:
                if m.base.weight.grad is None:
                    raise ValueError("gps: the selection pass saw no training batch")
                m.choose(m.base.weight.grad)
        finally:
            for m in wrappers:
                m.base.weight.grad = None
            for p, flag in trainable.items():
                p.requires_grad_(flag)
            model.train(was_training)
