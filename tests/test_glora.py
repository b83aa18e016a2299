"""GLoRA as registered here (methods/peft_tuners.py, the "glora" row: peft 0.21's ``GloraLinear`` with
``config_A_B="lora"``, ``config_C="lora"``, ``config_D_E="constant"``, r = 8) against the paper's
equations (Chavan et al., "One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning",
2023), written out here from the math:

    W' = W + W * A + B        (* elementwise; A, B: out x in, each a rank-r product)
    b' = b + b * D + E + W C  (C: in x 1, a rank-r product; D, E: one scalar each)
    y  = x W'^T + b'

Checked, fp32 on CPU: at init the layer is the backbone (the zero factor of every product and D, E
zero), after every trainable tensor is perturbed it is those equations (within 1e-5), on every
Linear shape of a ViT-B/16 block, on the demo's qkv and on the whole demo ViT; the trainable count
per layer, 2 r (in + out) + r (in + 1) + 2 (55,306 on ViT-B/16's qkv at r = 8); the placement (only
the fused qkv); the merge (the merged weight and bias are W' and b').

Against the official code (Arnav0400/ViT-Slim, GLoRA/layer.py and friends): not here, which needs
no checkout; ``benchmarks/official/glora.py`` runs that comparison on a checkout given to it, and
docs/measurements.md records its result.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods
from bench.backbones import create_meta
from methods import peft_compat, peft_tuners

pytestmark = pytest.mark.usefixtures("one_thread")

RANK = 8
TOL = 1e-5
# (in, out) of the Linears of a ViT-B/16 block (qkv, proj, fc1, fc2), and the demo's qkv (96 -> 288)
SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768), (96, 288)]


def paper_terms(layer):
    """(A, B, C, D, E) from the layer's raw trained tensors: A, B, C each the product of its two
    factors (down: rows x r, up: r x columns), D, E the scalars."""
    products = []
    for path in "ABC":
        factors = getattr(layer, f"glora_{path}")["default"]
        products.append(factors.Xd @ factors.Xu)
    scalars = [getattr(layer, f"glora_{path}")["default"].X for path in "DE"]
    assert all(s.shape == (1,) for s in scalars)  # 'constant': one number each
    return (*products, *(s[0] for s in scalars))


def paper_weight_and_bias(W, b, A, B, C, D, E):
    assert A.shape == B.shape == W.shape and C.shape == (W.shape[1], 1)
    return W + W * A + B, b + b * D + E + (W @ C)[:, 0]


def paper_forward(layer, x):
    """The layer's output by the equations above, from its base Linear and its trained tensors."""
    base = layer.get_base_layer()
    weight, bias = paper_weight_and_bias(base.weight, base.bias, *paper_terms(layer))
    return F.linear(x, weight, bias)  # x W'^T + b'


