"""What every part of a run shares: the spec, the backbone, the stores and provenance, the
identity of each (method, task), and how hyperparameters become a model and a training config.
``bench.run.protocol.Runner`` is built on it with its records, tuning and final fits."""
from __future__ import annotations

import shutil
import sys

import optuna

import methods

from .. import backbones, tracking
from ..catalog import Task
from ..device import device_class
from ..identity import Cell, Experiment
from ..recipes import Setting
from ..train import TrainConfig, head_only, seed_everything
from .coordination import FinalFits
from .spec import RunSpec, build_backbone, weights_file, writable_dir
from .split_guard import SplitGuard
from .study import COMMON_DEFAULTS, open_storage


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


class RunContext:
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
            tracking.DEVICE_NAME_PARAM: device_class(spec.device),  # what the throughput and memory ran on
            **tracking.package_versions(),
        }
        self._data_hashes: dict[str, str] = {}
        self._studies: dict[str, optuna.Study | FinalFits] = {}  # opened once per process
        self._augment: dict[str, bool] = {}

    def data_hash(self, task: str) -> str:
        if task not in self._data_hashes:
            from ..data import manifest_hash

            self._data_hashes[task] = manifest_hash(self.spec.suite, task, self.spec.data_root)
        return self._data_hashes[task]

    def _config(self, params: dict, seed: int, desc: str, checkpoint: str | None = None) -> TrainConfig:
        s = self.spec
        return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=params["lr"],
                           weight_decay=params["weight_decay"], warmup_epochs=s.warmup_epochs, seed=seed,
                           device=s.device, workers=s.workers, compile=s.compile, precision=s.precision, desc=desc,
                           checkpoint=checkpoint, drop_path_rate=s.drop_path_rate)

    def _model(self, method: str, task: Task, method_params: dict, seed: int):
        seed_everything(seed)  # the new head's init depends on the seed only, the same for every method
        return methods.get(method).apply(self.backbone, num_classes=task.num_classes, **method_params)

    def experiment(self, method: str) -> Experiment:
        """The experiment a method's runs belong to (``bench.identity``): one leaderboard row."""
        return self.spec.experiment(method, self.weights_sha256)

    def cell(self, method: str, task: Task) -> Cell:
        """The experiment on one task's data: one tuning study, one leaderboard cell."""
        return self.experiment(method).on(task.name, self.data_hash(task.name))

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

    def _hparams(self, method: str, params: dict, setting: Setting | None) -> dict:
        """Every hyperparameter a final fit trains with: the common ones, the method's resolved ones
        and, under a recipe, all its training settings."""
        common, specific = self._split_params(params)
        hparams = {**common, **methods.get(method).resolve(**specific)}
        return {**setting.train, **hparams} if setting is not None else hparams


def say(line: str) -> None:
    """One progress line per trial and final fit (tqdm's bars show the steps in between)."""
    from tqdm.auto import tqdm

    tqdm.write(line)
    sys.stdout.flush()
