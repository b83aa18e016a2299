"""`bench methods`: every registered method with its trainable parameters, mergeability and
hyperparameters, counted on a real model (never written by hand)."""
from __future__ import annotations

from tabulate import tabulate

import methods

from .backbones import create_backbone
from .errors import UserError


def describe(backbone, num_classes: int) -> list[list[str]]:
    """One row per registered method, counted on ``backbone`` with a ``num_classes`` head."""
    rows = []
    for name in methods.names():
        method = methods.get(name)
        model = method.apply(backbone, num_classes=num_classes)
        hparams = ", ".join(f"{k}={v}" for k, v in method.defaults.items()) or "-"
        rows.append([name, f"{methods.count_trainable(model):,}",
                     f"{methods.count_trainable(model, exclude_head=False):,}",
                     "yes" if method.mergeable else "no", hparams])
        del model  # free this copy before the next method copies the backbone
    return rows


def main(args) -> int:
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    backbone = create_backbone(args.backbone)  # ViT-B/16 without --pretrained: random init, no download
    rows = describe(backbone, args.num_classes)
    print(f"backbone: {args.backbone}; trainable parameters, head = {args.num_classes} classes")
    print(tabulate(rows, headers=["method", "trainable (no head)", f"with head ({args.num_classes})",
                                  "mergeable", "hyperparameters (defaults)"],
                   tablefmt="github", colalign=("left", "right", "right", "left", "left")))
    return 0
