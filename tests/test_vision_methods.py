"""The vision methods of issue 31 (adapter_plus, dtl, gps) against transcriptions of their official
code, run on copied weights, and GPS's selection pass over the training data (the hook of
``Method.select`` that ``bench.train.fit`` calls).

The references below are the official forwards copied as they are (only what a transcription needs
changed, each change said where it is), run on the modules of a timm ViT. The registry-wide tests
(counts, what trains, a step, weight decay, merge, search space) are in ``test_methods.py``
(tables: ``specs_vision.py``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

import methods
from bench import train
from conftest import perturb_trainable, randomise_1d, with_head_of
from methods.gps import GPSWeight, random_resized_crops, supcon_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_vit(small_vit):
    """The demo architecture (4x4 patch grid), random, with non-trivial biases and norms."""
    return small_vit


@pytest.fixture(scope="module")
def grid14_vit():
    """A small ViT with ViT-B/16's 14x14 patch grid (56 px, patch 4), which DTL's official code
    hard-codes, random, with non-trivial biases and norms."""
    torch.manual_seed(0)
    return randomise_1d(VisionTransformer(num_classes=0, img_size=56, patch_size=4, embed_dim=48, depth=4, num_heads=3))


def images(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ================================================================================= Adapter+
# visinf/adapter_plus@191c4ab adapter_plus/vit_adapter.py: ``Adapter`` (as conf/adapter/adapter_plus.yaml
# configures it: norm_layer None, scaling "channel", init "houlsby", bias, dropout 0) and
# ``AdapterBlock.forward_post``, copied.

class OfficialAdapter(nn.Module):
    def __init__(self, embed_dim, bottleneck_dim=8, drop_path=0.0, dropout=0.0, act_layer=nn.GELU,
                 norm_layer=None, scaling="channel", init="houlsby", bias=True, pre_dropout=False):
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Dropout(dropout) if dropout > 0 and pre_dropout else nn.Identity(),
            nn.Linear(embed_dim, bottleneck_dim, bias=bias),
            act_layer() if act_layer else nn.Identity(),
            nn.Dropout(dropout) if dropout > 0 and not pre_dropout else nn.Identity(),
            nn.Linear(bottleneck_dim, embed_dim, bias=bias),
        )
        self.norm_a = norm_layer(embed_dim) if norm_layer else nn.Identity()
        self.drop_path_a = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.bottleneck_dim = bottleneck_dim
        if scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(embed_dim))
        else:
            self.scaling = scaling
        assert init == "houlsby"  # the only init Adapter+ uses
        std = 0.01  # paper value, houlsby code implementation: std = 0.001
        nn.init.trunc_normal_(self.bottleneck[1].weight, std=std, a=-2 * std, b=2 * std)
        if self.bottleneck[1].bias is not None:
            nn.init.zeros_(self.bottleneck[1].bias)
        nn.init.trunc_normal_(self.bottleneck[4].weight, std=std, a=-2 * std, b=2 * std)
        if self.bottleneck[4].bias is not None:
            nn.init.zeros_(self.bottleneck[4].bias)

    def forward(self, x, skip=None):
        x = self.norm_a(x)
        x = self.drop_path_a(self.bottleneck(x))
        x = x * self.scaling
        y = x
        if skip is not None:
            y = y + skip
        return y


class OfficialPostBlock(nn.Module):
    """``AdapterBlock.forward_post`` on a timm block's modules."""

    def __init__(self, block, adapter):
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = block.norm1, block.attn, block.ls1, block.drop_path1
        self.norm2, self.mlp, self.ls2, self.drop_path2 = block.norm2, block.mlp, block.ls2, block.drop_path2
        self.adapter = adapter

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x = self.adapter(x, skip=x)
        return x


def official_adapter_plus_model(base, model):
    ref = with_head_of(base, model)
    for i, block in enumerate(ref.blocks):
        ours = model.blocks[i].adapter
        theirs = OfficialAdapter(ours.down.in_features, ours.down.out_features,
                                 drop_path=model.peft_hparams["drop_path"])
        theirs.bottleneck[1].load_state_dict(ours.down.state_dict())
        theirs.bottleneck[4].load_state_dict(ours.up.state_dict())
        with torch.no_grad():
            theirs.scaling.copy_(ours.scale)
        ref.blocks[i] = OfficialPostBlock(block, theirs)
    return ref


