"""The vision methods of issue 31 (adapter_plus, dtl, gps) against their math, written out here from
the papers and the formulas of the methods' docstrings, and GPS's selection pass over the training
data (the hook of ``Method.select`` that ``bench.train.fit`` calls):

- Adapter+ (Steitz & Roth, CVPR 2024), after every block: y = block(x); y + s * DropPath(W_u
  GELU(W_d y + b_d) + b_u), s one learned scale per channel; Houlsby init (weights
  trunc_normal(0, 0.01) cut at +-0.02, biases zero, s ones);
- DTL (Fu, Zhu & Wu, AAAI 2024): the compact side network sums r += z_i A_i^T B_i^T over the inputs
  z_i of every block and adds swish_beta(r) = r sigmoid(beta r) to the outputs of the second half of
  the blocks (DTL+: its patch tokens through one depthwise k x k convolution, padding "same"); then
  the mean of the patch tokens, the final norm, the head; A kaiming-uniform, B zero;
- GPS (Zhang et al., CVPR 2024): each weight row keeps the k entries of largest |accumulated
  gradient|, the gradient of the supervised contrastive loss (Khosla et al., NeurIPS 2020) on two
  views per image; the layer computes with W + scatter(index, delta), which training the full model
  with every other entry's gradient masked to zero computes.

Against the official code (visinf/adapter_plus@191c4ab, heekhero/DTL@bf6c51e,
FightingFighting/GPS@72e0c31): not here, which needs no checkout; the comparison scripts
``benchmarks/official/adapter_plus.py``, ``dtl.py`` and ``gps.py`` run those comparisons on a
checkout given to them, and docs/measurements.md records their results.

The registry-wide tests (counts, what trains, a step, weight decay, merge, search space) are in
``test_methods.py`` (tables: ``specs_vision.py``)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

import methods
from bench import train
from conftest import perturb_trainable, randomise_1d, recording_splits, with_head_of
from methods.gps import GPSWeight, random_resized_crops, supcon_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_vit(small_vit):
    """The demo architecture (4x4 patch grid), random, with non-trivial biases and norms."""
    return small_vit


@pytest.fixture(scope="module")
def grid14_vit():
    """A small ViT with ViT-B/16's 14x14 patch grid (56 px, patch 4), random, with non-trivial biases
    and norms."""
    torch.manual_seed(0)
    return randomise_1d(VisionTransformer(num_classes=0, img_size=56, patch_size=4, embed_dim=48, depth=4, num_heads=3))


def images(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def drop_path(h, p):
    """Stochastic depth (Huang et al., 2016) on a residual branch: each sample's branch kept with
    probability 1 - p and then divided by it (one Bernoulli draw per sample)."""
    if p == 0:
        return h
    keep = torch.empty(h.shape[0], *([1] * (h.ndim - 1)), dtype=h.dtype).bernoulli_(1 - p)
    return h * keep / (1 - p)


# ================================================================================= Adapter+

class AdapterPlusByFormula(nn.Module):
    """y = block(x); y + s * DropPath(W_u GELU(W_d y + b_d) + b_u), from the adapter's tensors."""

    def __init__(self, block, adapter, p):
        super().__init__()
        self.block, self.adapter, self.p = block, adapter, p

    def forward(self, x):
        a = self.adapter
        y = self.block(x)
        h = F.gelu(y @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
        if self.training:
            h = drop_path(h, self.p)
        return y + a.scale * h


def adapter_plus_by_formula(base, model):
    ref = with_head_of(base, model)
    for i, block in enumerate(ref.blocks):
        ref.blocks[i] = AdapterPlusByFormula(block, model.blocks[i].adapter, model.peft_hparams["drop_path"])
    return ref


@pytest.mark.parametrize("hp", [{}, {"bottleneck": 2, "drop_path": 0.3}])
def test_adapter_plus_is_its_formula(demo_vit, hp):
    """Eval logits, and train-mode logits under one seed (the same drop-path draws), equal the formula
    applied after every block of the backbone, with the adapters' tensors perturbed."""
    x = images(4, 32)
    model = methods.get("adapter_plus").apply(demo_vit, num_classes=10, **hp)
    perturb_trainable(model, std=0.05)
    ref = adapter_plus_by_formula(demo_vit, model)
    assert [n for n, m in model.named_modules() if n.endswith(".adapter")] == \
        [f"blocks.{i}.adapter" for i in range(len(demo_vit.blocks))]  # one per block
    with torch.no_grad():
        diff = (model.eval()(x) - ref.eval()(x)).abs().max().item()
        assert diff <= 1e-5, diff
        assert (ref(x) - with_head_of(demo_vit, model)(x)).abs().max().item() > 1e-2  # the adapters act
        torch.manual_seed(5)
        ours = model.train()(x)
        torch.manual_seed(5)
        theirs = ref.train()(x)
        assert (ours - theirs).abs().max().item() <= 1e-5
        torch.manual_seed(6)
        assert not torch.equal(model(x), ours), "no drop path in train mode"


def test_adapter_plus_init_is_houlsby():
    """Down and up weights trunc_normal(0, 0.01) cut at +-0.02 (std of the cut normal: 0.0088), zero
    biases, a scale of ones."""
    from methods.adapter_plus import AdapterPlus

    torch.manual_seed(7)
    ours = AdapterPlus(768, 8, 0.1, like=torch.zeros(()))
    assert ours.down.weight.shape == (8, 768) and ours.up.weight.shape == (768, 8)
    assert not ours.down.bias.any() and not ours.up.bias.any()
    assert torch.equal(ours.scale, torch.ones(768))
    for w in (ours.down.weight, ours.up.weight):
        assert w.abs().max() <= 0.02 and w.abs().max() > 0.019  # cut at 2 std, and reaching it
        assert 0.0084 < w.std() < 0.0092 and abs(w.mean()) < 5e-4


# ====================================================================================== DTL

def dtl_by_formula(base, model, x):
    """The logits by DTL's formula, from ``base`` (with ``model``'s head) and ``model``'s A, B, kernel."""
    hp, csn = model.peft_hparams, model.blocks
    v = with_head_of(base, model)
    z = v.norm_pre(v._pos_embed(v.patch_embed(x)))
    depth = len(v.blocks)
    r = torch.zeros_like(z)
    for i, block in enumerate(v.blocks):
        r = r + z @ csn.lora_A[i].T @ csn.lora_B[i].T  # the low-rank map of block i's input
        z = block(z)
        if i >= depth // 2:  # the second half of the blocks
            side = r * torch.sigmoid(hp["beta"] * r)
            if hp["fusion_size"]:  # DTL+: the patch tokens through a depthwise conv over the grid
                b, n, c = side.shape
                g = math.isqrt(n - 1)
                grid = side[:, 1:].transpose(1, 2).reshape(b, c, g, g)
                fused = F.conv2d(grid, csn.lora_fusion, padding="same", groups=c)
                side = torch.cat([side[:, :1], fused.reshape(b, c, n - 1).transpose(1, 2)], dim=1)
            z = z + side
    return v.head(v.norm(z[:, 1:].mean(dim=1)))  # mean of the patch tokens, then the final norm


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("hp", [{}, {"fusion_size": 3}, {"fusion_size": 4, "rank": 3, "beta": 10.0}],
                         ids=["dtl", "dtl+3", "dtl+4"])
def test_dtl_is_its_formula(grid14_vit, hp):
    """DTL and DTL+ (odd and even kernels, torch's padding 'same'), with average pooling and the final
    norm after it, give the formula's logits."""
    x = images(3, 56)
    model = methods.get("dtl").apply(grid14_vit, num_classes=10, **hp).eval()
    perturb_trainable(model, std=0.2)
    with torch.no_grad():
        ours, theirs = model(x), dtl_by_formula(grid14_vit, model, x)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # the side network acts: the same model with B back at zero gives other logits
    with torch.no_grad():
        model.blocks.lora_B.zero_()
        assert (model(x) - ours).abs().max().item() > 1e-3


def test_dtl_init():
    """A per block kaiming-uniform(a=sqrt(5)) over fan_in = width (bound 1/sqrt(width)), drawn per block;
    B zero; the DTL+ kernel as a depthwise conv's default (bound 1/sqrt(k*k))."""
    torch.manual_seed(3)
    vit = VisionTransformer(num_classes=0, img_size=32, patch_size=4, embed_dim=768, depth=4, num_heads=12)
    model = methods.get("dtl").apply(vit, num_classes=10, fusion_size=3)
    csn = model.blocks
    assert csn.lora_A.shape == (4, 2, 768) and csn.lora_B.shape == (4, 768, 2)
    assert not csn.lora_B.any()
    for tensor, bound in [(a, 1 / math.sqrt(768)) for a in csn.lora_A] + [(csn.lora_fusion, 1 / 3)]:
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.95 * bound
        assert abs(tensor.std().item() - bound / math.sqrt(3)) < 0.1 * bound  # uniform on [-bound, bound]
    assert csn.lora_fusion.shape == (768, 1, 3, 3)
    assert not torch.equal(csn.lora_A[0], csn.lora_A[1])


def test_dtl_token_pool_equals_the_backbone_at_init_and_avg_pool_does_not(demo_vit):
    x = images(4, 32)
    for pool, equal in (("token", True), ("avg", False)):
        model = methods.get("dtl").apply(demo_vit, num_classes=10, pool=pool).eval()
        with torch.no_grad():
            diff = (model(x) - with_head_of(demo_vit, model)(x)).abs().max().item()
        assert (diff <= 1e-6) == equal, (pool, diff)


# ====================================================================================== GPS

def paper_supcon(features, labels, tau=0.07):
    """SupCon's L^sup_out (Khosla et al., 2020, eq. 2), averaged over the anchors: every view of every
    sample is an anchor i; A(i) all other views in the batch, P(i) those of i's label; the loss of i is
    -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau)), z the
    L2-normalised features."""
    b, views, _ = features.shape
    z = [F.normalize(features[i, v], dim=0) for v in range(views) for i in range(b)]
    y = [int(labels[i]) for v in range(views) for i in range(b)]
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in others]), dim=0)
        positives = [p for p in others if y[p] == y[i]]
        losses.append(-torch.stack([z[i] @ z[p] / tau - log_denominator for p in positives]).mean())
    return torch.stack(losses).mean()


