"""What the comparison scripts share: the report table, the demo ViT,
inputs, and the command line (``--repo``; the header with the official commit; the exit status:
0 when every check ran and passed, 1 otherwise, 2 from ``load.require`` when ``--repo`` is not a
checkout of the official repository)."""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from benchmarks.official.load import LoadError, commit_of, require


class Report:
    """Rows of (check, measured, PASS / FAIL / SKIP)."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, measured: str, ok: bool | None) -> None:
        self.rows.append((check, measured, "SKIP" if ok is None else "PASS" if ok else "FAIL"))

    def diff(self, check: str, value: float, tol: float, ok: bool = True) -> None:
        """A max abs difference, passing when below ``tol`` (and ``ok``: e.g. the compared runs moved)."""
        self.add(check, f"{value:.2e} (tol {tol:g})", bool(ok and value <= tol))

    def print(self) -> int:
        print("\n| check | measured (max abs difference, tolerance) | result |\n|---|---|---|")
        for check, measured, result in self.rows:
            print(f"| {check} | {measured} | {result} |")
        bad = [r for r in self.rows if r[2] != "PASS"]
        print(f"\n{'PASS' if self.rows and not bad else 'FAIL'}: {len(self.rows) - len(bad)} of {len(self.rows)} "
              "checks passed")
        return 0 if self.rows and not bad else 1


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomised_vit(**config) -> nn.Module:
    """A timm ViT of ``config``, seed 0, noise on every 1-d tensor (non-trivial biases and norms),
    in eval mode: tests/conftest.py's ``small_vit`` for the demo configuration."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(num_classes=0, **config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def demo_vit() -> nn.Module:
    from bench.backbones import DEMO_CONFIG

    return randomised_vit(**DEMO_CONFIG)


def perturb(model: nn.Module, std: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))


def with_head_of(base: nn.Module, adapted: nn.Module) -> nn.Module:
    """``base`` with ``adapted``'s head, in eval mode."""
    ref = copy.deepcopy(base)
    ref.reset_classifier(adapted.num_classes)
    ref.head.load_state_dict(adapted.head.state_dict())
    return ref.eval()


def load_backbone(official: nn.Module, backbone_state: dict, extra: Sequence[str]) -> None:
    """``backbone_state`` into ``official``: every tensor of the official model is given but those whose
    name contains one of ``extra`` (the method's own), and nothing else is; else ``LoadError``."""
    result = official.load_state_dict(backbone_state, strict=False)
    missing = [k for k in result.missing_keys if not any(e in k for e in extra)]
    if missing or result.unexpected_keys:
        raise LoadError(f"backbone tensors do not fit the official model: missing {missing}, "
                        f"unexpected {result.unexpected_keys}")


def run(doc: str, repository: str, files: Sequence[str], ours: str, body: Callable[[Path, Report], None],
        argv: list[str] | None = None) -> int:
    """Parse ``--repo``, check it, print the header, run ``body`` (which loads the official files and adds
    rows; a ``LoadError`` it raises is one line and exit 1), print the table; the exit status."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repo", required=True, type=Path, help=f"a checkout of {repository}")
    args = parser.parse_args(argv)
    repo = require(args.repo, files, repository)
    torch.set_num_threads(1)
    import timm

    print(f"official code: {repository} at {commit_of(repo) or '(commit unknown: not a git checkout)'} ({repo})")
    print(f"ours: {ours}; torch {torch.__version__}, timm {timm.__version__}; fp32, CPU, one thread\n")
    report = Report()
    try:
        body(repo, report)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        report.print()
        return 1
    return report.print()
