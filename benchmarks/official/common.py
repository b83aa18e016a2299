"""What the comparison scripts share: the report table, the demo ViT, inputs, the logit comparison
in eval and train mode, the ViT-B/16 count, our search space, and the command line (``--repo``, or one
option per checkout; the header with the official commits; the exit status: 0 when every check ran
and passed, 1 otherwise, 2 from ``load.require`` when a checkout is not of the official repository)."""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
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


def compare_eval(report: Report, label: str, model: nn.Module, ref: nn.Module, x: torch.Tensor, base: nn.Module,
                 tol: float, acts: str = "", official: str = "official") -> torch.Tensor:
    """One row: the eval logits of ``model`` (ours) against ``ref``'s (the official model), which must move
    over 1e-2 from ``base``'s with ``model``'s head (the method acts; ``acts`` says so after the measured
    move); ``official``: how the row names ``ref``. Returns ``ref``'s logits."""
    with torch.no_grad():
        theirs = ref.eval()(x)
        moved = max_diff(theirs, with_head_of(base, model)(x))
        report.diff(f"{label}, eval: logits ours vs {official} (official vs the backbone: {moved:.1e}"
                    f"{', ' + acts if acts else ''})", max_diff(model.eval()(x), theirs), tol, ok=moved > 1e-2)
    return theirs


def compare_train(report: Report, label: str, model: nn.Module, ref: nn.Module, x: torch.Tensor, tol: float,
                  acts: str = "", stochastic: bool = True) -> None:
    """One row: the train-mode logits of ``model`` against ``ref``'s under one seed (5 before each: the
    same dropout / drop-path masks); another seed (6) must move ``model``'s over 1e-3 when ``stochastic``
    (the randomness acts; ``acts`` says what, after the measured move), not at all otherwise (no
    randomness in train mode). Leaves both in train mode."""
    with torch.no_grad():
        torch.manual_seed(5)
        ours = model.train()(x)
        torch.manual_seed(5)
        theirs = ref.train()(x)
        torch.manual_seed(6)
        other = max_diff(model(x), ours)
        report.diff(f"{label}, train mode, one seed: logits ours vs official (another seed moves ours by {other:.1e}"
                    f"{': ' + acts if acts else ''})", max_diff(ours, theirs), tol,
                    ok=other > 1e-3 if stochastic else other == 0)


def compare_logits(report: Report, label: str, model: nn.Module, ref: nn.Module, x: torch.Tensor, base: nn.Module,
                   tol: float, acts: tuple[str, str] = ("", ""), official: str = "official",
                   stochastic: bool = True) -> None:
    """``compare_eval`` then ``compare_train`` (``acts``: what each row says acts)."""
    compare_eval(report, label, model, ref, x, base, tol, acts[0], official)
    compare_train(report, label, model, ref, x, tol, acts[1], stochastic)


def vit_b_count(method: str, **hparams) -> int:
    """Our trainable count (the head left out) of ``method`` with ``hparams`` on ViT-B/16, 100 classes."""
    import methods
    from bench.backbones import create_meta

    return methods.count_trainable(methods.get(method).apply(create_meta("vit_base_patch16_224"), num_classes=100,
                                                             **hparams))


def vit_b() -> nn.Module:
    """ViT-B/16 on the meta device (shapes only), for an official method to be set on."""
    from bench.backbones import create_meta

    return create_meta("vit_base_patch16_224")


def check_vit_b_count(report: Report, label: str, theirs: nn.Module, marker: str, method: str, **hparams) -> None:
    """One row: the official count, every tensor of ``theirs`` (the official method on ViT-B/16) whose
    name holds ``marker``, = ``vit_b_count(method, **hparams)``."""
    counted = sum(p.numel() for n, p in theirs.named_parameters() if marker in n)
    ours = vit_b_count(method, **hparams)
    report.add(label, f"{counted:,} / {ours:,}", counted == ours)


def search_space(method: str) -> dict[str, list]:
    """The choices of each hyperparameter of our ``method``'s search space, in its order (optuna quiet)."""
    import optuna

    import methods

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    methods.get(method).search_space(trial)
    return {k: list(d.choices) for k, d in trial.distributions.items()}


def load_backbone(official: nn.Module, backbone_state: dict, extra: Sequence[str]) -> None:
    """``backbone_state`` into ``official``: every tensor of the official model is given but those whose
    name contains one of ``extra`` (the method's own), and nothing else is; else ``LoadError``."""
    result = official.load_state_dict(backbone_state, strict=False)
    missing = [k for k in result.missing_keys if not any(e in k for e in extra)]
    if missing or result.unexpected_keys:
        raise LoadError(f"backbone tensors do not fit the official model: missing {missing}, "
                        f"unexpected {result.unexpected_keys}")


def run(doc: str, repository: str, files: Sequence[str], ours: str, body: Callable[[Path, Report], None],
        argv: list[str] | None = None, old_timm: bool = False) -> int:
    """``run_checkouts`` with one checkout, ``--repo``."""
    return run_checkouts(doc, {"repo": (repository, files)}, ours, body, argv, old_timm)


def run_checkouts(doc: str, checkouts: dict[str, tuple[str, Sequence[str]]], ours: str,
                  body: Callable[..., None], argv: list[str] | None = None, old_timm: bool = False) -> int:
    """Parse ``--<option>`` for each of ``checkouts`` (option: (repository, the files it must have)),
    check each, print the header, run ``body(*paths, report)`` (the checkouts in that order; it loads
    the official files and adds rows; a ``LoadError`` it raises is one line and exit 1), print the
    table; the exit status. ``old_timm``: timm's FutureWarnings are not shown (the checkouts import
    timm's old paths)."""
    if old_timm:
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")  # the checkouts' old import paths
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for option, (repository, _) in checkouts.items():
        parser.add_argument(f"--{option}", required=True, type=Path, help=f"a checkout of {repository}")
    args = parser.parse_args(argv)
    repos = [require(getattr(args, option), files, repository) for option, (repository, files) in checkouts.items()]
    torch.set_num_threads(1)
    import timm

    for (repository, _), repo in zip(checkouts.values(), repos):
        print(f"official code: {repository} at {commit_of(repo) or '(commit unknown: not a git checkout)'} ({repo})")
    print(f"ours: {ours}; torch {torch.__version__}, timm {timm.__version__}; fp32, CPU, one thread\n")
    report = Report()
    try:
        body(*repos, report)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        report.print()
        return 1
    return report.print()
