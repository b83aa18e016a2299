"""The training loop shared by tuning trials, final fits and `bench perf`.

One recipe for every method (so numbers are comparable): AdamW with weight decay where each
method's official code applies it (``Method.decays``), a per-step cosine schedule with linear warmup
(timm's scheduler), autocast in the run's precision (``--precision``), deterministic seeding, one
tqdm bar per run. A head-only model (the linear probe) trains on backbone features computed once per split.
A method's per-step hooks (``Method.begin_fit``, ``extra_loss``, ``after_step``: AdaLoRA's rank budget and
regulariser) run in every fit; their state is in its checkpoints (``Method.fit_state``).
"""
from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

import methods
# timm's stochastic depth and RLRR's residual dropout, by the backbone family's layout
from methods.families import set_drop_path, set_residual_dropout

from .checkpoints import Progress, resume, save_checkpoint
from .compiled import compile_step, compiles
from .device import autocast, peak_memory_mb, start_measuring
from .steps import method_step

CHECK_EVERY = 25  # steps between NaN/inf checks of the running loss (each one syncs the GPU)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    compile: bool = False  # torch.compile the step (not for a method with ``compiles = False``)
    precision: str | None = None  # "fp32" | "bf16" autocast; None: the device's default
    desc: str = ""
    checkpoint: str | None = None  # save every epoch here and resume from it (preemptible GPU jobs)
    # A paper recipe's schedule (``bench.recipes``), None for the tuned protocol's: timm's
    # ``create_scheduler`` as the official codes run it (see ``lr_schedule``).
    paper_schedule: "PaperSchedule | None" = None
    drop_path_rate: float = 0.0  # timm's stochastic depth, linearly increasing over the blocks
    residual_dropout: float = 0.0  # RLRR's "drop_path": element-wise dropout on the residual branches, rising likewise
    zero_head: bool = False  # the head starts at zero (RLRR's zero_head=True)


@dataclass(frozen=True)
class PaperSchedule:
    """The lr schedule of an official training script: timm's ``create_scheduler`` (cosine over
    ``cosine_epochs`` with the warmup counted inside it, from ``warmup_lr``; ``min_lr`` at its end
    and during the cool-down epochs the fit adds after it) or, with ``restart_epochs``, a cosine
    restarting every that many epochs (torch's ``CosineAnnealingWarmRestarts``, which timm's
    cosine reproduces with cycles). ``per_epoch``: the lr changes once per epoch."""
    cosine_epochs: int
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    restart_epochs: int = 0
    per_epoch: bool = True


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    eval_acc: float | None = None                       # percent, on the eval split, last epoch
    train_img_per_s: float = 0.0
    eval_img_per_s: float = 0.0
    peak_mem_mb: float | None = None
    wall_s: float = 0.0


