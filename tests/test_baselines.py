"""The reviewer baselines of issue 13 (bitfit, fact_tt, fact_tk, convpass, repadapter) against their
math, written out here from the papers and the formulas of the methods' docstrings, their inits,
their families and their hyperparameter checks:

- FacT (Jie & Deng, AAAI 2023): every d x d slice of a block Linear's weight (q, k, v, proj, and fc1's
  4 output / fc2's 4 input chunks of width d) gains s V S U, U (rank x d) and V (d x rank) shared by
  all layers; FacT-TT: S a free rank x rank core per slice; FacT-TK: the cores come from one
  rank x rank x rank tensor C and a rank x 12*depth matrix P (12 columns per block), T_j = C x_3 P[:, j]:
  S = T_j^T for q, k, v, proj (the paper's C x_1 U x_2 V x_3 P), and fc1 / fc2 read their 4 slices
  T_j as one rank x 4 rank matrix, row-major (methods/fact.py's docstring);
- Convpass (Jie & Deng, arXiv 2207.07039): beside the attention (and the MLP), s * up(dropout(
  QuickGELU(conv3x3(QuickGELU(down(h)))))), the patch tokens convolved as their 2-D grid and each
  prefix token as a 1x1 map (zero padding);
- RepAdapter (Luo et al., arXiv 2302.08106): h + s (B dropout(A h + a) + b_B) in front of qkv (and
  fc1), B a grouped 1x1 convolution; its structural re-parameterisation into the Linear,
  W' = W (I + s B A), b' = b + s W (B a + b_B), B as a dense matrix.

Against the official code (JieShibo/PETL-ViT@026e4f1 ``FacT/fact_tt.py``, ``FacT/fact_tk.py``,
``convpass/vtab/convpass.py``; luogen1996/RepAdapter@360992f ``repadapter.py``): not here, which
needs no checkout; the comparison scripts ``benchmarks/official/fact.py``, ``convpass.py`` and
``repadapter.py`` run those comparisons (logits on copied tensors, merge and re-parameterisation,
counts, settings) on a checkout given to them, and docs/measurements.md records their results.

The registry-wide tests (counts, what trains, merge, search space) run on them from
``test_methods.py`` with the tables of ``specs_baselines.py``.
"""
from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

import methods
import specs_baselines
from bench.backbones import DEMO_CONFIG
from bench.train import make_optimizer
from conftest import randomise_1d

pytestmark = pytest.mark.usefixtures("one_thread")

BASELINES = ("bitfit", "fact_tt", "fact_tk", "convpass", "repadapter")


@pytest.fixture(scope="module")
def vit(small_vit):
    """The demo architecture, random, with non-trivial biases and norm affines (conftest)."""
    return small_vit


FAMILY_MODELS = {
    "vit": lambda: VisionTransformer(num_classes=0, **DEMO_CONFIG),
    # DINOv2-like: LayerScale, register tokens, position embedding without the prefix tokens
    "dinov2": lambda: VisionTransformer(num_classes=0, init_values=0.1, reg_tokens=2, no_embed_class=True,
                                        **DEMO_CONFIG),
    # CLIP-like: pre-norm, bias-free patch conv
    "clip": lambda: VisionTransformer(num_classes=0, pre_norm=True, embed_layer=partial(PatchEmbed, bias=False),
                                      **DEMO_CONFIG),
    "swin": lambda: SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                                    window_size=4, num_classes=0, drop_path_rate=0.0),
}


@pytest.fixture(scope="module")
def family_models():
    torch.manual_seed(0)
    return {name: randomise_1d(build()) for name, build in FAMILY_MODELS.items()}


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def perturb(model, std=0.1):
    """Move every trainable tensor off its init (zero factors included)."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))
    return model


def reference(base, model, block_fn):
    """``base`` with ``model``'s head and ``block_fn(i, plain block)`` in place of every block."""
    ref = copy.deepcopy(base)
    ref.reset_classifier(model.num_classes)
    ref.head.load_state_dict(model.head.state_dict())
    for i, block in enumerate(ref.blocks):
        ref.blocks[i] = block_fn(i, block)
    return ref.eval()


def max_diff(a, b, x):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()



