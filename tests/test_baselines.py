"""The reviewer baselines of issue 13 (bitfit, fact_tt, fact_tk, convpass, repadapter) against
transcriptions of their official forwards, their official inits, their families and their
hyperparameter checks. The registry-wide tests (counts, what trains, merge, search space) run on
them from ``test_methods.py`` with the tables of ``specs_baselines.py``.

The ``Official*`` classes transcribe the official code (JieShibo/PETL-ViT ``FacT/fact_tt.py``,
``FacT/fact_tk.py``, ``convpass/vtab/convpass.py``; luogen1996/RepAdapter ``repadapter.py``),
run on the modules of a timm block (drop path is Identity and the MLP's dropouts p=0 here, so
they are left out). Each holds our adapted model's trained tensors, mapped to the official layout.
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


# -- FacT: transcriptions of fact_forward_attn / fact_forward_mlp -----------------------------

def official_attention(attn, x, delta_q, delta_k, delta_v, delta_proj, s):
    """The attention of fact_tt.py / fact_tk.py ``fact_forward_attn`` given the three q, k, v
    increments (functions of x) and the proj increment (a function of the attention output)."""
    B, N, C = x.shape
    qkv = attn.qkv(x)
    qkv = qkv + torch.cat([delta_q(x), delta_k(x), delta_v(x)], dim=2) * s
    qkv = qkv.reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    x = (a @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(x) + delta_proj(x) * s


class OfficialFacTBlock(nn.Module):
    """A timm block whose attention and MLP run the official FacT forwards. ``cores`` maps q, k,
    v, proj to (rank x rank) matrices used as ``FacTu(x) @ core`` and fc1 (rank x 4 rank), fc2
    (4 rank x rank) likewise (for TT: ``q_FacTs.weight.t()``...; for TK: ``FacTc @ FacTp[...]``)."""

    def __init__(self, block, u, v, cores, s, dim):
        super().__init__()
        self.block, self.u, self.v, self.cores, self.s, self.dim = block, u, v, cores, s, dim

    def FacTu(self, x):
        return x @ self.u.t()

    def FacTv(self, x):
        return x @ self.v.t()

    def mlp(self, x):
        """fact_forward_mlp (``self.drop`` is p=0)."""
        mlp, c = self.block.mlp, self.cores
        B, N, C = x.shape
        h = mlp.fc1(x)
        h = h + self.FacTv((self.FacTu(x) @ c["fc1"]).reshape(B, N, 4, self.dim)).reshape(B, N, 4 * C) * self.s
        x = mlp.act(h)
        h = mlp.fc2(x)
        x = x.reshape(B, N, 4, C)
        h = h + self.FacTv(self.FacTu(x).reshape(B, N, 4 * self.dim) @ c["fc2"]) * self.s
        return h

    def forward(self, x):
        b, c = self.block, self.cores
        delta = {k: (lambda k: lambda t: self.FacTv(self.FacTu(t) @ c[k]))(k) for k in ("q", "k", "v", "proj")}
        x = x + official_attention(b.attn, b.norm1(x), delta["q"], delta["k"], delta["v"], delta["proj"], self.s)
        return x + self.mlp(b.norm2(x))


def tt_cores(model, i):
    """FacT-TT: our per-layer cores in the official layout: q_FacTs.weight is rows [0, r) of our
    qkv core ...; the official forward multiplies by the transposed Linear weight."""
    blk = model.blocks[i]
    qkv, r = blk.attn.qkv.core, model.fact.u.shape[0]
    return {"q": qkv[:r].t(), "k": qkv[r:2 * r].t(), "v": qkv[2 * r:].t(), "proj": blk.attn.proj.core.t(),
            "fc1": blk.mlp.fc1.core.t(), "fc2": blk.mlp.fc2.core.t()}


def tk_cores(model, i):
    """FacT-TK, as fact_forward_attn / fact_forward_mlp form them from FacTc and FacTp: each
    Attention takes 4 columns of FacTp, each Mlp the next 8 (set_FacT's ``vit.idx``)."""
    c, p, r = model.fact.c, model.fact.p, model.fact.u.shape[0]
    idx = 12 * i
    attn = c @ p[:, idx:idx + 4]
    mlp = c @ p[:, idx + 4:idx + 12]
    return {"q": attn[:, :, 0], "k": attn[:, :, 1], "v": attn[:, :, 2], "proj": attn[:, :, 3],
            "fc1": mlp[:, :, :4].reshape(r, r * 4), "fc2": mlp[:, :, 4:].reshape(r, r * 4).t()}


@pytest.mark.parametrize("name,cores", [("fact_tt", tt_cores), ("fact_tk", tk_cores)])
def test_fact_equals_the_official_forward(vit, images, name, cores):
    model = perturb(methods.get(name).apply(vit, num_classes=10, rank=4, scale=10.0)).eval()
    assert (model.fact.p.shape == (4, 48)) if name == "fact_tk" else not hasattr(model.fact, "p")
    r, s = 4, 10.0
    ref = reference(vit, model, lambda i, block: OfficialFacTBlock(block, model.fact.u, model.fact.v,
                                                                   cores(model, i), s, r))
    assert max_diff(model, ref, images) < 1e-4
    assert max_diff(model, with_head(vit, model), images) > 1e-2  # the increments do act


def with_head(base, model):
    return reference(base, model, lambda i, block: block)


@pytest.mark.parametrize("name", ["fact_tt", "fact_tk"])
def test_fact_delta_weight_is_v_core_u(vit, name):
    """Merged weights: W + s V S U per (output, input) chunk, fc1 in 4 output chunks of the
    width, fc2 in 4 input chunks."""
    model = perturb(methods.get(name).apply(vit, num_classes=10, rank=4, scale=0.5))
    merged = methods.get(name).merge(model)
    u, v, s = model.fact.u, model.fact.v, 0.5
    c = (tt_cores if name == "fact_tt" else tk_cores)(model, 1)  # official: FacTu(x) @ core
    plain, new = vit.blocks[1], merged.blocks[1]
    with torch.no_grad():
        step = lambda core: s * v @ core.t() @ u  # noqa: E731  x -> V(core^T(U x))
        torch.testing.assert_close(new.attn.qkv.weight, plain.attn.qkv.weight + torch.cat(
            [step(c["q"]), step(c["k"]), step(c["v"])]))
        torch.testing.assert_close(new.attn.proj.weight, plain.attn.proj.weight + step(c["proj"]))
        r = u.shape[0]
        fc1 = torch.cat([s * v @ c["fc1"][:, j * r:(j + 1) * r].t() @ u for j in range(4)])
        torch.testing.assert_close(new.mlp.fc1.weight, plain.mlp.fc1.weight + fc1)
        fc2 = torch.cat([s * v @ c["fc2"][j * r:(j + 1) * r].t() @ u for j in range(4)], dim=1)
        torch.testing.assert_close(new.mlp.fc2.weight, plain.mlp.fc2.weight + fc2)
        for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):  # biases untouched
            assert torch.equal(new.get_submodule(part).bias, plain.get_submodule(part).bias)
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