def seed_everything(seed: int) -> None:
    """Same seed and data give the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    """AdamW over trainable tensors; ``weight_decay`` only where the model's method decays them
    (``Method.decays``: the rule of the method's official code), none elsewhere."""
    method = methods.get(model.peft_method)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if method.decays(model, n, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr,
                             fused=device.startswith("cuda"))


def cosine_schedule(optimizer, lr: float, total_steps: int, warmup_steps: int) -> CosineLRScheduler:
    """Linear warmup for ``warmup_steps``, then a cosine that reaches 0 at step ``total_steps``:
    with ``warmup_prefix`` timm runs the cosine for ``t_initial`` steps AFTER the warmup, so the
    whole schedule lasts warmup + t_initial = total steps (as the official RLRR code reaches its
    minimum within its budget). Stepped once per optimizer step (``step_update``)."""
    warmup_steps = min(warmup_steps, total_steps - 1)
    return CosineLRScheduler(optimizer, t_initial=max(total_steps - warmup_steps, 1), lr_min=0.0,
                             warmup_t=warmup_steps, warmup_lr_init=lr * 1e-3 if warmup_steps else lr,
                             warmup_prefix=True, t_in_epochs=False)


def lr_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """The fit's scheduler: the tuned protocol's ``cosine_schedule`` over the whole run, or the
    paper recipe's (``cfg.paper_schedule``), in epochs when it steps per epoch (``t_in_epochs``)."""
    paper = cfg.paper_schedule
    if paper is None:
        return cosine_schedule(optimizer, cfg.lr, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
    unit = 1 if paper.per_epoch else steps_per_epoch
    cycle = paper.restart_epochs or paper.cosine_epochs
    return CosineLRScheduler(optimizer, t_initial=cycle * unit, lr_min=paper.min_lr,
                             warmup_t=paper.warmup_epochs * unit, warmup_lr_init=paper.warmup_lr,
                             cycle_limit=10**6 if paper.restart_epochs else 1, t_in_epochs=paper.per_epoch)


def head_only(model: nn.Module) -> bool:
    """True when only the classifier head trains (linear probe): features can be cached."""
    return methods.count_trainable(model, exclude_head=True) == 0


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, workers: int, device: str) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    if getattr(ds, "batchable", False):
        ds = _WholeBatches(ds)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers,
                      pin_memory=device.startswith("cuda"), persistent_workers=workers > 0,
                      drop_last=False, collate_fn=_collate)


class _Batch(tuple):
    """``(inputs, labels)`` already stacked by ``_WholeBatches``."""


class _WholeBatches(Dataset):
    """Serves a dataset with ``get_batch`` a batch per fetch (DataLoader calls ``__getitems__``)
    instead of one sample at a time: the per-sample overhead would dominate small images."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index):
        return self.ds[index]

    def __getitems__(self, indices: list[int]) -> _Batch:
        return _Batch(self.ds.get_batch(indices))


def _collate(samples):
    return tuple(samples) if isinstance(samples, _Batch) else torch.utils.data.default_collate(samples)


class FeatureDataset(TensorDataset):
    """Cached backbone features; batchable, so served by whole batches (one index op each)."""

    batchable = True

    def get_batch(self, indices) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


@torch.no_grad()
def extract_features(model: nn.Module, ds: Dataset, batch_size: int, device: str, workers: int = 0,
                     precision: str | None = None) -> "FeatureDataset":
    """Pre-logit features of the frozen backbone, computed once per split for the linear probe."""
    model.eval()
    feats, labels = [], []
    for x, y in _loader(ds, batch_size * 4, False, 0, workers, device):
        with autocast(device, precision):
            f = model.forward_head(model.forward_features(x.to(device, non_blocking=True)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return FeatureDataset(torch.cat(feats), torch.cat(labels))


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int, device: str, workers: int = 0, features: bool = False,
             precision: str | None = None) -> tuple[float, float]:
    """(top-1 accuracy in percent, images per second). ``features``: ds holds cached features."""
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    for x, y in _loader(ds, batch_size * 4, False, 0, workers, device):
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        with autocast(device, precision):
            logits = model.head(x) if features else model(x)
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    seconds = time.perf_counter() - start
    return 100.0 * correct / max(total, 1), total / max(seconds, 1e-9)


class _LrSteps:
    """The fit's scheduler (``lr_schedule``), stepped as its schedule says: after every optimizer
    step (``step_update``), or, for a paper recipe's per-epoch schedule, once as each epoch starts."""

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.scheduler = lr_schedule(optimizer, cfg, steps_per_epoch)
        self.per_epoch = cfg.paper_schedule is not None and cfg.paper_schedule.per_epoch

    def start_epoch(self, epoch: int) -> None:
        if self.per_epoch:
            # the official loops (RLRR train_*.py, NOAH supernet_train_prompt.py) call
            # ``scheduler.step(epoch)`` after epoch ``epoch``: epoch k trains at the lr of k - 1
            self.scheduler.step(max(epoch - 1, 0))

    def after_step(self, step: int) -> None:
        """The lr for the step after optimizer step number ``step`` (also where a resume starts)."""
        if not self.per_epoch:
            self.scheduler.step_update(step)


