"""The method registry against design.md: exact ViT-B/16 counts, what trains and what stays
frozen, merge equivalence, validation, search spaces and the `bench methods` table.

Generic tests run over ``methods.names()``, so a newly registered method is covered at once.
"""
from __future__ import annotations

import re

import optuna
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import methods
from bench.backbones import DEMO_CONFIG, create_demo
from conftest import perturb_trainable, with_head_of
from bench.train import make_optimizer

import specs_baselines
import specs_peft
import specs_vision

SPECS = (specs_baselines, specs_peft, specs_vision)  # each group of methods keeps its tables in its own file

optuna.logging.set_verbosity(optuna.logging.WARNING)

C = 100  # head size for the counts
VIT_B_HEAD = 768 * C + C
# (method, hparams, trainable parameters without head on a ViT-B/16): design.md's table
VIT_B_COUNTS = [
    ("full", {}, 85_798_656),
    ("linear", {}, 0),
    ("vpt", {}, 92_160),
    ("vpt", {"mode": "shallow"}, 7_680),
    ("lora", {}, 294_912),
    ("adapter", {}, 156_768),
    ("adapter", {"mode": "sequential"}, 156_768),
    ("ssf", {}, 205_824),
    ("rlrr", {}, 288_768),
] + [row for spec in SPECS for row in spec.VIT_B_COUNTS]
DEFAULT_COUNTS = {name: n for name, hp, n in VIT_B_COUNTS if not hp}
# every method with defaults, plus the other modes
CONFIGS = [(name, {}) for name in methods.names()] + [("vpt", {"mode": "shallow"}),
                                                      ("adapter", {"mode": "sequential"})] + [
    config for spec in SPECS for config in spec.EXTRA_CONFIGS]


def config_id(name, hp):
    return "-".join([name, *map(str, hp.values())])


CONFIG_IDS = [config_id(name, hp) for name, hp in CONFIGS]

_SSF_TARGETS = r"(blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|norm1|norm2)|patch_embed\.proj|norm)"
# names of the trainable tensors besides the head
TRAINABLE = {
    "full": r".*",
    "linear": r"(?!)",  # nothing
    "vpt": r"blocks\.\d+\.prompts",
    "lora": r"blocks\.\d+\.attn\.qkv\.lora_[AB]",
    "adapter": r"blocks\.\d+\.mlp\.adapter\.(down|up)\.(weight|bias)",
    "ssf": _SSF_TARGETS + r"\.(scale|shift)",
    "rlrr": r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(s_in|s_out|t)"
            r"|(blocks\.\d+\.(norm1|norm2)|patch_embed\.proj|norm)\.(scale|shift)",
}
for _spec in SPECS:
    TRAINABLE.update(_spec.TRAINABLE)


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, snap) -> bool:
    state = model.state_dict()
    return list(state) == list(snap) and all(torch.equal(state[k], snap[k]) for k in snap)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- counts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,hp,count", VIT_B_COUNTS, ids=[config_id(n, hp) for n, hp, _ in VIT_B_COUNTS])
def test_vit_b_counts(vit_b, name, hp, count):
    model = methods.get(name).apply(vit_b, num_classes=C, **hp)
    assert methods.count_trainable(model) == count
    assert methods.count_trainable(model, exclude_head=False) == count + VIT_B_HEAD


@pytest.mark.parametrize("name", methods.names())
def test_every_method_has_a_reference_count(name):
    """A method registered without an exact ViT-B/16 count fails here (it never passes by omission)."""
    assert name in DEFAULT_COUNTS, f"{name}: no ViT-B/16 reference count in VIT_B_COUNTS"


# -- what trains ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,hp", CONFIGS, ids=CONFIG_IDS)
def test_only_intended_tensors_train(small_vit, name, hp):
    model = methods.get(name).apply(small_vit, num_classes=10, **hp)
    names = trainable_names(model)
    assert {"head.weight", "head.bias"} <= names
    assert name in TRAINABLE, f"{name}: no expected trainable names in TRAINABLE"
    others = names - {"head.weight", "head.bias"}
    assert all(re.fullmatch(TRAINABLE[name], n) for n in others), sorted(others)
    if name == "full":
        assert names == {n for n, _ in model.named_parameters()}
    if name == "vpt":
        assert others == ({"blocks.0.prompts"} if hp.get("mode") == "shallow"
                          else {f"blocks.{i}.prompts" for i in range(len(model.blocks))})


