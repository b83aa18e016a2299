"""The conformance kit: the contract every method keeps, checked on small random backbones.

``check_method(name)`` runs every check on a small, randomly initialised backbone of each family
(``vit``, ``swin``) and returns one ``CheckResult`` per (check, backbone); ``bench check-method
NAME`` prints them as a table, the project's own tests run them over every built-in method
(``tests/test_conformance.py``), and a plugin's tests can do the same::

    from bench.testing import assert_conforms

    def test_my_method_conforms():
        assert_conforms("my_method")

Each check is also a function of its own, ``check_*(method, backbone, images)``, that raises
``AssertionError`` naming what is wrong (pytest shows it) and returns a one-line detail:

- ``check_trainable``: the head trains, and besides it only the method's own tensors; a backbone
  tensor (found by value: the backbones have random, distinct tensors) trains only where the
  method declares it in ``trains_backbone`` (a regex of backbone names: full ``.*``, bitfit
  ``.*bias.*``);
- ``check_training_step``: after three AdamW steps every trainable tensor moved, no frozen one did,
  and the backbone given to ``apply`` is unchanged; the steps call the method's per-step hooks as a
  fit does (``begin_fit``, ``extra_loss`` added to the loss, ``after_step``);
- ``check_count``: the trainable count is the same on every call (and every seed; for a method whose
  selection decides its count, ``count_from_data``, the same for the same data and seed);
- ``check_identity``: where the method declares ``identity_at_init = True``, the adapted model's
  logits equal the backbone's with the same head (fp32, 1e-5);
- ``check_search_space``: every value its search space suggests (an Optuna random sampler, a few
  trials) is a known hyperparameter, passes the method's own checks and builds a working model
  (values that do not fit the small backbone's width are left out and said);
- ``check_seeded``: two builds under one seed are identical;
- ``check_merge``: ``merge`` returns a plain backbone (same class, same state_dict keys and shapes
  as the un-adapted model with the same head) whose logits match within 1e-4 (fp32), and leaves
  its input as it was; or, for a method that says ``mergeable = False``, raises ``NotMergeable``;
- ``check_refuses``: a family the method does not declare is refused with ``Unsupported``.

A method that selects from training data (``needs_training_data``: GPS, SPT) is checked as a fit
trains it: every check but the refusal builds the model with ``adapted`` (``apply``, then ``select``
on ``SELECT_BATCHES`` random batches, the same ones every time, seed 0), so the checks cover the
selected model.

The kit imports neither the runner nor the stores: only ``methods``, ``timm`` and ``optuna``.
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import methods
from methods.families import layout_of

FAMILIES = ("vit", "swin")  # the families the kit has a small backbone of
NUM_CLASSES = 5
MERGE_ATOL = 1e-4  # design.md: merge exact to 1e-4 in fp32
IDENTITY_ATOL = 1e-5
STEPS = 3  # zero-initialised factors (LoRA's B) keep their partner still for the first step
SEARCH_SAMPLES = 4
SELECT_BATCHES = 2  # random batches of 4 images a ``needs_training_data`` method selects from


class NotApplicable(Exception):
    """A check that does not apply to this method (e.g. identity at init when not claimed)."""


@dataclass(frozen=True)
class CheckResult:
    check: str  # the check's name, as in ``CHECKS`` (e.g. "merge")
    backbone: str  # "vit", "swin" (the kit's small ones) or a backbone's name
    status: str  # "pass", "fail" or "n/a"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def __str__(self) -> str:
        return f"{self.check} on {self.backbone}: {self.status}" + (f" ({self.detail})" if self.detail else "")


# --------------------------------------------------------------------------- backbones
def _nontrivial(model: nn.Module) -> nn.Module:
    """Noise on the 1-d tensors (biases, norm affines), so that folding into them is exercised and
    no backbone tensor equals a constant one (ones, zeros) a method starts from; eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def small_backbone(family: str, seed: int = 0) -> nn.Module:
    """A small randomly initialised timm backbone of ``family`` (no download), width 64, the
    narrowest that fits every built-in method's search space (ranks and bottlenecks up to 64)."""
    torch.manual_seed(seed)
    if family == "vit":
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    elif family == "swin":
        from timm.models.swin_transformer import SwinTransformer

        model = SwinTransformer(img_size=16, patch_size=2, window_size=2, embed_dim=64, depths=(2, 2),
                                num_heads=(2, 4), num_classes=0)
    else:
        raise ValueError(f"the kit has no small backbone of family {family!r}; known: {', '.join(FAMILIES)}")
    return _nontrivial(model)