def _to_device(model: nn.Module, device: str) -> None:
    model.to(device)
    if device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)


def _feature_cache(model: nn.Module, train_ds: Dataset, eval_ds: Dataset | None,
                   cfg: TrainConfig) -> tuple[Dataset, Dataset | None, float]:
    """The linear probe's splits as backbone features (one backbone pass per split), and the
    seconds the train split's pass took: counted in the probe's training time (its throughput)."""
    start = time.perf_counter()
    train_ds = extract_features(model, train_ds, cfg.batch_size, cfg.device, cfg.workers, cfg.precision)
    extract_seconds = time.perf_counter() - start
    if eval_ds is not None:
        eval_ds = extract_features(model, eval_ds, cfg.batch_size, cfg.device, cfg.workers, cfg.precision)
    return train_ds, eval_ds, extract_seconds


def _step_fn(model: nn.Module, cfg: TrainConfig, features: bool) -> nn.Module:
    """What each optimizer step calls: the head alone on cached features, else the whole model
    (compiled with ``cfg.compile`` unless its method cannot be: ``bench.compiled``); applies the
    recipe's stochastic depth (or residual dropout) and zeroed head first."""
    step_fn = model.head if features else model
    if cfg.drop_path_rate and cfg.residual_dropout:
        raise ValueError("drop_path_rate and residual_dropout both replace the blocks' drop_path1/drop_path2: set one")
    if cfg.drop_path_rate:
        set_drop_path(model, cfg.drop_path_rate)
    if cfg.residual_dropout:
        set_residual_dropout(model, cfg.residual_dropout)
    if cfg.zero_head:
        with torch.no_grad():
            for p in model.get_classifier().parameters():
                p.zero_()
    return compile_step(step_fn, model.peft_method) if compiles(model, cfg.compile) else step_fn


def _mean_loss(loss_sum: torch.Tensor, seen: int, epoch: int, step: int) -> float:
    """The epoch's mean training loss so far (a host sync); ``Diverged`` when it is not finite."""
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):
        raise Diverged(f"loss is {mean_loss} at epoch {epoch + 1}, step {step}")
    return mean_loss


def _train_epoch(model: nn.Module, step_fn, loader: DataLoader, optimizer, lr: _LrSteps, bar,
                 progress: Progress, epoch: int, device: str, precision: str | None = None) -> dict:
    """Train one epoch; counts it into ``progress`` and returns its metrics: the mean training loss
    (checked every ``CHECK_EVERY`` steps and at the end; with the method's ``extra_loss``), the lr of
    its last step and the fraction of its time its steps waited for their batches. The method's
    ``after_step`` follows every optimizer step."""
    method = methods.get(model.peft_method)
    lr.start_epoch(epoch)
    model.train()
    epoch_start = time.perf_counter()
    steps_per_epoch = len(loader)
    loss_sum, seen, data_wait = torch.zeros((), device=device), 0, 0.0
    ready = time.perf_counter()
    for i, (x, y) in enumerate(loader, 1):
        data_wait += time.perf_counter() - ready  # time the step waited for its batch
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        lr_used = optimizer.param_groups[0]["lr"]
        loss = method_step(method, model, step_fn, optimizer, x, y, device, precision, progress.step + 1)
        loss_sum += loss.float() * y.numel()
        seen += y.numel()
        progress.step += 1
        lr.after_step(progress.step)
        bar.update(1)
        if i % CHECK_EVERY == 0 or i == steps_per_epoch:
            mean_loss = _mean_loss(loss_sum, seen, epoch, progress.step)
            bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
        ready = time.perf_counter()
    epoch_seconds = time.perf_counter() - epoch_start
    progress.epoch = epoch
    progress.train_seconds += epoch_seconds
    progress.images += seen
    return {"train_loss": mean_loss, "lr": lr_used,  # the lr of the epoch's last step
            "data_wait_frac": data_wait / max(epoch_seconds, 1e-9)}