def with_head(base, model):
    return reference(base, model, lambda i, block: block)


# -- FacT: the factorised increments -----------------------------------------------------------

FACT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def fact_slices(model, name, i):
    """The rank x rank cores S of block ``i`` by the formulas: {Linear: {(output chunk, input chunk):
    S}}, the chunks of width d; the slice's increment is s V S U."""
    f = model.fact
    r = f.u.shape[0]
    if name == "fact_tt":  # free cores: each d x d slice has its own block of the layer's core
        blk = model.blocks[i]
        cores = {"attn.qkv": blk.attn.qkv.core, "attn.proj": blk.attn.proj.core, "mlp.fc1": blk.mlp.fc1.core,
                 "mlp.fc2": blk.mlp.fc2.core}
        return {path: {(o, j): core[o * r:(o + 1) * r, j * r:(j + 1) * r]
                       for o in range(core.shape[0] // r) for j in range(core.shape[1] // r)}
                for path, core in cores.items()}
    # FacT-TK: T_j = C x_3 P[:, j], the 12 columns of block i: q, k, v, proj, fc1's 4, fc2's 4
    t = [torch.einsum("abk,k->ab", f.c, f.p[:, 12 * i + j]) for j in range(12)]
    fc1 = torch.stack(t[4:8], dim=2).reshape(r, 4 * r)  # the 4 slices as one r x 4r matrix, row-major
    fc2 = torch.stack(t[8:12], dim=2).reshape(r, 4 * r)
    return {"attn.qkv": {(o, 0): t[o].t() for o in range(3)}, "attn.proj": {(0, 0): t[3].t()},
            "mlp.fc1": {(o, 0): fc1[:, o * r:(o + 1) * r].t() for o in range(4)},  # output chunk o
            "mlp.fc2": {(0, j): fc2[:, j * r:(j + 1) * r] for j in range(4)}}  # input chunk j


def fact_delta(model, name, i, path, s):
    """The increment of block ``i``'s Linear ``path``: s V S U in every (output, input) chunk."""
    u, v = model.fact.u, model.fact.v
    slices = fact_slices(model, name, i)[path]
    rows = max(o for o, _ in slices) + 1
    cols = max(j for _, j in slices) + 1
    return torch.cat([torch.cat([s * v @ slices[o, j] @ u for j in range(cols)], dim=1) for o in range(rows)])


def fact_by_formula(base, model, name, s):
    """``base`` with ``model``'s head, each block Linear's weight plus its increment by the formula."""
    ref = with_head(base, model)
    with torch.no_grad():
        for i, block in enumerate(ref.blocks):
            for path in FACT_LINEARS:
                block.get_submodule(path).weight += fact_delta(model, name, i, path, s)
    return ref


def test_fact_tk_columns_by_hand():
    """FacT-TK's cores by hand on rank 1: T_j = c p_j, so each slice's increment is s v (c p_j) u."""
    model = methods.get("fact_tk").apply(VisionTransformer(num_classes=0, **DEMO_CONFIG), num_classes=10, rank=1,
                                         scale=2.0)
    with torch.no_grad():
        model.fact.c.fill_(3.0)
        model.fact.p.copy_(torch.arange(48.0).view(1, 48))
        slices = fact_slices(model, "fact_tk", 1)
        assert [slices["attn.qkv"][o, 0].item() for o in range(3)] == [36.0, 39.0, 42.0]  # c * columns 12..14
        assert slices["attn.proj"][0, 0].item() == 45.0
        assert [slices["mlp.fc1"][o, 0].item() for o in range(4)] == [48.0, 51.0, 54.0, 57.0]
        assert [slices["mlp.fc2"][0, j].item() for j in range(4)] == [60.0, 63.0, 66.0, 69.0]
        wrapper = model.blocks[1].mlp.fc2
        torch.testing.assert_close(wrapper.delta_weight(), fact_delta(model, "fact_tk", 1, "mlp.fc2", 2.0))


@pytest.mark.parametrize("name", ["fact_tt", "fact_tk"])
def test_fact_forward_is_its_formula(vit, images, name):
    """Eval logits equal the backbone whose Linears carry W + s V S U by the formula."""
    model = perturb(methods.get(name).apply(vit, num_classes=10, rank=4, scale=10.0)).eval()
    assert (model.fact.p.shape == (4, 48)) if name == "fact_tk" else not hasattr(model.fact, "p")
    assert max_diff(model, fact_by_formula(vit, model, name, 10.0), images) < 1e-5
    assert max_diff(model, with_head(vit, model), images) > 1e-2  # the increments do act


@pytest.mark.parametrize("name", ["fact_tt", "fact_tk"])
def test_fact_merge_is_its_formula(vit, name):
    """Merged weights: W + s V S U per (output, input) chunk, fc1 in 4 output chunks of the width, fc2
    in 4 input chunks; biases untouched; the shared factors gone."""
    model = perturb(methods.get(name).apply(vit, num_classes=10, rank=4, scale=0.5))
    merged = methods.get(name).merge(model)
    with torch.no_grad():
        for i in (0, 1, 3):
            plain, new = vit.blocks[i], merged.blocks[i]
            for path in FACT_LINEARS:
                torch.testing.assert_close(new.get_submodule(path).weight, plain.get_submodule(path).weight
                                           + fact_delta(model, name, i, path, 0.5))
                assert torch.equal(new.get_submodule(path).bias, plain.get_submodule(path).bias)
    assert not hasattr(merged, "fact")


def test_fact_inits(vit, images):
    """U as torch's Linear (bound 1/sqrt(width)), V zero (the model equals the base at init),
    TT cores as torch's Linear of their shape, TK's C and P xavier-uniform; dropout 0.1."""
    torch.manual_seed(0)
    d = vit.embed_dim
    tt = methods.get("fact_tt").apply(vit, num_classes=10, rank=16)
    tk = methods.get("fact_tk").apply(vit, num_classes=10, rank=32)
    for model in (tt, tk):
        assert not model.fact.v.any()
        assert 0.9 / d ** 0.5 < model.fact.u.abs().max() <= 1 / d ** 0.5
        assert max_diff(model, with_head(vit, model), images) < 1e-6
        drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        assert drops == [0.1] * 16  # one per adapted Linear (4 per block)
    blk = tt.blocks[0]
    for core, fan_in in ((blk.attn.qkv.core, 16), (blk.attn.proj.core, 16), (blk.mlp.fc1.core, 16),
                         (blk.mlp.fc2.core, 64)):
        assert 0.8 / fan_in ** 0.5 < core.abs().max() <= 1 / fan_in ** 0.5, core.shape
    assert tk.fact.c.shape == (32, 32, 32) and tk.fact.p.shape == (32, 48)
    bound_c = (6 / (2 * 32 * 32)) ** 0.5  # xavier on (r, r, r): fan_in = fan_out = r * r
    assert 0.9 * bound_c < tk.fact.c.abs().max() <= bound_c
    bound_p = (6 / (32 + 48)) ** 0.5
    assert 0.9 * bound_p < tk.fact.p.abs().max() <= bound_p



# -- Convpass: the convolutional bypass --------------------------------------------------------

def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def bypass_by_formula(adapter, h, training):
    """up(dropout(QuickGELU(conv3x3(QuickGELU(down(h)))))), the patch tokens as their square grid, each
    prefix token as a 1x1 map through the same zero-padded conv; from ``adapter``'s tensors."""
    b, n, _ = h.shape
    p = adapter.prefix_tokens
    a = quick_gelu(h @ adapter.down.weight.t() + adapter.down.bias)
    dim = a.shape[-1]
    side = math.isqrt(n - p)
    conv = partial(F.conv2d, weight=adapter.conv.weight, bias=adapter.conv.bias, padding=1)
    grid = conv(a[:, p:].transpose(1, 2).reshape(b, dim, side, side)).reshape(b, dim, side * side).transpose(1, 2)
    prefix = conv(a[:, :p].reshape(b * p, dim, 1, 1)).reshape(b, p, dim)
    a = F.dropout(quick_gelu(torch.cat([prefix, grid], dim=1)), 0.1, training)
    return a @ adapter.up.weight.t() + adapter.up.bias


class ConvpassByFormula(nn.Module):
    """x + attn(n1(x)) + s bypass(n1(x)); then x + mlp(n2(x)) (+ s bypass(n2(x)) in mode block)."""

    def __init__(self, block, ours, s):
        super().__init__()
        self.block, self.s = block, s
        self.attn_adapter = ours.attn.adapter
        self.mlp_adapter = ours.mlp.adapter if hasattr(ours.mlp, "adapter") else None

    def forward(self, x):
        b = self.block
        h = b.norm1(x)
        x = x + b.attn(h) + self.s * bypass_by_formula(self.attn_adapter, h, self.training)
        h = b.norm2(x)
        if self.mlp_adapter is None:
            return x + b.mlp(h)
        return x + b.mlp(h) + self.s * bypass_by_formula(self.mlp_adapter, h, self.training)


@pytest.mark.parametrize("mode", ["block", "attn"])
def test_convpass_is_its_formula(vit, images, mode):
    """The same logits in eval mode, and in train mode under one seed (the same dropout masks)."""
    model = perturb(methods.get("convpass").apply(vit, num_classes=10, mode=mode, scale=0.5))
    ref = reference(vit, model, lambda i, block: ConvpassByFormula(block, model.blocks[i], 0.5))
    assert max_diff(model.eval(), ref.eval(), images) < 1e-5
    assert max_diff(ref, with_head(vit, model), images) > 1e-2  # the bypasses act
    with torch.no_grad():
        torch.manual_seed(5)
        ours = model.train()(images)
        torch.manual_seed(5)
        theirs = ref.train()(images)
        assert (ours - theirs).abs().max().item() < 1e-5
        torch.manual_seed(6)
        assert not torch.equal(model(images), ours), "no dropout in train mode"


def test_convpass_hand_computed():
    """Width 1, dim 1, QuickGELU replaced by identity, one class token and a 2x2 grid: the 3x3
    conv sees the patch tokens row by row as a map, the class token as a 1x1 map."""
    from methods.convpass import ConvBypass

    adapter = ConvBypass(width=1, dim=1, conv_init="identity", prefix_tokens=1, like=torch.zeros(1)).eval()
    adapter.act = nn.Identity()
    with torch.no_grad():
        adapter.down.weight.fill_(1.0)
        adapter.conv.weight[0, 0, 1, 2] = 10.0  # the right neighbour; the centre tap is the identity init
        adapter.conv.bias.fill_(0.5)
        adapter.up.weight.fill_(1.0)
        x = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0]).view(1, 5, 1)  # class token 5, grid [[1, 2], [3, 4]]
        out = adapter(x).flatten().tolist()
    assert out == [5.0 + 0.5, 1 + 10 * 2 + 0.5, 2 + 0.5, 3 + 10 * 4 + 0.5, 4 + 0.5]