@pytest.mark.parametrize("hp", [{}, {"bottleneck": 2, "drop_path": 0.3}])
def test_adapter_plus_equals_the_official_forward(demo_vit, hp):
    """Eval logits, and train-mode logits under one seed (the same DropPath masks), equal the
    official Adapter + forward_post with copied weights."""
    x = images(4, 32)
    model = methods.get("adapter_plus").apply(demo_vit, num_classes=10, **hp)
    perturb_trainable(model, std=0.05)
    ref = official_adapter_plus_model(demo_vit, model)
    with torch.no_grad():
        diff = (model.eval()(x) - ref.eval()(x)).abs().max().item()
        assert diff <= 1e-4, diff
        torch.manual_seed(5)
        ours = model.train()(x)
        torch.manual_seed(5)
        theirs = ref.train()(x)
        assert (ours - theirs).abs().max().item() <= 1e-4
        torch.manual_seed(6)
        assert not torch.equal(model(x), ours), "no drop path in train mode"


def test_adapter_plus_init_is_the_official_init():
    """Drawn after the same seed, our adapter's tensors are the official Adapter's (houlsby init:
    trunc_normal(0.01) cut at +-0.02, zero biases, a scale of ones)."""
    torch.manual_seed(7)
    theirs = OfficialAdapter(96, 8, drop_path=0.1)
    torch.manual_seed(7)
    from methods.adapter_plus import AdapterPlus

    ours = AdapterPlus(96, 8, 0.1, like=torch.zeros(()))
    assert torch.equal(ours.down.weight, theirs.bottleneck[1].weight)
    assert torch.equal(ours.up.weight, theirs.bottleneck[4].weight)
    assert torch.equal(ours.scale, theirs.scaling)
    assert not ours.down.bias.any() and not ours.up.bias.any()
    w = torch.cat([ours.down.weight.flatten(), ours.up.weight.flatten()])
    assert w.abs().max() <= 0.02 and 0.008 < w.std() < 0.0095  # std of N(0, 0.01) cut at 2 std: 0.0088


# ====================================================================================== DTL
# heekhero/DTL@bf6c51e models/vision_transformer.py: ``swish``, ``LoRALinear`` and the CSN part of
# ``VisionTransformer.forward``, copied (``self.*`` attributes taken from the reference module below;
# the 14 x 14 grid it hard-codes is the grid of ``grid14_vit``).

def official_swish(x, beta):
    return x * torch.sigmoid(x * beta)


class OfficialLoRALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, r: int = 0):
        super().__init__()
        self.r = r
        assert r > 0
        self.lora_A = nn.Parameter(torch.zeros((r, in_features)))
        self.lora_B = nn.Parameter(torch.zeros((out_features, r)))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor):
        out = x @ self.lora_A.T @ self.lora_B.T
        return out


class OfficialDTL(nn.Module):
    """The official DTL ViT around a timm ViT's modules (patch embed, tokens, blocks, norm, head)."""

    def __init__(self, vit, r, beta, fusion_size, lora_before_blocks, add_after_blocks):
        super().__init__()
        self.vit = vit
        self.num_tokens, self.num_features, embed_dim = 1, vit.embed_dim, vit.embed_dim
        self.beta = beta
        self.lora_before_blocks = lora_before_blocks
        self.add_after_blocks = add_after_blocks
        self.lora_dict = nn.ModuleDict({i: OfficialLoRALinear(embed_dim, embed_dim, r=r) for i in self.lora_before_blocks})
        if fusion_size > 0:
            self.lora_fusion = nn.Conv2d(embed_dim, embed_dim, kernel_size=fusion_size, stride=1, padding='same',
                                         groups=embed_dim, bias=False)
        else:
            self.lora_fusion = None

    def forward(self, x):
        v = self.vit
        B = x.shape[0]
        x = v.patch_embed(x)
        cls_token = v.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        x = v.pos_drop(x + v.pos_embed)

        residuals = 0.0
        for bid, block in enumerate(v.blocks):
            if str(bid) in self.lora_before_blocks:
                residuals = residuals + self.lora_dict[str(bid)](x)

            x = block(x)

            if str(bid) in self.add_after_blocks:
                act_residuals = official_swish(residuals, self.beta)

                if self.lora_fusion is not None:
                    token_residual = act_residuals[:, 0].unsqueeze(1)

                    patch_residuals = act_residuals[:, self.num_tokens:].reshape(B, 14, 14, self.num_features).permute(0, 3, 1, 2)
                    fusion_patch_residuals = self.lora_fusion(patch_residuals).permute(0, 2, 3, 1).reshape(B, 196, self.num_features)

                    fusion_residuals = torch.cat([token_residual, fusion_patch_residuals], dim=1)
                else:
                    fusion_residuals = act_residuals

                x = x + fusion_residuals

        x = x[:, self.num_tokens:].mean(dim=1)

        x = v.norm(x)
        out = v.head(x)
        return out


