"""The GPU path, proven on CPU before a GPU is lent (issue 29; design.md "Precision and devices").

Every registered method (parametrized over ``methods.names()``: a method registered later is
covered at once) on the demo architecture (``small_vit``: random, non-trivial 1-d tensors):

- bf16: a few training steps of ``bench.bench_steps.train_step`` under bf16 autocast on CPU give finite
  losses close to fp32's, gradients reach exactly the trainable tensors (fp32, as the parameters
  stay), and after bf16 training the merged model still matches the adapted one in fp32 eval;
- compile: the compiled step of a fit (``bench.train._step_fn`` with ``compile=True``) gives the
  losses of the eager step, forward and backward compiled (custom autograd functions included).
  Every method with dynamo + AOTAutograd (backend ``aot_eager``: graph capture, the autograd
  functions' forward and backward traced, functionalization; seconds per method), ``INDUCTOR``
  also with inductor, the GPU's backend, in bf16 (C++ code generation on CPU: tens of seconds per
  method cold, too slow for all). A method that cannot compile declares ``compiles = False`` with
  ``compile_why`` and its step must then run eagerly;
- devices: forward and backward with the model and batch on the ``meta`` device under
  ``StrictDevices``, which fails any op whose tensors are on two devices (CUDA's rule: a 0-dim CPU
  tensor may join any device) and, stricter than CUDA, an index tensor on another device. A tensor
  created on the CPU by default, a hard-coded ``device="cpu"``, a tensor attribute that ``.to()``
  left behind: each fails here as it would on a GPU (``test_strict_devices_catches``).

Then what the GPU path adds around the step: ``--precision`` (request, spec, identity, records),
one worker per GPU pinned by ``CUDA_VISIBLE_DEVICES`` (a faked list of GPUs, nothing started), the
device class of the report's throughput and memory columns, and `bench gpu-check` (its refusal on
CPU, its measurements run on CPU with the demo backbone).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import methods
from bench import device as bench_device
from bench import steps as bench_steps
from bench import testing, train
from bench.errors import UserError
from bench.run.spec import parse_int_list

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = methods.names()
NUM_CLASSES = 3
STEPS = 3  # zero-initialised factors (LoRA's B) keep their partner still for the first step
LR = 1e-3
LABELS = torch.tensor([0, 1, 2, 0])

# bf16 keeps 8 significant bits: unit roundoff u = 2^-8 (0.39 %), against fp32's 2^-24. Under bf16
# autocast every matmul rounds its inputs to bf16, so each of the demo's 4 blocks (4 matmuls each,
# plus the head) adds a relative error of about u to the logits, and 3 AdamW steps whose
# gradients carry the same errors move the weights slightly apart. 16 u = 6.25 % of the loss
# (of 1 for a loss below 1) bounds that with room (measured here: at most 0.51 %, fourierft, whose
# scaling of 300 amplifies the rounding); a real bug (a dropped or doubled term, a weight not
# cast, a NaN) moves the loss by far more.
BF16_RTOL = 16 * 2.0**-8
# aot_eager runs the very ops eager runs (traced, functionalized): measured at most 6e-8 apart in
# fp32 over every method (one fp32 ulp of the loss). 1e-5 leaves two orders of magnitude.
AOT_EAGER_RTOL = 1e-5
# inductor fuses and reorders fp32 reductions (error ~ sqrt(n) ulp per reduction); in bf16 its fused
# kernels keep intermediates in fp32 where eager rounds each op's output to bf16: the bf16 bound.
INDUCTOR = ("lora", "rlrr")  # the most used method, and the one with a custom autograd function
MERGE_ATOL = testing.MERGE_ATOL  # design.md: merge exact to 1e-4 in fp32
TORCH_COMPILE = torch.compile  # the tests below stand a backend in for inductor by patching torch.compile


def close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(1.0, abs(b))


def adapted(name: str, backbone: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return methods.get(name).apply(backbone, num_classes=NUM_CLASSES).train()


def fit_steps(model: nn.Module, step_fn, images: torch.Tensor, precision: str, steps: int = STEPS) -> list[float]:
    """``steps`` optimizer steps of ``bench.bench_steps.train_step`` (AdamW, no weight decay) on one batch;
    the losses. The dropout's random numbers start from one seed, the same for every call."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    torch.manual_seed(1)
    return [bench_steps.train_step(step_fn, opt, images, LABELS, "cpu", precision).item() for _ in range(steps)]


