"""Our ``dtl`` (methods/dtl.py) against the official DTL code (Fu, Zhu & Wu, AAAI 2024), read from a
checkout of heekhero/DTL at run time. Nothing of that code is in this repository.

    git clone https://github.com/heekhero/DTL /tmp/dtl
    .venv/bin/python -m benchmarks.official.dtl --repo /tmp/dtl

Official: ``models/vision_transformer.py`` (its own ``VisionTransformer`` with the Compact Side
Network: ``LoRALinear`` per block, ``swish``, the DTL+ depthwise ``lora_fusion`` conv, average
pooling of the patch tokens before the final norm), with the settings of
``train_scripts/vit/vtab/*/train_dtl.sh`` and ``train_dtl+.sh``. Checked, fp32 on CPU, one thread:

- settings: the official scripts' ``--r``, ``--beta``, ``--lora_before_blocks``, ``--add_after_blocks``
  and ``--fusion_size`` are our defaults (rank 2, beta 100, every block, the second half: 6-11 of
  12) and our DTL+ kernels;
- forward: a 12-block ViT with ViT-B/16's 14 x 14 patch grid (which the official forward hard-codes;
  56 px, patch 4, width 48) with ours, against the official ``VisionTransformer`` of that shape
  holding the same backbone tensors (every official tensor but the CSN's is given, and nothing
  else) and the same A, B and fusion kernel, those perturbed; DTL, DTL+ with kernels 3, 4, 5, and
  rank 3 with beta 10; the logits;
- init: the official model built after a seed, and (same seed) the official model without a CSN
  followed by our CSN, which then draws from where the official CSN drew: the same A per block and
  fusion kernel, B zero in both;
- count: the official ``'lora_'`` tensors (``train_vit_vtab.py`` ``mark_trainable_parameters``) of
  the ViT-B/16 model, DTL and DTL+ 3, against our trainable count on ViT-B/16.

The official file imports ``write`` (a logger) from the checkout's ``utils/utils.py``, which imports
its data pipeline; the script gives it a no-op ``write`` instead, and timm's ``register_model`` as
the identity (so that loading the file does not re-register timm's model names); see
``load.load_module``'s ``replace``. Exit 0 when every check ran and passed (logits within 1e-4,
init and counts exact), 1 otherwise, 2 when ``--repo`` is not a checkout of heekhero/DTL.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.official.common import (Report, check_vit_b_count, images, load_backbone, max_diff, perturb,
                                        randomised_vit, run, with_head_of)
from benchmarks.official.load import load_module

REPOSITORY = "heekhero/DTL"
FILES = ("models/vision_transformer.py", "train_vit_vtab.py", "train_scripts/vit/vtab/caltech101/train_dtl.sh")
TOL = 1e-4
GRID14 = dict(img_size=56, patch_size=4, embed_dim=48, depth=12, num_heads=3)  # 14 x 14 patches
VIT_B = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)


def blocks(spec: str) -> list[str]:
    """'0-11' -> ['0', ..., '11'] (``train_vit_vtab.py`` ``parse_block_info``)."""
    first, last = spec.split("-")[0], spec.split("-")[-1]
    return [str(i) for i in range(int(first), int(last) + 1)]


def official_settings(repo: Path) -> dict[str, set[str]]:
    """Each flag's values over ``train_scripts/vit/vtab/*/train_dtl*.sh``."""
    seen: dict[str, set[str]] = {}
    scripts = sorted(repo.glob("train_scripts/vit/vtab/*/train_dtl*.sh"))
    for script in scripts:
        for flag, value in re.findall(r"--(r|beta|lora_before_blocks|add_after_blocks|fusion_size)\s+(\S+)",
                                      script.read_text()):
            seen.setdefault(flag, set()).add(value)
    seen["scripts"] = {str(len(scripts))}
    return seen


def load_official(repo: Path):
    return load_module(repo, "models/vision_transformer.py", "dtl_vision_transformer",
                       replace={"timm.models.registry": {"register_model": lambda fn: fn},
                                "utils.utils": {"write": lambda *args, **kwargs: None}})


def official_model(vit_module, shape: dict, num_classes: int, rank: int, beta: float, fusion_size: int,
                   before: list[str], after: list[str]) -> nn.Module:
    return vit_module.VisionTransformer(num_classes=num_classes, r=rank, beta=beta, fusion_size=fusion_size,
                                        lora_before_blocks=before, add_after_blocks=after, **shape)