# -- Convpass: transcription of convpass.py ----------------------------------------------------

class OfficialConvpass(nn.Module):
    """convpass.py ``Convpass`` (the grid side is a parameter instead of the hard-coded 14)."""

    def __init__(self, width, dim, side):
        super().__init__()
        self.adapter_conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.adapter_down = nn.Linear(width, dim)
        self.adapter_up = nn.Linear(dim, width)
        self.dropout = nn.Dropout(0.1)
        self.dim, self.side = dim, side

    def act(self, x):
        return x * torch.sigmoid(1.702 * x)

    def forward(self, x):
        B, N, C = x.shape
        x_down = self.act(self.adapter_down(x))
        x_patch = x_down[:, 1:].reshape(B, self.side, self.side, self.dim).permute(0, 3, 1, 2)
        x_patch = self.adapter_conv(x_patch)
        x_patch = x_patch.permute(0, 2, 3, 1).reshape(B, self.side * self.side, self.dim)
        x_cls = x_down[:, :1].reshape(B, 1, 1, self.dim).permute(0, 3, 1, 2)
        x_cls = self.adapter_conv(x_cls)
        x_cls = x_cls.permute(0, 2, 3, 1).reshape(B, 1, self.dim)
        x_down = torch.cat([x_cls, x_patch], dim=1)
        x_down = self.dropout(self.act(x_down))
        return self.adapter_up(x_down)