def gps_wrappers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, GPSWeight)}


def top_k(grad, k):
    """The k columns of largest |grad| in each row (grad read as rows x columns), sorted."""
    rows = grad.reshape(grad.shape[0], -1).abs()
    return torch.argsort(rows, dim=1, descending=True)[:, :k].sort(dim=1).values


def selected(wrapper):
    """1 where the wrapper's weight is selected, 0 elsewhere, in the weight's shape."""
    w = wrapper.base.weight
    dense = torch.zeros(w.shape[0], w[0].numel())
    for row, columns in enumerate(wrapper.index.tolist()):
        for column in columns:
            dense[row, column] = 1.0
    return dense.view_as(w)


def trained_by_rule(name):
    """GPS's rule for the tensors it does not select in: the head, and every bias or LayerScale gamma
    but the norms', train in full; the rest (norms, position embedding, class token) is frozen."""
    return name.startswith("head.") or ("norm" not in name and name.rpartition(".")[2] in ("bias", "gamma"))


@pytest.mark.parametrize("features_shape,labels", [((6, 2, 16), [0, 1, 0, 2, 1, 3]), ((5, 3, 8), [1, 1, 0, 2, 0])])
def test_supcon_loss_is_the_paper_definition(features_shape, labels):
    """Value and gradient with respect to the features (what the selection ranks)."""
    features = torch.randn(*features_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor(labels)
    mine = features.clone().requires_grad_(True)
    paper = features.clone().requires_grad_(True)
    a, b = supcon_loss(mine, labels), paper_supcon(paper, labels)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.grad, paper.grad, rtol=0, atol=1e-5)