@pytest.mark.parametrize("name,hp", CONFIGS, ids=CONFIG_IDS)
def test_steps_change_all_trainable_and_no_frozen(small_vit, images, name, hp):
    source = snapshot(small_vit)
    model = methods.get(name).apply(small_vit, num_classes=10, **hp).train()
    before = snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    labels = torch.arange(len(images)) % 10
    for _ in range(3):  # zero-init factors (LoRA B, adapter up) freeze their partners' first step
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    trainable = trainable_names(model)
    for n, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"
    assert same_state(small_vit, source), "apply changed its input model"


# -- weight decay ---------------------------------------------------------------------------

# (decayed, not decayed) trainable parameters with a 10-class head (960 + 10) on the demo
# architecture: each method's official optimizer rule (the sources are in the methods' docstrings)
DECAY_SPLIT = {
    "full": (461_760, 7_018),  # timm: every weight matrix but pos_embed / cls_token
    "linear": (960, 10),       # the head: weight decayed, bias not, in every method
    "vpt": (4_800, 10),        # VPT decays its prompts: 4 blocks x 10 x 96
    "vpt-shallow": (1_920, 10),
    "lora": (13_248, 10),      # A and B (timm's rule, as NOAH and peft)
    "adapter": (7_104, 426),   # down and up weights, not their biases (timm's rule, as NOAH)
    "adapter-sequential": (7_104, 426),
    "ssf": (960, 8_842),       # 1-d scales and shifts: not decayed (timm's rule, as SSF)
    "rlrr": (8_064, 5_194),    # s_in, s_out and the patch SSF decayed; t and the norm SSFs not
}
for _spec in SPECS:
    DECAY_SPLIT.update(getattr(_spec, "DECAY_SPLIT", {}))
# methods that add no randomly initialised tensor: they train the backbone's own
NO_RANDOM_INIT = ("full", "linear", *(n for spec in SPECS for n in getattr(spec, "NO_RANDOM_INIT", ())))


@pytest.mark.parametrize("name,hp", CONFIGS, ids=CONFIG_IDS)
def test_weight_decay_follows_official_code(small_vit, name, hp):
    model = methods.get(name).apply(small_vit, num_classes=10, **hp)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05, device="cpu")
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(listed) == sorted(id(p) for p in trainable.values())  # each trainable tensor once
    assert id(model.head.weight) in decayed and id(model.head.bias) not in decayed
    split = (sum(p.numel() for p in trainable.values() if id(p) in decayed),
             sum(p.numel() for p in trainable.values() if id(p) not in decayed))
    key = config_id(name, hp)
    assert key in DECAY_SPLIT, f"{key}: no expected decay split in DECAY_SPLIT"
    assert split == DECAY_SPLIT[key]
    if name == "rlrr":  # official names: scale_col, scale_line, ssf_*_patch decayed; shift_bias, ssf_*_norm not
        assert {n for n, p in trainable.items() if id(p) in decayed} == {"head.weight"} | {
            n for n in trainable if re.fullmatch(r"blocks\.\d+\..*\.(s_in|s_out)|patch_embed\.proj\.(scale|shift)", n)}
    assert methods.decays_backbone(name) == (split[0] > model.head.weight.numel())


# -- behaviour at init ----------------------------------------------------------------------

@pytest.mark.parametrize("name,hp", [("lora", {}), ("adapter", {"mode": "parallel"})])
def test_equals_base_at_init(small_vit, images, name, hp):
    model = methods.get(name).apply(small_vit, num_classes=10, **hp).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), with_head_of(small_vit, model)(images), atol=1e-6, rtol=0)



@pytest.mark.parametrize("name", methods.names())
def test_head_init_depends_on_the_seed_only(name):
    """The runner seeds, then applies: the new head is the same for every method of one seed,
    and the method's own random init still follows the seed."""
    def adapted(method, seed):
        torch.manual_seed(seed)
        return methods.get(method).apply(create_demo(), num_classes=5)

    linear, model, other = adapted("linear", 3), adapted(name, 3), adapted(name, 4)
    assert torch.equal(model.head.weight, linear.head.weight) and torch.equal(model.head.bias, linear.head.bias)
    assert not torch.equal(other.head.weight, model.head.weight)
    assert not torch.equal(other.head.bias, model.head.bias)
    own = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    others = dict(other.named_parameters())
    random_init = name not in NO_RANDOM_INIT  # full trains the pretrained weights as they are
    assert any(not torch.equal(p, others[n]) for n, p in own) == random_init