def official_dtl_model(base, model):
    hp = model.peft_hparams
    depth = len(base.blocks)
    blocks = [str(i) for i in range(depth)]
    ref = OfficialDTL(with_head_of(base, model), hp["rank"], hp["beta"], hp["fusion_size"],
                      lora_before_blocks=blocks, add_after_blocks=blocks[depth // 2:])
    with torch.no_grad():
        for i in range(depth):
            ref.lora_dict[str(i)].lora_A.copy_(model.blocks.lora_A[i])
            ref.lora_dict[str(i)].lora_B.copy_(model.blocks.lora_B[i])
        if ref.lora_fusion is not None:
            ref.lora_fusion.weight.copy_(model.blocks.lora_fusion)
    return ref.eval()


@pytest.mark.parametrize("hp", [{}, {"fusion_size": 3}, {"fusion_size": 4, "rank": 3, "beta": 10.0}],
                         ids=["dtl", "dtl+3", "dtl+4"])
def test_dtl_equals_the_official_forward(grid14_vit, hp):
    """DTL and DTL+ (odd and even kernels, padding 'same'), with average pooling and the final norm
    after it, give the official forward's logits on copied weights."""
    x = images(3, 56)
    model = methods.get("dtl").apply(grid14_vit, num_classes=10, **hp).eval()
    perturb_trainable(model, std=0.2)
    ref = official_dtl_model(grid14_vit, model)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # the side network acts: the same model with B back at zero gives other logits
    with torch.no_grad():
        model.blocks.lora_B.zero_()
        assert (model(x) - ours).abs().max().item() > 1e-3


def test_dtl_init_is_the_official_init(grid14_vit):
    """Drawn after the same seed, A (per block) and the DTL+ kernel are the official LoRALinear's and
    Conv2d's tensors; B is zero."""
    torch.manual_seed(3)
    model = methods.get("dtl").apply(grid14_vit, num_classes=10, fusion_size=3)
    torch.manual_seed(3)
    ref = with_head_of(grid14_vit, model)  # the head draws first in both, as apply does
    blocks = [str(i) for i in range(4)]
    official = OfficialDTL(ref, 2, 100.0, 3, blocks, blocks[2:])
    for i in range(4):
        assert torch.equal(model.blocks.lora_A[i], official.lora_dict[str(i)].lora_A)
    assert not model.blocks.lora_B.any()
    assert torch.equal(model.blocks.lora_fusion, official.lora_fusion.weight)


def test_dtl_token_pool_equals_the_backbone_at_init_and_avg_pool_does_not(demo_vit):
    x = images(4, 32)
    for pool, equal in (("token", True), ("avg", False)):
        model = methods.get("dtl").apply(demo_vit, num_classes=10, pool=pool).eval()
        with torch.no_grad():
            diff = (model(x) - with_head_of(demo_vit, model)(x)).abs().max().item()
        assert (diff <= 1e-6) == equal, (pool, diff)


# ====================================================================================== GPS
# FightingFighting/GPS@72e0c31: utils/pruning.py ``prune_by_percentile_gradient_perCell`` (its
# printing left out; ``np.bool``, removed from numpy, is ``bool``; the masks stay on the CPU instead
# of ``.cuda()``), utils/loss_utils.py ``SupConLoss`` and utils/cuda.py ``NativeScaler.maks_gradient``,
# copied.

def official_prune_by_percentile_gradient_perCell(model, time_para=1):
    new_masks = {}
    for name, param in model.named_parameters():
        if "norm" in name or "pos_embed" in name or "cls_token" in name:
            new_mask = np.ones_like(param.data.cpu().numpy())
        elif 'head' in name or "bias" in name or "gamma" in name:
            new_mask = np.zeros_like(param.data.cpu().numpy())
        else:
            if "patch_embed" in name or "conv" in name or "stem.proj.weight" in name or "downsample.proj.weight" in name:
                tensor = param.grad.data.cpu().numpy()
                B, C, H, W = tensor.shape
                tensor = np.reshape(tensor, [B, -1])
            else:
                tensor = param.grad.data.cpu().numpy()

            new_mask = np.ones_like(tensor)
            for ind in range(time_para):
                max_index = abs(tensor).argsort(1)[:, -(ind + 1)]
                one_hot_temp = ~np.eye(max(tensor.shape))[max_index][:, :tensor.shape[1]].astype(bool)
                new_mask_temp = one_hot_temp.astype(np.float32)
                new_mask = new_mask.astype(int) & new_mask_temp.astype(int)
                new_mask = new_mask.astype(np.float32)

            if "patch_embed" in name or "conv" in name or "stem.proj.weight" in name or "downsample.proj.weight" in name:
                new_mask = np.reshape(new_mask, (B, C, H, W))
        new_masks[name] = torch.from_numpy(new_mask)
    return new_masks


class OfficialSupConLoss(nn.Module):
    def __init__(self, temperature=0.07, contrast_mode='all', base_temperature=0.07, normalize=True):
        super(OfficialSupConLoss, self).__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.normalize = normalize

    def forward(self, features, labels=None, mask=None):
        device = features.device
        if self.normalize:
            features = F.normalize(features, dim=2)
        if len(features.shape) > 3:
            features = features.view(features.shape[0], features.shape[1], -1)
        batch_size = features.shape[0]
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float().to(device)
        contrast_count = features.shape[1]
        contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
        anchor_feature = contrast_feature
        anchor_count = contrast_count
        anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), self.temperature)
        logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
        logits = anchor_dot_contrast - logits_max.detach()
        mask = mask.repeat(anchor_count, contrast_count)
        logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                    torch.arange(batch_size * anchor_count).view(-1, 1).to(device), 0)
        mask = mask * logits_mask
        exp_logits = torch.exp(logits) * logits_mask
        log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
        mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
        loss = - (self.temperature / self.base_temperature) * mean_log_prob_pos
        loss = loss.view(anchor_count, batch_size).mean()
        return loss


