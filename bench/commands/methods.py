"""`bench methods`: every registered method with its trainable parameters, mergeability and
hyperparameters, counted on a real model structure (never written by hand).

The backbone is built on the meta device: every shape is real, no memory is allocated and nothing
is initialised, so the table is instant on any backbone (ViT-H/14's 632M parameters included) and
needs no weights file. A method that does not run on the backbone's family gets a row saying so.
A method whose count its selection from training data decides (``Method.count_from_data``: SPT)
shows the count of ``apply``'s placeholder selection, marked ``(placeholder)`` and explained under
the table: its runs record the count their selection gave.
"""
from __future__ import annotations

from tabulate import tabulate

import methods

from .. import backbones
from ..errors import UserError

PLACEHOLDER = "(placeholder)"
PLACEHOLDER_NOTE = (f"{PLACEHOLDER}: the count of apply's placeholder selection; the method selects what trains "
                    "from the training data, so a fit's count is decided by the data (bounded by its budget) "
                    "and recorded with its run")


def trainable(backbone, name: str, num_classes: int) -> tuple[int, int] | None:
    """(trainable parameters without the head, with a ``num_classes`` head) of method ``name`` with its
    defaults on ``backbone``; None when the method does not run on the backbone's family. Also the
    counts of the generated methods page (``bench.reference_docs``)."""
    from methods.families import layout_of

    if not methods.supports(name, layout_of(backbone).family):
        return None
    model = methods.get(name).apply(backbone, num_classes=num_classes)
    counts = methods.count_trainable(model), methods.count_trainable(model, exclude_head=False)
    del model  # free this copy before the next method copies the backbone
    return counts


def describe(backbone, num_classes: int) -> list[list[str]]:
    """One row per registered method, counted on ``backbone`` with a ``num_classes`` head."""
    from methods.families import layout_of

    family = layout_of(backbone).family
    rows = []
    for name in methods.names():
        method = methods.get(name)
        hparams = ", ".join(f"{k}={v}" for k, v in method.defaults.items()) or "-"
        mergeable = "yes" if method.mergeable else "no"
        counts = trainable(backbone, name, num_classes)
        if counts is None:
            rows.append([name, f"not on {family}", "-", mergeable, hparams])
            continue
        mark = f" {PLACEHOLDER}" if method.count_from_data else ""
        rows.append([name, f"{counts[0]:,}{mark}", f"{counts[1]:,}{mark}", mergeable, hparams])
    return rows


def main(args) -> int:
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    backbone = backbones.create_meta(args.backbone)  # shapes only: no weights, no download, no init
    rows = describe(backbone, args.num_classes)
    print(f"backbone: {args.backbone}; trainable parameters, head = {args.num_classes} classes")
    print(tabulate(rows, headers=["method", "trainable (no head)", f"with head ({args.num_classes})",
                                  "mergeable", "hyperparameters (defaults)"],
                   tablefmt="github", colalign=("left", "right", "right", "left", "left")))
    if any(PLACEHOLDER in row[1] for row in rows):
        print(PLACEHOLDER_NOTE)
    return 0