def sample_images(model: nn.Module, n: int = 2, seed: int = 1) -> torch.Tensor:
    """``n`` random images of the size ``model`` takes."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or (224, 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _subjects(backbone) -> list[tuple[str, str, nn.Module]]:
    """(label, family, model) for each backbone to check on."""
    if backbone is None:
        return [(family, family, small_backbone(family)) for family in FAMILIES]
    if isinstance(backbone, nn.Module):
        return [(type(backbone).__name__, layout_of(backbone).family, backbone.eval())]
    from bench import backbones

    spec = backbones.get(backbone)  # UserError listing the known names
    torch.manual_seed(0)
    model = _nontrivial(spec.build(0))
    return [(backbone, spec.family, model)]


# --------------------------------------------------------------------------- helpers
def _method(method) -> methods.Method:
    return methods.get(method) if isinstance(method, str) else method


def selection_batches(model: nn.Module, n: int = SELECT_BATCHES, seed: int = 3) -> list:
    """``n`` batches of 4 random images and labels (the same for the same ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return [(sample_images(model, 4, seed + i), torch.randint(0, NUM_CLASSES, (4,), generator=g)) for i in range(n)]


def adapted(method, backbone: nn.Module, **hparams) -> nn.Module:
    """``method.apply`` with ``NUM_CLASSES``, then, for a method that selects from training data,
    its ``select`` on ``selection_batches`` with seed 0: the model a fit trains."""
    method = _method(method)
    model = method.apply(backbone, num_classes=NUM_CLASSES, **hparams)
    if method.needs_training_data:
        method.select(model, selection_batches(model), 0)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _with_head_of(base: nn.Module, adapted: nn.Module) -> nn.Module:
    """``base`` with a head like ``adapted``'s (same values), to compare logits with it."""
    ref = copy.deepcopy(base)
    ref.reset_classifier(NUM_CLASSES)
    ref_head = dict(ref.named_parameters())
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if n.startswith("head.") and n in ref_head:
                ref_head[n].copy_(p)
    return ref.eval()


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images).float()


def _backbone_name(base_tensors, tensor: torch.Tensor) -> str | None:
    """The name of the backbone tensor ``tensor`` equals (same shape and values), if any."""
    for name, t in base_tensors.get(tuple(tensor.shape), ()):
        if torch.equal(t, tensor.detach()):
            return name
    return None


