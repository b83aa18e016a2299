"""The Hugging Face peft bridge (methods/peft_tuners.py) and our LoRA's forward.

Registry-wide properties (counts, what trains, weight decay, merge on the demo architecture) are
in test_methods.py through specs_peft.py; every family is in test_families.py. Here: what is
particular to the bridge: seeded reproducibility (VeRA's shared projections and FourierFT's
locations included), that a further peft tuner is a few lines, merge back to the plain timm
model, a clear line when peft is missing or of another version, no network, lazy import.
"""
from __future__ import annotations

import copy
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import methods
from bench.backbones import DEMO_CONFIG
from methods import peft_tuners
from methods.base import _REGISTRY, register
from methods.families import ATTN_PROJ, FC1, QKV

pytestmark = pytest.mark.usefixtures("one_thread")

TUNERS = ["dora", "vera", "ia3", "loha", "lokr", "fourierft"]


@pytest.fixture(scope="module")
def vit(small_vit):
    return small_vit


@pytest.fixture(scope="module")
def x(images):
    return images


def applied(name, base, seed, **hp):
    torch.manual_seed(seed)
    return methods.get(name).apply(base, num_classes=10, **hp)


def perturb(model, std=0.1):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))


def state(model):
    """Every tensor of the model (buffers too) and FourierFT's locations (a plain dict in peft)."""
    out = {k: v.clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        for k, v in getattr(m, "indices", {}).items() if name.endswith("qkv") else ():
            out[f"{name}.indices.{k}"] = v.clone()
    return out


# -- seeds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TUNERS)
def test_the_same_seed_gives_the_same_tensors(vit, name):
    a, b, c = state(applied(name, vit, 7)), state(applied(name, vit, 7)), state(applied(name, vit, 8))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    adapter = [k for k in a if not k.startswith("head.") and k not in vit.state_dict()
               and ".base_layer." not in k]
    assert adapter, "no adapter tensors"
    random = [k for k in adapter if not torch.equal(a[k], c[k])]
    if name == "ia3":  # ones, whatever the seed
        assert not random
    else:  # VeRA: its projections; FourierFT: its coefficients and locations; the rest: factors
        assert random, f"{name}: nothing depends on the seed"
    if name == "fourierft":
        assert any(".indices." in k for k in random)


def test_vera_projections_are_shared_seeded_saved_and_merged(vit, x):
    """One pair of projections for every layer (sliced to each shape), drawn from the seed, in the
    state_dict (peft's save_projection=True), so loading a state_dict restores the model exactly."""
    model = applied("vera", vit, 3)
    layers = [b.attn.qkv for b in model.blocks]
    a = {id(layer.vera_A["default"]) for layer in layers}
    assert len(a) == 1 and layers[0].vera_A["default"].shape == (256, 96)
    assert layers[0].vera_B["default"].shape == (288, 256)
    keys = model.state_dict()
    assert all(f"blocks.{i}.attn.qkv.vera_A.default" in keys for i in range(len(layers)))
    perturb(model)
    other = applied("vera", vit, 4)  # other projections ...
    assert not torch.equal(other.blocks[0].attn.qkv.vera_A["default"], layers[0].vera_A["default"])
    other.load_state_dict(model.state_dict())  # ... until the state_dict brings the saved ones
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
        merged = methods.get("vera").merge(model).eval()
        assert (merged(x) - model(x)).abs().max().item() <= 1e-5
    assert "vera_A" not in str(list(merged.state_dict()))


# -- merge ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TUNERS)
def test_merge_is_peft_merge_into_the_plain_model(vit, x, name):
    model = applied(name, vit, 0).eval()
    perturb(model)
    before = state(model)
    merged = methods.get(name).merge(model).eval()
    plain = copy.deepcopy(vit)
    plain.reset_classifier(10)
    assert type(merged) is VisionTransformer and list(merged.state_dict()) == list(plain.state_dict())
    assert not hasattr(merged, "peft_config") and hasattr(model, "peft_config")
    assert not any(peft_tuners.is_tuner_layer(m) for m in merged.modules())
    with torch.no_grad():
        diff = (merged(x) - model(x)).abs().max().item()
    assert diff <= 1e-4, diff
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "merge changed its input"
    # only the adapted Linears changed, by peft's own delta
    changed = {k for k, v in merged.state_dict().items() if not k.startswith("head.")
               and not torch.equal(v, plain.state_dict()[k])}
    targets = methods.get(name).targets
    assert changed and all(any(k.endswith(f"{t}.weight") or k.endswith(f"{t}.bias") for t in targets)
                           for k in changed), changed


def test_ia3_scales_qkv_outputs_and_fc2_inputs(vit):
    model = applied("ia3", vit, 0)
    perturb(model)
    block, plain = model.blocks[0], vit.blocks[0]
    h = torch.randn(2, 5, 96)
    lq = block.attn.qkv.ia3_l["default"].flatten()
    lf = block.mlp.fc2.ia3_l["default"].flatten()
    with torch.no_grad():
        torch.testing.assert_close(block.attn.qkv(h), plain.attn.qkv(h) * lq)
        u = torch.randn(2, 5, 384)
        torch.testing.assert_close(block.mlp.fc2(u), plain.mlp.fc2(u * lf))


@pytest.mark.parametrize("name", ["ia3", "vera", "fourierft"])
def test_the_stated_deviation_the_fused_qkv_changes_q_k_and_v(vit, name):
    """The deviation methods/peft_tuners.py states: on timm's fused qkv these tuners change the rows
    of q, k and v alike, where the papers adapt q and v (IA3: k and v); one vector or spectrum covers
    all 3 x width rows (on ViT-B/16: 64,512 / 30,720 / 12,000 trainable against the papers' 55,296 /
    24,576 / 24,000)."""
    model = applied(name, vit, 0)
    perturb(model)  # VeRA's b starts at zero, IA3's scales at one: move them
    layer, plain = model.blocks[0].attn.qkv, vit.blocks[0].attn.qkv
    trainable = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    width = 96
    assert {n: p.numel() for n, p in trainable.items()} == {
        "ia3": {"ia3_l.default": 3 * width},
        "vera": {"vera_lambda_b.default": 3 * width, "vera_lambda_d.default": 256},
        "fourierft": {"fourierft_spectrum.default": 1000},
    }[name]
    if name == "fourierft":  # the 1000 locations fall in the rows of all three projections
        rows = layer.indices["default"][0]
        assert {int(r) // width for r in rows} == {0, 1, 2}
    h = torch.randn(2, 5, width)
    with torch.no_grad():
        change = (layer(h) - plain(h)).abs().reshape(-1, 3, width).amax(dim=(0, 2))  # q, k, v
    assert bool((change > 1e-4).all()), change


# -- the bridge: a further peft tuner is a few lines ----------------------------------------

class _ProjFc1LoRA(peft_tuners.PeftTuner):
    """Throwaway: peft LoRA on attn.proj and mlp.fc1, registered only inside a test."""

    name = "_test_peft_lora_proj_fc1"
    defaults = {"rank": 4}
    help = {"rank": "rank"}
    targets = (ATTN_PROJ, FC1)

    def peft_config(self, peft, targets, layout, rank):
        return peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets.all)


def test_a_further_peft_config_is_a_working_method(vit, x):
    register(_ProjFc1LoRA)
    try:
        method = methods.get(_ProjFc1LoRA.name)
        model = applied(_ProjFc1LoRA.name, vit, 0)
        wrapped = sorted(n for n, m in model.named_modules() if peft_tuners.is_tuner_layer(m))
        assert wrapped == sorted(f"blocks.{i}.{t}" for i in range(4) for t in (ATTN_PROJ, FC1))
        assert methods.count_trainable(model) == 4 * (4 * (96 + 96) + 4 * (96 + 384))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), torch.arange(4)).backward()
            opt.step()
        model.eval()
        merged = method.merge(model).eval()
        with torch.no_grad():
            assert (merged(x) - model(x)).abs().max().item() <= 1e-5
        assert type(merged) is VisionTransformer and not any(peft_tuners.is_tuner_layer(m) for m in merged.modules())
    finally:
        _REGISTRY.pop(_ProjFc1LoRA.name, None)
    assert _ProjFc1LoRA.name not in methods.names()