class PaperLinear(nn.Module):
    """A GLoRA layer of the model computed by the equations (for the whole-model check)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return paper_forward(self.layer, x)


def perturb(module, std=0.1):
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))


@pytest.fixture(scope="module")
def peft():
    return peft_compat.import_peft("the tests")


def peft_layer(peft, linear: nn.Linear):
    """peft's GLoRA layer with the project's fixed configuration, on a copy of ``linear``."""
    from peft.tuners.glora.layer import GloraLinear

    row = {r.name: r for r in peft_tuners.TUNERS}["glora"]
    config = peft.GloraConfig(r=RANK, **row.fixed)
    return GloraLinear(copy.deepcopy(linear), "default", config)


def test_the_row_is_the_configuration_checked_here():
    row = {r.name: r for r in peft_tuners.TUNERS}["glora"]
    assert row.fixed == {"config_A_B": "lora", "config_C": "lora", "config_D_E": "constant"}
    assert row.hparams["rank"].default == RANK and row.identity and row.mergeable


@pytest.mark.parametrize("in_features, out_features", SHAPES)
def test_one_layer_is_the_paper_s_equations(peft, in_features, out_features):
    torch.manual_seed(in_features + out_features)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.bias.add_(0.1 * torch.randn_like(linear.bias))
    layer = peft_layer(peft, linear)
    x = torch.randn(2, 5, in_features)
    with torch.no_grad():
        base = linear(x)
        assert (layer(x) - base).abs().max() == 0  # the backbone at init
        assert (paper_forward(layer, x) - base).abs().max() == 0
        perturb(layer)
        ours, expected = layer(x), paper_forward(layer, x)
        moved = (ours - base).abs().max().item()
        diff = (ours - expected).abs().max().item()
    assert moved > 1e-2  # the perturbation changed the layer
    assert diff < TOL, diff
    # every term matters: drop any one and the output moves away
    with torch.no_grad():
        terms = paper_terms(layer)
        for k in range(5):
            dropped = [torch.zeros_like(t) if j == k else t for j, t in enumerate(terms)]
            weight, bias = paper_weight_and_bias(linear.weight, linear.bias, *dropped)
            assert (ours - F.linear(x, weight, bias)).abs().max() > 100 * TOL, "ABCDE"[k]


def test_the_whole_model_is_the_paper_s_equations_in_the_same_places(small_vit, images):
    torch.manual_seed(0)
    ours = methods.get("glora").apply(copy.deepcopy(small_vit), num_classes=10).eval()
    wrapped = [n for n, m in ours.named_modules() if peft_compat.is_tuner_layer(m)]
    assert wrapped == [f"blocks.{i}.attn.qkv" for i in range(len(small_vit.blocks))]

    def paper_model():
        model = copy.deepcopy(small_vit)
        model.reset_classifier(10)
        model.head.load_state_dict(ours.head.state_dict())
        for path in wrapped:
            parent, child = path.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, PaperLinear(ours.get_submodule(path)))
        return model.eval()

    with torch.no_grad():
        reference = copy.deepcopy(small_vit)
        reference.reset_classifier(10)
        reference.head.load_state_dict(ours.head.state_dict())
        reference.eval()
        logits = ours(images)
        assert (logits - reference(images)).abs().max() < TOL  # identity at init
        assert (paper_model()(images) - logits).abs().max() < TOL
        perturb(ours)
        logits = ours(images)
        theirs = paper_model()(images)
    assert (logits - reference(images)).abs().max() > 1e-2
    diff = (logits - theirs).abs().max().item()
    assert diff < TOL, diff


def test_initialisation(peft):
    """One factor of each product zero (so the product is), the other kaiming-uniform with
    a = sqrt 5 (bound 1 / sqrt(fan_in)); D and E zero."""
    torch.manual_seed(0)
    layer = peft_layer(peft, nn.Linear(768, 2304))
    shapes = {"A": ((2304, RANK), (RANK, 768)), "B": ((2304, RANK), (RANK, 768)), "C": ((768, RANK), (RANK, 1))}
    for path, (down, up) in shapes.items():
        factors = getattr(layer, f"glora_{path}")["default"]
        assert factors.Xd.shape == down and factors.Xu.shape == up
        assert not factors.Xd.any()
        bound = 1 / math.sqrt(up[1])
        assert factors.Xu.abs().max() <= bound
        if path != "C":  # 8 x 768 draws: close to the bound
            assert factors.Xu.abs().max() > 0.9 * bound
    assert not layer.glora_D["default"].X.any() and not layer.glora_E["default"].X.any()


@pytest.mark.parametrize("in_features, out_features", SHAPES)
def test_count_of_a_layer(peft, in_features, out_features):
    """A, B: r (in + out) each; C: r (in + 1); D, E: 1 each."""
    layer = peft_layer(peft, nn.Linear(in_features, out_features, device="meta"))
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == 2 * RANK * (in_features + out_features) + RANK * (in_features + 1) + 2


def test_vit_b_counts(peft):
    """ViT-B/16 at r = 8: the qkv literal, the project's 12 qkv (tests/specs_peft.py), and what
    every block Linear would cost (the official placement, in the row's note)."""
    per_block = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}
    counts = {k: sum(p.numel() for p in peft_layer(peft, nn.Linear(i, o, device="meta")).parameters()
                     if p.requires_grad) for k, (i, o) in per_block.items()}
    assert counts == {"qkv": 55_306, "proj": 30_730, "fc1": 67_594, "fc2": 86_026}
    assert 12 * sum(counts.values()) == 2_875_872
    model = methods.get("glora").apply(create_meta("vit_base_patch16_224"), num_classes=100)
    assert methods.count_trainable(model) == 12 * 55_306 == 663_672


def test_placement_is_the_fused_qkv_only(small_vit):
    ours = methods.get("glora")
    assert ours.targets == ("attn.qkv",) and not ours.outer
    model = ours.apply(copy.deepcopy(small_vit), num_classes=10)
    wrapped = [n for n, m in model.named_modules() if peft_compat.is_tuner_layer(m)]
    assert wrapped == [f"blocks.{i}.attn.qkv" for i in range(len(small_vit.blocks))]
    names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert names and all(n.startswith(tuple(f"{w}.glora_" for w in wrapped)) for n in names)
    # proj, fc1, fc2 and the head stay plain Linears
    block = model.blocks[0]
    assert all(type(m) is nn.Linear for m in (block.attn.proj, block.mlp.fc1, block.mlp.fc2, model.head))


def test_merge_folds_the_equations_into_the_backbone(small_vit, images):
    torch.manual_seed(0)
    model = methods.get("glora").apply(copy.deepcopy(small_vit), num_classes=10).eval()
    perturb(model)
    layers = {i: b.attn.qkv for i, b in enumerate(model.blocks)}
    with torch.no_grad():
        expected = {i: paper_weight_and_bias(layer.get_base_layer().weight, layer.get_base_layer().bias,
                                             *paper_terms(layer)) for i, layer in layers.items()}
        logits = model(images)
        merged = methods.get("glora").merge(model).eval()
        diff = (merged(images) - logits).abs().max().item()
    assert not any(peft_compat.is_tuner_layer(m) for m in merged.modules())
    for i, (weight, bias) in expected.items():
        qkv = merged.blocks[i].attn.qkv
        assert type(qkv) is nn.Linear
        assert (qkv.weight - weight).abs().max() < 1e-6 and (qkv.bias - bias).abs().max() < 1e-6
    assert diff < TOL, diff
