"""Backbones: timm VisionTransformers, built without any download.

``demo``: a small ViT with ViT-B's module structure, pretrained by ``python -m bench.pretrain_demo``
(checkpoint committed under ``bench/assets/``). ``vit_base_patch16_224``: ViT-B/16, weights only
from a local file given with ``--pretrained`` (timm's ``pretrained_cfg_overlay=dict(file=...)``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch.nn as nn

from .errors import UserError, first_line

ASSETS = Path(__file__).parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_vit.safetensors"
# Same module structure as ViT-B/16 (patch conv, class token, pre-norm blocks, fused qkv, MLP x4),
# sized so that the whole demo suite trains on two CPU cores in minutes.
DEMO_CONFIG = dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0)
REAL_BACKBONE = "vit_base_patch16_224"
BACKBONES = ("demo", REAL_BACKBONE)


def create_demo(pretrained: bool | str | Path = True, num_classes: int = 0) -> nn.Module:
    """The demo ViT; ``pretrained=True`` loads the committed checkpoint, a path loads that file."""
    model = timm.models.vision_transformer.VisionTransformer(num_classes=num_classes, **DEMO_CONFIG)
    if pretrained:
        path = DEMO_CHECKPOINT if pretrained is True else Path(pretrained)
        _load_into(model, path)
    return model


def create_backbone(name: str, pretrained: str | Path | None = None, num_classes: int = 0) -> nn.Module:
    """Build backbone ``name``. For ViT-B/16, ``pretrained`` is a local .npz/.pth/.safetensors
    file; without one the model is randomly initialised (tests, ``bench methods``)."""
    if name == "demo":
        return create_demo(pretrained or True, num_classes=num_classes)
    if name != REAL_BACKBONE:
        raise UserError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if pretrained is None:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    path = Path(pretrained)
    _require_file(path)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=21843))
    except Exception as exc:  # timm raises RuntimeError/KeyError/ValueError for foreign files
        raise UserError(f"cannot load {path} into {name}: {first_line(exc)}") from None


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")


def _load_into(model: nn.Module, path: Path) -> None:
    """Load a safetensors/.pth state dict into ``model``; a missing or mismatched file is a UserError."""
    _require_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            import torch
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as exc:
        raise UserError(f"cannot load {path}: {first_line(exc)}") from None
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise UserError(f"{path} does not fit the backbone: missing {missing[:3]}, unexpected {unexpected[:3]}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, logged with every run so results name their exact weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