def test_convpass_inits(vit, images):
    """down xavier-uniform, conv identity at the centre tap (or xavier), up zero: the adapted model
    equals the base at init; every bias zero; dropout 0.1."""
    torch.manual_seed(0)
    d = vit.embed_dim
    for conv_init in ("identity", "xavier"):
        model = methods.get("convpass").apply(vit, num_classes=10, conv_init=conv_init)
        assert max_diff(model.eval(), with_head(vit, model), images) < 1e-6
        adapters = [m for m in model.modules() if type(m).__name__ == "ConvBypass"]
        assert len(adapters) == 2 * len(vit.blocks)
        for a in adapters:
            assert not a.up.weight.any() and not a.up.bias.any() and not a.down.bias.any() and not a.conv.bias.any()
            bound = (6 / (d + 8)) ** 0.5
            assert 0.8 * bound < a.down.weight.abs().max() <= bound
            centre = a.conv.weight[:, :, 1, 1]
            if conv_init == "identity":
                assert torch.equal(centre, torch.eye(8)) and a.conv.weight.abs().sum() == 8
            else:
                bound = (6 / (2 * 8 * 9)) ** 0.5
                assert 0.8 * bound < a.conv.weight.abs().max() <= bound
            assert [m.p for m in a.modules() if isinstance(m, nn.Dropout)] == [0.1]