def test_gps_layer_is_w_plus_scattered_delta(demo_vit):
    """Each wrapped Linear and the patch conv compute with W' = W + delta at the selected entries."""
    model = methods.get("gps").apply(demo_vit, num_classes=10, k=2)
    torch.manual_seed(0)
    tokens, pixels = torch.randn(2, 5, 96), images(2, 32)
    for name, wrapper in gps_wrappers(model).items():
        with torch.no_grad():
            columns = wrapper.base.weight[0].numel()
            wrapper.index.copy_(torch.stack([torch.randperm(columns)[:2] for _ in range(len(wrapper.index))]))
            wrapper.delta.normal_()
        w = wrapper.base.weight.detach().clone()
        flat = w.reshape(w.shape[0], -1)
        for row in range(flat.shape[0]):
            for j, column in enumerate(wrapper.index[row].tolist()):
                flat[row, column] += wrapper.delta[row, j].item()
        with torch.no_grad():
            if isinstance(wrapper.base, nn.Conv2d):
                expected = F.conv2d(pixels, w, wrapper.base.bias, stride=wrapper.base.stride)
                out = wrapper(pixels)
            else:
                x = tokens if w.shape[1] == 96 else torch.randn(2, 5, w.shape[1])
                expected, out = x @ w.T + wrapper.base.bias, wrapper(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("k", [1, 2])
def test_gps_selection_is_top_k_and_training_is_the_masked_update(demo_vit, k):
    """Given the backbone's accumulated gradients, ``choose`` keeps the top-k |gradient| of each row;
    the trainable count is those entries plus the rule's tensors; three Adam steps (weight decay 0) of
    our deltas give the logits of the full model trained with every other entry's gradient set to
    zero, and the merged model is that model's weights (the frozen entries the backbone's)."""
    x, y = images(6, 32), torch.arange(6) % 10
    ours = methods.get("gps").apply(demo_vit, num_classes=10, k=k).train()
    ref = with_head_of(demo_vit, ours).train().requires_grad_(True)
    F.cross_entropy(ref(x), y).backward()  # the accumulated gradient: here one CE batch
    masks = {}
    for name, wrapper in gps_wrappers(ours).items():
        grad = ref.get_parameter(f"{name}.weight").grad
        wrapper.choose(grad)
        assert torch.equal(wrapper.index.sort(dim=1).values, top_k(grad, k)), name
        masks[f"{name}.weight"] = selected(wrapper)
    for name, p in ref.named_parameters():
        masks.setdefault(name, torch.full_like(p, float(trained_by_rule(name))))
    assert methods.count_trainable(ours) == sum(int(m.sum()) for n, m in masks.items() if not n.startswith("head."))

    ref.zero_grad()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0)
    opt_ours = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    for step in range(3):
        xs, ys = images(6, 32, seed=10 + step), (torch.arange(6) + step) % 10
        opt_ref.zero_grad()
        F.cross_entropy(ref(xs), ys).backward()
        for name, p in ref.named_parameters():
            p.grad.mul_(masks[name])  # only the selected entries and the rule's tensors learn
        opt_ref.step()
        opt_ours.zero_grad()
        F.cross_entropy(ours(xs), ys).backward()
        opt_ours.step()
    with torch.no_grad():
        diff = (ours.eval()(x) - ref.eval()(x)).abs().max().item()
        moved = (ref(x) - with_head_of(demo_vit, ours)(x)).abs().max().item()
    assert diff <= 1e-5, diff
    assert moved > 1e-2  # the runs trained
    # the merged tensors are the masked run's (measured: within 3e-8), and the backbone's wherever frozen.
    # The key biases (the middle third of each qkv bias): their true gradient is zero (softmax ignores
    # a shift of every key), so Adam normalises float noise there (measured: 1.1e-4 apart); a wrong
    # entry would be off by about the 3 x lr = 3e-2 that Adam moves it
    merged = methods.get("gps").merge(ours)
    for name, p in ref.named_parameters():
        mine = merged.get_parameter(name)
        if name.endswith("attn.qkv.bias"):
            q, key, v = (mine - p).abs().chunk(3)
            assert max(q.max(), v.max()) <= 1e-6 and key.max() <= 1e-3, name
        else:
            torch.testing.assert_close(mine, p, atol=1e-6, rtol=0, msg=name)
        frozen = masks[name] == 0
        assert torch.equal(mine[frozen], demo_vit.state_dict().get(name, mine)[frozen]), name


