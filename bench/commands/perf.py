"""`bench perf`: speed and memory of every method, measured the way training runs.

Per method: trainable parameters, train images/s (one optimizer step of ``bench.steps.method_steps``,
the method's per-step hooks included, on a fixed batch), eval images/s unmerged and merged, peak memory, and on GPU the model FLOPs
utilisation. The linear probe is also timed on cached features, as it trains. On CPU each method
is measured in a forked child so that its peak resident memory is its own.

When ``lora`` is measured, it is also timed side by side against Hugging Face peft's LoRA
(``lora_vs_peft``): one process, the two models' steps alternating, median step time of each (on
the demo on CPU: on one thread and on every thread).
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import platform
from pathlib import Path

import torch

import methods

from .. import backbones, tracking
from ..errors import UserError
from ..files import atomic_write_text
from ..report.format import fmt, markdown_table
from ..device import (autocast, current_memory_mb, median_step_seconds, peak_flops, peak_memory_mb, resolve_device,
                      seconds_per_call)
from ..steps import method_steps, train_step
from ..train import make_optimizer

NUM_CLASSES = 100


def _adamw(model, device: str) -> torch.optim.AdamW:
    """The optimizer of ``make_optimizer`` (AdamW over the trainable tensors), for models of any
    method, registered or not; no weight decay, as in the timed steps of the table."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0,
                             fused=device.startswith("cuda"))


def lora_vs_peft(backbone_name: str, device: str, batch_size: int, steps: int,
                 threads: list[int] | None = None) -> list[dict]:
    """Our ``lora`` against Hugging Face peft's LoRA, trained side by side in this process.

    Like for like: ours puts a rank-8 update on q and on v (two B A pairs: 2 x r x (d + d)
    parameters per block); peft's ``LoraConfig(r=8, lora_alpha=8)`` on the whole fused qkv puts one
    rank-8 update on q, k and v together (r x (d + 3d)): the same parameter count (294,912 on
    ViT-B/16), the same low-rank FLOPs per token and the same frozen base Linear, only the structure
    of the update differs. Both run one optimizer step of ``train_step`` on the same batch and
    head; their steps alternate. One row per thread count (demo on CPU: 1 and all threads)."""
    from methods.peft_tuners import PeftLoRA

    torch.manual_seed(0)
    base = backbones.create_backbone(backbone_name)
    models = {"lora": methods.get("lora").apply(base, num_classes=NUM_CLASSES).to(device).train(),
              "peft": PeftLoRA().apply(base, num_classes=NUM_CLASSES).to(device).train()}
    size = backbones.get(backbone_name).image_size  # the suites' (DINOv2 is built for 518 px, run at 224)
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    fns = {}
    for name, model in models.items():
        opt = _adamw(model, device)
        fns[name] = (lambda m, o: (lambda: train_step(m, o, x, y, device)))(model, opt)
    saved = torch.get_num_threads()
    if threads is None:  # one thread too on CPU, on the demo only (a ViT-B/16 step takes seconds there)
        threads = sorted({1, saved}) if device == "cpu" and backbone_name == "demo" else [saved]
    rows = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            t = median_step_seconds(fns, steps, device, warmup=2)
            rows.append({"threads": n, "steps": steps, "lora_ms": 1e3 * t["lora"], "peft_ms": 1e3 * t["peft"],
                         "ratio": t["lora"] / t["peft"],
                         "params_lora": methods.count_trainable(models["lora"]),
                         "params_peft": methods.count_trainable(models["peft"])})
    finally:
        torch.set_num_threads(saved)
    return rows


def render_vs_peft(rows: list[dict], backbone_name: str, batch_size: int) -> str:
    table = [[r["threads"], fmt(r["lora_ms"], 1), fmt(r["peft_ms"], 1), fmt(r["ratio"], 3)] for r in rows]
    steps, params = rows[0]["steps"], rows[0]["params_lora"]
    text = markdown_table(table, ["threads", "lora ms/step", "peft LoRA ms/step", "lora / peft"])
    return (f"## lora against Hugging Face peft's LoRA\n\n"
            f"Our `lora` (rank 8 on q and on v) and peft's `LoraConfig(r=8, lora_alpha=8)` on the whole fused "
            f"qkv: the same trainable parameters ({params:,} here, 294,912 on ViT-B/16) and low-rank FLOPs. "
            f"{backbone_name} backbone, batch {batch_size}, one optimizer step each, the two models' steps "
            f"alternating in one process; median of {steps} steps each.\n\n{text}\n")