# --------------------------------------------------------------------------- bf16 autocast on CPU

@pytest.mark.parametrize("name", NAMES)
def test_bf16_steps_match_fp32_reach_the_trainable_tensors_and_merge(name, small_vit, images):
    fp32 = adapted(name, small_vit)
    reference = fit_steps(fp32, fp32, images, "fp32")
    model = adapted(name, small_vit)
    losses = fit_steps(model, model, images, "bf16")
    assert all(math.isfinite(v) for v in losses), losses
    assert all(close(b, f, BF16_RTOL) for b, f in zip(losses, reference)), f"bf16 {losses} against fp32 {reference}"

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable, (f"no gradient: {sorted(trainable - with_grad)}; "
                                    f"frozen but given one: {sorted(with_grad - trainable)}")
    for n, p in model.named_parameters():  # autocast computes in bf16; the weights and their gradients stay fp32
        assert p.dtype == torch.float32, n
        assert p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()), n

    model.eval()
    with torch.no_grad():
        logits = model(images)
        try:
            merged = methods.get(name).merge(model).eval()
        except methods.NotMergeable:
            assert not methods.get(name).mergeable
            return
        assert methods.get(name).mergeable
        assert torch.allclose(merged(images), logits, atol=MERGE_ATOL), (merged(images) - logits).abs().max()


def test_train_step_runs_in_the_precision_asked_for():
    layer = nn.Linear(4, 3)
    seen = []

    def step_fn(x):
        out = layer(x)
        seen.append(out.dtype)
        return out

    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    for precision in ("bf16", "fp32", None):  # None: the device's default, fp32 on CPU
        bench_steps.train_step(step_fn, opt, x, y, "cpu", precision)
    assert seen == [torch.bfloat16, torch.float32, torch.float32]
    assert layer.weight.dtype == torch.float32


def test_rlrrs_autograd_function_runs_its_backward_in_its_forwards_autocast(monkeypatch):
    """Declared for every device type (not only CUDA's ``custom_bwd``): on CPU too the backward
    runs in the autocast state its forward ran in, not in the autograd engine's (none)."""
    from methods.rlrr import RLRRLinear, _RescaledLinear

    seen, real = [], _RescaledLinear._backward

    def backward(ctx, g):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(ctx, g)

    monkeypatch.setattr(_RescaledLinear, "_backward", staticmethod(backward))
    layer = RLRRLinear(nn.Linear(6, 6))
    x = torch.randn(2, 6, requires_grad=True)
    for precision in ("bf16", "fp32"):
        with bench_device.autocast("cpu", precision):
            out = layer(x)
        assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        out.float().sum().backward()
    assert seen == [(True, torch.bfloat16), (False, torch.bfloat16)]
    assert layer.s_in.grad.dtype == torch.float32


def test_autocast_is_device_generic():
    on = bench_device.autocast("cpu", "bf16")
    assert (on.device, on.fast_dtype, on._enabled) == ("cpu", torch.bfloat16, True)
    with warnings.catch_warnings():  # without CUDA, torch warns that it disables this one
        warnings.simplefilter("ignore")
        gpu = bench_device.autocast("cuda:1", "bf16")  # built, not entered: no CUDA needed
    assert (gpu.device, gpu.fast_dtype) == ("cuda", torch.bfloat16)
    assert not bench_device.autocast("cpu")._enabled  # CPU's default is fp32
    assert not bench_device.autocast("cuda", "fp32")._enabled
    assert bench_device.precision("cuda:0") == "bf16" and bench_device.precision("cpu") == "fp32"
    assert bench_device.resolve_precision(None, "cuda") == "bf16"
    assert bench_device.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(UserError, match="unknown precision 'fp16'; use fp32 or bf16"):
        bench_device.resolve_precision("fp16", "cpu")


# --------------------------------------------------------------------------- torch.compile

