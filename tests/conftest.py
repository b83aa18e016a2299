"""Hermetic tests: no MLflow store from the caller's environment leaks into any test."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_tracking_uri_from_the_environment():
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="module")
def one_thread():
    """Tiny forwards: one thread is faster, and far faster on a machine whose cores are busy.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def randomise_1d(model):
    """``model`` in eval mode with non-trivial biases and norm affines (added noise), so that merging
    into them is exercised."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def perturb_trainable(model, std=0.1):
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))


def with_head_of(base, adapted):
    """``base`` with ``adapted``'s head, to compare logits with the un-adapted backbone."""
    import copy

    ref = copy.deepcopy(base)
    ref.reset_classifier(adapted.num_classes)
    ref.head.load_state_dict(adapted.head.state_dict())
    return ref.eval()


@pytest.fixture(scope="module")
def small_vit():
    """The demo architecture, randomly initialised (seed 0), with non-trivial 1-d tensors."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from bench.backbones import DEMO_CONFIG

    torch.manual_seed(0)
    return randomise_1d(VisionTransformer(num_classes=0, **DEMO_CONFIG))


@pytest.fixture(scope="module")
def images():
    """Four random demo-sized images (seed 1)."""
    import torch

    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def recording_splits(n_train: int, n_eval: int = 12, classes: int = 5):
    """A training and an evaluation split of random 32-pixel images (drawn in that order from one
    generator, seed 3; labels ``i % classes``) whose datasets record, in order, the index of every
    item read (``.log``; the images: ``.tensors[0]``): to see what a fit hands to ``select``."""
    import torch
    from torch.utils.data import TensorDataset

    class Recording(TensorDataset):
        def __init__(self, x):
            super().__init__(x, torch.arange(len(x)) % classes)
            self.log = []

        def __getitem__(self, index):
            self.log.append(index)
            return super().__getitem__(index)

    g = torch.Generator().manual_seed(3)
    train_x, eval_x = torch.randn(n_train, 3, 32, 32, generator=g), torch.randn(n_eval, 3, 32, 32, generator=g)
    return Recording(train_x), Recording(eval_x)


def plain_fit(model, data, *, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
              total_steps: int, loss=None, after_step=None) -> None:
    """``bench.train.fit``'s loop for a method without hooks, written out on ``model`` (CPU, no workers,
    no warmup): ``seed_everything(seed)``, the shuffled loader of that seed, ``make_optimizer``'s AdamW,
    the cosine schedule over ``total_steps``, train mode; each step the loss (``loss(x, y)``, else the
    cross-entropy of ``model(x)``), zero_grad, backward, the optimizer's step, ``after_step(step)`` (the
    step counted from 0), the schedule's update."""
    import torch

    from bench import train

    train.seed_everything(seed)
    loader = train._loader(data, batch_size, True, seed, 0, "cpu")
    optimizer = train.make_optimizer(model, lr, weight_decay, "cpu")
    schedule = train.cosine_schedule(optimizer, lr, total_steps, 0)
    model.train()
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            value = loss(x, y) if loss is not None else torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
            step += 1
            schedule.step_update(step)


def find_study(storage, method: str, task: str, final: bool = False, **experiment):
    """The tuning (or ``final``-fit) study of (method, task) a run opened, found by the identity it
    stores (as `bench report` finds studies), never by its name; ``experiment``: fields the study's
    experiment must also have (e.g. ``fixed=(("mode", "shallow"),)``, ``backbone="tiny_swin"``)."""
    import optuna

    from bench.run.study import ROLE_FINAL, ROLE_TUNING, study_cell, study_role

    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        cell = study_cell(summary)
        if (cell is not None and study_role(summary) == (ROLE_FINAL if final else ROLE_TUNING)
                and cell.experiment.method == method and cell.task == task
                and all(getattr(cell.experiment, k) == v for k, v in experiment.items())):
            found.append(summary.study_name)
    assert len(found) == 1, f"{len(found)} studies of {method}/{task} {experiment}: {found}"
    return optuna.load_study(study_name=found[0], storage=storage)