def _batches(n=3, seed=20):
    return [(images(8, 32, seed=seed + i), (torch.arange(8) + i) % 4) for i in range(n)]


@pytest.mark.parametrize("k", [1, 2])
def test_gps_selection_pass_is_top_k_of_the_contrastive_gradient(demo_vit, monkeypatch, k):
    """``select``: the gradient it ranks is the paper's SupCon gradient of the backbone (train mode),
    summed over the batches, on two views of each batch drawn in order from the seed (features: the
    class token after the final norm, the pre-logits of token pooling); its selection is that
    gradient's top-k per row."""
    batches = _batches()
    model = methods.get("gps").apply(demo_vit, num_classes=10, k=k)
    ranked, choose = {}, GPSWeight.choose

    def recording(self, grad):
        ranked[id(self)] = grad.clone()
        choose(self, grad)

    monkeypatch.setattr(GPSWeight, "choose", recording)
    methods.get("gps").select(model, batches, seed=4)

    # the reference in float64: what it gets is the gradient, up to float64's rounding
    ref = with_head_of(demo_vit, model).double().train().requires_grad_(True)
    generator = torch.Generator().manual_seed(4)
    for x, y in batches:
        views = [random_resized_crops(x, generator), random_resized_crops(x, generator)]
        features = ref.forward_features(torch.cat(views).double())[:, 0]
        paper_supcon(torch.stack(features.split(len(x)), dim=1), y).backward()
    for name, wrapper in gps_wrappers(model).items():
        reference, grad = ref.get_parameter(f"{name}.weight").grad, ranked[id(wrapper)].double()
        scale = reference.abs().max().item()
        # float32 rounding in the pass (measured: within 1.2e-5 of the weight's largest |gradient|)
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-4 * scale, msg=name)
        assert torch.equal(wrapper.index.sort(dim=1).values, top_k(grad, k)), name
        # so the selection is a top-k of the reference gradient, up to that rounding
        rows = reference.reshape(reference.shape[0], -1).abs()
        kth = rows.topk(k, dim=1).values[:, -1:]
        assert (rows.gather(1, wrapper.index) >= kth - 1e-4 * scale).all(), name