def _train_flops(model, x, y, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    opt = make_optimizer(model, 1e-4, 0.0, device)
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, x, y, device)
    return float(counter.get_total_flops())


def measure_method(name: str, backbone_name: str, device: str, batch_size: int, steps: int,
                   compile: bool = False) -> dict:
    """All figures for one method, in this process."""
    torch.manual_seed(0)
    base = backbones.create_backbone(backbone_name)
    model = methods.get(name).apply(base, num_classes=NUM_CLASSES).to(device)
    size = backbones.get(backbone_name).image_size  # the suites' (DINOv2 is built for 518 px, run at 224)
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    row = {"method": name,
           "params_backbone": methods.count_trainable(model),
           "params_total": methods.count_trainable(model, exclude_head=False)}

    opt = make_optimizer(model, 1e-4, 0.0, device)
    model.train()
    before = current_memory_mb(device)
    step = method_steps(model, opt, device)  # the method's per-step hooks included (AdaLoRA)
    row["train_img_s"] = batch_size / seconds_per_call(lambda: step(x, y), steps, device)
    if compile:
        torch.compiler.reset()  # on GPU every method runs in this process: dynamo would run the 9th eagerly
        compiled_step = method_steps(model, opt, device, step_fn=torch.compile(model))
        row["train_img_s_compiled"] = batch_size / seconds_per_call(lambda: compiled_step(x, y), steps, device)
    # what training adds on top of the loaded model and batch: activations, gradients, optimizer state
    row["peak_mem_mb"] = peak_memory_mb(device) - before
    if name == "linear":  # how the linear probe really trains: on features computed once
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(x), pre_logits=True).float()
        row["train_img_s_cached"] = batch_size / seconds_per_call(lambda: train_step(model.head, opt, feats, y, device),
                                                        steps, device)
    peak = peak_flops(device)
    if peak:
        flops = _train_flops(model, x, y, device)
        row["mfu_pct"] = 100.0 * flops * row["train_img_s"] / batch_size / peak

    model.eval()
    with torch.no_grad():
        def infer(m):
            with autocast(device):
                m(x)
        row["eval_img_s"] = batch_size / seconds_per_call(lambda: infer(model), steps, device)
        plain = base.to(device).eval()
        plain.reset_classifier(NUM_CLASSES)
        row["eval_img_s_plain"] = batch_size / seconds_per_call(lambda: infer(plain), steps, device)
        try:
            merged = methods.get(name).merge(model).to(device).eval()
        except methods.NotMergeable:
            row["eval_img_s_merged"] = None
        else:
            row["eval_img_s_merged"] = batch_size / seconds_per_call(lambda: infer(merged), steps, device)
    return row


def _child(conn, *args) -> None:
    try:
        conn.send(measure_method(*args))
    except BaseException as exc:  # report, never hang the parent
        conn.send(exc)
    finally:
        conn.close()


def measure_all(names: list[str], backbone_name: str, device: str, batch_size: int, steps: int,
                compile: bool = False) -> list[dict]:
    """One row per method; on CPU each in its own child process, for a per-method peak RSS.

    Children come from a fork server (a clean process with torch preloaded): forking a process
    whose OpenMP threads already ran can deadlock, and spawning re-imports torch every time."""
    rows = []
    ctx = mp.get_context("forkserver")
    from methods.peft_tuners import PeftTuner

    uses_peft = any(isinstance(methods.get(name), PeftTuner) for name in names)
    ctx.set_forkserver_preload(["torch", "timm", "methods", "bench.commands.perf"] + (["peft"] if uses_peft else []))
    for name in names:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            rows.append(measure_method(name, backbone_name, device, batch_size, steps, compile))
            continue
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, name, backbone_name, device, batch_size, steps, compile))
        proc.start()
        child.close()  # so that recv() sees EOF, not a hang, if the child dies
        try:
            result = parent.recv()
        except EOFError:
            result = RuntimeError(f"the perf process for {name} died (exit code {proc.join() or proc.exitcode})")
        proc.join()
        if isinstance(result, BaseException):
            raise result
        rows.append(result)
    return rows