def official_mask_gradient(mask, model):  # NativeScaler.maks_gradient
    for name, param in model.named_parameters():
        mask_ = mask[name]
        grad_tensor = param.grad.data
        grad_tensor = torch.where(mask_ == 1.0, mask_ - 1.0, grad_tensor)
        param.grad.data = grad_tensor


def gps_wrappers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, GPSWeight)}


def selected_mask(wrapper) -> torch.Tensor:
    """1 where the wrapper's weight is NOT selected, 0 where it is (the official mask's convention)."""
    w = wrapper.base.weight
    chosen = torch.zeros(w.shape[0], w[0].numel()).scatter_(1, wrapper.index, 1.0)
    return (1 - chosen).view_as(w)


def test_supcon_loss_equals_the_official():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 2, 16, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    torch.testing.assert_close(supcon_loss(features, labels), OfficialSupConLoss()(features, labels))


@pytest.mark.parametrize("k", [1, 2])
def test_gps_selection_and_training_equal_the_official_masked_update(demo_vit, k):
    """Given the same accumulated gradients, the entries GPS trains are those the official mask leaves
    free (per row: the top-k |gradient|; all biases but the norms'; the head), its trainable count is the
    official count, and three Adam steps (official: weight decay 0) of our deltas give the logits of the
    official run, which updates the full weights with masked gradients."""
    x, y = images(6, 32), torch.arange(6) % 10
    ours = methods.get("gps").apply(demo_vit, num_classes=10, k=k).train()
    ref = with_head_of(demo_vit, ours).train().requires_grad_(True)
    F.cross_entropy(ref(x), y).backward()  # calculate_gradient without --contrastive: the CE loss
    mask = official_prune_by_percentile_gradient_perCell(ref, time_para=k)
    for name, wrapper in gps_wrappers(ours).items():
        wrapper.choose(ref.get_parameter(f"{name}.weight").grad)
        assert torch.equal(selected_mask(wrapper), mask[f"{name}.weight"])
    official_free = sum(int((m == 0).sum()) for n, m in mask.items() if not n.startswith("head."))
    assert methods.count_trainable(ours) == official_free

    ref.zero_grad()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0)
    opt_ours = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    for step in range(3):
        xs, ys = images(6, 32, seed=10 + step), (torch.arange(6) + step) % 10
        opt_ref.zero_grad()
        F.cross_entropy(ref(xs), ys).backward()
        official_mask_gradient(mask, ref)
        opt_ref.step()
        opt_ours.zero_grad()
        F.cross_entropy(ours(xs), ys).backward()
        opt_ours.step()
    with torch.no_grad():
        diff = (ours.eval()(x) - ref.eval()(x)).abs().max().item()
        moved = (ref(x) - with_head_of(demo_vit, ours)(x)).abs().max().item()
    assert diff <= 1e-4, diff
    assert moved > 1e-2  # the runs trained
    # the merged weights are the official trained weights (measured: within 3e-8). Except the key
    # biases: their true gradient is zero (softmax ignores a shift of every key), so Adam normalises
    # float noise there (measured: 1.1e-4 apart); a wrong entry would be off by about the 3 x lr = 3e-2
    # that Adam moves it
    merged = methods.get("gps").merge(ours)
    for name, p in ref.named_parameters():
        atol = 1e-3 if name.endswith("attn.qkv.bias") else 1e-6
        torch.testing.assert_close(merged.get_parameter(name), p, atol=atol, rtol=0)


