"""`bench perf` and `bench run --dry-run` on the demo backbone, and the performance properties the
design promises, checked as ratios with generous margins (CPU timings are noisy)."""
from __future__ import annotations

import functools
import time

import pytest
import torch

import methods
from bench import steps as bench_steps
from bench import train
from bench.backbones import create_backbone
from bench.cli import main
from bench.commands.perf import lora_vs_peft, measure_method
from bench.device import autocast, median_step_seconds


@pytest.fixture(autouse=True)
def _local_tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'perf.db'}")


def test_bench_perf_demo_table_has_every_method(tmp_path, capsys):
    # no wall-clock bound: how long 19 methods take is a measurement (docs/measurements.md), and a
    # bound here failed when another process shared the two cores (2616 s - 2439 s = 177 s)
    assert main(["perf", "--backbone", "demo", "--steps", "3", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "perf.md").read_text()
    table, _, vs_peft = text.partition("## lora against Hugging Face peft's LoRA")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert sorted(r.split("|")[1].strip() for r in rows) == methods.names()
    assert "Measured" in text and "demo" in text
    # lora is among them, so it is also timed against peft's LoRA, on 1 and on all threads
    ratios = [line.split("|") for line in vs_peft.splitlines() if line.startswith("| ") and "threads" not in line]
    assert [int(r[1]) for r in ratios] == sorted({1, torch.get_num_threads()})
    assert all(float(r[4]) > 0 for r in ratios)


def test_our_lora_step_is_no_slower_than_peft_lora():
    """Issue 13: same parameter count and FLOPs (rank 8 on q and v against rank 8 on the fused qkv),
    steps alternating in one process, median of 30 each, one thread (measured 0.93-0.95 on the
    2-core CPU; 1.00 before the split/cat was removed). Margin for a noisy shared CPU."""
    (row,) = lora_vs_peft("demo", "cpu", batch_size=64, steps=30, threads=[1])
    assert row["params_lora"] == row["params_peft"]
    assert row["ratio"] <= 1.1, row


@pytest.mark.parametrize("name", ["lora", "ssf", "rlrr"])
def test_merged_model_evaluates_at_backbone_speed(name):
    """The merged model's forward against the plain backbone's (with a head of the same size),
    the two alternating (``median_step_seconds``, median of 30 each), so that a change of machine
    load between two measurements cannot decide the ratio, as it could when they were timed one
    after the other. On one thread, as lora is timed against peft: on a busy 2-core machine a
    two-thread forward waits on whichever thread was descheduled, and its times scatter 10x."""
    torch.manual_seed(0)
    base = create_backbone("demo")
    model = methods.get(name).apply(base, num_classes=100)
    merged = methods.get(name).merge(model).eval()
    plain = base.eval()
    plain.reset_classifier(100)
    x = torch.randn(64, 3, 32, 32)

    def forward(m):
        with torch.no_grad(), autocast("cpu"):
            m(x)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = median_step_seconds({"merged": functools.partial(forward, merged),
                                       "plain": functools.partial(forward, plain)}, steps=30, device="cpu")
    finally:
        torch.set_num_threads(threads)
    # target: within 5% of the plain backbone; generous margin here for a noisy shared CPU
    # (images per second merged over plain = plain's step time over merged's)
    assert seconds["plain"] / seconds["merged"] >= 0.75, seconds


# Floors on train speed / full's on the demo ViT, about 25% under what was measured (docs/measurements.md):
# lora 1.2-1.6, adapter 1.4-1.8, ssf 1.0-1.4, rlrr 0.9-1.1, linear >= 3; on one thread, as timed here
# (2026-12-06): linear 3.07, adapter 1.50, lora 1.29, ssf 1.15, rlrr 0.94. On ViT-B/16 every
# method is at least 1.0; on the tiny demo RLRR's per-weight work is not hidden behind the matmuls.
SPEED_FLOORS = {"linear": 2.0, "adapter": 1.0, "lora": 0.9, "ssf": 0.7, "rlrr": 0.6}


def test_peft_methods_train_about_as_fast_as_full_or_faster():
    """Train speed over full's, the steps of all the models alternating (``median_step_seconds``,
    as `bench perf` times lora against peft), so that a change of machine load between two
    methods' measurements cannot decide the ratio; measured one after the other, a busy second
    once made adapter 0.89 of full."""
    torch.manual_seed(0)
    base = create_backbone("demo")
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 100, (64,))
    steps = {}
    for name in ("full", *SPEED_FLOORS):
        model = methods.get(name).apply(base, num_classes=100).train()
        steps[name] = functools.partial(bench_steps.train_step, model, train.make_optimizer(model, 1e-4, 0.0, "cpu"),
                                        x, y, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests above: a two-thread step on a busy 2-core machine scatters
    try:
        seconds = median_step_seconds(steps, steps=15, device="cpu")
    finally:
        torch.set_num_threads(threads)
    for name, floor in SPEED_FLOORS.items():
        # images per second over full's = full's step time over the method's
        assert seconds["full"] / seconds[name] >= floor, (name, seconds)


def test_linear_probe_on_cached_features_is_over_10x_faster_than_backprop():
    from bench.data import open_split

    ds = open_split("demo", "digits", "train800")
    backbone = create_backbone("demo")
    cfg = dict(epochs=10, batch_size=64, lr=1e-3, weight_decay=1e-4, seed=0)
    seconds = {}
    for name in ("linear", "lora"):
        model = methods.get(name).apply(backbone, num_classes=10)
        start = time.perf_counter()
        train.fit(model, ds, train.TrainConfig(**cfg))
        seconds[name] = time.perf_counter() - start
    assert seconds["lora"] >= 5 * seconds["linear"], seconds  # target 10x; margin for noise


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--dry-run", "--methods", "linear,lora", "--tasks", "digits,count", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 methods x 2 tasks = 4 studies of 2 trials" in text
    assert "| linear" in text and "| lora" in text
    assert "Estimated total:" in text
    assert not out.exists()


def test_perf_on_another_family_refuses_a_method_it_cannot_run(tmp_path, capsys):
    out = tmp_path / "perf"
    assert main(["perf", "--backbone", "swin_base_patch4_window7_224", "--methods", "vpt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "method vpt does not run on swin_base_patch4_window7_224 (swin family)" in err and not out.exists()


def test_perf_times_dinov2_at_the_suites_image_size(monkeypatch):
    """DINOv2 is built for 518 px; its timings use the 224 px images the suites feed it."""
    shapes = []
    real = bench_steps.train_step

    def spy(step_fn, optimizer, x, y, device, *rest):
        shapes.append(tuple(x.shape))
        raise StopIteration  # one step is enough to see the input

    monkeypatch.setattr("bench.steps.train_step", spy)  # the step perf times (bench.steps.method_steps)
    with pytest.raises(StopIteration):
        measure_method("linear", "vit_base_patch14_dinov2", "cpu", batch_size=1, steps=1)
    assert shapes == [(1, 3, 224, 224)]
    from bench.commands import perf

    assert real is perf.train_step  # the patch reached method_steps' step only, not perf's own name