def _measured(result: FitResult, progress: Progress, device: str, wall_start: float) -> FitResult:
    """``result`` with the fit's training throughput, peak memory and wall time."""
    result.train_img_per_s = progress.images / max(progress.train_seconds, 1e-9)
    # on GPU the run's own peak (reset at its start); on CPU a process's peak RSS spans every run it
    # made, so it says nothing about this one (`bench perf` measures each method in its own process)
    result.peak_mem_mb = peak_memory_mb(device) if device.startswith("cuda") else None
    result.wall_s = time.perf_counter() - wall_start
    return result


def fit(model: nn.Module, train_ds: Dataset, cfg: TrainConfig, eval_ds: Dataset | None = None,
        eval_every_epoch: bool = False,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train ``model`` in place by ``cfg``; evaluate on ``eval_ds`` after every epoch
    (``eval_every_epoch``, for pruning on the validation split) or only after the last one.

    ``on_epoch(epoch, metrics)`` is called after each epoch (it may raise, e.g. optuna.TrialPruned).
    Raises ``Diverged`` as soon as the loss is not finite.
    """
    device = cfg.device
    seed_everything(cfg.seed)
    wall_start = start_measuring(device)
    _to_device(model, device)
    method = methods.get(model.peft_method)
    if method.needs_training_data:  # GPS, SPT: choose what trains from a pass over this fit's training split only
        # shuffled by the fit's seed (GPS), or in the split's order (SPT's SequentialSampler)
        batches = _loader(train_ds, cfg.batch_size, not method.select_in_order, cfg.seed, cfg.workers, device)
        method.select(model, ((x.to(device), torch.as_tensor(y).to(device)) for x, y in batches), cfg.seed)
    features = head_only(model)
    extract_seconds = 0.0
    if features:  # linear probe: one backbone pass per split, then train the head alone
        train_ds, eval_ds, extract_seconds = _feature_cache(model, train_ds, eval_ds, cfg)
    step_fn = _step_fn(model, cfg, features)
    loader = _loader(train_ds, cfg.batch_size, True, cfg.seed, 0 if features else cfg.workers, device)
    method.begin_fit(model, cfg.epochs * len(loader))  # AdaLoRA: its budget schedule spans the fit's steps
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    lr = _LrSteps(optimizer, cfg, len(loader))
    progress = resume(cfg.checkpoint, model, optimizer, loader.generator, cfg.epochs, len(loader),
                      functools.partial(method.load_fit_state, model))
    if progress is not None:
        lr.after_step(progress.step)  # the lr of the step after the saved ones
    progress = progress or Progress(train_seconds=extract_seconds)
    result = FitResult(history=progress.history)
    bar = tqdm(total=cfg.epochs * len(loader), initial=progress.step, desc=cfg.desc or "train", leave=False,
               disable=None, dynamic_ncols=True)
    try:
        for epoch in range(progress.epoch + 1, cfg.epochs):
            metrics = _train_epoch(model, step_fn, loader, optimizer, lr, bar, progress, epoch, device, cfg.precision)
            if eval_ds is not None and (eval_every_epoch or epoch == cfg.epochs - 1):
                result.eval_acc, result.eval_img_per_s = evaluate(model, eval_ds, cfg.batch_size, device,
                                                                  cfg.workers, features, cfg.precision)
                metrics["eval_acc"] = result.eval_acc
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", acc=f"{result.eval_acc:.1f}")
            progress.history.append(metrics)
            if cfg.checkpoint and epoch < cfg.epochs - 1:
                save_checkpoint(cfg.checkpoint, model, optimizer, loader.generator, progress, method.fit_state(model))
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    finally:
        bar.close()
    if cfg.checkpoint:
        from .data.decoded_cache import remove_with_checksum

        remove_with_checksum(cfg.checkpoint)
    return _measured(result, progress, device, wall_start)