def official_gradient_pass(model, batches, views_seed):
    """``calculate_gradient`` with ``--contrastive``: two views of each batch (made by our augmentation
    from the same seed), features ``f[:, 0]`` of ``forward_features`` (``forward(return_feature=True)``,
    token pooling), SupConLoss, gradients summed over the batches."""
    generator = torch.Generator().manual_seed(views_seed)
    model.train()
    model.zero_grad()
    for x, y in batches:
        views = torch.cat([random_resized_crops(x, generator), random_resized_crops(x, generator)])
        bsz = y.shape[0]
        feature = model.forward_features(views)[:, 0]
        f1, f2 = torch.split(feature, [bsz, bsz], dim=0)
        feature = torch.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1)
        OfficialSupConLoss()(feature, y).backward()


def _batches(n=3, seed=20):
    return [(images(8, 32, seed=seed + i), (torch.arange(8) + i) % 4) for i in range(n)]


def test_gps_selection_pass_equals_the_official_pass(demo_vit):
    """``select`` picks what the official contrastive gradient pass and mask pick on the same views."""
    batches = _batches()
    model = methods.get("gps").apply(demo_vit, num_classes=10)
    methods.get("gps").select(model, batches, seed=4)
    ref = with_head_of(demo_vit, model).requires_grad_(True)
    official_gradient_pass(ref, batches, views_seed=4)
    mask = official_prune_by_percentile_gradient_perCell(ref)
    for name, wrapper in gps_wrappers(model).items():
        assert torch.equal(selected_mask(wrapper), mask[f"{name}.weight"]), name


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

class _Recording(TensorDataset):
    """A dataset that says which of its items were read."""

    def __init__(self, *tensors, log: list):
        super().__init__(*tensors)
        self.log = log

    def __getitem__(self, index):
        self.log.append(index)
        return super().__getitem__(index)


def test_fit_selects_once_from_the_training_split_only(demo_vit, monkeypatch):
    """``bench.train.fit`` calls ``select`` once, before any optimizer step, with every item of the
    training split and nothing of the evaluation split; the selection it makes is the one ``select``
    makes on that split's batches in the fit's loader order and seed."""
    g = torch.Generator().manual_seed(3)
    train_x, eval_x = torch.randn(20, 3, 32, 32, generator=g), torch.randn(12, 3, 32, 32, generator=g)
    train_read, eval_read = [], []
    train_ds = _Recording(train_x, torch.arange(20) % 5, log=train_read)
    eval_ds = _Recording(eval_x, torch.arange(12) % 5, log=eval_read)
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
    """`--methods vision` selects the three, and `all` has them (METHOD_SETS derives from GROUPS)."""
    from bench.run.spec import METHOD_SETS, parse_methods

    assert "vision" in methods.GROUPS and "vision" in METHOD_SETS
    assert methods.group("vision") == parse_methods("vision") == ["adapter_plus", "dtl", "gps"]
    assert set(parse_methods("vision")) <= set(parse_methods("all"))
    assert parse_methods("vision", "swin") == []  # all three are ViT-only
