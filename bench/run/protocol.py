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

import shutil
import sys
import time

import optuna

import methods

from .. import backbones, tracking
from ..catalog import Task
from .coordination import FinalFits, TrialBudget, final_study_name, lease, owner_alive, owner_id
from ..recipes import Setting
from ..identity import Cell, Experiment
from .spec import RunSpec, build_backbone, writable_dir, weights_file
from .split_guard import SplitGuard
from ..train import Diverged, PaperSchedule, TrainConfig, fit, head_only, seed_everything
from .study import (COMMON_DEFAULTS, ROLE_FINAL, FixedParams, best_params, common_search_space, open_storage, open_study, requeue,
                   sampler_seed, trial_position)


def open_stores(spec: RunSpec):
    """(out dir, MLflow client, experiment id, Optuna storage). If a store cannot be opened, an
    output folder that this call created is removed again: a failed start leaves nothing behind."""
    created = not spec.out.exists()
    out = writable_dir(spec.out)
    try:
        storage = open_storage(spec.storage, out)
        client = tracking.connect(spec.tracking_uri)
        exp_id = tracking.experiment_id(client, spec.suite.name, out / "artifacts")
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out, client, exp_id, storage


def _per_epoch(metrics: dict) -> dict:
    """Per-epoch metrics to log; the eval accuracy is logged under its split's name instead."""
    return {k: v for k, v in metrics.items() if k != "eval_acc"}


