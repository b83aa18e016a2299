"""The pieces of ``bench.train.fit`` (issue 12): the linear probe's feature cache against training
through the whole model, the NaN check, resuming a paper recipe's per-epoch schedule from a
checkpoint, stochastic depth as timm builds it for each backbone family, and the methods' per-step
hooks (called once per fit and step, resumed with their state; AdaLoRA's allocator in checkpoints,
compiled and eager alike; a method without hooks trains as the plain loop).

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
from conftest import plain_fit
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


# -- the per-step hooks of Method (begin_fit, extra_loss, after_step, fit_state): AdaLoRA's ------------

def _spy_method(calls: list):
    """A throwaway lora whose hooks record their calls; its extra loss is the constant 1 and its
    fit state the steps seen so far."""
    from methods.base import register

    class Spy(type(methods.get("lora"))):
        name = "_spy_hooks"

        def begin_fit(self, model, total_steps):
            calls.append(("begin_fit", total_steps))
            model.spy_steps = []

        def extra_loss(self, model):
            calls.append(("extra_loss", torch.is_autocast_enabled("cpu")))
            return torch.ones(())

        def after_step(self, model, step):
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # grads still there
            calls.append(("after_step", step))
            model.spy_steps.append(step)

        def fit_state(self, model):
            return {"steps": list(model.spy_steps)}

        def load_fit_state(self, model, state):
            calls.append(("load_fit_state", state))
            model.spy_steps = list(state["steps"])

    register(Spy)
    return Spy.name


def _hooked_fit(backbone, name, tmp_path=None, stop_after=None, precision=None, epochs=3):
    train.seed_everything(0)
    model = methods.get(name).apply(backbone, num_classes=5)
    cfg = train.TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, weight_decay=1e-4, seed=3, precision=precision,
                            checkpoint=str(tmp_path / "fit.pt") if tmp_path else None)

    def stop(epoch, metrics):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt

    result = train.fit(model, _data(24), cfg, on_epoch=stop)  # 3 steps an epoch
    return result, model


def test_hooks_are_called_once_per_fit_and_step_and_resume_where_the_fit_stopped(backbone, tmp_path):
    from bench.testing import temporary_registry

    calls: list = []
    with temporary_registry():
        name = _spy_method(calls)
        straight, model = _hooked_fit(backbone, name)
        assert calls == [("begin_fit", 9)] + [("extra_loss", False), ("after_step", 1)] + [
            c for step in range(2, 10) for c in (("extra_loss", False), ("after_step", step))]
        lora, _ = _hooked_fit(backbone, "lora")  # the same fit without the extra loss of 1
        assert [h["train_loss"] for h in straight.history] == pytest.approx(
            [h["train_loss"] + 1 for h in lora.history], rel=1e-6)

        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            _hooked_fit(backbone, name, tmp_path, stop_after=0)
        assert torch.load(tmp_path / "fit.pt", weights_only=True)["fit_state"] == {"steps": [1, 2, 3]}
        calls.clear()
        resumed, model = _hooked_fit(backbone, name, tmp_path)
        assert calls[:2] == [("begin_fit", 9), ("load_fit_state", {"steps": [1, 2, 3]})]
        assert [c for c in calls if c[0] == "after_step"] == [("after_step", s) for s in range(4, 10)]
        assert model.spy_steps == list(range(1, 10))
        assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]

        calls.clear()
        _hooked_fit(backbone, name, precision="bf16", epochs=1)  # the extra loss outside autocast, in fp32
        assert ("extra_loss", False) in calls and ("extra_loss", True) not in calls


def test_the_timed_step_of_perf_gpu_check_and_the_planner_runs_the_hooks(backbone):
    """``bench.steps.method_steps`` (what `bench perf`, `bench gpu-check` and the run planner time)
    takes each step as a fit does: begin_fit once, then the extra loss and after_step every step."""
    from bench.steps import method_steps
    from bench.testing import temporary_registry

    calls: list = []
    with temporary_registry():
        model = methods.get(_spy_method(calls)).apply(backbone, num_classes=5)
        step = method_steps(model, train.make_optimizer(model, 1e-3, 0.0, "cpu"), "cpu", total_steps=7)
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        losses = [step(x, y) for _ in range(3)]
    assert calls == [("begin_fit", 7)] + [c for s in (1, 2, 3) for c in (("extra_loss", False), ("after_step", s))]
    assert all(loss > 1.0 for loss in losses)  # the spy's extra loss of 1 is in the loss


def test_a_method_without_hooks_trains_as_the_plain_loop(backbone):
    """The default hooks add nothing: lora's fit is, bit for bit, AdamW and the cosine schedule on
    the cross-entropy alone, and they hold no state for a checkpoint."""
    result, model = _hooked_fit(backbone, "lora")
    train.seed_everything(0)
    ref = methods.get("lora").apply(backbone, num_classes=5)
    plain_fit(ref, _data(24), epochs=3, batch_size=8, lr=3e-3, weight_decay=1e-4, seed=3, total_steps=9)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in ref.state_dict().items())
    lora = methods.get("lora")
    assert lora.extra_loss(model) is None and lora.fit_state(model) == {}
    assert type(lora).after_step is methods.Method.after_step and type(lora).extra_loss is methods.Method.extra_loss


def _adalora_fit(backbone, tmp_path=None, stop_after=None, drop_state=False, monkeypatch=None, **kw):
    """An adalora fit of 3 epochs x 3 steps: tinit 1, tfinal 4 (the final masking at step 6), a budget
    allocation every step; ``drop_state``: its checkpoint without the allocator's state."""
    if drop_state:
        method = methods.get("adalora")
        monkeypatch.setattr(method, "fit_state", lambda model: {})
        monkeypatch.setattr(method, "load_fit_state", lambda model, state: None)
    train.seed_everything(0)
    model = methods.get("adalora").apply(backbone, num_classes=5, deltaT=1, target_r=4, init_r=8)
    cfg = train.TrainConfig(epochs=3, batch_size=8, lr=3e-2, weight_decay=1e-4, seed=3,
                            checkpoint=str(tmp_path / "fit.pt") if tmp_path else None, **kw)

    def stop(epoch, metrics):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt

    train.fit(model, _data(24), cfg, on_epoch=stop)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _ranks(state) -> list[int]:
    return [int((v != 0).sum()) for k, v in state.items() if ".lora_E." in k]