# --------------------------------------------------------------------------- the checks
def check_trainable(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """Only the head and the method's own tensors train (backbone tensors only where declared)."""
    method = _method(method)
    model = adapted(method, backbone)
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert head, "the adapted model has no head parameters (head.*): apply must keep reset_classifier's head"
    frozen_head = [n for n in head if not model.get_parameter(n).requires_grad]
    assert not frozen_head, f"the head does not train: {', '.join(frozen_head)}"
    declared = getattr(method, "trains_backbone", "") or ""
    base_tensors: dict[tuple, list] = {}
    for n, t in backbone.state_dict().items():
        base_tensors.setdefault(tuple(t.shape), []).append((n, t))
    own = 0
    for n, p in model.named_parameters():
        if not p.requires_grad or n.startswith("head."):
            continue
        source = _backbone_name(base_tensors, p)
        if source is None:
            own += 1
        elif not (declared and re.fullmatch(declared, source)):
            raise AssertionError(
                f"trains backbone tensor {source!r} (as {n!r}): a method trains only the tensors it adds and the "
                f"head, unless its `trains_backbone` regex names the backbone tensors it trains"
                + (f" (it is {declared!r})" if declared else ""))
    return f"{methods.count_trainable(model):,} trainable besides the head; {own} own tensors"


def check_training_step(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """A few training steps move every trainable tensor, no frozen one, and not the backbone."""
    method = _method(method)
    source = _state(backbone)
    model = adapted(method, backbone).train()
    before = _state(model)
    params = dict(model.named_parameters())
    trainable = [p for p in params.values() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    labels = torch.arange(len(images)) % NUM_CLASSES
    method.begin_fit(model, STEPS)  # the per-step hooks, as bench.train.fit calls them
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        extra = method.extra_loss(model)
        loss = loss if extra is None else loss + extra
        assert torch.isfinite(loss), f"the training loss is {loss.item()}"
        loss.backward()
        opt.step()
        method.after_step(model, step)
    state = backbone.state_dict()
    moved = [k for k in source if not torch.equal(state[k], source[k])]
    assert list(state) == list(source) and not moved, \
        f"training the adapted model changed the backbone given to apply: {', '.join(moved[:3]) or 'its tensors'}"
    for n, p in params.items():
        changed = not torch.equal(p.detach(), before[n])
        if p.requires_grad and not changed:
            raise AssertionError(f"trainable {n!r} did not change in {STEPS} steps (no gradient reaches it)")
        if not p.requires_grad and changed:
            raise AssertionError(f"frozen {n!r} changed in training (a backbone weight trains without being "
                                 f"trainable)")
    return f"{len(trainable)} trainable tensors moved, the rest and the backbone did not"


def check_count(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """The trainable count is the same on every call (a ``count_from_data`` method's: for the same
    data and seed; its count may differ between seeds, which is said)."""
    method = _method(method)
    counts = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = adapted(method, backbone)
        counts.append((methods.count_trainable(model), methods.count_trainable(model, exclude_head=False)))
    by_data = getattr(method, "count_from_data", False)
    same = counts[:2] if by_data else counts
    where = " with the same data and seed" if by_data else ""
    assert len(set(same)) == 1, f"the trainable count differs between calls{where}: {same}"
    detail = f"{counts[0][0]:,} (with head {counts[0][1]:,})"
    return detail + (f"; decided by the data: {counts[2][0]:,} with seed 1" if by_data else "")


def check_identity(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """Where the method says it starts as the identity, its logits at init are the backbone's."""
    method = _method(method)
    if not getattr(method, "identity_at_init", False):
        raise NotApplicable("identity_at_init is not declared")
    model = adapted(method, backbone)
    diff = (_logits(model, images) - _logits(_with_head_of(backbone, model), images)).abs().max().item()
    assert diff <= IDENTITY_ATOL, (f"identity_at_init = True, but the logits at init differ from the backbone's by "
                                   f"{diff:.3g} (> {IDENTITY_ATOL:g})")
    return f"max abs diff {diff:.1e}"


def check_search_space(method, backbone: nn.Module, images: torch.Tensor, samples: int = SEARCH_SAMPLES) -> str:
    """Every value the search space suggests is known, passes the method's checks and builds."""
    import optuna

    method = _method(method)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    layout = layout_of(backbone)
    built, too_wide = 0, []
    for _ in range(samples):
        trial = study.ask()
        hp = method.search_space(trial)
        assert isinstance(hp, dict), f"search_space returned {type(hp).__name__}, not a dict"
        unknown = sorted(set(hp) - set(method.defaults))
        assert not unknown, f"search_space suggests {', '.join(unknown)}, not in defaults"
        try:
            resolved = method.resolve(**hp)
        except ValueError as exc:
            raise AssertionError(f"search_space suggests {hp}, which its own check refuses: {exc}") from None
        try:
            method.check_fits(resolved, layout)
        except ValueError:
            too_wide.append(hp)
        else:
            out = _logits(adapted(method, backbone, **hp), images)
            assert out.shape == (len(images), NUM_CLASSES), f"{hp}: logits of shape {tuple(out.shape)}"
            assert torch.isfinite(out).all(), f"{hp}: non-finite logits"
            built += 1
        study.tell(trial, 0.0)
    assert built or not samples, f"none of {samples} suggestions fits this backbone: {too_wide}"
    return f"{built} of {samples} suggestions built" + (f"; {len(too_wide)} too wide for it" if too_wide else "")


def check_seeded(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """Two builds under one seed are identical."""
    method = _method(method)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(adapted(method, backbone))
    a, b = (m.state_dict() for m in models)
    assert list(a) == list(b), "two builds under one seed have different tensors"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"two builds under one seed differ in {', '.join(differ[:3])}"
    assert torch.equal(_logits(models[0], images), _logits(models[1], images)), \
        "two builds under one seed give different logits"
    return f"{len(a)} tensors equal"


def check_merge(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """merge gives a plain backbone with the same logits (<= 1e-4, fp32), or NotMergeable."""
    method = _method(method)
    model = adapted(method, backbone)
    if not method.mergeable:
        try:
            method.merge(model)
        except methods.NotMergeable:
            return "NotMergeable (mergeable = False)"
        raise AssertionError("mergeable = False, but merge did not raise NotMergeable")
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # as if trained: a merge of untouched (often zero) tensors proves little
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p))
    model.eval()
    before, types = _state(model), [type(m) for m in model.modules()]
    try:
        merged = method.merge(model)
    except methods.NotMergeable as exc:
        raise AssertionError(f"mergeable = True, but merge raised NotMergeable: {exc}") from None
    assert same_state(model, before) and [type(m) for m in model.modules()] == types, "merge changed its input"
    assert type(merged) is type(backbone), \
        f"merge returned a {type(merged).__name__}, not a plain {type(backbone).__name__}"
    plain = _with_head_of(backbone, model)
    expected, got = plain.state_dict(), merged.state_dict()
    extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
    assert not extra and not missing, (f"the merged model's tensors are not the backbone's: extra {extra[:3]}, "
                                       f"missing {missing[:3]}")
    shapes = [k for k in expected if got[k].shape != expected[k].shape]
    assert not shapes, f"the merged model's tensors have other shapes: {shapes[:3]}"
    leftover = sorted({type(m).__name__ for m in merged.modules()} - {type(m).__name__ for m in plain.modules()})
    assert not leftover, f"the merged model still holds {', '.join(leftover)}"
    diff = (_logits(merged, images) - _logits(model, images)).abs().max().item()
    assert diff <= MERGE_ATOL, f"the merged model's logits differ by {diff:.3g} (> {MERGE_ATOL:g} in fp32)"
    return f"max abs diff {diff:.1e}"


def check_refuses(method, backbone: nn.Module, images: torch.Tensor) -> str:
    """A backbone family the method does not declare is refused with ``Unsupported``."""
    method = _method(method)
    family = layout_of(backbone).family
    try:
        method.apply(backbone, num_classes=NUM_CLASSES)
    except methods.Unsupported as exc:
        return f"Unsupported: {str(exc).splitlines()[0][:100]}"
    except Exception as exc:
        raise AssertionError(f"on {family} (not in families {method.families}) apply raised "
                             f"{type(exc).__name__}, not methods.Unsupported: {exc}") from None
    raise AssertionError(f"builds on {family} although its families are {method.families}: refuse it with "
                         f"methods.Unsupported (Method.check_family)")


def same_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return list(state) == list(snapshot) and all(torch.equal(state[k], snapshot[k]) for k in snapshot)


# (name, check) on a backbone of a family the method declares, in the order they run
CHECKS: tuple[tuple[str, Callable], ...] = (
    ("trainable", check_trainable),
    ("training_step", check_training_step),
    ("count", check_count),
    ("identity", check_identity),
    ("search_space", check_search_space),
    ("seeded", check_seeded),
    ("merge", check_merge),
)
REFUSES = ("unsupported", check_refuses)  # on a backbone of a family it does not declare


def _run(check: str, label: str, fn: Callable, method, model: nn.Module, images: torch.Tensor) -> CheckResult:
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        try:
            detail = fn(method, model, images)
        except NotApplicable as exc:
            return CheckResult(check, label, "n/a", str(exc))
        except AssertionError as exc:
            return CheckResult(check, label, "fail", _one_line(exc))
        except Exception as exc:  # the method crashed: that fails the check it crashed in
            return CheckResult(check, label, "fail", f"{type(exc).__name__}: {_one_line(exc)}")
    return CheckResult(check, label, "pass", detail or "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def check_method(name, backbone=None, checks: tuple[str, ...] | None = None) -> list[CheckResult]:
    """Every check of the kit for method ``name`` (a registered name or a ``Method`` instance):
    the ``CHECKS`` on a small random backbone of each family the method declares, and
    ``unsupported`` on each family it does not. ``backbone``: a registered backbone name (randomly
    initialised) or a model, instead of the small ones. ``checks``: only these (names of ``CHECKS``
    and ``unsupported``)."""
    method = _method(name)
    label = method.name or type(method).__name__
    try:
        method.check_available()
    except ImportError as exc:
        return [CheckResult("available", "-", "fail", f"{label}: {_one_line(exc)}")]
    results = []
    for where, family, model in _subjects(backbone):
        images = sample_images(model)
        if method.families is not None and family not in method.families:
            todo = (REFUSES,)
        else:
            todo = CHECKS
        for check, fn in todo:
            if checks is None or check in checks:
                results.append(_run(check, where, fn, method, model, images))
    return results


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


def assert_conforms(name, backbone=None) -> list[CheckResult]:
    """``check_method``; ``AssertionError`` listing every failed check (for a plugin's own tests)."""
    results = check_method(name, backbone)
    failed = failures(results)
    assert not failed, "\n".join(f"{name if isinstance(name, str) else name.name}: {r}" for r in failed)
    return results


def format_table(results: list[CheckResult]) -> str:
    """The results as a Markdown table: check | backbone | result | detail."""
    from tabulate import tabulate

    rows = [(r.check, r.backbone, r.status.upper() if r.status == "fail" else r.status, r.detail) for r in results]
    return tabulate(rows, headers=["check", "backbone", "result", "detail"], tablefmt="github")


# --------------------------------------------------------------------------- registering in tests
@contextlib.contextmanager
def temporary_registry() -> Iterator[None]:
    """Methods registered (or plugins loaded) inside the block are gone after it: the registry, the
    plugins' records, ``BENCH_PLUGINS`` and the plugin modules are restored. For tests that
    register throwaway methods."""
    from methods import base, plugins

    registry, by_method, loaded = dict(base._REGISTRY), dict(plugins._BY_METHOD), dict(plugins._LOADED)
    env, modules = os.environ.get(plugins.ENV), set(sys.modules)
    try:
        yield
    finally:
        added = [key.partition(":")[2] for key in plugins._LOADED if key not in loaded and key.startswith("module:")]
        for store, saved in ((base._REGISTRY, registry), (plugins._BY_METHOD, by_method), (plugins._LOADED, loaded)):
            store.clear()
            store.update(saved)
        if env is None:
            os.environ.pop(plugins.ENV, None)
        else:
            os.environ[plugins.ENV] = env
        for module in set(sys.modules) - modules:  # the modules of the plugins loaded in the block
            if module.startswith("bench_plugin_") or module in added:
                del sys.modules[module]