@pytest.mark.parametrize("name,hp", [("rlrr", {}), ("adapter", {"mode": "sequential"})])
def test_differs_from_base_at_init(small_vit, images, name, hp):
    """RLRR's scales start at kaiming-uniform; NOAH's adapter (sequential) at trunc_normal(0.02)
    for down and up, so neither adds zero at init, as in their official code."""
    model = methods.get(name).apply(small_vit, num_classes=10, **hp).eval()
    with torch.no_grad():
        diff = (model(images) - with_head_of(small_vit, model)(images)).abs().max()
    assert diff > 1e-4  # float32 noise is about 1e-6; the adapter's is a few 1e-3, RLRR's far more


def test_inits(small_vit):
    """Init distributions of design.md (small ViT: width 96, patch 8x8, 3 channels)."""
    torch.manual_seed(0)
    vpt = methods.get("vpt").apply(small_vit, num_classes=10)
    prompts = torch.stack([b.prompts for b in vpt.blocks])
    bound = (6 / (3 * 8 * 8 + 96)) ** 0.5
    assert 0.9 * bound < prompts.abs().max() <= bound
    ssf = methods.get("ssf").apply(small_vit, num_classes=10)
    scales = torch.cat([p for n, p in ssf.named_parameters() if n.endswith(".scale")])
    assert abs(scales.mean() - 1) < 0.005 and 0.015 < scales.std() < 0.025
    qkv = methods.get("rlrr").apply(small_vit, num_classes=10).blocks[0].attn.qkv
    assert 0.9 * (6 / 96) ** 0.5 < qkv.s_in.abs().max() <= (6 / 96) ** 0.5
    assert 0.9 * 6 ** 0.5 < qkv.s_out.abs().max() <= 6 ** 0.5
    assert not qkv.t.any()


def test_lora_and_rlrr_act_per_qkv_chunk(small_vit):
    """lora changes only the q and v rows of the fused qkv by (alpha/r) B A; rlrr rescales each
    of q, k, v with its own s_in."""
    d = small_vit.embed_dim
    w = small_vit.blocks[0].attn.qkv.weight.detach()
    lora = methods.get("lora").apply(small_vit, num_classes=10, rank=4, alpha=8)
    perturb_trainable(lora)
    a, b = lora.blocks[0].attn.qkv.lora_A, lora.blocks[0].attn.qkv.lora_B
    merged = methods.get("lora").merge(lora).blocks[0].attn.qkv.weight
    expected = torch.cat([w[:d] + 2 * b[0] @ a[0], w[d:2 * d], w[2 * d:] + 2 * b[1] @ a[1]])
    torch.testing.assert_close(merged, expected)

    qkv = methods.get("rlrr").apply(small_vit, num_classes=10).blocks[0].attn.qkv
    expected = torch.cat([w[g * d:(g + 1) * d] * (1 + qkv.s_out[g * d:(g + 1) * d] * qkv.s_in[g])
                          for g in range(3)])
    torch.testing.assert_close(qkv.weight(), expected)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_adapter_placement(small_vit, mode):
    """parallel reads the residual stream (before norm2) and adds scale * adapter to the MLP
    branch; sequential adds adapter(y) to the MLP output y."""
    model = methods.get("adapter").apply(small_vit, num_classes=10, mode=mode, scale=0.5)
    perturb_trainable(model)
    block, plain = model.blocks[0], small_vit.blocks[0]
    adapter = block.mlp.adapter
    x = torch.randn(2, 5, small_vit.embed_dim)
    with torch.no_grad():
        h = x + plain.attn(plain.norm1(x))
        y = plain.mlp(plain.norm2(h))
        expected = h + y + (0.5 * adapter(h) if mode == "parallel" else adapter(y))
        torch.testing.assert_close(block(x), expected)



# -- adapter against its formulas -----------------------------------------------------------
# The two modes written out from the papers and methods/adapter.py's docstring, on the modules of a
# timm block (drop path and the MLP's dropouts are Identity / p=0 in these backbones). Against the
# official code (ShoufaChen/AdaptFormer@6967d67, ZhangYuanhan-AI/NOAH@e9c55f3): not here, which
# needs no checkout; benchmarks/official/adapter.py runs those comparisons on checkouts given to
# it, and docs/measurements.md records its results.

