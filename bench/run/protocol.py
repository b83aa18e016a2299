"""The protocol, in code: for every (method, task), tune then fit the final seeds.

An Optuna study per (method, task) trains on the tuning split (train800 / FGVC train) and scores
on the validation split; the best hyperparameters are then refitted on the final training split
(train800val200 / train+val) for each seed, and the LAST-epoch test accuracy is reported. The
test split is opened only inside a final fit (``SplitGuard``). Every trial and final fit is an
MLflow run; finished ones are skipped on a rerun.

Where things happen: ``Runner.tune`` asks trials of the study's budget (``TrialBudget``);
``Runner.finals`` queues a (method, task)'s final fits as waiting trials of its final-fit study
and pops them (``FinalFits``); ``Runner.final_fit`` runs one fit and records it in MLflow, then
in Optuna. ``bench.run.coordination`` says how workers divide the work.
"""
from __future__ import annotations

from ..catalog import Task
from .context import RunContext
from .finals import Finals
from .records import Records
from .tuning import Tuning


class Runner(Tuning, Finals, Records, RunContext):
    """One `bench run` in one process: its context (``context``), records (``records``), tuning
    (``tuning``) and final fits (``finals``)."""

    def run(self) -> None:
        """Two passes so that concurrent workers spread out: first every study's trials, then,
        per (method, task) once its study is complete, the final fits nobody has taken; then wait
        for the fits other workers still run."""
        s = self.spec
        pairs = [(m, t) for t in s.tasks for m in s.methods]
        if s.recipe is not None:
            self.run_recipe(pairs)
            return
        for method, task in pairs:
            self.tune(method, task)
        for method, task in pairs:
            params, source = self.best(method, task)
            self.finals(method, task, {**self.defaults(method), **params, **s.fixed.get(method, {})}, source)
        self.wait_for_finals(pairs)

    def run_recipe(self, pairs: list[tuple[str, Task]]) -> None:
        """--recipe: no tuning; each (method, task)'s final fits train with the recipe's settings."""
        source = f"recipe {self.spec.recipe.name}"
        for method, task in pairs:
            setting = self.spec.setting(method, task)
            params = {"lr": setting.train["lr"], "weight_decay": setting.train["weight_decay"], **setting.hparams}
            self.finals(method, task, params, source, setting)
        self.wait_for_finals(pairs)
