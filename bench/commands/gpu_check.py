"""`bench gpu-check`: the GPU acceptance run. On a CUDA machine, every method (``--methods``) trains
a few steps on ViT-B/16 (randomly initialised: no download) in bf16 autocast, eagerly and then
compiled (``torch.compile``, as ``--compile`` trains), with the optimizer step of `bench run`
(``bench.steps.method_steps``: the method's per-step hooks included; ``make_optimizer``). Per method it prints and writes
``reports/gpu_check_<device>.md``: images per second eager and compiled, MFU of each against the
device's dense bf16 peak (``bench.device.PEAK_BF16_FLOPS``; FLOPs of one step counted by torch's
FLOP counter), peak memory of each, the compile time and speed-up, and "finished" or the error.

Every method is measured eagerly first (seconds each), then each compiled (compiling takes most
of the time). A method that declares ``compiles = False`` is measured eagerly only and says why.
One whose step fails gets its error in the table and the others still run; the exit code is 1
then. No measurement starts after ``--budget-s`` seconds (540 by default; its row says it did not
run), so the check ends within about 10 minutes. On a machine without CUDA it refuses in one line
(exit 2). What it checks and how its CPU half is tested: docs/performance.md "GPU acceptance".
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import methods

from .. import backbones
from ..device import device_class, peak_flops, peak_memory_mb, seconds_per_call
from ..errors import UserError, first_line
from ..steps import method_steps, train_step
from ..train import make_optimizer

NUM_CLASSES = 100
WARMUP = 2  # untimed steps before each measurement (the compiled one's first step compiles)


@dataclass
class Row:
    method: str
    status: str = "finished"  # "finished", the error's first line, or why it did not run
    eager_img_s: float | None = None
    compiled_img_s: float | None = None
    compile_s: float | None = None  # the first compiled step, compiling included, minus an eager step
    eager_mfu_pct: float | None = None
    compiled_mfu_pct: float | None = None
    eager_mem_mb: float | None = None
    compiled_mem_mb: float | None = None
    flops: float = 0.0  # of one optimizer step (counted where the device's peak is known)
    peak_flops: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.eager_img_s and self.compiled_img_s:
            return self.compiled_img_s / self.eager_img_s
        return None


def _step_flops(model, opt, x, y, device: str, precision: str) -> float:
    """FLOPs of one optimizer step of ``model`` (forward, backward; torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, x, y, device, precision)
    return float(counter.get_total_flops())


def _mfu(flops: float, img_s: float | None, batch_size: int, peak: float | None) -> float | None:
    return 100.0 * flops * img_s / batch_size / peak if peak and img_s else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@functools.lru_cache(maxsize=1)
def _backbone(name: str):
    """``name`` randomly initialised (seed 0), built once: ``apply`` adapts a copy of it."""
    torch.manual_seed(0)
    return backbones.get(name).build(0)


def _setup(name: str, backbone: str, device: str, batch_size: int):
    """(model, optimizer, x, y) of ``name`` on ``backbone`` (randomly initialised), seeded."""
    spec = backbones.get(backbone)
    base = _backbone(backbone)
    torch.manual_seed(0)
    model = methods.get(name).apply(base, num_classes=NUM_CLASSES).to(device).train()
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    return model, make_optimizer(model, 1e-4, 0.0, device), x, y


def measure_eager(name: str, backbone: str, device: str, batch_size: int, steps: int,
                  precision: str = "bf16") -> Row:
    """``name``'s row with its eager figures (and its step's FLOPs, for the compiled MFU)."""
    row = Row(name)
    model, opt, x, y = _setup(name, backbone, device, batch_size)
    row.peak_flops = peak_flops(device)
    row.flops = _step_flops(model, opt, x, y, device, precision) if row.peak_flops else 0.0
    _reset_peak(device)
    step = method_steps(model, opt, device, precision)  # the method's per-step hooks included (AdaLoRA)
    seconds = seconds_per_call(lambda: step(x, y), steps, device, WARMUP)
    row.eager_img_s, row.eager_mem_mb = batch_size / seconds, _gpu_peak(device)
    row.eager_mfu_pct = _mfu(row.flops, row.eager_img_s, batch_size, row.peak_flops)
    if not methods.get(name).compiles:
        row.status = f"finished eagerly only: {methods.get(name).compile_why}"
    return row