class Runner:
    """Holds what one `bench run` shares: backbone, stores, provenance."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.backbone = build_backbone(spec)
        self.out, self.client, self.exp_id, self.storage = open_stores(spec)
        self.guard = SplitGuard(spec)
        weights = weights_file(spec)
        self.weights_sha256 = backbones.file_sha256(weights) if weights else tracking.RANDOM_INIT
        # logged with every run beside its experiment's fields (which hold backbone and weights hash)
        self.provenance = {
            "weights_file": str(weights) if weights else "random-init",
            "git_commit": tracking.git_commit(),
            "device": spec.device,
            **tracking.package_versions(),
        }
        self._data_hashes: dict[str, str] = {}
        self._studies: dict[str, optuna.Study | FinalFits] = {}  # opened once per process
        self._augment: dict[str, bool] = {}

    # -- helpers -----------------------------------------------------------------------------
    def data_hash(self, task: str) -> str:
        if task not in self._data_hashes:
            from ..data import manifest_hash

            self._data_hashes[task] = manifest_hash(self.spec.suite, task, self.spec.data_root)
        return self._data_hashes[task]

    def _config(self, params: dict, seed: int, desc: str, checkpoint: str | None = None) -> TrainConfig:
        s = self.spec
        return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=params["lr"],
                           weight_decay=params["weight_decay"], warmup_epochs=s.warmup_epochs, seed=seed,
                           device=s.device, workers=s.workers, compile=s.compile, desc=desc,
                           checkpoint=checkpoint, drop_path_rate=s.drop_path_rate)

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
                           device=s.device, workers=s.workers, compile=s.compile, desc=desc, checkpoint=checkpoint,
                           paper_schedule=schedule, drop_path_rate=t["drop_path_rate"],
                           residual_dropout=t["residual_dropout"], zero_head=t["zero_head"])

    def _model(self, method: str, task: Task, method_params: dict, seed: int):
        seed_everything(seed)  # the new head's init depends on the seed only, the same for every method
        return methods.get(method).apply(self.backbone, num_classes=task.num_classes, **method_params)

    def experiment(self, method: str) -> Experiment:
        """The experiment a method's runs belong to (``bench.identity``): one leaderboard row."""
        return self.spec.experiment(method, self.weights_sha256)

    def cell(self, method: str, task: Task) -> Cell:
        """The experiment on one task's data: one tuning study, one leaderboard cell."""
        return self.experiment(method).on(task.name, self.data_hash(task.name))

    def _tags(self, phase: str, method: str, task: Task, seed: int) -> dict:
        experiment = self.experiment(method)
        return {"phase": phase, "suite": self.spec.suite.name, "method": method, "task": task.name,
                "group": task.group, "seed": seed, "git_commit": self.provenance["git_commit"],
                "owner": owner_id(), tracking.EXPERIMENT_TAG: experiment.to_json(),
                tracking.EXPERIMENT_KEY_TAG: experiment.key()}

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

    def _augments(self, method: str) -> bool:
        """Whether the method trains on the suite's training transform. Not the linear probe: it
        trains on features computed once per split, and features of one random crop reused every
        epoch would pretend to be augmentation, so it reads the eval transform (FGVC: center crop)."""
        if method not in self._augment:
            probe = methods.get(method).apply(self.backbone, num_classes=1,
                                              **self._split_params(self.defaults(method))[1])
            self._augment[method] = not head_only(probe)
        return self._augment[method]

    def defaults(self, method: str) -> dict:
        """The recipe's common defaults, the method's defaults and what --hparam fixed."""
        return {**COMMON_DEFAULTS, **methods.get(method).defaults, **self.spec.fixed.get(method, {})}

    @staticmethod
    def _split_params(params: dict) -> tuple[dict, dict]:
        """(common, method-specific) from a flat Optuna params dict."""
        common = {k: params.get(k, v) for k, v in COMMON_DEFAULTS.items()}
        specific = {k: v for k, v in params.items() if k not in COMMON_DEFAULTS}
        return common, specific

    # -- tuning --------------------------------------------------------------------------------
    def _study(self, method: str, task: Task) -> optuna.Study:
        """The tuning study, opened once per process (--force restarts it on that first open, not
        again when the second pass comes back to it); the worker that creates it enqueues the
        recipe-default trial (trial 0)."""
        cell = self.cell(method, task)
        name = cell.study_name()
        if name not in self._studies:
            study, created = open_study(self.storage, name, sampler_seed(cell), cell,
                                        warmup_epochs=self.spec.warmup_epochs, force=self.spec.force)
            if created and self.spec.trials:
                study.enqueue_trial(self.defaults(method), user_attrs={"recipe_default": True})
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
                run.log_metrics({**_per_epoch(metrics), tracking.VAL_ACC: metrics["eval_acc"]}, step=epoch)
                trial.report(metrics["eval_acc"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

            try:
                result = fit(model, train_ds, self._config(hparams, seed, desc), eval_ds=val_ds,
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

    # -- final fits ------------------------------------------------------------------------------
    def run_key(self, method: str, task: Task, seed: int, hparams: dict) -> str:
        """What a final fit is: its cell (experiment, task, data), seed and every hyperparameter it
        trains with. A re-tune that picks other hyperparameters is another fit (and checkpoint)."""
        return self.cell(method, task).run_key(seed, hparams)

    def _hparams(self, method: str, params: dict, setting: Setting | None) -> dict:
        """Every hyperparameter a final fit trains with: the common ones, the method's resolved ones
        and, under a recipe, all its training settings."""
        common, specific = self._split_params(params)
        hparams = {**common, **methods.get(method).resolve(**specific)}
        return {**setting.train, **hparams} if setting is not None else hparams

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
        if done:
            trial.set_user_attr("mlflow_run_id", done[0].info.run_id)
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
                    run.log_metrics(_per_epoch(metrics), step=epoch)

                result = fit(model, train_ds, cfg, eval_ds=test_ds, on_epoch=on_epoch)
                run.log_metrics(self._summary(model, result, tracking.TEST_ACC))
        finally:
            self.guard.phase = "tune"
        say(f"final {method}/{task.name} seed {seed}: test acc {result.eval_acc:.1f} "
            f"({result.wall_s:.1f}s, params from {source})")
        return result.eval_acc, True

    # -- the whole plan -----------------------------------------------------------------------
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


def say(line: str) -> None:
    """One progress line per trial and final fit (tqdm's bars show the steps in between)."""
    from tqdm.auto import tqdm

    tqdm.write(line)
    sys.stdout.flush()

