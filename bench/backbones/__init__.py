"""Backbones: timm models (ViTs and Swin), built without any download.

Every backbone is built with ``timm.create_model(name, pretrained=False)`` and gets its weights
only from a local file (``--pretrained FILE``), except ``demo``: a small ViT with ViT-B's module
structure, pretrained by ``python -m bench.commands.pretrain_demo`` (checkpoint committed under
``bench/assets/``). Each registry entry says which family it belongs to (``methods.families``:
where its blocks, Linears and norms are), the image size it runs at, its input normalisation
(from timm's pretrained config of the weights users are told to pass) and that weights file.

Choices per backbone, where timm offers several:
- ``vit_base_patch14_dinov2`` is built as timm builds DINOv2 (518 px, a 37x37 position table) with
  ``dynamic_img_size=True``: the checkpoint's table loads exactly (the strict loader never
  resamples a tensor) and timm interpolates it to the input's patch grid on every forward (16x16
  at the suites' 224 px), as DINOv2 itself does (``interpolate_pos_encoding``).
- ``vit_base_patch16_224.mae`` is timm's MAE ViT-B/16: timm's config of that tag, i.e. the class
  token after the pretrained final norm, like every other ViT here. VPT's MAE runs (KMnP/vpt
  ``src/models/vit_backbones/vit_mae.py``, MAE's fine-tuning default) pool the patch tokens and
  put a new, randomly initialised ``fc_norm`` in place of the pretrained final norm; that needs a
  tensor that is not in the weights file, which the strict loader refuses, and it changes the
  head's input for one backbone only. Numbers of this backbone are therefore not VPT's MAE setup.
The strict loader of every weights file: ``bench.backbones.weights``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn

from ..errors import UserError
from .weights import OPTIONAL, WeightsFile, load_weights, read_weights

ASSETS = Path(__file__).parent.parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_vit.safetensors"
# Same module structure as ViT-B/16 (patch conv, class token, pre-norm blocks, fused qkv, MLP x4),
# sized so that the whole demo suite trains on two CPU cores in minutes.
DEMO_CONFIG = dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0)
REAL_BACKBONE = "vit_base_patch16_224"
HALF = (0.5, 0.5, 0.5)  # the normalisation of the ImageNet-21k ViTs (and of the demo)


@dataclass(frozen=True)
class Backbone:
    """One backbone: how to build it randomly initialised (no download), what it expects."""

    name: str
    family: str  # the ``methods.families`` family its model belongs to: "vit" | "swin"
    build: Callable[[int], nn.Module]  # num_classes -> model
    image_size: int  # the input size it runs at; a suite's recipe must use the same
    mean: tuple[float, float, float]  # input normalisation of its pretrained weights
    std: tuple[float, float, float]
    weights: str  # the file to pass with --pretrained, in one line (messages, docs/backbones.md)
    default_weights: Path | None = None
    unused: tuple[str, ...] = ()  # key prefixes a weights file may carry that are never loaded


def _build_demo(num_classes: int) -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(num_classes=num_classes, **DEMO_CONFIG)


def _timm(name: str, family: str, tag: str, weights: str, unused: tuple[str, ...] = (), **kwargs) -> Backbone:
    """A timm architecture, randomly initialised (``pretrained=False``: never a download), with the
    normalisation timm's pretrained config ``tag`` gives the weights that users are told to pass."""
    cfg = timm.models.get_pretrained_cfg(tag)

    def build(num_classes: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    return Backbone(name, family, build, 224, tuple(cfg.mean), tuple(cfg.std), weights, unused=unused)


_REGISTRY = {b.name: b for b in (
    Backbone("demo", "vit", _build_demo, DEMO_CONFIG["img_size"], HALF, HALF,
             "bench/assets/demo_vit.safetensors (committed; the default) or a `python -m bench.commands.pretrain_demo` file",
             DEMO_CHECKPOINT),
    _timm(REAL_BACKBONE, "vit", "vit_base_patch16_224.augreg_in21k",
          "ViT-B_16.npz (original ImageNet-21k release, the papers' weights) or "
          "timm/vit_base_patch16_224.augreg_in21k"),
    _timm("vit_large_patch16_224", "vit", "vit_large_patch16_224.augreg_in21k",
          "ViT-L_16.npz (original ImageNet-21k release) or timm/vit_large_patch16_224.augreg_in21k"),
    _timm("vit_huge_patch14_224", "vit", "vit_huge_patch14_224.orig_in21k",
          "ViT-H_14.npz (original ImageNet-21k release) or timm/vit_huge_patch14_224.orig_in21k"),
    _timm("vit_base_patch14_dinov2", "vit", "vit_base_patch14_dinov2.lvd142m",
          "timm/vit_base_patch14_dinov2.lvd142m or Meta's dinov2_vitb14_pretrain.pth",
          unused=("mask_token",), dynamic_img_size=True),
    _timm("vit_base_patch16_clip_224", "vit", "vit_base_patch16_clip_224.openai",
          "timm/vit_base_patch16_clip_224.openai (its model.safetensors: the image tower in timm's names)"),
    _timm("vit_base_patch16_224.mae", "vit", "vit_base_patch16_224.mae", "timm/vit_base_patch16_224.mae"),
    _timm("swin_base_patch4_window7_224", "swin", "swin_base_patch4_window7_224.ms_in22k",
          "timm/swin_base_patch4_window7_224.ms_in22k (timm's layout; Microsoft's original .pth is not read)"),
)}
BACKBONES = tuple(_REGISTRY)


def get(name: str) -> Backbone:
    """The registered backbone ``name``; a ``UserError`` listing the known ones otherwise."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UserError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return spec


def create_demo(pretrained: bool | str | Path = True, num_classes: int = 0) -> nn.Module:
    """The demo ViT; ``pretrained=True`` loads the committed checkpoint, a path loads that file."""
    if not pretrained:
        return _build_demo(num_classes)
    return create_backbone("demo", None if pretrained is True else pretrained, num_classes=num_classes)


def create_backbone(name: str, pretrained: str | Path | None = None, num_classes: int = 0) -> nn.Module:
    """Build backbone ``name``. ``pretrained`` is a local .npz/.pth/.safetensors file, loaded
    strictly (see :func:`load_weights`); without one the demo loads its committed checkpoint and
    every other backbone is randomly initialised (tests, ``--pretrained none``)."""
    spec = get(name)
    path = pretrained or spec.default_weights
    if path is None:
        return spec.build(num_classes)
    # the file is read (and a bad one refused) before the model is built: no ViT-B initialisation
    # is spent on a typo or a text file
    return _build_loaded(spec.build, read_weights(path), num_classes, name)


def create_meta(name: str, num_classes: int = 0) -> nn.Module:
    """Backbone ``name`` on the meta device: every shape, no memory, no initialisation. Enough to
    count parameters (``bench methods``) on any backbone, ViT-H's 632M included, instantly."""
    spec = get(name)
    with torch.device("meta"):
        return spec.build(num_classes)


def _build_loaded(build: Callable[[int], nn.Module], weights: WeightsFile, num_classes: int,
                  backbone: str) -> nn.Module:
    """Build a backbone and load ``weights`` into it. Without a head the file provides every
    tensor, so the random initialisation is skipped (built on the meta device: ~1.5 s saved on
    ViT-B); a model that would keep any tensor not from the file is built normally."""
    if num_classes == 0:
        with torch.device("meta"):
            model = build(0)
        state = model.state_dict()
        if (not any(k.startswith(OPTIONAL) for k in state)
                and all(k in state for k, _ in model.named_buffers())):  # no non-persistent buffers
            model = model.to_empty(device="cpu")
            load_weights(model, weights, backbone)
            return model
    model = build(num_classes)
    load_weights(model, weights, backbone)
    return model


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, logged with every run so results name their exact weights."""
    from ..data.manifest import sha256_file

    return sha256_file(Path(path))
