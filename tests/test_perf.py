"""`bench perf` and `bench run --dry-run` on the demo backbone, and the performance properties the
design promises, checked as ratios with generous margins (CPU timings are noisy)."""
from __future__ import annotations

import time

import pytest

import methods
from bench import train
from bench.backbones import create_backbone
from bench.cli import main
from bench.perf import measure_method


@pytest.fixture(autouse=True)
def _local_tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'perf.db'}")


def test_bench_perf_demo_table_has_every_method(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["perf", "--backbone", "demo", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert time.perf_counter() - start < 60
    text = (tmp_path / "perf.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert sorted(r.split("|")[1].strip() for r in rows) == methods.names()
    assert "Measured" in text and "demo" in text


@pytest.mark.parametrize("name", ["lora", "ssf", "rlrr"])
def test_merged_model_evaluates_at_backbone_speed(name):
    row = measure_method(name, "demo", "cpu", batch_size=64, steps=10)
    # target: within 5% of the plain backbone; generous margin here for a noisy shared CPU
    assert row["eval_img_s_merged"] >= 0.75 * row["eval_img_s_plain"]


# Floors on train speed / full's on the demo ViT, about 25% under what was measured (README):
# lora 1.2-1.6, adapter 1.4-1.8, ssf 1.0-1.4, rlrr 0.9-1.1, linear >= 3. On ViT-B/16 every
# method is at least 1.0; on the tiny demo RLRR's per-weight work is not hidden behind the matmuls.
SPEED_FLOORS = {"linear": 2.0, "adapter": 1.0, "lora": 0.9, "ssf": 0.7, "rlrr": 0.6}


def test_peft_methods_train_about_as_fast_as_full_or_faster():
    full = measure_method("full", "demo", "cpu", batch_size=64, steps=10)
    for name, floor in SPEED_FLOORS.items():
        row = measure_method(name, "demo", "cpu", batch_size=64, steps=10)
        assert row["train_img_s"] >= floor * full["train_img_s"], name


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
