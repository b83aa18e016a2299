"""`bench run --dry-run`: the plan (studies, trials, final fits) and what it will cost, estimated
from throughput measured now on this machine with the run's backbone. Nothing is written."""
from __future__ import annotations

import torch

import methods

from ..device import autocast, seconds_per_call
from ..steps import method_steps
from ..train import head_only, make_optimizer


def _rates(method: str, hparams: dict, base, device: str, batch: int, steps: int,
           image_size: int, precision: str | None = None) -> tuple[float, float, bool]:
    """(train img/s, forward-only img/s, head-only?) of one method on random images of the
    suite's size (not the model's own: DINOv2 is built for 518 px and run at 224)."""
    torch.manual_seed(0)
    model = methods.get(method).apply(base, num_classes=10, **hparams).to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = make_optimizer(model, 1e-4, 0.0, device)

    def forward():
        with torch.no_grad(), autocast(device, precision):
            model(x)

    step = method_steps(model, opt, device, precision)  # the method's per-step hooks included (AdaLoRA)
    train = batch / seconds_per_call(lambda: step(x, y), steps, device, warmup=1)
    model.eval()
    return train, batch / seconds_per_call(forward, steps, device, warmup=1), head_only(model)


def estimate_seconds(spec, method: str, task, n_tune: int, n_val: int, n_final: int, train_rate: float,
                     eval_rate: float, probe: bool) -> float:
    """Seconds for one (method, task): trials x epochs on the tuning split (+ val every epoch),
    seeds x the final fit's epochs (``spec.final_epochs``: a recipe's own) on the final split
    (a recipe runs no trials). A linear probe pays one feature pass per split and run."""
    final_epochs = spec.final_epochs(method, task)
    if probe:
        per_trial = (n_tune + n_val) / eval_rate
        per_final = n_final / eval_rate
    else:
        per_trial = spec.epochs * (n_tune / train_rate + n_val / eval_rate)
        per_final = final_epochs * n_final / train_rate
    return spec.trials * per_trial + len(spec.seeds) * per_final


def print_plan(spec) -> None:
    from tabulate import tabulate

    from ..data import split_size
    from .spec import build_backbone

    s = spec.suite
    sizes = {}
    for task in spec.tasks:  # from the split files (nothing decoded); the test split stays closed
        sizes[task.name] = [split_size(s, task.name, split, data_root=spec.data_root)
                            for split in (s.splits.tune_train, s.splits.tune_val, s.splits.final_train)]
    base = build_backbone(spec)
    cpu_vit = spec.device == "cpu" and spec.backbone != "demo"
    batch, steps = (min(spec.batch_size, 8), 1) if cpu_vit else (spec.batch_size, 3)
    rows, total = [], 0.0
    for method in spec.methods:
        train_rate, eval_rate, probe = _rates(method, spec.fixed.get(method, {}), base, spec.device, batch,
                                              steps, int(s.protocol["image_size"]), spec.precision)
        seconds = sum(estimate_seconds(spec, method, t, *sizes[t.name], train_rate, eval_rate, probe)
                      for t in spec.tasks)
        total += seconds
        rows.append([method, 0 if spec.recipe else len(spec.tasks), spec.trials * len(spec.tasks),
                     len(spec.seeds) * len(spec.tasks),
                     f"{train_rate:,.0f}", f"{eval_rate:,.0f}", f"{seconds / 60:,.1f}"])
    if spec.recipe:
        r = spec.recipe
        epochs = sorted({spec.final_epochs(m, t) for m in spec.methods for t in spec.tasks})
        print(f"Plan: suite {s.name} on {spec.backbone}, recipe {r.name} ({r.repository} at {r.commit[:7]}): no "
              f"tuning; {len(spec.methods)} methods x {len(spec.tasks)} tasks, final fits on seeds "
              f"{', '.join(map(str, spec.seeds))} with the recipe's settings per task "
              f"({'/'.join(map(str, epochs))} epochs); device {spec.device}.")
    else:
        print(f"Plan: suite {s.name} on {spec.backbone}, {len(spec.methods)} methods x {len(spec.tasks)} tasks = "
              f"{len(spec.methods) * len(spec.tasks)} studies of {spec.trials} trials; final fits on seeds "
              f"{', '.join(map(str, spec.seeds))}; {spec.epochs} epochs, batch {spec.batch_size}, "
              f"device {spec.device}.")
    print(tabulate(rows, headers=["method", "studies", "trials", "final fits", "train img/s", "eval img/s",
                                  "est. minutes"], tablefmt="github", disable_numparse=True))
    print(f"Estimated total: {total / 60:,.1f} minutes = {total / 3600:,.2f} {spec.device.split(':')[0].upper()} "
          f"hours on this machine (training and validation; test evaluation, data decoding and tracking "
          f"overhead not included). Resumed work is not subtracted.")