def test_convpass_prefix_tokens_and_grid(family_models, images):
    """DINOv2-like models carry 1 class + 2 register tokens: all three go through the conv as 1x1
    maps, the 16 patch tokens as the 4x4 grid."""
    model = methods.get("convpass").apply(family_models["dinov2"], num_classes=10)
    assert model.blocks[0].attn.adapter.prefix_tokens == 3
    with torch.no_grad():
        assert model.eval()(images).shape == (3, 10)



# -- RepAdapter: the group-wise adapter and its re-parameterisation ------------------------------

def grouped_up(adapter, h):
    """B h + b_B, B the grouped 1x1 convolution of ``adapter`` (torch's grouped conv1d)."""
    weight = adapter.up_weight.unsqueeze(-1)  # (width, dim / groups, 1)
    return F.conv1d(h.transpose(-1, -2), weight, adapter.up_bias, groups=adapter.groups).transpose(-1, -2)


def repadapter_by_formula(adapter, h):
    """h + s (B (A h + a) + b_B), eval mode."""
    return h + adapter.scale * grouped_up(adapter, h @ adapter.down.weight.t() + adapter.down.bias)


def dense_up(adapter):
    """B as a dense width x dim matrix: column j is the grouped conv (no bias) of the unit vector e_j."""
    dim = adapter.down.weight.shape[0]
    eye = torch.eye(dim).unsqueeze(0)  # (1, dim channels, dim positions)
    return F.conv1d(eye, adapter.up_weight.unsqueeze(-1), None, groups=adapter.groups)[0]