def test_peft_is_given_exact_paths_not_suffixes(vit):
    """A module whose path ends like a target (``...head.attn.qkv``) is not adapted."""
    model = copy.deepcopy(vit)
    model.extra = torch.nn.Module()
    model.extra.attn = torch.nn.Module()
    model.extra.attn.qkv = torch.nn.Linear(96, 288)
    adapted = applied("dora", model, 0)
    assert type(adapted.extra.attn.qkv) is torch.nn.Linear
    assert peft_tuners.is_tuner_layer(adapted.blocks[0].attn.qkv)


def test_peft_lora_reference_matches_our_lora_in_size(vit):
    """bench perf times our lora against peft's LoRA on the whole qkv: the same parameter count."""
    ours = applied("lora", vit, 0)
    theirs = peft_tuners.PeftLoRA().apply(vit, num_classes=10)
    assert methods.count_trainable(ours) == methods.count_trainable(theirs) == 4 * 2 * 8 * (96 + 96)


# -- peft missing or of another version; no network; lazy import -----------------------------

@pytest.mark.parametrize("found, needle", [(None, "not installed"), ("0.17.1", "found peft 0.17.1"),
                                           ("0.22.0", "found peft 0.22.0")])
def test_peft_missing_or_another_version_is_one_line(vit, monkeypatch, found, needle):
    import importlib.metadata as md

    def version(pkg):
        if pkg != "peft":
            return md.version(pkg)
        if found is None:
            raise md.PackageNotFoundError(pkg)
        return found

    monkeypatch.setattr(md, "version", version)
    with pytest.raises(ImportError) as err:
        methods.get("dora").apply(vit, num_classes=10)
    message = str(err.value)
    assert isinstance(err.value, peft_tuners.PeftUnavailable)
    assert "\n" not in message and needle in message and "peft>=0.21,<0.22" in message