def counting_aot_eager(seen: dict):
    """The ``aot_eager`` backend, counting the forward and backward graphs it is handed."""
    from torch._dynamo.backends.debugging import aot_eager, boxed_nop

    def counted(kind):
        def compiler(gm, example_inputs):
            seen[kind] += 1
            return boxed_nop(gm, example_inputs)
        return compiler

    return functools.partial(aot_eager, fw_compiler=counted("forward"), bw_compiler=counted("backward"))


def compiled_step(monkeypatch, model: nn.Module, backend) -> nn.Module:
    """The step a fit with ``--compile`` takes (``bench.train._step_fn``), compiled by ``backend``."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: TORCH_COMPILE(fn, backend=backend, **kw))
    cfg = train.TrainConfig(epochs=1, batch_size=4, lr=LR, weight_decay=0.0, compile=True)
    return train._step_fn(model, cfg, features=False)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_matches_eager(name, small_vit, images, monkeypatch):
    """dynamo + AOTAutograd (``aot_eager``) on every method, fp32: the compiled step's losses equal
    the eager step's; a forward and a backward graph were compiled (nothing ran eagerly unseen)."""
    method = methods.get(name)
    eager = adapted(name, small_vit)
    reference = fit_steps(eager, eager, images, "fp32")
    model = adapted(name, small_vit)
    seen = {"forward": 0, "backward": 0}
    step_fn = compiled_step(monkeypatch, model, counting_aot_eager(seen))
    if not method.compiles:  # declared, with its reason in one line: the fit runs eagerly
        assert method.compile_why.strip() and "\n" not in method.compile_why
        assert step_fn is model
        return
    losses = fit_steps(model, step_fn, images, "fp32")
    assert seen["forward"] >= 1 and seen["backward"] >= 1, seen
    assert all(close(c, e, AOT_EAGER_RTOL) for c, e in zip(losses, reference)), f"compiled {losses}, eager {reference}"


@pytest.mark.parametrize("name", INDUCTOR)
def test_inductor_bf16_step_matches_eager(name, small_vit, images, monkeypatch):
    """Inductor, as on a GPU, in bf16: the losses of the eager bf16 step within the bf16 bound.
    Inductor draws dropout's random numbers its own way unless ``fallback_random``."""
    import torch._inductor.config as inductor_config

    eager = adapted(name, small_vit)
    reference = fit_steps(eager, eager, images, "bf16")
    model = adapted(name, small_vit)
    torch.compiler.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with inductor_config.patch(fallback_random=True):
        step_fn = compiled_step(monkeypatch, model, "inductor")
        losses = fit_steps(model, step_fn, images, "bf16")
    assert counters["stats"]["unique_graphs"] >= 1 and counters["inductor"], "nothing was compiled by inductor"
    assert all(close(c, e, BF16_RTOL) for c, e in zip(losses, reference)), f"compiled {losses}, eager {reference}"


def test_a_worker_keeps_compiling_past_its_eighth_method(small_vit, images, monkeypatch):
    """dynamo compiles one function for at most 8 kinds of model, then runs the next eagerly without
    a word; ``bench.compiled.compile_step`` empties its caches when the method changes, so the 9th
    and later methods a worker fits are still compiled."""
    names = [n for n in NAMES if methods.get(n).compiles][:10]
    assert len(names) == 10
    for i, name in enumerate(names, 1):
        model = adapted(name, small_vit)
        seen = {"forward": 0, "backward": 0}
        fit_steps(model, compiled_step(monkeypatch, model, counting_aot_eager(seen)), images, "fp32", steps=1)
        assert seen["forward"] >= 1, f"{name}, method {i} of the worker, ran eagerly"