def check_settings(report: Report, settings: dict[str, set[str]], depth: int = 12) -> None:
    import methods

    ours = methods.get("dtl").defaults
    report.add(f"settings: {', '.join(sorted(settings.pop('scripts')))} official VTAB scripts: --r, --beta = "
               "our rank, beta", f"{sorted(settings['r'])}, {sorted(settings['beta'])} / {ours['rank']}, "
               f"{ours['beta']}", settings["r"] == {str(ours["rank"])} and {float(b) for b in settings["beta"]}
               == {ours["beta"]})
    before, after = settings["lora_before_blocks"], settings["add_after_blocks"]
    ok = (len(before) == len(after) == 1 and blocks(next(iter(before))) == [str(i) for i in range(depth)]
          and blocks(next(iter(after))) == [str(i) for i in range(depth // 2, depth)])
    report.add("settings: --lora_before_blocks every block, --add_after_blocks the second half (ours: depth // 2 on)",
               f"{sorted(before)}, {sorted(after)}", ok)
    sizes = sorted(int(s) for s in settings["fusion_size"])
    report.add("settings: --fusion_size 0 (DTL, our default) and the DTL+ kernels",
               str(sizes), 0 in sizes and ours["fusion_size"] == 0 and all(s > 0 for s in sizes if s))


def check_forward(report: Report, vit_module, settings: dict[str, set[str]]) -> None:
    import methods

    before = blocks(next(iter(settings["lora_before_blocks"])))
    after = blocks(next(iter(settings["add_after_blocks"])))
    base, x = randomised_vit(**GRID14), images(3, 56)
    kernels = sorted(int(s) for s in settings["fusion_size"] if int(s))
    variants = [{}] + [{"fusion_size": k} for k in kernels] + [{"fusion_size": 4, "rank": 3, "beta": 10.0}]
    for hp in variants:
        torch.manual_seed(0)
        model = methods.get("dtl").apply(base, num_classes=10, **hp).eval()
        perturb(model, std=0.2)
        p = model.peft_hparams
        official = official_model(vit_module, GRID14, 10, p["rank"], p["beta"], p["fusion_size"], before, after)
        load_backbone(official, with_head_of(base, model).state_dict(), extra=("lora_",))
        with torch.no_grad():
            for i in range(len(before)):
                official.lora_dict[str(i)].lora_A.copy_(model.blocks.lora_A[i])
                official.lora_dict[str(i)].lora_B.copy_(model.blocks.lora_B[i])
            if official.lora_fusion is not None:
                official.lora_fusion.weight.copy_(model.blocks.lora_fusion)
            theirs = official.eval()(x)
            ours = model(x)
            model.blocks.lora_B.zero_()  # the side network acts: without it, other logits
            acts = max_diff(model(x), ours)
        label = "DTL" if not p["fusion_size"] else f"DTL+ {p['fusion_size']}x{p['fusion_size']}"
        report.diff(f"grid-14 ViT, {label}, rank {p['rank']}, beta {p['beta']:g}: logits ours vs official "
                    f"(B zeroed moves ours by {acts:.1e})", max_diff(ours, theirs), TOL, ok=acts > 1e-3)


def check_init(report: Report, vit_module, settings: dict[str, set[str]]) -> None:
    from methods.dtl import CSNBlocks

    before = blocks(next(iter(settings["lora_before_blocks"])))
    after = blocks(next(iter(settings["add_after_blocks"])))
    for fusion in (0, 3):
        torch.manual_seed(3)
        official = official_model(vit_module, GRID14, 10, 2, 100.0, fusion, before, after)
        torch.manual_seed(3)
        bare = official_model(vit_module, GRID14, 10, 2, 100.0, 0, [], [])  # the same draws, but no CSN
        ours = CSNBlocks(bare.blocks, GRID14["embed_dim"], 2, 100.0, fusion, add_from=len(before) // 2,
                         prefix_tokens=1)
        a = all(torch.equal(ours.lora_A[i], official.lora_dict[str(i)].lora_A) for i in range(len(before)))
        b = not ours.lora_B.any() and not any(official.lora_dict[str(i)].lora_B.any() for i in range(len(before)))
        k = fusion == 0 and official.lora_fusion is None and ours.lora_fusion is None or (
            fusion and torch.equal(ours.lora_fusion, official.lora_fusion.weight))
        report.add(f"init ({'DTL' if not fusion else 'DTL+ 3x3'}): same draws, same A per block"
                   f"{', same fusion kernel' if fusion else ''}; B zero in both", f"A {a}, B {b}, kernel {bool(k)}",
                   bool(a and b and k))


def check_count(report: Report, vit_module, settings: dict[str, set[str]]) -> None:
    before = blocks(next(iter(settings["lora_before_blocks"])))
    after = blocks(next(iter(settings["add_after_blocks"])))
    for fusion in (0, 3):
        official = official_model(vit_module, VIT_B, 100, 2, 100.0, fusion, before, after)  # CPU: it calls .item()
        check_vit_b_count(report, f"count ViT-B/16 ({'DTL' if not fusion else 'DTL+ 3x3'}): official 'lora_' tensors = "
                          "ours", official, "lora_", "dtl", fusion_size=fusion)


def body(repo: Path, report: Report) -> None:
    vit_module = load_official(repo)
    print(f"note: models/vision_transformer.py loaded with {', '.join(vit_module.__replaced__)} replaced "
          "(identity; no-op logger)")
    settings = official_settings(repo)
    print(f"official VTAB settings: { {k: sorted(v) for k, v in settings.items()} }")
    check_settings(report, dict(settings))
    check_forward(report, vit_module, settings)
    check_init(report, vit_module, settings)
    check_count(report, vit_module, settings)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")  # DTL+ 4x4 (both)
    return run(__doc__, REPOSITORY, FILES, "methods/dtl.py (registered 'dtl')", body, argv, old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