class OfficialConvpassBlock(nn.Module):
    """convpass.py ``forward_block`` (mode block) / ``forward_block_attn`` (mode attn)."""

    def __init__(self, block, adapter_attn, adapter_mlp, s):
        super().__init__()
        self.block, self.adapter_attn, self.adapter_mlp, self.s = block, adapter_attn, adapter_mlp, s

    def forward(self, x):
        b = self.block
        x = x + b.attn(b.norm1(x)) + self.adapter_attn(b.norm1(x)) * self.s
        if self.adapter_mlp is None:
            return x + b.mlp(b.norm2(x))
        return x + b.mlp(b.norm2(x)) + self.adapter_mlp(b.norm2(x)) * self.s


def official_convpass(ours, side):
    theirs = OfficialConvpass(ours.down.in_features, ours.down.out_features, side)
    for dst, src in ((theirs.adapter_down, ours.down), (theirs.adapter_conv, ours.conv), (theirs.adapter_up, ours.up)):
        dst.load_state_dict(src.state_dict())
    return theirs


@pytest.mark.parametrize("mode", ["block", "attn"])
def test_convpass_equals_the_official_forward(vit, images, mode):
    """The same logits in eval mode, and in train mode under one seed (the same dropout masks)."""
    model = perturb(methods.get("convpass").apply(vit, num_classes=10, mode=mode, scale=0.5))

    def block_fn(i, block):
        ours = model.blocks[i]
        mlp = official_convpass(ours.mlp.adapter, 4) if mode == "block" else None
        return OfficialConvpassBlock(block, official_convpass(ours.attn.adapter, 4), mlp, 0.5)

    ref = reference(vit, model, block_fn)
    assert max_diff(model.eval(), ref.eval(), images) < 1e-5
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


# -- RepAdapter: transcription of repadapter.py ------------------------------------------------

class OfficialRepAdapter(nn.Module):
    """repadapter.py ``RepAdapter`` (1x1 Conv1d A, grouped 1x1 Conv1d B, dropout 0.1 between)."""

    def __init__(self, in_features, hidden_dim, groups, scale):
        super().__init__()
        self.conv_A = nn.Conv1d(in_features, hidden_dim, 1, groups=1, bias=True)
        self.conv_B = nn.Conv1d(hidden_dim, in_features, 1, groups=groups, bias=True)
        self.dropout = nn.Dropout(0.1)
        self.groups, self.scale = groups, scale

    def forward(self, x):
        x = x.transpose(1, 2)
        x = self.conv_B(self.dropout(self.conv_A(x))) * self.scale + x
        return x.transpose(1, 2).contiguous()


def official_reparameterize(Wa, Wb, Ba, Bb, scale=1, do_residual=False):
    """repadapter.py ``reparameterize``."""
    bias = 0
    id_tensor = 0
    if Ba is not None:
        bias = Ba @ Wb
    if Bb is not None:
        bias = bias + Bb
    if do_residual:
        id_tensor = torch.eye(Wa.shape[0], Wb.shape[1])
    weight = Wa @ Wb * scale + id_tensor
    return weight.T, bias * scale if isinstance(bias, torch.Tensor) else None


