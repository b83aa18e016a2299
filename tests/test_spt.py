"""SPT (``spt_lora``, ``spt_adapter``) against SPT's rules as methods/spt.py's docstring states them
(He et al., "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning", ICCV 2023), written out here:
the sensitivity of an entry is its squared gradient summed over the first 16 batches of 32 training
images (plain autograd on the model, stochastic depth 0.1); the sweep's rule on a score table made by
hand, whose selections are worked out by hand; the layers' math (W + scatter(delta), LoRA's B A x,
the sequential adapter, the shared input dropout); literal ViT-B/16 counts of a hand-made selection;
and the contract of a selection that decides the count (``bench.train.fit`` calls ``select`` once,
on the training split in order; determinism; no frozen weight moves; merge; the recorded count).

Against the official code (ziplab/SPT: the pass, the sweep, the training model, the optimizer, the
shipped cifar selection's 380,738 on ViT-B/16): not here, which needs no checkout;
``benchmarks/official/spt.py`` runs that comparison on a checkout given to it, and docs/measurements.md
records its result. The registry-wide tests (placeholder counts, what trains, a step, weight decay,
merge, search space) are in ``test_methods.py`` (tables: ``specs_vision.py``)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import methods
from bench import train
from bench.backbones import DEMO_CONFIG
from conftest import perturb_trainable, recording_splits
from methods._spt_plan import Selection, sweep
from methods.spt import SPTLinear, build, placeholder

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def dataset(n=600, seed=5, classes=10):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g))


@pytest.fixture(scope="module")
def demo_vit(small_vit):
    return small_vit


def seeded_apply(name, backbone, seed=0, **hp):
    torch.manual_seed(seed)  # the head and the placeholder's init follow the seed
    return methods.get(name).apply(backbone, num_classes=10, **hp)


def in_order(ds, batch_size=64):
    """The batches ``bench.train.fit`` hands a ``select_in_order`` method: the split in its order."""
    return train._loader(ds, batch_size, False, 0, 0, "cpu")


def run_select(method, model, batches, seed, monkeypatch):
    """``select``, returning the sensitivities it scored and the selection its sweep made."""
    seen = {}

    def recording_sweep(scores, *args):
        seen["scores"], seen["selection"] = scores, sweep(scores, *args)
        return seen["selection"]

    monkeypatch.setattr("methods.spt.sweep", recording_sweep)
    method.select(model, batches, seed)
    monkeypatch.undo()
    return seen["scores"], seen["selection"]


# ============================================================== the sensitivity pass

def scored_names(depth=4):
    """What SPT scores, by name (q, k, v: the row thirds of timm's fused qkv), in the order of a model
    whose q, k and v are separate Linears: per block norm1, q, k, v, proj, norm2, fc1, fc2 (weight and
    bias of each), then the final norm; never the head, class token, patch or position embedding."""
    parts = [("norm1", None), ("attn.q", 0), ("attn.k", 1), ("attn.v", 2), ("attn.proj", None), ("norm2", None),
             ("mlp.fc1", None), ("mlp.fc2", None)]
    return [(f"blocks.{b}.{p}.{w}", f"blocks.{b}.{'attn.qkv' if third is not None else p}.{w}", third)
            for b in range(depth) for p, third in parts for w in ("weight", "bias")] + [
        (f"norm.{w}", f"norm.{w}", None) for w in ("weight", "bias")]


def test_sensitivity_is_the_sum_of_squared_gradients_over_the_first_16_batches(demo_vit, monkeypatch):
    """The sensitivities ``select`` scores equal, for every scored tensor, the sum over the first 16
    batches of 32 training images (in order) of the squared gradient of the cross-entropy of the
    logits, computed by plain autograd on a timm ViT holding the same tensors (the backbone and the
    fit's head) in train mode with stochastic depth 0.1, after seeding with the fit's seed."""
    ds = dataset()
    model = seeded_apply("spt_lora", demo_vit)
    scores, _ = run_select(methods.get("spt_lora"), model, in_order(ds), 7, monkeypatch)

    reference = timm.models.vision_transformer.VisionTransformer(num_classes=10, drop_path_rate=0.1, **DEMO_CONFIG)
    missing, unexpected = reference.load_state_dict(demo_vit.state_dict(), strict=False)
    assert missing == ["head.weight", "head.bias"] and not unexpected
    reference.head.load_state_dict(model.head.state_dict())
    params = dict(reference.named_parameters())
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    x, y = ds.tensors
    torch.manual_seed(7)
    reference.train()
    for i in range(16):
        reference.zero_grad()
        F.cross_entropy(reference(x[32 * i:32 * (i + 1)]), y[32 * i:32 * (i + 1)]).backward()
        for n, p in params.items():
            sums[n] += p.grad ** 2

    names = scored_names()
    assert list(scores) == [n for n, _, _ in names] and len(names) == 4 * 16 + 2
    top = max(s.max().item() for s in sums.values())
    for name, ours_name, third in names:
        expected = sums[ours_name] if third is None else sums[ours_name].chunk(3)[third]
        if name.endswith("attn.k.bias"):  # its true gradient is 0 (softmax ignores a shift of every key)
            assert scores[name].max() < 1e-9 * top and expected.max() < 1e-9 * top
            continue
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item(),
                                   msg=name)


# ============================================================== the sweep

A, B = "blocks.0.attn.q.weight", "blocks.0.mlp.fc1.weight"  # matrices, 100 x 200 (out x in)
V, W = "blocks.0.norm1.weight", "blocks.0.attn.q.bias"  # vectors of 10,000
EXTRA = 3_400  # what the class token adds to every total


def hand_made_scores() -> dict[str, torch.Tensor]:
    """60,000 entries (three sweep steps: tau = 20,000, 40,000, 60,000), ranked as listed (scores
    60,000, 59,999, ... 1: no ties), step by step."""
    w_first = torch.arange(0, 7_000, 5)  # 1,400 entries of W
    w_rest = torch.tensor(sorted(set(range(10_000)) - set(w_first.tolist())))  # the other 8,600
    ranking = [
        # step 1 (20,000): A 1,500 (its last entries, most sensitive last), B 15,000, V 2,100, W 1,400
        (A, torch.arange(19_999, 18_499, -1)), (B, torch.arange(15_000)), (V, torch.arange(2_100)), (W, w_first),
        # step 2 (20,000 more): A 2,000, B 5,000, V 7,900, W 5,100
        (A, torch.arange(2_000)), (B, torch.arange(15_000, 20_000)), (V, torch.arange(2_100, 10_000)),
        (W, w_rest[:5_100]),
        # step 3 (the last 20,000): A 16,500, W 3,500
        (A, torch.arange(2_000, 18_500)), (W, w_rest[5_100:]),
    ]
    scores = {A: torch.zeros(100, 200), B: torch.zeros(100, 200), V: torch.zeros(10_000), W: torch.zeros(10_000)}
    value = 60_000
    for name, indices in ranking:
        flat = scores[name].view(-1)
        assert not flat[indices].any()  # every entry ranked once
        flat[indices] = torch.arange(value, value - len(indices), -1, dtype=torch.float32)
        value -= len(indices)
    assert value == 0
    return scores


def cost(in_dim, out_dim):
    """A structured module's cost; 100 in + out tells in from out: A and B (in 200, out 100) cost 20,100."""
    return 100 * in_dim + out_dim


def test_sweep_rule_on_a_hand_made_score_table():
    """The sweep (alpha 10: a matrix is structured with >= 20,100 / 10 = 2,010 of its entries among the
    top tau; beta 5: a vector of 10,000 is trained whole with >= 2,000), worked out by hand:

    - step 1, tau 20,000: A 1,500 (< 2,010: 1,500 unstructured entries; with in and out swapped the
      cost would be 10,200, the threshold 1,020, and A structured), B 15,000 (structured: 20,100),
      V 2,100 (whole: 10,000; with beta 4 it would not be), W 1,400 (1,400 entries):
      total 1,500 + 20,100 + 10,000 + 1,400 + 3,400 = 36,400;
    - step 2, tau 40,000: A 3,500 and B 20,000 structured, V and W (6,500) whole:
      2 x 20,100 + 2 x 10,000 + 3,400 = 63,600; step 3 the same.

    Budget 0.03M (30,000): step 1 (6,400 away; steps 2, 3: 33,600). Budget 0.05M (50,000): steps 1, 2
    and 3 are all 13,600 away: the later step wins (step 1 would leave A's and W's entries).
    Budget 0.018M: 0 is closer than every step (18,000 vs 18,400): refused."""
    scores = hand_made_scores()
    first = sweep(scores, cost, 0.03, 10.0, EXTRA)
    assert first.structured == (B,) and first.vectors == (V,) and first.planned == 36_400
    assert set(first.entries) == {A, W}
    assert torch.equal(first.entries[A], torch.arange(18_500, 20_000))  # flat indices, ascending
    assert torch.equal(first.entries[W], torch.arange(0, 7_000, 5))
    later = sweep(scores, cost, 0.05, 10.0, EXTRA)
    assert later.structured == (A, B) and later.vectors == (V, W) and later.entries == {} and later.planned == 63_600
    with pytest.raises(ValueError, match=r"budget 0\.018M is below half the smallest selection of the sweep "
                                         r"\(36,400 parameters on this backbone\)"):
        sweep(scores, cost, 0.018, 10.0, EXTRA)


def test_sweep_structures_a_matrix_at_cost_over_alpha():
    """The same table with alpha 5 (threshold 4,020): at step 2 A's 3,500 stay unstructured:
    20,100 + 3,500 + 2 x 10,000 + 3,400 = 47,000, the closest to 0.05M; budget 0.03M still step 1
    (A 1,500 entries; 36,400)."""
    scores = hand_made_scores()
    at_05 = sweep(scores, cost, 0.05, 5.0, EXTRA)
    assert at_05.structured == (B,) and at_05.vectors == (V, W) and at_05.planned == 47_000
    assert set(at_05.entries) == {A} and len(at_05.entries[A]) == 3_500
    assert sweep(scores, cost, 0.03, 5.0, EXTRA).planned == 36_400


# ============================================================== the layers

def qkv_layer(kind, rank=4, width=12):
    """An SPTLinear on a fused qkv Linear (width -> 3 x width) of a block named blocks.0, with: a module
    on q and v, 4 single entries of k's weight, 2 of k's bias, v's bias whole; then every trainable
    tensor perturbed."""
    torch.manual_seed(0)
    base = nn.Linear(width, 3 * width).requires_grad_(False)  # frozen, as ``apply`` leaves the backbone
    layer = SPTLinear(base, ("q", "k", "v"), kind)
    selection = Selection(structured=("blocks.0.attn.q.weight", "blocks.0.attn.v.weight"),
                          vectors=("blocks.0.attn.v.bias",),
                          entries={"blocks.0.attn.k.weight": torch.tensor([0, 5, 17, 143]),
                                   "blocks.0.attn.k.bias": torch.tensor([1, 7])})
    layer.choose(selection, "blocks.0.attn", rank)
    perturb_trainable(layer, std=0.1)
    return layer.eval()


def scattered(tensor, index, delta):
    """``tensor`` + scatter(delta): ``delta[i]`` added at flat position ``index[i]``, one by one."""
    out = tensor.detach().clone().view(-1)
    for i, d in zip(index.tolist(), delta.tolist()):
        out[i] += d
    return out.view_as(tensor)


@pytest.mark.parametrize("kind", ["lora", "adapter"])
def test_layer_is_w_plus_scattered_deltas_plus_its_modules(kind):
    """In eval mode the layer computes y = x (W + scatter(delta_w))^T + (b + scatter(delta_b)), the
    deltas at the flat positions of the selected entries in the fused tensor (k: rows 12-23; v's bias
    whole: positions 24-35); then LoRA adds B A x to q's and v's thirds of y (unscaled, reading the
    layer's input); the adapter (sequential) replaces each y_i by y_i + up(GELU(down(y_i)))."""
    layer = qkv_layer(kind)
    w, b = layer.base.weight, layer.base.bias
    assert sorted(layer.index_weight.tolist()) == [144 + i for i in (0, 5, 17, 143)]  # k: after q's 12 x 12
    assert sorted(layer.index_bias.tolist()) == [13, 19] + list(range(24, 36))
    x = torch.randn(2, 5, 12)
    y = x @ scattered(w, layer.index_weight, layer.delta_weight).T + scattered(b, layer.index_bias, layer.delta_bias)
    expected = list(y.split(12, dim=-1))
    for i, op in ((0, "q"), (2, "v")):
        down, up = layer.structured[op].learnable[0], layer.structured[op].learnable[-1]
        if kind == "lora":
            assert down.bias is None and up.bias is None and down.weight.shape == (4, 12)
            expected[i] = expected[i] + x @ down.weight.T @ up.weight.T
        else:
            expected[i] = expected[i] + F.gelu(expected[i] @ down.weight.T + down.bias) @ up.weight.T + up.bias
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.cat(expected, dim=-1), atol=1e-6, rtol=0)
    # q, v modules: LoRA 12*4 + 4*12, the adapter the same + biases 4 + 12; deltas 4 + 2 + 12
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == (
        2 * 96 + 18 if kind == "lora" else 2 * (96 + 16) + 18)


def test_adapter_on_proj_is_parallel_and_reads_the_input_undropped():
    """proj's adapter reads the layer's input, in parallel (y + up(GELU(down(x)))), without dropout
    even in train mode (q, k, v's LoRA modules read it through one shared Dropout(0.1))."""
    torch.manual_seed(0)
    layer = SPTLinear(nn.Linear(12, 12).requires_grad_(False), ("proj",), "adapter")
    layer.choose(Selection(structured=("blocks.0.attn.proj.weight",)), "blocks.0.attn", 4)
    perturb_trainable(layer, std=0.1)
    x = torch.randn(2, 5, 12)
    down, up = layer.structured["proj"].learnable[0], layer.structured["proj"].learnable[-1]
    with torch.no_grad():
        expected = layer.base(x) + F.gelu(x @ down.weight.T + down.bias) @ up.weight.T + up.bias
        torch.testing.assert_close(layer.eval()(x), expected, atol=1e-6, rtol=0)
    seen = []
    layer.structured["proj"].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    layer.train()(x)
    assert torch.equal(seen[0], x)


def test_qkv_modules_share_one_input_dropout_in_train_mode():
    """LoRA on q and v read the same dropped input (one Dropout(0.1) mask for the layer: zero, or the
    input / 0.9)."""
    layer = qkv_layer("lora").train()
    seen = {}
    for op in ("q", "v"):
        layer.structured[op].register_forward_pre_hook(lambda m, args, op=op: seen.setdefault(op, args[0]))
    x = torch.randn(4, 50, 12)
    torch.manual_seed(1)
    layer(x)
    assert torch.equal(seen["q"], seen["v"])
    dropped = seen["q"] == 0
    assert 0.05 < dropped.float().mean() < 0.15
    torch.testing.assert_close(seen["q"][~dropped], x[~dropped] / 0.9)


# ============================================================== literal counts on ViT-B/16

def vit_b_model(name: str, selection: Selection) -> nn.Module:
    """The bench's model of ``selection`` on ViT-B/16's layout (meta device: shapes only)."""
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    model = methods.get(name).apply(vit, num_classes=100)
    build(model, selection, 8)
    return model


HAND_MADE = Selection(structured=("blocks.0.attn.q.weight", "blocks.3.mlp.fc1.weight"),
                      vectors=("blocks.0.attn.k.bias", "blocks.1.norm1.weight", "norm.bias"),
                      entries={"blocks.2.attn.proj.weight": torch.arange(100), "blocks.2.norm2.bias": torch.arange(5),
                               "blocks.5.mlp.fc2.bias": torch.arange(7)})


@pytest.mark.parametrize("name,count", [
    ("spt_lora", 46_187),  # 768 + q 768*8 + 8*768 + fc1 768*8 + 8*3072 + 3 x 768 + 100 + 7
    ("spt_adapter", 68_475),  # 768 + q 768*8 + 8*768 + 8 + 768 + fc1 3072*8 + 8*3072 + 8 + 3072 + 2,304 + 107
])
def test_hand_made_selection_counts(name, count):
    """A selection written by hand: a module on block 0's q and block 3's fc1, block 0's k bias, a norm
    weight and the final norm's bias whole, 100 entries of a proj weight, 7 of an fc2 bias, 5 of a norm
    bias (counted by the sweep, not trained: only Linears get single entries). The adapter is
    sequential: fc1's reads fc1's output (3072 -> 8 -> 3072)."""
    model = vit_b_model(name, HAND_MADE)
    assert methods.count_trainable(model) == count
    assert methods.count_trainable(model, exclude_head=False) == count + 768 * 100 + 100


def test_placeholder_is_q_and_v_of_every_block(demo_vit):
    model = methods.get("spt_lora").apply(demo_vit, num_classes=10)
    assert placeholder(model).structured == tuple(f"blocks.{b}.attn.{op}.weight" for b in range(4) for op in "qv")
    assert {n for n, m in model.named_modules() if n.endswith(".structured")} == {
        f"blocks.{b}.attn.{p}.structured" for b in range(4) for p in ("qkv", "proj")} | {
        f"blocks.{b}.mlp.{p}.structured" for b in range(4) for p in ("fc1", "fc2")}
    assert [sorted(m.structured) for m in model.modules() if isinstance(m, SPTLinear) and len(m.structured)] == [
        ["q", "v"]] * 4


# ============================================================== the selection in a fit

@pytest.mark.parametrize("n,read", [(40, 40), (600, 512)])
def test_fit_selects_once_from_the_first_training_images_in_order(demo_vit, monkeypatch, n, read):
    """``bench.train.fit`` calls ``select`` once, before any optimizer step, with the training split in
    its order (``select_in_order``) and nothing of the evaluation split; SPT reads the first 16 x 32
    images and no more; the selection is the one ``select`` makes on those batches."""
    train_ds, eval_ds = recording_splits(n)
    train_x, train_read, eval_read = train_ds.tensors[0], train_ds.log, eval_ds.log
    spt = methods.get("spt_lora")
    calls, original = [], type(spt).select

    def recording_select(self, model, batches, seed):
        seen = []

        def passing():  # hands the batches on as select asks for them
            for x, y in batches:
                seen.append(x)
                yield x, y

        original(self, model, passing(), seed)
        calls.append((list(train_read), list(eval_read), seed, torch.cat(seen)))

    monkeypatch.setattr(type(spt), "select", recording_select)
    model = seeded_apply("spt_lora", demo_vit, budget=0.04)
    train.fit(model, train_ds, train.TrainConfig(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, seed=11),
              eval_ds=eval_ds)
    assert len(calls) == 1
    before, evaluated, seed, seen = calls[0]
    assert before == list(range(read)) and evaluated == [] and seed == 11
    assert torch.equal(seen, train_x[:read])
    monkeypatch.undo()
    again = seeded_apply("spt_lora", demo_vit, budget=0.04)
    spt.select(again, in_order(TensorDataset(train_x, torch.arange(n) % 5), 8), 11)
    assert [(k, tuple(v.shape)) for k, v in again.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items() if "index_" in k)


def test_selection_is_deterministic_and_moves_no_frozen_weight(demo_vit):
    """The same data and seed give the same model (its modules' init included); the pass leaves every
    backbone tensor, the model's mode, its drop paths and the caller's random state as they were; the
    count is the selection's (closest to the budget), not the placeholder's; other data choose anew."""
    spt = methods.get("spt_lora")
    batches = list(in_order(dataset(600, seed=5)))
    first, second = (seeded_apply("spt_lora", demo_vit, budget=0.04) for _ in range(2))
    placeholder_count = methods.count_trainable(first)
    first.eval()
    state = torch.random.get_rng_state()
    drop_paths = [type(b.drop_path1) for b in first.blocks]
    spt.select(first, batches, 3)
    assert torch.equal(torch.random.get_rng_state(), state) and not first.training
    assert [type(b.drop_path1) for b in first.blocks] == drop_paths
    assert all(not m.training for m in first.modules())
    spt.select(second, batches, 3)
    a, b = first.state_dict(), second.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    backbone = demo_vit.state_dict()
    plain = {k.replace(".base.", "."): v for k, v in a.items() if k.replace(".base.", ".") in backbone}
    assert set(plain) == set(backbone) and all(torch.equal(plain[k], backbone[k]) for k in backbone)
    count = methods.count_trainable(first)
    assert count != placeholder_count and abs(count - 40_000) < 10_000
    other = seeded_apply("spt_lora", demo_vit, budget=0.04)
    spt.select(other, list(in_order(dataset(600, seed=6))), 3)
    assert [k for k in other.state_dict() if "index_" in k or "structured" in k] != [
        k for k in a if "index_" in k or "structured" in k]


def test_selected_lora_merges_and_adapter_does_not(demo_vit):
    x = images(4)
    for name in ("spt_lora", "spt_adapter"):
        model = seeded_apply(name, demo_vit, budget=0.04)
        methods.get(name).select(model, list(in_order(dataset())), 3)
        if name == "spt_adapter":
            with pytest.raises(methods.NotMergeable):
                methods.get(name).merge(model)
            continue
        perturb_trainable(model, std=0.05)
        merged = methods.get(name).merge(model.eval())
        assert type(merged) is type(demo_vit) and not any(isinstance(m, SPTLinear) for m in merged.modules())
        assert set(merged.state_dict()) == set(demo_vit.state_dict()) | {"head.weight", "head.bias"}
        with torch.no_grad():
            torch.testing.assert_close(merged.eval()(x), model(x), atol=1e-5, rtol=0)


def test_modules_start_trunc_normal_with_zero_biases(demo_vit):
    """Every Linear of the structured modules starts trunc_normal(std 0.02) with zero biases (the
    official model's ``_init_vit_weights``, run after the modules are built); so SPT does not start
    as the backbone (identity_at_init False)."""
    torch.manual_seed(0)
    model = methods.get("spt_adapter").apply(VisionTransformerWide(), num_classes=10)
    weights = torch.cat([p.flatten() for n, p in model.named_parameters() if "learnable" in n and n.endswith("weight")])
    biases = [p for n, p in model.named_parameters() if "learnable" in n and n.endswith("bias")]
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert biases and all(not b.any() for b in biases)
    for name in ("spt_lora", "spt_adapter"):
        assert not methods.get(name).identity_at_init
        model = seeded_apply(name, demo_vit).eval()
        with torch.no_grad():
            assert (model(images(2)) - model.head(demo_vit.forward_features(images(2))[:, 0])).abs().max() > 1e-6


def VisionTransformerWide():
    """A ViT wide enough for a clean estimate of the init's standard deviation (48 modules' weights)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=384, depth=4, num_heads=6, num_classes=0)


@pytest.mark.parametrize("hp,pattern", [
    ({"budget": 0}, r"spt_lora: budget must be a number in \(0, 1\.58\], got 0"),
    ({"budget": 2.0}, r"spt_lora: budget must be a number in \(0, 1\.58\], got 2\.0"),
    ({"rank": 0}, r"spt_lora: rank must be an integer >= 1, got 0"),
    ({"alpha": 0}, r"spt_lora: alpha must be a number > 0, got 0"),
    ({"beta": 5}, r"unknown hyperparameter\(s\) beta; known: alpha, budget, rank"),
])
def test_bad_hyperparameters_are_refused(hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        methods.get("spt_lora").resolve(**hp)


def test_rank_beyond_the_width_and_a_budget_below_every_selection_are_refused(demo_vit):
    with pytest.raises(ValueError, match=r"spt_adapter: rank must be an integer in \[1, 96\], got 128"):
        methods.get("spt_adapter").apply(demo_vit, num_classes=10, rank=128)
    model = seeded_apply("spt_lora", demo_vit, budget=0.01)
    with pytest.raises(ValueError, match=r"spt: budget 0\.01M is below half the smallest selection of the sweep "
                                         r"\([\d,]+ parameters on this backbone\); raise the budget"):
        methods.get("spt_lora").select(model, list(in_order(dataset())), 0)


def test_a_run_records_the_count_its_selection_gave(tmp_path, monkeypatch):
    """`bench run` of spt_lora: each fit's MLflow run records the trainable count of its model after
    the selection (``count_from_data``), not the placeholder's that `bench methods` shows."""
    import mlflow

    from bench import tracking
    from bench.backbones import create_demo
    from bench.cli import main

    spt = methods.get("spt_lora")
    counts, original = [], type(spt).select

    def counting_select(self, model, batches, seed):
        original(self, model, batches, seed)
        counts.append((methods.count_trainable(model), methods.count_trainable(model, exclude_head=False)))

    monkeypatch.setattr(type(spt), "select", counting_select)
    out = tmp_path / "out"
    assert main(["run", "--methods", "spt_lora", "--tasks", "digits", "--epochs", "1", "--trials", "1",
                 "--seeds", "1", "--out", str(out), "--jobs", "1", "--no-report"]) == 0
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    runs = client.search_runs([exp.experiment_id], "", max_results=10)
    recorded = sorted((r.data.metrics[tracking.PARAMS_BACKBONE], r.data.metrics[tracking.PARAMS_TOTAL]) for r in runs)
    assert len(runs) == 2 and recorded == sorted(counts), (recorded, counts)  # the tuning trial and the final fit
    placeholder_count = methods.count_trainable(seeded_apply("spt_lora", create_demo()))
    assert placeholder_count == 96 + 8 * 1_536 and all(n != placeholder_count for n, _ in recorded)