def test_a_method_that_cannot_compile_runs_eagerly_and_its_runs_say_so(small_vit, monkeypatch):
    from bench.run.records import Records
    from bench import tracking

    monkeypatch.setattr(methods.get("lora"), "compiles", False)
    monkeypatch.setattr(methods.get("lora"), "compile_why", "a test says so")
    model = adapted("lora", small_vit)
    cfg = train.TrainConfig(epochs=1, batch_size=4, lr=LR, weight_decay=0.0, compile=True)
    assert train._step_fn(model, cfg, features=False) is model

    class Spec:
        compile = True
        suite = type("Suite", (), {"name": "demo"})

    class Fake(Records):
        spec = Spec
        provenance = {"git_commit": "abc"}

        def experiment(self, method):
            return type("E", (), {"to_json": lambda self: "{}", "key": lambda self: "k"})()

    task = type("Task", (), {"name": "digits", "group": "demo"})
    assert Fake()._tags("final", "lora", task, 1)[tracking.COMPILE_TAG] == "eager: a test says so"
    assert Fake()._tags("final", "ssf", task, 1)[tracking.COMPILE_TAG] == "compiled"
    Spec.compile = False
    assert tracking.COMPILE_TAG not in Fake()._tags("final", "ssf", task, 1)


# --------------------------------------------------------------------------- devices

_aten = torch.ops.aten
_TRANSFERS = {_aten._to_copy.default, _aten.copy_.default, _aten._copy_from.default,
              _aten._copy_from_and_resize.default, _aten.lift_fresh.default}


def _stand_in(t):
    """A CPU tensor of ``t``'s shape and dtype (zeros; a sparse one keeps its entry count)."""
    if not isinstance(t, torch.Tensor) or t.device.type != "meta":
        return t
    if t.is_sparse:
        nnz, dims = t._nnz(), t.shape[:t.sparse_dim()]
        index = (torch.stack(torch.unravel_index(torch.arange(nnz), dims)) if nnz
                 else torch.zeros(len(dims), 0, dtype=torch.long))
        return torch.sparse_coo_tensor(index, _stand_in(t._values()), t.shape, is_coalesced=t.is_coalesced())
    return torch.zeros(t.shape, dtype=t.dtype)


def _to_meta(t):
    if isinstance(t, torch.Tensor) and t.is_sparse:
        return torch.sparse_coo_tensor(t._indices().to("meta"), t._values().to("meta"), t.shape,
                                       is_coalesced=t.is_coalesced())
    return t.to("meta") if isinstance(t, torch.Tensor) else t


class StrictDevices(TorchDispatchMode):
    """Fails every op (forward and backward, inside autograd functions too) whose tensors are on
    more than one device, a 0-dim CPU tensor excepted (CUDA accepts a CPU scalar); copies between
    devices (``.to``) are what moves tensors and pass. Where the model is on the meta device, an op
    that meta cannot run because it reads values (``.item()``, a boolean mask, a sparse
    coalesce: peft's vblora, waveft, shira) runs on zeros of the same shapes on CPU, after its
    devices were checked: the shapes carry on, and the check goes on past it."""

    def __init__(self):
        super().__init__()
        self.ran_on_zeros: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func not in _TRANSFERS:
            devices = {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}: "
                                     + ", ".join(f"{t.device} {tuple(t.shape)}" for t in tensors))
        try:
            return func(*args, **kwargs)
        except (NotImplementedError, RuntimeError):
            if not any(t.device.type == "meta" for t in tensors):
                raise
        self.ran_on_zeros.add(str(func))
        out = func(*tree_map(_stand_in, args), **tree_map(_stand_in, kwargs))
        return out if func is _aten._local_scalar_dense.default else tree_map(_to_meta, out)