class AdapterByFormula(nn.Module):
    """One block with the adapter of ``mode`` as its formula, from the adapter's tensors; h = x +
    attn(norm1(x)), y = mlp(norm2(h)), drop = dropout 0.1 (train mode only):

    - parallel (AdaptFormer): h + y + s (W_u drop(ReLU(W_d h + b_d)) + b_u), reading h, the residual
      stream before norm2;
    - sequential (NOAH's adapter): h + y + W_u drop(QuickGELU(W_d y + b_d)) + b_u, QuickGELU(z) =
      z sigmoid(1.702 z), on the MLP's output before the residual add."""

    def __init__(self, block, adapter, mode, scale):
        super().__init__()
        self.block, self.adapter, self.mode, self.scale = block, adapter, mode, scale

    def bottleneck(self, z, act):  # W_u drop(act(W_d z + b_d)) + b_u
        a = self.adapter
        hidden = F.dropout(act(F.linear(z, a.down.weight, a.down.bias)), p=0.1, training=self.training)
        return F.linear(hidden, a.up.weight, a.up.bias)

    def forward(self, x):  # the block's branch (y + adapter) added to h in one sum, as timm's block adds it
        b = self.block
        h = x + b.attn(b.norm1(x))
        y = b.mlp(b.norm2(h))
        if self.mode == "parallel":
            return h + (y + self.scale * self.bottleneck(h, F.relu))
        return h + (y + self.bottleneck(y, lambda z: z * torch.sigmoid(1.702 * z)))


def adapter_by_formula(base, model, mode):
    """``base`` with ``model``'s head, each block the formula of ``mode`` with ``model``'s adapter tensors."""
    ref = with_head_of(base, model)
    for i, block in enumerate(ref.blocks):
        ref.blocks[i] = AdapterByFormula(block, model.blocks[i].mlp.adapter, mode, model.peft_hparams["scale"])
    return ref


@pytest.fixture(scope="module")
def demo():
    return create_demo().eval()


@pytest.mark.parametrize("mode,hp", [("parallel", {}), ("parallel", {"bottleneck": 4, "scale": 1.0}),
                                     ("sequential", {}), ("sequential", {"bottleneck": 4})])
def test_adapter_is_its_formula(demo, images, mode, hp):
    """parallel = AdaptFormer's formula, sequential = NOAH's adapter's, with the adapters' tensors
    perturbed: the same logits in eval mode, and in train mode under the same seed (the same dropout
    masks, drawn in the same order)."""
    model = methods.get("adapter").apply(demo, num_classes=10, mode=mode, **hp)
    perturb_trainable(model)
    ref = adapter_by_formula(demo, model, mode)
    with torch.no_grad():
        diff = (model.eval()(images) - ref.eval()(images)).abs().max().item()
        assert diff <= 1e-6, diff
        assert (ref(images) - with_head_of(demo, model)(images)).abs().max().item() > 1e-2  # the adapters act
        torch.manual_seed(5)
        ours = model.train()(images)
        torch.manual_seed(5)
        theirs = ref.train()(images)
        assert (ours - theirs).abs().max().item() <= 1e-6
        torch.manual_seed(6)
        assert not torch.equal(model(images), ours), "no dropout in train mode"


def test_adapter_inits_match_references(demo):
    """parallel (AdaptFormer, init_option "lora"): down weight kaiming-uniform a=sqrt(5), down
    bias, up weight and up bias zero. sequential (NOAH): the xavier init of AdapterSuper is
    overwritten by the model's init_weights -> _init_vit_weights, so every adapter Linear has
    trunc_normal(std=0.02) weights and zero biases. Both: dropout 0.1 before the up projection.
    (benchmarks/official/adapter.py checks the official modules' init against the same rules.)"""
    torch.manual_seed(0)
    width, bottleneck = demo.embed_dim, 32
    par = methods.get("adapter").apply(demo, num_classes=10, mode="parallel", bottleneck=bottleneck)
    down = torch.stack([b.mlp.adapter.down.weight for b in par.blocks])
    bound = 1 / width ** 0.5  # kaiming_uniform_(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
    assert 0.9 * bound < down.abs().max() <= bound
    for b in par.blocks:
        a = b.mlp.adapter
        assert not a.down.bias.any() and not a.up.weight.any() and not a.up.bias.any()
    seq = methods.get("adapter").apply(demo, num_classes=10, mode="sequential", bottleneck=bottleneck)
    for part in ("down", "up"):
        w = torch.cat([getattr(b.mlp.adapter, part).weight.flatten() for b in seq.blocks])
        assert abs(w.mean()) < 0.002 and 0.018 < w.std() < 0.022, (part, w.std())
        assert not any(getattr(b.mlp.adapter, part).bias.any() for b in seq.blocks)
    for model in (par, seq):
        for b in model.blocks:
            drops = [m.p for m in b.mlp.adapter.modules() if isinstance(m, nn.Dropout)]
            assert drops == [0.1], drops


