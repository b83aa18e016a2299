"""Final fits: a (method, task)'s seeds queued as waiting trials of its final-fit study, claimed
by one worker each (``FinalFits.pop``), trained on the final training split, tested on the test
split (the only place it is opened) and recorded in MLflow, then in Optuna. A claim, the
training and the record of one final fit are all in ``Finals.final_fit``."""
from __future__ import annotations

import time

import optuna

from .. import tracking, train
from ..catalog import Task
from ..recipes import Setting
from ..train import Diverged, PaperSchedule, TrainConfig
from .context import say
from .coordination import FinalFits, final_study_name, lease
from .records import per_epoch
from .study import ROLE_FINAL, open_study


class Finals:
    """The final-fit half of ``Runner`` (a mixin on ``RunContext`` and ``Records``)."""

    def run_key(self, method: str, task: Task, seed: int, hparams: dict) -> str:
        """What a final fit is: its cell (experiment, task, data), seed and every hyperparameter it
        trains with. A re-tune that picks other hyperparameters is another fit (and checkpoint)."""
        return self.cell(method, task).run_key(seed, hparams)

    def _finished(self, key: str) -> list:
        """The FINISHED MLflow runs of a fit (MLflow is the record of what is done)."""
        return [] if self.spec.force else tracking.find_runs(self.client, self.exp_id, {"run_key": key})

    def finals(self, method: str, task: Task, params: dict, source: str,
               setting: Setting | None = None) -> list[float]:
        """Queue the final fits of (method, task), one per seed, in its final-fit study, and run
        those this worker pops; returns their test accuracies (none: done before or elsewhere).
        ``setting``: a recipe's, whose training settings all join the fits' hyperparameters."""
        hparams = self._hparams(method, params, setting)
        fits = {self.run_key(method, task, seed, hparams): {"seed": seed, "params": params, "source": source}
                for seed in self.spec.seeds}
        queue = self._final_fits(method, task)
        queue.ensure_queued(fits, finished=lambda key: bool(self._finished(key)))
        return self._drain(method, task, queue, setting)

    def _recipe_config(self, setting: Setting, seed: int, desc: str, checkpoint: str | None) -> TrainConfig:
        """A final fit's training as the recipe's source trained (``bench.recipes``): its lr, weight
        decay, batch, schedule (cosine + cool-down or warm restarts, stepped per epoch), drop-path
        or residual dropout, and zero head."""
        t = setting.train
        schedule = PaperSchedule(cosine_epochs=t["epochs"], warmup_epochs=t["warmup_epochs"],
                                 warmup_lr=t["warmup_lr"] or 0.0, min_lr=t["min_lr"],
                                 restart_epochs=t["restart_epochs"], per_epoch=t["lr_per_epoch"])
        s = self.spec
        return TrainConfig(epochs=setting.epochs_trained, batch_size=t["batch_size"], lr=t["lr"],
                           weight_decay=t["weight_decay"], warmup_epochs=t["warmup_epochs"], seed=seed,
                           device=s.device, workers=s.workers, compile=s.compile, precision=s.precision, desc=desc,
                           checkpoint=checkpoint,
                           paper_schedule=schedule, drop_path_rate=t["drop_path_rate"],
                           residual_dropout=t["residual_dropout"], zero_head=t["zero_head"])

    def _final_fits(self, method: str, task: Task) -> FinalFits:
        """The final-fit study of (method, task), opened once per process like ``_study``."""
        cell = self.cell(method, task)
        name = final_study_name(cell.study_name())
        if name not in self._studies:
            self._studies[name] = FinalFits(self.storage, *open_study(self.storage, name, 0, cell, ROLE_FINAL,
                                                                      force=self.spec.force))
        return self._studies[name]

    def _drain(self, method: str, task: Task, queue: FinalFits, setting: Setting | None) -> list[float]:
        """Run the fits of ``queue`` that wait, until none does; their test accuracies."""
        study, accuracies = queue.study, []
        while (trial := queue.pop()) is not None:
            with lease(self.storage, study, trial):
                try:
                    acc, fitted_now = self.final_fit(method, task, trial, setting)
                except Diverged as exc:
                    trial.set_user_attr("failure_reason", f"diverged: {exc}")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    say(f"final {method}/{task.name} seed {trial.user_attrs['seed']}: diverged ({exc}); "
                        "recorded as FAILED")
                    continue
                except BaseException:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # queued again on the next run
                    raise
                study.tell(trial, acc)
            if fitted_now:
                accuracies.append(acc)
        return accuracies

    def wait_for_finals(self, pairs: list[tuple[str, Task]], poll_s: float = 5.0) -> None:
        """Return once no final fit of ``pairs`` waits or runs anywhere, running meanwhile those
        re-enqueued from dead workers: a finished `bench run` is a finished sweep, as ``best``
        waits for a study's last trials."""
        queues = [(m, t, self._final_fits(m, t)) for m, t in pairs]
        while queues:
            for method, task, queue in queues:
                self._drain(method, task, queue, self.spec.setting(method, task) if self.spec.recipe else None)
            queues = [(m, t, q) for m, t, q in queues if q.running()]
            if queues:
                time.sleep(poll_s)

    def final_fit(self, method: str, task: Task, trial: optuna.Trial,
                  setting: Setting | None = None) -> tuple[float, bool]:
        """The final fit a popped trial stands for (``seed``, ``params``, ``run_key`` in its user
        attributes): trained, tested and recorded in MLflow, whose run id the trial then carries.
        One MLflow already holds FINISHED (its worker died before telling Optuna) is not redone.
        Returns (test accuracy, whether this call trained it)."""
        seed, params, key = trial.user_attrs["seed"], trial.user_attrs["params"], trial.user_attrs["run_key"]
        source = trial.user_attrs["source"]
        done = self._finished(key)
        if done:  # this trial now stands for the run, in both stores (its first trial died untold)
            trial.set_user_attr("mlflow_run_id", done[0].info.run_id)
            self.client.set_tag(done[0].info.run_id, "optuna_trial", trial.number)
            return done[0].data.metrics[tracking.TEST_ACC], False
        # this worker holds the fit's trial, so a RUNNING run of it is a dead worker's, on any host
        self._reap({"run_key": key}, alive=lambda owner: False)
        common, specific = self._split_params(params)
        self.guard.phase = "final"
        try:
            model = self._model(method, task, specific, seed)
            augment = self._augments(method)
            train_ds = self.guard.open(task.name, self.spec.suite.splits.final_train, train=augment,
                                       flip=augment and setting is not None and setting.train["flip"])
            test_ds = self.guard.open(task.name, self.spec.suite.splits.test)
            tags = {**self._tags(tracking.PHASE_FINAL, method, task, seed), "run_key": key,
                    "best_params_from": source, "optuna_study": trial.study.study_name,
                    "optuna_trial": trial.number}
            if self.spec.recipe is not None:
                tags["recipe"] = self.spec.recipe.name
            desc = f"{method}/{task.name} seed {seed}"
            # real suites checkpoint every epoch, so a preempted job resumes mid-run
            ckpt = str(self.out / "checkpoints" / f"{key}.pt") if self.spec.suite.needs_data_root else None
            cfg = (self._config(common, seed, desc, ckpt) if setting is None
                   else self._recipe_config(setting, seed, desc, ckpt))
            with tracking.TrackedRun(self.client, self.exp_id, desc, tags,
                                     {**self._params(method, task, self._hparams(method, params, setting)),
                                      "seed": seed}) as run:
                trial.set_user_attr("mlflow_run_id", run.id)

                def on_epoch(epoch: int, metrics: dict) -> None:
                    run.log_metrics(per_epoch(metrics), step=epoch)

                result = train.fit(model, train_ds, cfg, eval_ds=test_ds, on_epoch=on_epoch)
                run.log_metrics(self._summary(model, result, tracking.TEST_ACC))
        finally:
            self.guard.phase = "tune"
        say(f"final {method}/{task.name} seed {seed}: test acc {result.eval_acc:.1f} "
            f"({result.wall_s:.1f}s, params from {source})")
        return result.eval_acc, True
