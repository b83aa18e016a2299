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
