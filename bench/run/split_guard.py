"""The protocol's data guard: the runner opens every split through ``SplitGuard``, which refuses
the test split outside a final fit, so no choice (of trials, epochs, hyperparameters) can ever
see test data."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import backbones

if TYPE_CHECKING:
    from .spec import RunSpec


class ProtocolError(RuntimeError):
    """Code tried to read the test split outside a final fit: a bug, never a user error."""


class SplitGuard:
    """Opens splits for the runner and refuses the test split outside a final fit."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.phase = "tune"
        self.cache_dir = str(spec.out / "cache")

    def open(self, task: str, split: str, train: bool = False, flip: bool = False):
        from ..data import open_split

        if split == self.spec.suite.splits.test and self.phase != "final":
            raise ProtocolError(f"the test split of {task} was requested during {self.phase}")
        backbone = backbones.get(self.spec.backbone)  # images normalised as its weights expect
        return open_split(self.spec.suite, task, split, data_root=self.spec.data_root, train=train,
                          cache_dir=self.cache_dir, mean=backbone.mean, std=backbone.std, flip=flip)