# -- merge ----------------------------------------------------------------------------------

def check_merge(base, model, x):
    """``merge`` of ``model`` (adapted from ``base``) is a plain equivalent timm ViT."""
    method = methods.get(model.peft_method)
    model.eval()
    before = snapshot(model)
    types_before = [type(m) for m in model.modules()]
    merged = method.merge(model).eval()

    assert type(merged) is VisionTransformer
    foreign = {type(m).__qualname__ for m in merged.modules()
               if not type(m).__module__.startswith(("torch.", "timm."))}
    assert not foreign, f"wrapper modules left after merge: {foreign}"
    assert not hasattr(merged, "peft_method")
    plain = base.state_dict()
    expected = {**{k: v.shape for k, v in plain.items()},
                "head.weight": model.head.weight.shape, "head.bias": model.head.bias.shape}
    assert list(merged.state_dict()) == list(expected)
    assert {k: v.shape for k, v in merged.state_dict().items()} == expected
    with torch.no_grad():
        diff = (merged(x) - model(x)).abs().max().item()
    assert diff <= 1e-4, diff
    assert same_state(model, before) and [type(m) for m in model.modules()] == types_before, \
        "merge changed its input"


@pytest.mark.parametrize("name,hp", CONFIGS, ids=CONFIG_IDS)
def test_merge(small_vit, images, name, hp):
    method = methods.get(name)
    model = method.apply(small_vit, num_classes=10, **hp)
    if not method.mergeable:
        with pytest.raises(methods.NotMergeable):
            method.merge(model)
        return
    perturb_trainable(model)
    check_merge(small_vit, model, images)


@pytest.mark.parametrize("name", ["ssf", "rlrr"])
def test_ssf_on_fc_norm_when_that_is_the_final_norm(images, name):
    """Average-pooling ViTs normalise after pooling: SSF goes on ``fc_norm`` and still merges."""
    torch.manual_seed(0)
    base = VisionTransformer(num_classes=0, global_pool="avg", fc_norm=True, **DEMO_CONFIG).eval()
    model = methods.get(name).apply(base, num_classes=10)
    assert {"fc_norm.scale", "fc_norm.shift"} <= trainable_names(model)
    perturb_trainable(model)
    check_merge(base, model, images)


def test_vpt_and_adapter_are_not_mergeable():
    assert not methods.get("vpt").mergeable and not methods.get("adapter").mergeable


def test_rlrr_merge_on_vit_b(vit_b):
    """At width 768 the q, k, v chunks of the fused qkv are each rescaled with their own s_in."""
    model = methods.get("rlrr").apply(vit_b, num_classes=C)
    qkv = model.blocks[0].attn.qkv
    assert qkv.s_in.shape == (3, 768) and qkv.s_out.shape == (2304, 1) and qkv.t.shape == (2304,)
    perturb_trainable(model, std=0.05)
    check_merge(vit_b, model, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)))


# -- vpt with timm's block-by-block paths ---------------------------------------------------

@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_vpt_with_grad_checkpointing(small_vit, images, mode):
    model = methods.get("vpt").apply(small_vit, num_classes=10, mode=mode).train()
    torch.manual_seed(3)
    plain = model(images)
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    torch.manual_seed(3)  # the same prompt-dropout masks
    checkpointed = model(images)
    torch.testing.assert_close(checkpointed, plain)
    checkpointed.square().sum().backward()
    prompts = [p for n, p in model.named_parameters() if n.endswith("prompts")]
    assert prompts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_vpt_forward_intermediates_uses_prompts(small_vit, images, mode):
    model = methods.get("vpt").apply(small_vit, num_classes=10, mode=mode).eval()
    with torch.no_grad():
        final, _ = model.forward_intermediates(images, output_fmt="NLC")
        torch.testing.assert_close(final, model.forward_features(images))
        assert final.shape == small_vit.forward_features(images).shape
        assert not torch.allclose(final, small_vit.forward_features(images))
        if mode == "deep":  # every block's output keeps timm's token count
            assert len(model.forward_intermediates(images, intermediates_only=True)) == len(model.blocks)


