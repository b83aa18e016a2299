"""Checkpoints of a fit, one per epoch, so a preempted job resumes mid-run: trainable tensors,
optimizer and RNG states, the method's own state between steps (``Method.fit_state``: AdaLoRA's
rank allocator) and the fit's progress, as tensors and plain values only (read back with
``weights_only=True``: a checkpoint can never run code), written atomically with their SHA-256
beside them and checked, all or nothing, before anything is restored."""
from __future__ import annotations

import dataclasses
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .files import atomic_write_bytes


def _trainable_state(model: nn.Module) -> dict:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class Progress:
    """How far a fit has got: what a checkpoint saves after each epoch and a resume starts from."""
    epoch: int = -1  # the last finished epoch
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)  # the finished epochs' metrics
    train_seconds: float = 0.0  # training time (the linear probe's feature extraction included)
    images: int = 0  # training images seen


class BadCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message says why, in a few words."""


# fit_state: the method's own state between steps (``Method.fit_state``: AdaLoRA's importance scores)
CHECKPOINT_KEYS = ("model", "optimizer", "generator", "torch_rng", "fit_state",
                   *(f.name for f in dataclasses.fields(Progress)))


def save_checkpoint(path: str, model: nn.Module, optimizer, generator: torch.Generator, progress: Progress,
                    fit_state: dict | None = None) -> None:
    """Trainable tensors, optimizer and RNG states after an epoch, and the method's ``fit_state``:
    tensors and plain values only (read back with ``weights_only=True``, so a checkpoint can never
    run code), written atomically, with its SHA-256 beside it (``<name>.sha256``, checked before it
    is read)."""
    from .data.decoded_cache import write_checksum

    buffer = io.BytesIO()  # serialised in memory, written by Python: a full disk is an OSError (ENOSPC),
    torch.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),  # not torch's RuntimeError
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "fit_state": fit_state or {}, **dataclasses.asdict(progress)}, buffer)
    data = buffer.getvalue()
    # the checksum first: a crash between the two writes leaves a mismatch, i.e. a restart
    write_checksum(path, of=data)
    atomic_write_bytes(Path(path), data)


def load_checkpoint(path: str, model: nn.Module, optimizer, generator: torch.Generator, epochs: int,
                    steps_per_epoch: int, load_fit_state: Callable[[dict], None] | None = None) -> dict:
    """Restore what ``save_checkpoint`` saved, all or nothing: ``BadCheckpoint`` (and nothing
    changed) when the file does not match its checksum, holds anything but tensors and plain
    values, or does not fit this fit (its parameters, its epochs and steps, its method's state:
    ``load_fit_state`` restores that or raises ValueError; without it the state must be empty)."""
    import pickle

    from .data.decoded_cache import checksum_problem
    from .errors import first_line

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadCheckpoint(f"it cannot be read ({exc.strerror or exc})") from None
    problem = checksum_problem(path, data)
    if problem:
        raise BadCheckpoint(problem)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadCheckpoint("it holds objects other than tensors and plain values (not loaded: they could "
                             "run code)") from None
    except Exception as exc:  # a corrupt zip, a truncated record ...: torch raises many types
        raise BadCheckpoint(f"it cannot be read ({first_line(exc, 120)})") from None
    _check(state, model, generator, epochs, steps_per_epoch)
    before = optimizer.state_dict()
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:
        optimizer.load_state_dict(before)
        raise BadCheckpoint(f"it holds another optimizer's state ({first_line(exc, 120)})") from None
    try:  # last of what can fail: it changes nothing when it raises
        _load_fit_state(state.get("fit_state", {}), load_fit_state)
    except ValueError as exc:
        optimizer.load_state_dict(before)
        raise BadCheckpoint(f"it holds another method's state ({first_line(exc, 120)})") from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _check(state, model: nn.Module, generator: torch.Generator, epochs: int, steps_per_epoch: int) -> None:
    """``BadCheckpoint`` unless ``state`` is what ``save_checkpoint`` writes for this model and fit."""
    if not isinstance(state, dict) or set(state) not in (set(CHECKPOINT_KEYS), set(CHECKPOINT_KEYS) - {"fit_state"}):
        raise BadCheckpoint("it is not a checkpoint of this tool")  # (written before fit_state: a method without one)
    trainable = _trainable_state(model)
    saved = state["model"]
    if (not isinstance(saved, dict) or set(saved) != set(trainable)
            or any(not isinstance(v, torch.Tensor) or v.shape != trainable[k].shape for k, v in saved.items())):
        raise BadCheckpoint("it holds the tensors of another model")
    for key, like in (("generator", generator.get_state()), ("torch_rng", torch.get_rng_state())):
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.dtype != like.dtype or value.shape != like.shape:
            raise BadCheckpoint(f"it holds no valid {key} state")
    epoch, step, history = state["epoch"], state["step"], state["history"]
    if not (isinstance(epoch, int) and -1 <= epoch < epochs - 1 and step == (epoch + 1) * steps_per_epoch
            and isinstance(history, list) and len(history) == epoch + 1
            and all(isinstance(h, dict) for h in history) and isinstance(state["images"], int)
            and isinstance(state["train_seconds"], (int, float))):
        raise BadCheckpoint(f"it does not fit this fit of {epochs} epochs of {steps_per_epoch} steps")


def _load_fit_state(state, load: Callable[[dict], None] | None) -> None:
    if not isinstance(state, dict):
        raise ValueError("not a dict")
    if load is not None:
        load(state)
    elif state:
        raise ValueError(f"no method state expected, found {sorted(state)}")


def resume(path: str | None, model: nn.Module, optimizer, generator: torch.Generator, epochs: int,
           steps_per_epoch: int, load_fit_state: Callable[[dict], None] | None = None) -> Progress | None:
    """The progress saved in the checkpoint at ``path``, with the trainable tensors, optimizer, RNG
    states and the method's fit state restored to where it was saved; None when there is no
    checkpoint, or (with one warning line, the file removed) when it cannot be used: the fit starts
    afresh."""
    if not path or not Path(path).is_file():
        return None
    try:
        state = load_checkpoint(path, model, optimizer, generator, epochs, steps_per_epoch, load_fit_state)
    except BadCheckpoint as exc:
        from .data.decoded_cache import remove_with_checksum

        print(f"warning: checkpoint {path} not used: {exc}; the fit restarts from scratch", file=sys.stderr, flush=True)
        remove_with_checksum(path)
        return None
    return Progress(**{f.name: state[f.name] for f in dataclasses.fields(Progress)})
