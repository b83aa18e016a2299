"""What every run logs to MLflow, by name. The runner writes these; ``bench report`` reads them.

One experiment per suite (``peft-bench/<suite>``); one run per (method, task, seed, phase).
Tags (strings): phase ("trial" | "final"), suite, method, task, group, seed, git_commit,
study, trial_number (trials only).
Params: every hyperparameter (method-specific and common), method, task, seed, backbone,
weights_sha256, data_sha256, git_commit, versions of torch/timm/optuna/mlflow.
Metrics: per epoch ``train_loss``, ``lr``, ``val_acc`` (trials) with step=epoch; at the end
``test_acc`` (final runs, percent, last epoch), ``val_acc`` (trials, percent),
``params_backbone`` (trainable, no head), ``params_total`` (trainable, head included),
``train_img_per_s``, ``eval_img_per_s``, ``peak_mem_mb``, ``wall_s``.
Only runs with status FINISHED count; a killed or failed run is marked FAILED/KILLED.
"""
from __future__ import annotations

import os
from pathlib import Path

EXPERIMENT_PREFIX = "peft-bench/"
PHASE_TRIAL = "trial"
PHASE_FINAL = "final"

# metric names
TEST_ACC = "test_acc"
VAL_ACC = "val_acc"
TRAIN_LOSS = "train_loss"
LR = "lr"
PARAMS_BACKBONE = "params_backbone"
PARAMS_TOTAL = "params_total"
TRAIN_IMG_PER_S = "train_img_per_s"
EVAL_IMG_PER_S = "eval_img_per_s"
PEAK_MEM_MB = "peak_mem_mb"
WALL_S = "wall_s"


def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def default_tracking_uri(out: str | Path = "runs") -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file under the output folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"
