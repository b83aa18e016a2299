"""Tuning: one Optuna study per (method, task) cell, its trials asked within the study's budget
(``TrialBudget``), each trained on the tuning split and scored on the validation split, then the
best hyperparameters once every trial of the budget finished."""
from __future__ import annotations

import time

import optuna

import methods

from .. import tracking, train
from ..catalog import Task
from ..train import Diverged
from .context import say
from .coordination import TrialBudget, lease
from .records import per_epoch
from .study import FixedParams, best_params, common_search_space, open_study, requeue, sampler_seed, trial_position


class Tuning:
    """The tuning half of ``Runner`` (a mixin on ``RunContext`` and ``Records``)."""

    def _study(self, method: str, task: Task) -> optuna.Study:
        """The tuning study, opened once per process (--force restarts it on that first open, not
        again when the second pass comes back to it); the worker that creates it enqueues the
        default trial (trial 0)."""
        cell = self.cell(method, task)
        name = cell.study_name()
        if name not in self._studies:
            study, created = open_study(self.storage, name, sampler_seed(cell), cell,
                                        warmup_epochs=self.spec.warmup_epochs, force=self.spec.force)
            if created and self.spec.trials:
                study.enqueue_trial(self.defaults(method), user_attrs={"default_trial": True})
            self._studies[name] = study
        return self._studies[name]

    def tune(self, method: str, task: Task) -> None:
        """Run trials of the study's budget until every one is taken (other workers run the rest)."""
        s = self.spec
        study = self._study(method, task)
        budget = TrialBudget(self.storage, study, s.trials)
        self._reap({"phase": tracking.PHASE_TRIAL, "method": method, "task": task.name})
        self.guard.phase = "tune"
        train_ds = val_ds = None
        while (trial := budget.ask()) is not None:
            with lease(self.storage, study, trial):
                if train_ds is None:
                    augment = self._augments(method)
                    train_ds = self.guard.open(task.name, s.suite.splits.tune_train, train=augment)
                    val_ds = self.guard.open(task.name, s.suite.splits.tune_val)
                start = time.perf_counter()
                try:
                    value = self._trial(study, trial, method, task, train_ds, val_ds)
                except (optuna.TrialPruned, Diverged) as exc:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    outcome = f"pruned ({exc})"
                except BaseException:  # Ctrl-C, a tracking server gone: queued again with its parameters,
                    requeue(study, trial)  # as a dead worker's trial is, so a rerun gives the same result
                    raise
                else:
                    study.tell(trial, value)
                    outcome = f"val acc {value:.1f}"
            say(f"tune  {method}/{task.name} trial {trial.number}: {outcome} ({time.perf_counter() - start:.1f}s)")

    def best(self, method: str, task: Task, poll_s: float = 2.0) -> tuple[dict, str]:
        """Best params once every trial of the budget finished; meanwhile this worker runs the
        trials of workers found dead (re-enqueued by ``reap_dead``)."""
        study = self._study(method, task)
        budget = TrialBudget(self.storage, study, self.spec.trials)
        while not budget.complete():
            self.tune(method, task)
            if not budget.complete():
                time.sleep(poll_s)
        return best_params(study)

    def _trial(self, study, trial, method: str, task: Task, train_ds, val_ds) -> float:
        """Train and score one trial. It records every hyperparameter it trains with (derived ones
        included, e.g. DoRA's alpha = 2 * rank) as the user attribute ``hparams``, which final fits
        take (``best_params``). Its seed is its position in the budget (``trial_position``), so a
        trial re-queued after an interruption trains exactly as it would have."""
        fixed = self.spec.fixed.get(method, {})
        suggest = FixedParams(trial, fixed)  # a fixed value is what the space derives from (DoRA: alpha = 2 x rank)
        params = {**common_search_space(suggest), **methods.get(method).search_space(suggest), **fixed}
        seed = trial_position(study, trial)
        try:
            hparams = self._hparams(method, params, None)
            model = self._model(method, task, self._split_params(hparams)[1], seed=seed)
        except ValueError as exc:  # an impossible combination drawn from the space
            trial.set_user_attr("failure_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("hparams", hparams)
        tags = {**self._tags(tracking.PHASE_TRIAL, method, task, seed),
                "study": study.study_name, "trial_number": trial.number}
        desc = f"{method}/{task.name} trial {trial.number}"
        pruned = None
        with tracking.TrackedRun(self.client, self.exp_id, desc, tags, self._params(method, task, hparams)) as run:
            def on_epoch(epoch: int, metrics: dict) -> None:
                run.log_metrics({**per_epoch(metrics), tracking.VAL_ACC: metrics["eval_acc"]}, step=epoch)
                trial.report(metrics["eval_acc"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

            try:
                result = train.fit(model, train_ds, self._config(hparams, seed, desc), eval_ds=val_ds,
                             eval_every_epoch=True, on_epoch=on_epoch)
            except optuna.TrialPruned as exc:
                run.set_tag("trial_state", "PRUNED")
                pruned = exc
            except Diverged as exc:
                trial.set_user_attr("failure_reason", f"diverged: {exc}")
                run.set_tag("trial_state", "DIVERGED")
                raise
            else:
                run.log_metrics(self._summary(model, result, tracking.VAL_ACC))
        if pruned is not None:
            raise pruned
        return result.eval_acc