def test_gps_selection_is_deterministic_keeps_the_budget_and_moves_no_frozen_weight(demo_vit):
    gps = methods.get("gps")
    first = gps.apply(demo_vit, num_classes=10, k=2)
    with torch.no_grad():  # a selection starts the deltas afresh (the biases stay the backbone's here,
        for wrapper in gps_wrappers(first).values():  # so that `second` is the same model)
            wrapper.delta.normal_()
    trainable_before = {n for n, p in first.named_parameters() if p.requires_grad}
    count_before = methods.count_trainable(first)
    frozen_before = {n: p.detach().clone() for n, p in first.named_parameters() if not p.requires_grad}
    placeholder = {n: w.index.clone() for n, w in gps_wrappers(first).items()}
    gps.select(first, _batches(), seed=1)
    second = gps.apply(demo_vit, num_classes=10, k=2)
    gps.select(second, _batches(), seed=1)
    other_data = gps.apply(demo_vit, num_classes=10, k=2)
    gps.select(other_data, _batches(seed=50), seed=1)

    assert {n for n, p in first.named_parameters() if p.requires_grad} == trainable_before
    assert methods.count_trainable(first) == count_before
    assert all(torch.equal(p, frozen_before[n]) for n, p in first.named_parameters() if not p.requires_grad)
    differs_with_other_data = []
    for name, wrapper in gps_wrappers(first).items():
        index = wrapper.index
        assert torch.equal(index, gps_wrappers(second)[name].index)  # same data and seed: same selection
        assert (index.sort(dim=1).values.diff(dim=1) > 0).all()  # k distinct entries in every row
        assert not wrapper.delta.any()
        assert not torch.equal(index, placeholder[name])  # it selected
        differs_with_other_data.append(not torch.equal(index, gps_wrappers(other_data)[name].index))
    assert all(differs_with_other_data)  # from the data it was given