def render(rows: list[dict], header: str) -> str:
    full = next((r for r in rows if r["method"] == "full"), None)
    table = []
    for r in rows:
        merged = r["eval_img_s_merged"]
        table.append([
            r["method"], fmt(r["params_backbone"], 0, grouping=True), fmt(r["params_total"], 0, grouping=True),
            fmt(r["train_img_s"], 1, grouping=True),
            fmt(r["train_img_s"] / full["train_img_s"], 2, grouping=True) if full else "-",
            fmt(r.get("train_img_s_cached"), 0, grouping=True),
            fmt(r.get("train_img_s_compiled"), 1, grouping=True),
            fmt(r["eval_img_s"], 1, grouping=True), fmt(merged, 1, grouping=True),
            fmt(merged / r["eval_img_s_plain"], 2, grouping=True) if merged else "-",
            fmt(r["peak_mem_mb"], 0, grouping=True),
            fmt(r["peak_mem_mb"] / full["peak_mem_mb"], 2, grouping=True) if full else "-",
            fmt(r.get("mfu_pct"), 1, grouping=True),
        ])
    cols = ["method", "trainable (no head)", "trainable (head)", "train img/s", "train speed vs full",
            "train img/s on cached features", "train img/s compiled", "eval img/s", "eval img/s merged",
            "merged vs plain", "train memory MB", "memory vs full", "MFU %"]
    note = ("Train memory: peak during the timed training steps minus the memory in use before them "
            "(activations, gradients, optimizer state); CUDA allocator on GPU, resident set on CPU, each "
            "method in a fresh process. Speeds are images per second of one optimizer step on a fixed "
            "random batch; 'merged vs plain' is the merged model's eval speed over the plain backbone's.")
    return f"{header}\n\n{markdown_table(table, cols)}\n\n{note}\n"


def machine_line(device: str, backbone_name: str, batch_size: int) -> str:
    what = torch.cuda.get_device_name() if device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return (f"Measured {dt.date.today().isoformat()} on {what}, torch {torch.__version__}, "
            f"backbone {backbone_name}, batch {batch_size}, {NUM_CLASSES}-class head.")


def main(args: argparse.Namespace) -> int:
    if args.backbone not in backbones.BACKBONES:
        raise UserError(f"unknown backbone {args.backbone!r}; known: {', '.join(backbones.BACKBONES)}")
    from ..run.spec import check_methods_run_on, parse_methods

    names = parse_methods(args.methods, backbones.get(args.backbone).family)
    check_methods_run_on(args.backbone, names)
    device = resolve_device(args.device)
    demo = args.backbone == "demo"
    batch_size = args.batch_size or (64 if demo else 32)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    steps = args.steps or (20 if demo or device != "cpu" else 2)
    rows = measure_all(names, args.backbone, device, batch_size, steps, args.compile)
    header = f"# Performance ({args.backbone}, {device})\n\n{machine_line(device, args.backbone, batch_size)}"
    text = render(rows, header)
    vs_peft = []
    if "lora" in names:  # steps alternate and the median is taken: 3x the steps of the table
        vs_peft = lora_vs_peft(args.backbone, device, batch_size, 3 * steps)
        text += "\n" + render_vs_peft(vs_peft, args.backbone, batch_size)
    print(text)
    path = Path(args.out) / ("perf.md" if demo and device == "cpu" else f"perf_{args.backbone}_{device}.md")
    atomic_write_text(path, text)
    _log(rows, args, device, batch_size, vs_peft)
    print(f"wrote {path}")
    return 0


def _log(rows: list[dict], args: argparse.Namespace, device: str, batch_size: int,
         vs_peft: list[dict] | None = None) -> None:
    client = tracking.connect(args.tracking_uri or tracking.default_tracking_uri())
    exp = tracking.experiment_id(client, "perf")
    if vs_peft:
        tags = {"phase": "perf", "method": "lora-vs-peft", "backbone": args.backbone, "device": device,
                "git_commit": tracking.git_commit()}
        with tracking.TrackedRun(client, exp, f"perf lora vs peft {args.backbone} {device}", tags,
                                 {"batch_size": batch_size, "steps": vs_peft[0]["steps"],
                                  **tracking.package_versions()}) as run:
            run.log_metrics({f"{k}_t{r['threads']}": r[k] for r in vs_peft for k in ("lora_ms", "peft_ms", "ratio")})
    for r in rows:
        tags = {"phase": "perf", "method": r["method"], "backbone": args.backbone, "device": device,
                "git_commit": tracking.git_commit()}
        with tracking.TrackedRun(client, exp, f"perf {r['method']} {args.backbone} {device}", tags,
                                 {"batch_size": batch_size, **tracking.package_versions()}) as run:
            run.log_metrics({k: v for k, v in r.items() if isinstance(v, (int, float)) and v is not None})