class RepAdapterByFormula(nn.Module):
    """x + attn(adapter(n1(x))); x + mlp(adapter(n2(x))) (mode block; mode attn: x + mlp(n2(x)))."""

    def __init__(self, block, ours):
        super().__init__()
        self.block = block
        self.attn_adapter = ours.attn.qkv.adapter
        self.mlp_adapter = ours.mlp.fc1.adapter if hasattr(ours.mlp.fc1, "adapter") else None

    def forward(self, x):
        b = self.block
        x = x + b.attn(repadapter_by_formula(self.attn_adapter, b.norm1(x)))
        h = b.norm2(x)
        return x + b.mlp(h if self.mlp_adapter is None else repadapter_by_formula(self.mlp_adapter, h))


@pytest.mark.parametrize("mode", ["block", "attn"])
def test_repadapter_is_its_formula_and_reparameterisation(vit, images, mode):
    s = 5.0
    model = perturb(methods.get("repadapter").apply(vit, num_classes=10, mode=mode, scale=s))
    ref = reference(vit, model, lambda i, block: RepAdapterByFormula(block, model.blocks[i]))
    assert max_diff(model.eval(), ref, images) < 1e-5
    assert max_diff(ref, with_head(vit, model), images) > 1e-2  # the adapters act
    with torch.no_grad():
        evaluated = model.eval()(images)
        assert (model.train()(images) - evaluated).abs().max() > 1e-3, "no dropout in train mode"

    merged = methods.get("repadapter").merge(model)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            folded = [("attn.qkv", block.attn.qkv.adapter)]
            if mode == "block":
                folded.append(("mlp.fc1", block.mlp.fc1.adapter))
            else:
                assert torch.equal(merged.blocks[i].mlp.fc1.weight, vit.blocks[i].mlp.fc1.weight)
            for path, adapter in folded:
                linear = vit.blocks[i].get_submodule(path)
                up, down, a = dense_up(adapter), adapter.down.weight, adapter.down.bias
                weight = linear.weight @ (torch.eye(down.shape[1]) + s * up @ down)
                bias = linear.bias + s * linear.weight @ (up @ a + adapter.up_bias)
                torch.testing.assert_close(merged.blocks[i].get_submodule(path).weight, weight, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(merged.blocks[i].get_submodule(path).bias, bias, atol=1e-5, rtol=1e-5)
            for path in ("attn.proj", "mlp.fc2"):
                new, plain = merged.blocks[i].get_submodule(path), vit.blocks[i].get_submodule(path)
                assert torch.equal(new.weight, plain.weight)


def test_repadapter_up_is_grouped(vit):
    """groups=2: the first half of the outputs reads only the first half of the hidden units."""
    model = perturb(methods.get("repadapter").apply(vit, num_classes=10))
    adapter = model.blocks[0].attn.qkv.adapter
    up = adapter.up()
    assert adapter.up_weight.shape == (96, 4) and up.shape == (96, 8)
    assert not up[:48, 4:].any() and not up[48:, :4].any()
    assert torch.equal(up[:48, :4], adapter.up_weight[:48]) and torch.equal(up[48:, 4:], adapter.up_weight[48:])


def test_repadapter_inits(vit, images):
    """A xavier-uniform, A's bias and B zero: the model equals the base at init; dropout 0.1."""
    torch.manual_seed(0)
    model = methods.get("repadapter").apply(vit, num_classes=10)
    assert max_diff(model.eval(), with_head(vit, model), images) < 1e-6
    adapters = [m for m in model.modules() if type(m).__name__ == "RepAdapter"]
    assert len(adapters) == 2 * len(vit.blocks)
    bound = (6 / (96 + 8)) ** 0.5
    for a in adapters:
        assert 0.8 * bound < a.down.weight.abs().max() <= bound
        assert not a.down.bias.any() and not a.up_weight.any() and not a.up_bias.any()
        assert [m.p for m in a.modules() if isinstance(m, nn.Dropout)] == [0.1]



# -- BitFit ------------------------------------------------------------------------------------

def test_bitfit_trains_every_bias_and_equals_the_base(vit, images):
    model = methods.get("bitfit").apply(vit, num_classes=10)
    trained = {n for n, p in model.named_parameters() if p.requires_grad} - {"head.weight", "head.bias"}
    assert trained == {n for n, _ in vit.named_parameters() if n.endswith(".bias")}
    assert max_diff(model.eval(), with_head(vit, model), images) == 0
    merged = methods.get("bitfit").merge(perturb(model))
    assert type(merged) is VisionTransformer and max_diff(merged.eval(), model.eval(), images) == 0


def test_bitfit_on_other_families(family_models):
    """VPT's rule (``'bias' in name``): CLIP's bias-free patch conv has nothing to train, its
    pre-norm's bias trains; on Swin the relative position bias tables train too, as in VPT's Swin."""
    clip = methods.get("bitfit").apply(family_models["clip"], num_classes=10)
    names = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert "norm_pre.bias" in names and not any(n.startswith("patch_embed") for n in names)
    swin = methods.get("bitfit").apply(family_models["swin"], num_classes=10)
    names = {n for n, p in swin.named_parameters() if p.requires_grad}
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in names
    assert "patch_embed.proj.bias" in names and "layers.1.downsample.norm.bias" in names
    assert not any(n.endswith(".weight") for n in names - {"head.fc.weight"})


# -- families ----------------------------------------------------------------------------------

SUPPORTS = {"bitfit": ("vit", "dinov2", "clip", "swin"), "fact_tt": ("vit", "dinov2", "clip"),
            "fact_tk": ("vit", "dinov2", "clip"), "convpass": ("vit", "dinov2", "clip"),
            "repadapter": ("vit", "dinov2", "clip", "swin")}


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_families(family_models, name, family):
    """Each method applies, trains a step and (when mergeable) merges into a plain model of the
    same class and keys on every family it supports; the others are refused with the reason."""
    base, method = family_models[family], methods.get(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    if family not in SUPPORTS[name]:
        with pytest.raises(methods.Unsupported, match=rf"{name} does not run on swin backbones \(.+\)"):
            method.apply(base, num_classes=10)
        assert not methods.supports(name, "swin")
        return
    model = method.apply(base, num_classes=10).train()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if not method.mergeable:
        return
    perturb(model, std=0.05)
    merged = method.merge(model).eval()
    assert type(merged) is type(base)
    assert list(merged.state_dict()) == list(base.state_dict()) + ["head.weight", "head.bias"] or \
        list(merged.state_dict()) == list(base.state_dict()) + ["head.fc.weight", "head.fc.bias"]
    assert max_diff(merged, model.eval(), x) < 1e-4


# -- weight decay ------------------------------------------------------------------------------

DECAY_CONFIGS = [(name, {}) for name in BASELINES] + specs_baselines.EXTRA_CONFIGS


@pytest.mark.parametrize("name,hp", DECAY_CONFIGS, ids=["-".join([n, *map(str, hp.values())]) for n, hp in DECAY_CONFIGS])
def test_weight_decay_split(vit, name, hp):
    """Every official optimizer decays all of the method's tensors (see the methods' docstrings)."""
    model = methods.get(name).apply(vit, num_classes=10, **hp)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05, device="cpu")
    sizes = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    key = "-".join([name, *map(str, hp.values())])
    assert (sizes.get(0.05, 0), sizes.get(0.0, 0)) == specs_baselines.DECAY_SPLIT[key]
    assert methods.decays_backbone(name)


# -- hyperparameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,hp,pattern", [
    ("fact_tt", {"rank": 0}, r"fact_tt: rank must be an integer >= 1, got 0"),
    ("fact_tk", {"rank": 2.5}, r"fact_tk: rank must be an integer >= 1"),
    ("fact_tt", {"scale": 0}, r"fact_tt: scale must be a number > 0, got 0"),
    ("fact_tk", {"scale": math.inf}, r"fact_tk: scale must be a number > 0"),
    ("convpass", {"mode": "mlp"}, r"convpass: mode must be one of 'block', 'attn'; got 'mlp'"),
    ("convpass", {"dim": 0}, r"convpass: dim must be an integer >= 1, got 0"),
    ("convpass", {"conv_init": "zeros"}, r"conv_init must be one of 'identity', 'xavier'"),
    ("convpass", {"scale": math.nan}, r"convpass: scale must be a number that is finite"),
    ("repadapter", {"groups": 0}, r"repadapter: groups must be an integer >= 1, got 0"),
    ("repadapter", {"dim": 1}, r"repadapter: dim must be an integer >= 2, got 1"),
    ("repadapter", {"dim": 9}, r"repadapter: dim must be a multiple of groups \(2\), got 9"),
    ("repadapter", {"mode": "repblock"}, r"repadapter: mode must be one of 'block', 'attn'"),
    ("bitfit", {"rank": 8}, r"bitfit: unknown hyperparameter\(s\) rank; known: none"),
])
def test_impossible_hparams_are_refused(name, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        methods.get(name).resolve(**hp)


@pytest.mark.parametrize("name,hp,pattern", [
    ("fact_tt", {"rank": 97}, r"fact_tt: rank must be an integer in \[1, 96\], got 97"),
    ("convpass", {"dim": 128}, r"convpass: dim must be an integer in \[1, 96\], got 128"),
    ("repadapter", {"dim": 128}, r"repadapter: dim must be an integer in \[2, 96\], got 128"),
    ("repadapter", {"groups": 5, "dim": 10}, r"repadapter: groups must divide every block width; 5 does not divide \[96\]"),
])
def test_sizes_beyond_the_model_are_refused(vit, name, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        methods.get(name).apply(vit, num_classes=10, **hp)


def test_fact_refuses_mlp_widths_that_are_not_multiples(images):
    model = VisionTransformer(num_classes=0, **{**DEMO_CONFIG, "mlp_ratio": 2.5})
    with pytest.raises(methods.Unsupported, match=r"fact_tt: the MLP widths \(240, 240\) must be whole multiples"):
        methods.get("fact_tt").apply(model, num_classes=10)
    assert methods.get("fact_tk").apply(VisionTransformer(num_classes=0, **{**DEMO_CONFIG, "mlp_ratio": 2.0}),
                                        num_classes=10).fact.p.shape == (32, 4 * 8)


def test_search_spaces_are_the_official_grids():
    import optuna

    spaces = {}
    for name in BASELINES:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        methods.get(name).search_space(trial)
        spaces[name] = {k: list(d.choices) for k, d in trial.distributions.items()}
    assert spaces == {
        "bitfit": {},
        "fact_tt": {"rank": [4, 8, 16], "scale": [0.01, 0.1, 1.0, 10.0, 100.0]},
        "fact_tk": {"rank": [16, 32], "scale": [0.01, 0.1, 1.0, 10.0, 100.0]},
        "convpass": {"scale": [0.01, 0.1, 1.0, 10.0, 100.0], "conv_init": ["identity", "xavier"]},
        "repadapter": {"scale": [0.1, 0.5, 1.0, 5.0, 10.0]},
    }