def test_random_resized_crops_follow_their_generator():
    x = images(5, 32)
    a = random_resized_crops(x, torch.Generator().manual_seed(0))
    b = random_resized_crops(x, torch.Generator().manual_seed(0))
    c = random_resized_crops(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


# =========================================================== the fit hands select its training split

def test_fit_selects_once_from_the_training_split_only(demo_vit, monkeypatch):
    """``bench.train.fit`` calls ``select`` once, before any optimizer step, with every item of the
    training split and nothing of the evaluation split; the selection it makes is the one ``select``
    makes on that split's batches in the fit's loader order and seed."""
    train_ds, eval_ds = recording_splits(20)
    train_x, train_read, eval_read = train_ds.tensors[0], train_ds.log, eval_ds.log
    gps = methods.get("gps")
    calls, original = [], type(gps).select

    def recording_select(self, model, batches, seed):
        seen = list(batches)
        calls.append((sorted(train_read), list(eval_read), seed, torch.cat([x for x, _ in seen])))
        original(self, model, seen, seed)

    monkeypatch.setattr(type(gps), "select", recording_select)
    train.seed_everything(0)
    model = gps.apply(demo_vit, num_classes=5)
    cfg = train.TrainConfig(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, seed=11)
    train.fit(model, train_ds, cfg, eval_ds=eval_ds)

    assert len(calls) == 1
    read, evaluated, seed, seen = calls[0]
    assert read == list(range(20)) and evaluated == [] and seed == 11  # the whole split, before evaluation
    assert sorted(seen.flatten().tolist()) == sorted(train_x.flatten().tolist())

    again = gps.apply(demo_vit, num_classes=5)
    loader = train._loader(TensorDataset(train_x, torch.arange(20) % 5), 8, True, 11, 0, "cpu")
    original(gps, again, list(loader), 11)
    for name, wrapper in gps_wrappers(model).items():
        assert torch.equal(wrapper.index, gps_wrappers(again)[name].index), name


def test_methods_without_a_selection_pass_are_not_asked(demo_vit, monkeypatch):
    called = []
    monkeypatch.setattr(methods.Method, "select", lambda *a, **k: called.append(a))
    model = methods.get("dtl").apply(demo_vit, num_classes=5)
    train.fit(model, TensorDataset(images(8, 32), torch.arange(8) % 5),
              train.TrainConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0))
    assert called == [] and not methods.get("dtl").needs_training_data and methods.get("gps").needs_training_data


def test_gps_equals_the_backbone_at_init_and_adapter_plus_does_not(demo_vit):
    x = images(4, 32)
    for name, equal in (("gps", True), ("adapter_plus", False)):
        model = methods.get(name).apply(demo_vit, num_classes=10).eval()
        with torch.no_grad():
            diff = (model(x) - with_head_of(demo_vit, model)(x)).abs().max().item()
        assert (diff <= 1e-6) == equal, (name, diff)


def test_the_vision_set_is_selectable_and_in_all():
    """`--methods vision` selects the five, and `all` has them (METHOD_SETS derives from GROUPS)."""
    from bench.run.spec import METHOD_SETS, parse_methods

    assert "vision" in methods.GROUPS and "vision" in METHOD_SETS
    assert methods.group("vision") == parse_methods("vision") == ["adapter_plus", "dtl", "gps", "spt_adapter",
                                                                  "spt_lora"]
    assert set(parse_methods("vision")) <= set(parse_methods("all"))
    assert parse_methods("vision", "swin") == []  # all five are ViT-only