def meta_step(model: nn.Module, batch: int = 4, size: int = 32) -> StrictDevices:
    """``model`` moved to the meta device, one forward and backward there under ``StrictDevices``;
    every trainable tensor then holds a meta gradient."""
    model.to("meta")
    x = torch.randn(batch, 3, size, size, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    mode = StrictDevices()
    with mode:
        F.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.device.type == "meta", n
    return mode


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_keep_to_the_models_device(name, small_vit):
    meta_step(adapted(name, small_vit))


class _Planted(nn.Module):
    """A Linear with one device bug of ``kind`` (or none: ``ok``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(8, 8)
        self.mask = torch.ones(8)  # a plain attribute, not a buffer: .to() leaves it where it was

    def forward(self, x):
        h = self.lin(x)
        if self.kind == "tensor created on the CPU":
            return h + torch.zeros(h.shape[-1])
        if self.kind == "hard-coded device":
            return h * torch.ones(h.shape, device="cpu")
        if self.kind == "attribute left behind by .to()":
            return h * self.mask
        if self.kind == "index on another device":
            return h.index_select(-1, torch.arange(4))
        if self.kind == "autograd function's backward":
            return _CpuGradient.apply(h)
        return h + torch.zeros(h.shape[-1], device=h.device)  # ok: created where the activations are


class _CpuGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * torch.ones(g.shape[-1])  # created on the CPU in the backward


@pytest.mark.parametrize("kind", ["tensor created on the CPU", "hard-coded device", "attribute left behind by .to()",
                                  "index on another device", "autograd function's backward"])
def test_strict_devices_catches(kind):
    model = _Planted(kind).to("meta")
    x = torch.randn(2, 8, device="meta", requires_grad=True)
    with pytest.raises(AssertionError, match="mixes devices"), StrictDevices():
        model(x).sum().backward()


def test_strict_devices_passes_a_correct_model_and_reads_values_on_zeros():
    model = _Planted("ok").to("meta")
    x = torch.randn(2, 8, device="meta", requires_grad=True)
    with StrictDevices() as mode:
        model(x).sum().backward()
        assert bool(x.sum() > 0) is False  # .item() of a meta tensor: read from zeros
    assert x.grad.device.type == "meta" and "aten._local_scalar_dense.default" in mode.ran_on_zeros


# --------------------------------------------------------------------------- --precision: request, spec, identity

def test_precision_is_a_request_field_the_spec_resolves_and_the_identity_keeps(tmp_path):
    from bench.run.spec import RunRequest, build_spec

    request = RunRequest(methods="lora", tasks="digits", out=str(tmp_path / "run"), device="cpu")
    default = build_spec(request)
    bf16 = build_spec(RunRequest.from_json(dataclasses.replace(request, precision="bf16").to_json()))
    assert (default.precision, bf16.precision) == ("fp32", "bf16")  # CPU's default; asked for
    assert bf16.request.precision == "bf16"  # what workers receive
    a, b = default.experiment("lora", "w" * 64), bf16.experiment("lora", "w" * 64)
    assert (a.precision, b.precision) == ("fp32", "bf16") and a.key() != b.key()
    assert b.params()["precision"] == "bf16"  # logged with every run
    cfg = type("Ctx", (), {"spec": bf16})()
    from bench.run.context import RunContext

    assert RunContext._config(cfg, {"lr": 1e-3, "weight_decay": 0.0}, 0, "d").precision == "bf16"


def test_precision_flag(capsys):
    from bench import cli

    args = cli.build_parser().parse_args(["tune", "--method", "lora", "--task", "digits", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert cli.build_parser().parse_args(["run"]).precision is None
    assert cli.main(["run", "--precision", "fp16"]) == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


# --------------------------------------------------------------------------- one worker per GPU

@pytest.fixture
def four_gpus(monkeypatch):
    """A machine that shows 4 GPUs (nothing on it is started: no CUDA call reaches torch)."""
    monkeypatch.setattr(bench_device, "visible_gpus", lambda: ["0", "1", "2", "3"])


@pytest.fixture
def cpu_spec(tmp_path):
    from bench.run.spec import RunRequest, build_spec

    return build_spec(RunRequest(methods="lora", tasks="digits", out=str(tmp_path / "run"), device="cpu"))


def worker_envs(monkeypatch, spec, jobs: int, gpus: list[str]) -> list[dict]:
    """The environment of each worker ``run_local_workers`` would start (no process is started)."""
    from bench.run import workers

    envs = []

    class Proc:  # a worker that has exited at once, with code 0
        returncode = 0

        def __init__(self, cmd, env):
            envs.append(env)

        def poll(self):
            return 0

        def wait(self):
            return 0

        def terminate(self):
            pass

    monkeypatch.setattr(workers.subprocess, "Popen", Proc)
    monkeypatch.setattr(workers, "build_backbone", lambda spec: None)
    monkeypatch.setattr(workers, "open_stores", lambda spec: None)
    assert workers.run_local_workers(spec, jobs, gpus) == 0
    return envs


def test_jobs_auto_starts_one_worker_per_gpu_each_pinned_to_its_own(four_gpus, cpu_spec, monkeypatch):
    from bench.run.workers import parse_jobs

    spec = dataclasses.replace(cpu_spec, device="cuda")
    gpus = bench_device.pick_gpus(spec.device, None)
    assert parse_jobs("auto", spec, gpus) == 4
    envs = worker_envs(monkeypatch, spec, 4, gpus)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"]
    assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)
    picked = bench_device.pick_gpus("cuda", [0, 2, 3])
    assert parse_jobs("auto", spec, picked) == 3
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs(monkeypatch, spec, 3, picked)] == ["0", "2", "3"]
    # more workers than GPUs share them round robin; --force runs one worker; CPU: no pinning
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs(monkeypatch, spec, 5, picked)] == ["0", "2", "3", "0", "2"]
    assert parse_jobs("auto", dataclasses.replace(spec, force=True), gpus) == 1
    assert bench_device.pick_gpus("cpu", None) == [] and bench_device.pick_gpus("cuda:1", None) == []
    assert "CUDA_VISIBLE_DEVICES" not in bench_device.pinned_env({}, [], 0)


def test_devices_flag_through_bench_run(four_gpus, tmp_path, monkeypatch, capsys):
    """`bench run --devices 1,3` on a (faked) CUDA machine starts 2 workers, pinned to GPUs 1 and 3."""
    from bench import cli
    from bench.commands import run as run_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    started = []
    monkeypatch.setattr(run_command, "run_local_workers", lambda spec, jobs, gpus: started.append((spec, jobs, gpus)) or 0)
    assert cli.main(["run", "--methods", "lora", "--tasks", "digits", "--devices", "1,3", "--no-report",
                     "--out", str(tmp_path / "run")]) == 0
    (spec, jobs, gpus), = started
    assert (spec.device, spec.precision, jobs, gpus) == ("cuda", "bf16", 2, ["1", "3"])
    assert cli.main(["run", "--methods", "lora", "--devices", "7", "--dry-run", "--out", str(tmp_path / "r")]) == 2
    assert "--devices 7: no GPU 7; this machine shows 4 (0 to 3)" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["run", "--methods", "lora", "--devices", "0", "--dry-run", "--out", str(tmp_path / "r")]) == 2
    assert "--devices picks GPUs for one worker each; it needs --device cuda" in capsys.readouterr().err


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert bench_device.visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert bench_device.visible_gpus() == ["4", "5", "6", "7"]
    assert bench_device.pick_gpus("cuda", [0, 2, 3]) == ["4", "6", "7"]  # --devices counts as torch does
    with pytest.raises(UserError, match="--devices 4: no GPU 4"):
        bench_device.pick_gpus("cuda", [4])
    for bad, message in (("0,0", "distinct"), ("a", "comma-separated integers"), ("-1", "integers >= 0")):
        with pytest.raises(UserError, match=message):  # the flag's text, parsed as every integer list is
            parse_int_list(bad, "--devices", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_device.visible_gpus() == []


# --------------------------------------------------------------------------- what a run records, the report

def test_a_run_records_its_precision_compile_and_device_class_and_the_report_says_it(tmp_path, monkeypatch):
    """A micro `bench run --precision bf16 --compile` on CPU (aot_eager standing in for inductor; lora
    declared not to compile): its runs log precision bf16 in their identity and params, the compile
    tag (compiled, or eager with the reason) and the device class, which heads the report's
    throughput and memory columns."""
    import mlflow

    from bench import cli, tracking

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: TORCH_COMPILE(fn, backend="aot_eager", **kw))
    monkeypatch.setattr(methods.get("lora"), "compiles", False)
    monkeypatch.setattr(methods.get("lora"), "compile_why", "declared by this test")
    out = tmp_path / "run"
    assert cli.main(["run", "--methods", "lora,bitfit", "--tasks", "digits", "--trials", "1", "--epochs", "1",
                     "--seeds", "1", "--jobs", "1", "--precision", "bf16", "--compile", "--out", str(out)]) == 0
    client = mlflow.MlflowClient(tracking.sqlite_url(out / "mlflow.db"))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 4  # a trial and a final fit of each method
    for run in runs:
        assert run.data.params["precision"] == "bf16" and '"precision":"bf16"' in run.data.tags["experiment"]
        assert run.data.params[tracking.DEVICE_NAME_PARAM] == "CPU"
        expected = "eager: declared by this test" if run.data.tags["method"] == "lora" else "compiled"
        assert run.data.tags[tracking.COMPILE_TAG] == expected
    board = (out / "demo.md").read_text()
    assert "| Train img/s (CPU) " in board and "| Peak mem (MB, CPU) " in board


def test_the_report_names_each_rows_device_class_when_they_differ():
    import pandas as pd

    from bench.report.board import measured_on, measured_on_note

    one = pd.DataFrame({"measured_on": ["NVIDIA H100 80GB HBM3"] * 2}, index=["lora", "ssf"])
    assert measured_on(one) == "NVIDIA H100 80GB HBM3" and measured_on_note(one) is None
    mixed = pd.DataFrame({"measured_on": ["NVIDIA H100 80GB HBM3", "CPU", "CPU, NVIDIA A100-SXM4-40GB", ""]},
                         index=["lora", "ssf", "vpt", "full"])
    assert measured_on(mixed) == ""
    assert measured_on_note(mixed) == (
        "Train img/s and Peak mem (MB) come from different devices, not comparable across them: CPU: ssf; "
        "CPU, NVIDIA A100-SXM4-40GB: vpt; NVIDIA H100 80GB HBM3: lora; not recorded: full.")
    assert measured_on(pd.DataFrame({"measured_on": [""]}, index=["lora"])) == ""  # older runs: headers as before
    assert measured_on_note(pd.DataFrame({"measured_on": [""]}, index=["lora"])) is None


# --------------------------------------------------------------------------- bench gpu-check

def test_gpu_check_refuses_without_cuda_in_one_line(monkeypatch, capsys):
    from bench import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["gpu-check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench gpu-check needs a CUDA GPU") and err.count("\n") == 1


def test_gpu_check_measures_on_cpu_what_it_measures_on_a_gpu(monkeypatch, tmp_path):
    """Its measurements on CPU with the demo backbone (aot_eager standing in for inductor): every
    column of a finished method, MFU against a faked peak, a method declared not to compile (eager
    only, with its reason), a failing method (its error; the others go on), an exhausted budget."""
    from bench.commands import gpu_check

    monkeypatch.setattr(gpu_check, "peak_flops", lambda device: 1e12)
    monkeypatch.setattr(methods.get("ssf"), "compiles", False)
    monkeypatch.setattr(methods.get("ssf"), "compile_why", "declared by this test")
    lines = []
    rows = gpu_check.check_all(["rlrr", "ssf", "no_such_method"], "demo", "cpu", 4, 2, 600, backend="aot_eager",
                               say=lines.append)
    rlrr, ssf, bad = rows
    assert rlrr.status == "finished" and rlrr.flops > 0
    for value in (rlrr.eager_img_s, rlrr.compiled_img_s, rlrr.compile_s, rlrr.speedup):
        assert value is not None and value >= 0
    assert rlrr.eager_mfu_pct == pytest.approx(100 * rlrr.flops * rlrr.eager_img_s / 4 / 1e12)
    assert rlrr.compiled_mfu_pct == pytest.approx(100 * rlrr.flops * rlrr.compiled_img_s / 4 / 1e12)
    assert ssf.status == "finished eagerly only: declared by this test" and ssf.compiled_img_s is None
    assert bad.status.startswith("eager error: ValueError: unknown method 'no_such_method'")
    assert len(lines) == 4  # three eager measurements, then rlrr's compiled one
    text = gpu_check.render(rows, "# GPU check (CPU)")
    assert "| rlrr " in text and "| compile speed-up " in text and "finished eagerly only" in text
    late = gpu_check.check_all(["lora"], "demo", "cpu", 4, 2, -1.0, backend="aot_eager", say=lines.append)
    assert late[0].status == "eager not run: the -1 s budget was spent"
    assert gpu_check.report_path(tmp_path, "cpu") == tmp_path / "gpu_check_cpu.md"
