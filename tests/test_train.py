"""The pieces of ``bench.train.fit`` (issue 12): the linear probe's feature cache against training
through the whole model, the NaN check, resuming a paper recipe's per-epoch schedule from a
checkpoint, and stochastic depth as timm builds it for each backbone family.

(Resuming the tuned protocol's per-step schedule: ``test_runner.py::
test_checkpointed_fit_resumes_mid_run_with_the_same_numbers``; one backbone pass per split for
the probe: ``test_runner.py::test_linear_probe_trains_on_cached_features``.)"""
from __future__ import annotations

import hashlib

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

import methods
from bench import train
from bench.backbones import DEMO_CONFIG, create_backbone
from methods.families import DROP_PATHS, set_drop_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("demo")


def _data(n: int, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5)


def _linear_fit(backbone, monkeypatch=None, cached: bool = True):
    if not cached:  # as if the model were not head-only: every step runs the frozen backbone
        monkeypatch.setattr(train, "head_only", lambda model: False)
    train.seed_everything(0)
    model = methods.get("linear").apply(backbone, num_classes=5)
    cfg = train.TrainConfig(epochs=2, batch_size=8, lr=1e-2, weight_decay=1e-4, warmup_epochs=1, seed=3)
    result = train.fit(model, _data(40), cfg, eval_ds=_data(24, 2), eval_every_epoch=True)
    return result, model.head.state_dict()


def test_linear_probe_on_cached_features_trains_as_through_the_backbone(backbone, monkeypatch):
    cached, head = _linear_fit(backbone)
    plain, plain_head = _linear_fit(backbone, monkeypatch, cached=False)
    for key in head:
        torch.testing.assert_close(head[key], plain_head[key], rtol=1e-4, atol=1e-6)
    assert [h["train_loss"] for h in cached.history] == pytest.approx([h["train_loss"] for h in plain.history],
                                                                      rel=1e-5)
    assert [h["lr"] for h in cached.history] == [h["lr"] for h in plain.history]
    assert cached.eval_acc == plain.eval_acc


def test_a_nan_loss_raises_diverged_at_the_first_check(backbone):
    model = methods.get("linear").apply(backbone, num_classes=5)
    nan_images = TensorDataset(torch.full((60, 3, 32, 32), float("nan")), torch.arange(60) % 5)
    cfg = train.TrainConfig(epochs=2, batch_size=2, lr=1e-3, weight_decay=0.0)  # 30 steps an epoch
    with pytest.raises(train.Diverged, match=rf"^loss is nan at epoch 1, step {train.CHECK_EVERY}$"):
        train.fit(model, nan_images, cfg)


def test_resumed_paper_schedule_gives_the_uninterrupted_numbers(backbone, tmp_path):
    """A per-epoch schedule (stepped as each epoch starts, not per step) picks up where it stopped."""
    schedule = train.PaperSchedule(cosine_epochs=3, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-6)

    def run(checkpoint=None, stop=False):
        train.seed_everything(0)
        model = methods.get("ssf").apply(backbone, num_classes=5)
        cfg = train.TrainConfig(epochs=4, batch_size=8, lr=3e-3, weight_decay=1e-4, seed=3,
                                paper_schedule=schedule, checkpoint=checkpoint)

        def stop_after_two(epoch, metrics):
            if stop and epoch == 1:
                raise KeyboardInterrupt

        result = train.fit(model, _data(24), cfg, eval_ds=_data(16, 2), on_epoch=stop_after_two)
        return result, {k: v.clone() for k, v in model.state_dict().items()}

    straight, straight_state = run()
    ckpt = tmp_path / "fit.pt"
    with pytest.raises(KeyboardInterrupt):
        run(str(ckpt), stop=True)
    saved = torch.load(ckpt, weights_only=True)  # tensors and plain values only: nothing in it runs code
    assert ckpt.with_name("fit.pt.sha256").read_text().strip() == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (saved["epoch"], saved["step"], len(saved["history"]), saved["images"]) == (1, 6, 2, 48)
    resumed, resumed_state = run(str(ckpt))
    assert resumed.history == [dict(h, data_wait_frac=r["data_wait_frac"])
                               for h, r in zip(straight.history, resumed.history)]
    assert resumed.eval_acc == straight.eval_acc
    for key in straight_state:
        assert torch.equal(resumed_state[key], straight_state[key]), key
    assert not ckpt.exists() and not ckpt.with_name("fit.pt.sha256").exists()


def _drop_probs(model) -> list[float]:
    """Each block's two drop-path rates, in module order (0 for an Identity)."""
    return [getattr(m, "drop_prob", 0.0) for n, m in model.named_modules() if n.rpartition(".")[2] in DROP_PATHS]


@pytest.mark.parametrize("build", [
    lambda rate: VisionTransformer(num_classes=0, drop_path_rate=rate, **DEMO_CONFIG),
    lambda rate: SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 3), num_heads=(1, 2, 4),
                                 window_size=4, num_classes=0, drop_path_rate=rate),
], ids=["vit", "swin"])
def test_drop_path_is_what_timm_builds_for_each_family(build):
    """Set on a model built without stochastic depth (and adapted by a method), the rates are the
    ones timm gives the same model built with ``drop_path_rate`` (Swin: per block over all stages)."""
    torch.manual_seed(0)
    reference = build(0.25)
    model = methods.get("lora").apply(build(0.0), num_classes=5)
    assert set(_drop_probs(model)) == {0.0}
    set_drop_path(model, 0.25)
    assert _drop_probs(model) == _drop_probs(reference)
    assert len(set(_drop_probs(reference))) > 3  # rates really differ per block
    assert train.set_drop_path is set_drop_path