# -- bad input ------------------------------------------------------------------------------

def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError) as err:
        methods.get("nope")
    assert all(name in str(err.value) for name in methods.names())


@pytest.mark.parametrize("name,hp,pattern", [
    ("lora", {"rank": 0}, r"rank must be an integer >= 1"),
    ("lora", {"rank": 2.5}, r"rank must be an integer >= 1"),
    ("lora", {"alpha": 0}, r"alpha must be a number > 0"),
    ("vpt", {"num_prompts": -1}, r"num_prompts must be an integer >= 1"),
    ("vpt", {"num_prompts": 0}, r"num_prompts must be an integer >= 1"),
    ("vpt", {"mode": "middle"}, r"mode must be one of 'deep', 'shallow'"),
    ("vpt", {"prompt_dropout": 1.0}, r"prompt_dropout must be a number in \[0, 1\)"),
    ("adapter", {"mode": "serial"}, r"mode must be one of 'parallel', 'sequential'"),
    ("adapter", {"bottleneck": 0}, r"bottleneck must be an integer >= 1"),
    ("lora", {"rnk": 4}, r"unknown hyperparameter\(s\) rnk; known: alpha, rank"),
    ("full", {"rank": 4}, r"unknown hyperparameter\(s\) rank; known: none"),
])
def test_impossible_hparams_are_refused(name, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        methods.get(name).resolve(**hp)


def test_sizes_beyond_the_width_are_refused(vit_b):
    with pytest.raises(ValueError, match=r"bottleneck must be an integer in \[1, 768\], got 1000"):
        methods.get("adapter").apply(vit_b, num_classes=C, bottleneck=1000)


def test_rank_beyond_the_width_is_refused(small_vit):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 96\], got 128"):
        methods.get("lora").apply(small_vit, num_classes=10, rank=128)


# -- hyperparameters ------------------------------------------------------------------------

@pytest.mark.parametrize("name", methods.names())
def test_defaults_are_documented_and_in_the_search_space(name):
    method = methods.get(name)
    assert set(method.help) == set(method.defaults)
    space = method.search_space(optuna.trial.FixedTrial(dict(method.defaults)))
    assert space == {k: method.defaults[k] for k in space}
    assert method.resolve() == method.defaults


@pytest.mark.parametrize("name", methods.names())
def test_search_space_suggestions_apply(small_vit, images, name):
    method = methods.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        hp = method.search_space(trial)
        assert set(hp) <= set(method.defaults)
        method.resolve(**hp)
        with torch.no_grad():
            assert method.apply(small_vit, num_classes=10, **hp).eval()(images).shape == (len(images), 10)
        study.tell(trial, 0.0)


# -- the `bench methods` table ---------------------------------------------------------------

def test_bench_methods_table(capsys):
    from bench.cli import main

    assert main(["methods"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("|")}
    for name in methods.names():
        assert name in rows, name
        if name in DEFAULT_COUNTS:
            n = DEFAULT_COUNTS[name]
            assert f" {n:,} " in rows[name] and f" {n + VIT_B_HEAD:,} " in rows[name], rows[name]
        assert ("yes" if methods.get(name).mergeable else "no") in rows[name].split("|")[4]
    assert "rank=8, alpha=8" in rows["lora"]


@pytest.mark.parametrize("groups", [1, 3])
def test_rlrr_fused_backward_matches_autograd_of_the_formula(groups):
    """RLRR's hand-written backward (it keeps W' only) against autograd of W' = W * (1 + s_out s_in^T)."""
    from methods.rlrr import RLRRLinear, _RescaledLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 6).double().requires_grad_(False)
    m = RLRRLinear(lin, groups=groups).double()
    x = torch.randn(2, 5, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, b, t: _RescaledLinear.apply(x, lin.weight, lin.bias, a, b, t, groups), (x, m.s_in, m.s_out, m.t))
    params = (x, m.s_in, m.s_out, m.t)
    m(x).square().sum().backward()
    fused = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    torch.nn.functional.linear(x, m.weight(), m.bias()).square().sum().backward()
    for got, p in zip(fused, params):
        torch.testing.assert_close(got, p.grad)
