"""What ``torch.compile`` does to one training step's time on this machine (issue 29).

Per method: the eager step of ``bench.steps.train_step`` (AdamW, as `bench run` trains) and the same
step with the model compiled by ``torch.compile`` (inductor, as ``--compile`` trains), in one process,
their steps alternating (``bench.device.median_step_seconds``: each sees the same machine load), the
median of each; and the time of the first compiled step (compiling included). Prints a markdown table.

    .venv/bin/python benchmarks/compile_step_time.py                                  # demo ViT, CPU
    .venv/bin/python benchmarks/compile_step_time.py --backbone vit_base_patch16_224 --batch-size 8 --steps 5
    .venv/bin/python benchmarks/compile_step_time.py --precision bf16 --methods lora

Writes nothing (inductor's code cache: ``TORCHINDUCTOR_CACHE_DIR`` or its default under /tmp).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import methods  # noqa: E402
from bench import backbones  # noqa: E402
from bench.device import median_step_seconds  # noqa: E402
from bench.steps import train_step  # noqa: E402
from bench.train import make_optimizer  # noqa: E402

NUM_CLASSES = 100


def measure(name: str, backbone: str, batch_size: int, steps: int, precision: str) -> dict:
    torch.manual_seed(0)
    spec = backbones.get(backbone)
    base = spec.build(0)
    models = {"eager": methods.get(name).apply(base, num_classes=NUM_CLASSES).train()}
    models["compiled"] = methods.get(name).apply(base, num_classes=NUM_CLASSES).train()
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size)
    y = torch.randint(0, NUM_CLASSES, (batch_size,))
    torch.compiler.reset()
    step_fns = {"eager": models["eager"], "compiled": torch.compile(models["compiled"])}
    opts = {k: make_optimizer(m, 1e-4, 0.0, "cpu") for k, m in models.items()}
    start = time.perf_counter()
    train_step(step_fns["compiled"], opts["compiled"], x, y, "cpu", precision)
    first = time.perf_counter() - start
    fns = {k: (lambda k=k: train_step(step_fns[k], opts[k], x, y, "cpu", precision)) for k in models}
    t = median_step_seconds(fns, steps, "cpu", warmup=2)
    return {"method": name, "eager_ms": 1e3 * t["eager"], "compiled_ms": 1e3 * t["compiled"],
            "ratio": t["compiled"] / t["eager"], "first_s": first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--methods", default="full,lora,rlrr")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each, alternating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(n, args.backbone, args.batch_size, args.steps, args.precision) for n in args.methods.split(",")]
    print(f"{args.backbone}, batch {args.batch_size}, {args.precision}, CPU ({platform.machine()}), "
          f"{args.threads} thread(s), torch {torch.__version__}; median of {args.steps} alternating steps each\n")
    print("| method | eager ms/step | compiled ms/step | compiled / eager | first compiled step (compiling) s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['ratio']:.2f} | {r['first_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