def test_apply_and_merge_open_no_network_connection(vit, monkeypatch):
    real = socket.socket.connect

    def connect(self, address):
        if self.family != socket.AF_UNIX:
            raise AssertionError(f"network connection to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
    for name in TUNERS:
        methods.get(name).merge(applied(name, vit, 0))


def test_import_methods_does_not_import_peft():
    code = "import sys, methods; assert 'dora' in methods.names(); print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- our LoRA's forward ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5), (7,)])
def test_lora_forward_and_gradients_equal_the_formula(vit, shape):
    """q and v rows get (alpha/r) x A^T B^T added, k rows stay the frozen Linear's; gradients of
    x, A and B are those of the formula."""
    from methods.lora import LoRALinear

    torch.manual_seed(0)
    lin = copy.deepcopy(vit.blocks[0].attn.qkv).requires_grad_(False)
    layer = LoRALinear(lin, rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(*shape, 96, requires_grad=True)
    a, b = layer.lora_A, layer.lora_B

    def formula(x, a, b):
        q, k, v = F.linear(x, lin.weight, lin.bias).split(96, dim=-1)
        return torch.cat([q + 2 * x @ a[0].T @ b[0].T, k, v + 2 * x @ a[1].T @ b[1].T], dim=-1)

    ours = layer(x)
    ref = formula(x, a, b)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(ours, (x, a, b), g)
    want = torch.autograd.grad(ref, (x, a, b), g)
    for u, w in zip(got, want):
        torch.testing.assert_close(u, w)
    with torch.no_grad():  # also without autograd (eval), and on an input that needs no grad
        torch.testing.assert_close(layer(x.detach()), ref.detach())


def test_run_without_the_tested_peft_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import importlib.metadata

    from bench.cli import main

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.99.0" if name == "peft" else real_version(name))
    out = tmp_path / "runs"
    assert main(["run", "--methods", "lora,dora", "--tasks", "count", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dora is tested with peft>=0.21,<0.22" in err and "found peft 0.99.0" in err
    assert not out.exists()
