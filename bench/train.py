"""The training loop shared by tuning trials, final fits and `bench perf`.

One recipe for every method (so numbers are comparable): AdamW with weight decay where each
method's official code applies it (``Method.decays``), a per-step cosine schedule with linear warmup
(timm's scheduler), bf16 autocast on GPU, deterministic seeding, one tqdm bar per run.
A head-only model (the linear probe) trains on backbone features computed once per split.
"""
from __future__ import annotations

import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
import torch.utils.data
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

import methods


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
    compile: bool = False
    desc: str = ""
    checkpoint: str | None = None  # save every epoch here and resume from it (preemptible GPU jobs)
    # A paper recipe's schedule (``bench.recipes``), None for the tuned protocol's: timm's
    # ``create_scheduler`` as the official codes run it (see ``lr_schedule``).
    paper_schedule: "PaperSchedule | None" = None
    drop_path_rate: float = 0.0  # timm's stochastic depth, linearly increasing over the blocks
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


def resolve_device(name: str) -> str:
    from .errors import UserError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return name


def peak_memory_mb(device: str) -> float:
    """CUDA max allocated on GPU; the process's peak resident set on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


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


def set_drop_path(model: nn.Module, rate: float) -> None:
    """timm's stochastic depth on every block, rising linearly from 0 to ``rate`` at the last
    block (``torch.linspace(0, rate, depth)``, as timm's models set ``drop_path_rate``), on each
    residual branch (``drop_path1`` / ``drop_path2``), through any wrapper a method put around a block."""
    from timm.layers import DropPath

    from methods.families import layout_of

    blocks = layout_of(model).blocks
    rates = torch.linspace(0, rate, len(blocks)).tolist()
    for path, r in zip(blocks, rates):
        for name, _ in list(model.get_submodule(path).named_modules()):
            leaf = name.rpartition(".")[2]
            if leaf in ("drop_path1", "drop_path2"):
                parent = model.get_submodule(f"{path}.{name}".rpartition(".")[0])
                setattr(parent, leaf, DropPath(r) if r > 0 else nn.Identity())


def head_only(model: nn.Module) -> bool:
    """True when only the classifier head trains (linear probe): features can be cached."""
    return methods.count_trainable(model, exclude_head=True) == 0


def autocast(device: str):
    """bf16 autocast on GPU; a no-op context on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


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
def extract_features(model: nn.Module, ds: Dataset, batch_size: int, device: str, workers: int = 0) -> "FeatureDataset":
    """Pre-logit features of the frozen backbone, computed once per split for the linear probe."""
    model.eval()
    feats, labels = [], []
    for x, y in _loader(ds, batch_size * 4, False, 0, workers, device):
        with autocast(device):
            f = model.forward_head(model.forward_features(x.to(device, non_blocking=True)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return FeatureDataset(torch.cat(feats), torch.cat(labels))


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int, device: str, workers: int = 0,
             features: bool = False) -> tuple[float, float]:
    """(top-1 accuracy in percent, images per second). ``features``: ds holds cached features."""
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    for x, y in _loader(ds, batch_size * 4, False, 0, workers, device):
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        with autocast(device):
            logits = model.head(x) if features else model(x)
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    seconds = time.perf_counter() - start
    return 100.0 * correct / max(total, 1), total / max(seconds, 1e-9)


def _trainable_state(model: nn.Module) -> dict:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(path: str, model: nn.Module, optimizer, generator: torch.Generator, **progress) -> None:
    """Trainable tensors, optimizer and RNG states after an epoch; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), **progress}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: str, model: nn.Module, optimizer, generator: torch.Generator) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state


def train_step(step_fn, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: str) -> torch.Tensor:
    """One optimizer step; returns the detached loss without a host sync (the caller checks it
    for NaN/inf every few steps, so the GPU never waits on the CPU)."""
    with autocast(device):
        loss = F.cross_entropy(step_fn(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


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
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall_start = time.perf_counter()
    model.to(device)
    if device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    features = head_only(model)
    extract_seconds = 0.0
    if features:  # linear probe: one backbone pass per split, then train the head alone
        start = time.perf_counter()
        train_ds = extract_features(model, train_ds, cfg.batch_size, device, cfg.workers)
        extract_seconds = time.perf_counter() - start  # counted in its training time (throughput)
        if eval_ds is not None:
            eval_ds = extract_features(model, eval_ds, cfg.batch_size, device, cfg.workers)
    step_fn = model.head if features else model
    if cfg.drop_path_rate:
        set_drop_path(model, cfg.drop_path_rate)
    if cfg.zero_head:
        with torch.no_grad():
            for p in model.get_classifier().parameters():
                p.zero_()
    if cfg.compile:
        step_fn = torch.compile(step_fn)

    loader = _loader(train_ds, cfg.batch_size, True, cfg.seed, 0 if features else cfg.workers, device)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    scheduler = lr_schedule(optimizer, cfg, steps_per_epoch)
    per_epoch = cfg.paper_schedule is not None and cfg.paper_schedule.per_epoch
    result = FitResult()
    train_seconds = extract_seconds
    images = 0
    step = 0
    start_epoch = 0
    if cfg.checkpoint and Path(cfg.checkpoint).is_file():
        state = _load_checkpoint(cfg.checkpoint, model, optimizer, loader.generator)
        start_epoch, step = state["epoch"] + 1, state["step"]
        result.history, train_seconds, images = state["history"], state["train_seconds"], state["images"]
        if not per_epoch:
            scheduler.step_update(step)
    bar = tqdm(total=total_steps, initial=step, desc=cfg.desc or "train", leave=False, disable=None,
               dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if per_epoch:
                # the official loops (RLRR train_*.py, NOAH supernet_train_prompt.py) call
                # ``scheduler.step(epoch)`` after epoch ``epoch``: epoch k trains at the lr of k - 1
                scheduler.step(max(epoch - 1, 0))
            model.train()
            epoch_start = time.perf_counter()
            loss_sum, seen, data_wait = torch.zeros((), device=device), 0, 0.0
            ready = time.perf_counter()
            for i, (x, y) in enumerate(loader, 1):
                data_wait += time.perf_counter() - ready  # time the step waited for its batch
                x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
                lr_used = optimizer.param_groups[0]["lr"]
                loss_sum += train_step(step_fn, optimizer, x, y, device).float() * y.numel()
                seen += y.numel()
                step += 1
                if not per_epoch:
                    scheduler.step_update(step)
                bar.update(1)
                if i % CHECK_EVERY == 0 or i == steps_per_epoch:
                    mean_loss = loss_sum.item() / seen
                    if not math.isfinite(mean_loss):
                        raise Diverged(f"loss is {mean_loss} at epoch {epoch + 1}, step {step}")
                    bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
                ready = time.perf_counter()
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            images += seen
            metrics = {"train_loss": mean_loss, "lr": lr_used,  # the lr of the epoch's last step
                       "data_wait_frac": data_wait / max(epoch_seconds, 1e-9)}
            last = epoch == cfg.epochs - 1
            if eval_ds is not None and (eval_every_epoch or last):
                acc, ips = evaluate(model, eval_ds, cfg.batch_size, device, cfg.workers, features)
                metrics["eval_acc"] = acc
                result.eval_acc, result.eval_img_per_s = acc, ips
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", acc=f"{acc:.1f}")
            result.history.append(metrics)
            if cfg.checkpoint and epoch < cfg.epochs - 1:
                _save_checkpoint(cfg.checkpoint, model, optimizer, loader.generator, epoch=epoch, step=step,
                                 history=result.history, train_seconds=train_seconds, images=images)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    finally:
        bar.close()
    if cfg.checkpoint:
        Path(cfg.checkpoint).unlink(missing_ok=True)
    result.train_img_per_s = images / max(train_seconds, 1e-9)
    # on GPU the run's own peak (reset above); on CPU a process's peak RSS spans every run it made,
    # so it says nothing about this one (`bench perf` measures each method in its own process)
    result.peak_mem_mb = peak_memory_mb(device) if device.startswith("cuda") else None
    result.wall_s = time.perf_counter() - wall_start
    return result