@pytest.mark.parametrize("stop_after", [0, 1], ids=["while-the-budget-shrinks", "after-the-final-mask"])
def test_resumed_adalora_fit_is_the_uninterrupted_one_with_its_allocator_state(backbone, tmp_path, monkeypatch,
                                                                               capfd, stop_after):
    """The checkpoint carries the rank allocator's importance averages (used by the allocations after
    a resume in the budget phase) and its rank pattern (which masks every step of the final phase):
    the resumed fit ends where the uninterrupted one does, and without that state it does not."""
    straight = _adalora_fit(backbone)
    assert sum(_ranks(straight)) == 4 * 16 and len(set(_ranks(straight))) > 1  # the budget, unevenly allocated
    with pytest.raises(KeyboardInterrupt):
        _adalora_fit(backbone, tmp_path, stop_after=stop_after)
    saved = torch.load(tmp_path / "fit.pt", weights_only=True)["fit_state"]
    # masked at every step from step 3 on; the final masking (step 6) resets the importance averages
    assert saved["rank_pattern"] and bool(saved["exp_avg_ipt"]) == (stop_after == 0)
    capfd.readouterr()
    resumed = _adalora_fit(backbone, tmp_path)
    assert "warning" not in capfd.readouterr().err  # resumed, not restarted
    assert all(torch.equal(resumed[k], v) for k, v in straight.items())

    with pytest.raises(KeyboardInterrupt):
        _adalora_fit(backbone, tmp_path, stop_after=stop_after, drop_state=True, monkeypatch=monkeypatch)
    if stop_after == 0:  # the importance averages restart from zero: other ranks are masked
        without = _adalora_fit(backbone, tmp_path, drop_state=True, monkeypatch=monkeypatch)
        assert not all(torch.equal(without[k], v) for k, v in straight.items())
    else:  # the final phase masks by the saved rank pattern: without it peft's allocator has none to use
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'keys'"):
            _adalora_fit(backbone, tmp_path, drop_state=True, monkeypatch=monkeypatch)


def test_an_adalora_state_of_another_model_is_not_resumed(backbone, tmp_path, capfd):
    with pytest.raises(KeyboardInterrupt):
        _adalora_fit(backbone, tmp_path, stop_after=0)
    path = tmp_path / "fit.pt"
    state = torch.load(path, weights_only=True)
    name = next(iter(state["fit_state"]["exp_avg_ipt"]))
    state["fit_state"]["exp_avg_ipt"][name] = torch.zeros(3)
    torch.save(state, path)
    path.with_name("fit.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    assert all(torch.equal(a, b) for a, b in zip(_adalora_fit(backbone, tmp_path).values(),
                                                  _adalora_fit(backbone).values()))
    assert "it holds another method's state (AdaLoRA exp_avg_ipt of other tensors)" in capfd.readouterr().err


def test_compiled_adalora_fit_is_the_eager_one(backbone, monkeypatch):
    """--compile compiles the model's step only; the regulariser and the allocation stay outside it
    (aot_eager here: dynamo + AOTAutograd, the graphs inductor would get)."""
    compile_, compiled_fns = torch.compile, []
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kw: compiled_fns.append(fn) or compile_(fn, backend="aot_eager", **kw))
    eager = _adalora_fit(backbone)
    compiled = _adalora_fit(backbone, compile=True)
    assert len(compiled_fns) == 1 and isinstance(compiled_fns[0], torch.nn.Module)  # the model's step alone
    assert _ranks(compiled) == _ranks(eager)
    for k, v in eager.items():
        torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-6)


def test_a_checkpoint_from_before_fit_state_resumes_a_method_without_one(backbone, tmp_path, capfd):
    straight, model = _hooked_fit(backbone, "lora")
    with pytest.raises(KeyboardInterrupt):
        _hooked_fit(backbone, "lora", tmp_path, stop_after=0)
    path = tmp_path / "fit.pt"
    state = torch.load(path, weights_only=True)
    assert state.pop("fit_state") == {}
    torch.save(state, path)
    path.with_name("fit.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    capfd.readouterr()
    resumed, resumed_model = _hooked_fit(backbone, "lora", tmp_path)
    assert "warning" not in capfd.readouterr().err  # resumed, not restarted
    assert resumed.history[0] == dict(straight.history[0], data_wait_frac=resumed.history[0]["data_wait_frac"])
    assert all(torch.equal(v, resumed_model.state_dict()[k]) for k, v in model.state_dict().items())
