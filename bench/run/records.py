"""What a trial or final fit records in MLflow beside its metrics: its tags (the experiment
identity among them), its params, its summary metrics, and the reaping of runs whose worker died.
The names are ``bench.tracking``'s."""
from __future__ import annotations

import methods

from .. import tracking
from ..catalog import Task
from .coordination import owner_alive, owner_id


def per_epoch(metrics: dict) -> dict:
    """Per-epoch metrics to log; the eval accuracy is logged under its split's name instead."""
    return {k: v for k, v in metrics.items() if k != "eval_acc"}


class Records:
    """MLflow records of a run (a mixin of ``Runner``: needs ``experiment``, ``provenance``,
    ``data_hash``, ``client`` and ``exp_id`` from ``RunContext``)."""

    def _tags(self, phase: str, method: str, task: Task, seed: int) -> dict:
        experiment = self.experiment(method)
        tags = {"phase": phase, "suite": self.spec.suite.name, "method": method, "task": task.name,
                "group": task.group, "seed": seed, "git_commit": self.provenance["git_commit"],
                "owner": owner_id(), tracking.EXPERIMENT_TAG: experiment.to_json(),
                tracking.EXPERIMENT_KEY_TAG: experiment.key()}
        if self.spec.compile:  # a method that cannot be compiled runs eagerly (bench.compiled): said here
            spec = methods.get(method)
            tags[tracking.COMPILE_TAG] = "compiled" if spec.compiles else f"eager: {spec.compile_why}"
        return tags

    def _params(self, method: str, task: Task, hparams: dict) -> dict:
        """An MLflow run's params: every hyperparameter it trains with, its experiment's fields,
        provenance, data hash (the tags hold the identity itself)."""
        return {**hparams, **self.experiment(method).params(), **self.provenance, "task": task.name,
                "data_sha256": self.data_hash(task.name)}

    def _reap(self, tags: dict, alive=owner_alive) -> None:
        """Mark FAILED the RUNNING runs matching ``tags`` whose worker is gone (``alive(owner)``
        False: by default a process of this host that no longer exists)."""
        for run in tracking.find_runs(self.client, self.exp_id, tags, statuses=("RUNNING",)):
            if not alive(run.data.tags.get("owner", "")):
                self.client.set_tag(run.info.run_id, "failure_reason", "worker died (found RUNNING on restart)")
                self.client.set_terminated(run.info.run_id, "FAILED")

    @staticmethod
    def _summary(model, result, acc_metric: str) -> dict:
        summary = {acc_metric: result.eval_acc,
                   tracking.PARAMS_BACKBONE: methods.count_trainable(model, exclude_head=True),
                   tracking.PARAMS_TOTAL: methods.count_trainable(model, exclude_head=False),
                   tracking.TRAIN_IMG_PER_S: result.train_img_per_s,
                   tracking.EVAL_IMG_PER_S: result.eval_img_per_s,
                   tracking.PEAK_MEM_MB: result.peak_mem_mb,
                   tracking.WALL_S: result.wall_s}
        return {k: v for k, v in summary.items() if v is not None}