def official_sparse2dense(weight, groups):
    """repadapter.py ``sparse2dense``."""
    d, cg = weight.shape
    dg = d // groups
    weight = weight.view(groups, dg, cg).transpose(1, 2)
    new_weight = torch.zeros(cg * groups, d, dtype=weight.dtype)
    for i in range(groups):
        new_weight[i * cg:(i + 1) * cg, i * dg:(i + 1) * dg] = weight[i]
    return new_weight.T


def official_rep_weight(adapter, linear, s):
    """repadapter.py ``set_RepWeight`` for one adapter and the Linear it feeds."""
    weight_B = official_sparse2dense(adapter.conv_B.weight.squeeze(), adapter.groups)
    w, b = official_reparameterize(adapter.conv_A.weight.squeeze().T, weight_B.T, adapter.conv_A.bias,
                                   adapter.conv_B.bias, s, do_residual=True)
    return official_reparameterize(w.T, linear.weight.T, b, linear.bias)


class OfficialRepBlock(nn.Module):
    """repadapter.py ``forward_vit_block_adapter`` (repblock) / ``forward_vit_attn_adapter`` (repattn)."""

    def __init__(self, block, adapter_attn, adapter_mlp):
        super().__init__()
        self.block, self.adapter_attn, self.adapter_mlp = block, adapter_attn, adapter_mlp

    def forward(self, x):
        b = self.block
        x = x + b.attn(self.adapter_attn(b.norm1(x)))
        return x + b.mlp(self.adapter_mlp(b.norm2(x)) if self.adapter_mlp is not None else b.norm2(x))


def official_repadapter(ours, scale):
    width, dim = ours.down.in_features, ours.down.out_features
    theirs = OfficialRepAdapter(width, dim, ours.groups, scale)
    with torch.no_grad():
        theirs.conv_A.weight.copy_(ours.down.weight.unsqueeze(-1))
        theirs.conv_A.bias.copy_(ours.down.bias)
        theirs.conv_B.weight.copy_(ours.up_weight.unsqueeze(-1))
        theirs.conv_B.bias.copy_(ours.up_bias)
    return theirs


@pytest.mark.parametrize("mode", ["block", "attn"])
def test_repadapter_equals_the_official_forward_and_reparameterisation(vit, images, mode):
    s = 5.0
    model = perturb(methods.get("repadapter").apply(vit, num_classes=10, mode=mode, scale=s))
    theirs = {}

    def block_fn(i, block):
        ours = model.blocks[i]
        theirs[i] = (official_repadapter(ours.attn.qkv.adapter, s),
                     official_repadapter(ours.mlp.fc1.adapter, s) if mode == "block" else None)
        return OfficialRepBlock(block, *theirs[i])

    ref = reference(vit, model, block_fn)
    assert max_diff(model.eval(), ref.eval(), images) < 1e-5
    with torch.no_grad():  # the official dropout draws its mask on (batch, dim, tokens), ours on (batch, tokens, dim)
        evaluated = model.eval()(images)
        assert (model.train()(images) - evaluated).abs().max() > 1e-3, "no dropout in train mode"

    merged = methods.get("repadapter").merge(model)
    with torch.no_grad():
        for i, (attn, mlp) in theirs.items():
            w, b = official_rep_weight(attn, vit.blocks[i].attn.qkv, s)
            torch.testing.assert_close(merged.blocks[i].attn.qkv.weight, w, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(merged.blocks[i].attn.qkv.bias, b, atol=1e-5, rtol=1e-5)
            if mlp is None:
                assert torch.equal(merged.blocks[i].mlp.fc1.weight, vit.blocks[i].mlp.fc1.weight)
            else:
                w, b = official_rep_weight(mlp, vit.blocks[i].mlp.fc1, s)
                torch.testing.assert_close(merged.blocks[i].mlp.fc1.weight, w, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(merged.blocks[i].mlp.fc1.bias, b, atol=1e-5, rtol=1e-5)


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