def measure_compiled(row: Row, backbone: str, device: str, batch_size: int, steps: int, precision: str = "bf16",
                     backend: str = "inductor") -> Row:
    """``row`` (``measure_eager``'s) with the compiled figures: ``torch.compile`` of the model, as
    ``--compile`` trains (``backend``: torch.compile's; the CPU test uses aot_eager)."""
    model, opt, x, y = _setup(row.method, backbone, device, batch_size)
    torch.compiler.reset()  # one process compiles every method: dynamo would run the 9th eagerly
    step = method_steps(model, opt, device, precision, step_fn=torch.compile(model, backend=backend))
    _reset_peak(device)
    start = time.perf_counter()
    step(x, y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    row.compile_s = max(time.perf_counter() - start - batch_size / row.eager_img_s, 0.0)
    seconds = seconds_per_call(lambda: step(x, y), steps, device, WARMUP - 1)
    row.compiled_img_s, row.compiled_mem_mb = batch_size / seconds, _gpu_peak(device)
    row.compiled_mfu_pct = _mfu(row.flops, row.compiled_img_s, batch_size, row.peak_flops)
    return row


def _gpu_peak(device: str) -> float | None:
    """The CUDA allocator's peak since the last reset; None on CPU (a process's peak RSS spans
    every method measured in it)."""
    return peak_memory_mb(device) if device.startswith("cuda") else None


def check_all(names: list[str], backbone: str, device: str, batch_size: int, steps: int, budget_s: float,
              precision: str = "bf16", backend: str = "inductor", say=print) -> list[Row]:
    """A row per method of ``names``: first every method eagerly (a few seconds each), then each
    compiled (compiling takes most of the time); an error is its row's status, and no measurement
    starts once ``budget_s`` seconds have passed (its row says so)."""
    start = time.perf_counter()

    def attempt(name: str, measure) -> Row | str:
        if time.perf_counter() - start > budget_s:
            return f"not run: the {budget_s:.0f} s budget was spent"
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 - the check reports every method's failure, then goes on
            return f"error: {type(exc).__name__}: {first_line(exc)}"
        finally:
            torch.compiler.reset()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    rows = []
    for name in names:
        got = attempt(name, lambda: measure_eager(name, backbone, device, batch_size, steps, precision))
        rows.append(got if isinstance(got, Row) else Row(name, f"eager {got}"))
        say(f"gpu-check {name} eager: {rows[-1].status} ({time.perf_counter() - start:.0f} s so far)")
    for row in rows:
        if row.status != "finished":  # failed eagerly, or declares it does not compile
            continue
        got = attempt(row.method, lambda: measure_compiled(row, backbone, device, batch_size, steps, precision,
                                                           backend))
        if isinstance(got, str):
            row.status = f"compiled {got}"
        say(f"gpu-check {row.method} compiled: {row.status} ({time.perf_counter() - start:.0f} s so far)")
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(rows: list[Row], header: str) -> str:
    from tabulate import tabulate

    table = [[r.method, _fmt(r.eager_img_s, 1), _fmt(r.compiled_img_s, 1), _fmt(r.speedup, 2),
              _fmt(r.compile_s, 0), _fmt(r.eager_mfu_pct, 1), _fmt(r.compiled_mfu_pct, 1),
              _fmt(r.eager_mem_mb, 0), _fmt(r.compiled_mem_mb, 0), r.status] for r in rows]
    cols = ["method", "img/s eager", "img/s compiled", "compile speed-up", "compile s", "MFU % eager",
            "MFU % compiled", "peak mem MB eager", "peak mem MB compiled", "status"]
    note = ("bf16 autocast; images/s of one optimizer step (AdamW, `bench.steps.method_steps`, the method's per-step hooks included) on a fixed random "
            "batch, after warm-up steps; MFU: FLOPs of one step (torch's FLOP counter) times steps per second over "
            "the device's dense bf16 peak (`bench.device.PEAK_BF16_FLOPS`); peak memory: the CUDA allocator's peak "
            "during each measurement; compile s: the first compiled step minus an eager one; compile speed-up: "
            "compiled over eager images/s. The linear probe is timed through the frozen backbone here (a run "
            "trains it on cached features).")
    return f"{header}\n\n{tabulate(table, headers=cols, tablefmt='github', disable_numparse=True)}\n\n{note}\n"


def report_path(out: Path, device: str) -> Path:
    """``out/gpu_check_<device>.md``, the device's class as a file name (e.g. nvidia-h100-80gb-hbm3)."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_class(device).lower()).strip("-")
    return out / f"gpu_check_{slug}.md"


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        raise UserError("bench gpu-check needs a CUDA GPU and none is visible here; it runs on a GPU machine "
                        "(the CPU tests cover bf16, compile and devices: docs/performance.md)")
    if args.backbone not in backbones.BACKBONES:
        raise UserError(f"unknown backbone {args.backbone!r}; known: {', '.join(backbones.BACKBONES)}")
    for value, what in ((args.batch_size, "--batch-size"), (args.steps, "--steps")):
        if value < 1:
            raise UserError(f"{what} must be >= 1, got {value}")
    from ..run.spec import check_methods_run_on, parse_methods

    names = parse_methods(args.methods, backbones.get(args.backbone).family)
    check_methods_run_on(args.backbone, names)
    device = "cuda"
    start = time.perf_counter()
    rows = check_all(names, args.backbone, device, args.batch_size, args.steps, args.budget_s)
    header = (f"# GPU check ({device_class(device)})\n\nMeasured {dt.date.today().isoformat()} on "
              f"{device_class(device)}, torch {torch.__version__}, backbone {args.backbone} (random init), batch "
              f"{args.batch_size}, {args.steps} timed steps, {NUM_CLASSES}-class head; "
              f"{time.perf_counter() - start:.0f} s in all.")
    text = render(rows, header)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = report_path(out, device)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {path}")
    return 0 if all(r.status == "finished" or r.status.startswith("finished eagerly only") for r in rows) else 1
