"""Backbone families (issue 14): every method on every family, exact counts on every listed
backbone, strict loading per family, and `bench methods --backbone`.

Counts are taken on the meta device (real shapes, no memory: ViT-H/14 counts instantly). Apply,
forward and merge run on one reduced-size random model per family variant the registry uses: a
plain ViT (ViT-B/L/H, MAE), a DINOv2-like ViT (LayerScale, patch 14, built for a larger image and
fed a smaller one, as DINOv2 is at 224 px), a CLIP-like ViT (pre-norm, bias-free patch conv) and
a Swin Transformer with four small stages. The method tests run over ``methods.names()``, so a
method registered later is covered at once: it must run on every family it does not refuse.
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

import methods
from bench import backbones
from bench.backbones import BACKBONES, create_meta, load_weights
from bench.cli import main
from bench.errors import UserError
from methods.families import layout_of

pytestmark = pytest.mark.usefixtures("one_thread")

C = 100  # head size of the counted models
CONFIGS = [("full", {}), ("linear", {}), ("vpt", {}), ("vpt", {"mode": "shallow"}), ("lora", {}),
           ("adapter", {}), ("adapter", {"mode": "sequential"}), ("ssf", {}), ("rlrr", {})]
UNSUPPORTED = "unsupported"
# trainable parameters without the head, in CONFIGS' order; measured by running the methods on each
# backbone (ViT-L/16's row is also the issue's own: 303,301,632 / 245,760 / 786,432 / 417,984 /
# 544,768 / 765,952)
COUNTS = {
    "vit_base_patch16_224": (85_798_656, 0, 92_160, 7_680, 294_912, 156_768, 156_768, 205_824, 288_768),
    "vit_large_patch16_224": (303_301_632, 0, 245_760, 10_240, 786_432, 417_984, 417_984, 544_768, 765_952),
    "vit_huge_patch14_224": (630_764_800, 0, 409_600, 12_800, 1_310_720, 696_576, 696_576, 906_240, 1_274_880),
    # ViT-B/14 with LayerScale and a 37x37 position table: only full differs from ViT-B/16
    "vit_base_patch14_dinov2": (86_579_712, 0, 92_160, 7_680, 294_912, 156_768, 156_768, 205_824, 288_768),
    # no patch-conv bias (-768) but a pre-norm (+1,536); SSF/RLRR: the pre-norm's SSF replaces the conv's
    "vit_base_patch16_clip_224": (85_799_424, 0, 92_160, 7_680, 294_912, 156_768, 156_768, 205_824, 288_768),
    "vit_base_patch16_224.mae": (85_798_656, 0, 92_160, 7_680, 294_912, 156_768, 156_768, 205_824, 288_768),
    # stages of 2, 2, 18, 2 blocks at widths 128 ... 1024; VPT refuses Swin
    "swin_base_patch4_window7_224": (86_743_224, 0, UNSUPPORTED, UNSUPPORTED, 385_024, 204_736, 204_736,
                                     274_432, 350_976),
}
LISTED = list(COUNTS)  # the backbones; the registry also has the demo


def config_id(name, hp):
    return "-".join([name, *map(str, hp.values())])


@pytest.fixture(scope="module")
def meta_backbones():
    return {name: create_meta(name) for name in LISTED}


# --------------------------------------------------------------------------- counts
@pytest.mark.parametrize("backbone", LISTED)
@pytest.mark.parametrize("name,hp", CONFIGS, ids=[config_id(n, hp) for n, hp in CONFIGS])
def test_counts_on_every_listed_backbone(meta_backbones, backbone, name, hp):
    expected = COUNTS[backbone][CONFIGS.index((name, hp))]
    model = meta_backbones[backbone]
    if expected == UNSUPPORTED:
        assert not methods.supports(name, backbones.get(backbone).family)
        with pytest.raises(methods.Unsupported, match="does not run on swin"):
            methods.get(name).apply(model, num_classes=C, **hp)
        return
    assert methods.count_trainable(methods.get(name).apply(model, num_classes=C, **hp)) == expected


def test_every_listed_backbone_has_counts_and_is_registered():
    assert set(LISTED) == set(BACKBONES) - {"demo"}


@pytest.mark.parametrize("name", BACKBONES)
def test_registry_entry_matches_its_model(name):
    """Each entry's family is what ``layout_of`` reads from its model, and the model runs at the
    entry's image size (a meta forward: shapes only)."""
    spec = backbones.get(name)
    model = create_meta(name).eval()
    assert layout_of(model).family == spec.family
    out = model(torch.empty(2, 3, spec.image_size, spec.image_size, device="meta"))
    assert tuple(out.shape) == (2, model.num_features)
    assert len(spec.mean) == len(spec.std) == 3 and spec.weights


def test_dinov2_keeps_its_518px_position_table_and_runs_at_224():
    model = create_meta("vit_base_patch14_dinov2")
    assert tuple(model.pos_embed.shape) == (1, 1 + 37 * 37, 768)  # loads the checkpoint's table as it is
    assert model.dynamic_img_size and backbones.get("vit_base_patch14_dinov2").image_size == 224


def test_mae_pools_the_class_token_after_its_pretrained_norm():
    layout = layout_of(create_meta("vit_base_patch16_224.mae"))
    assert layout.final_norm == "norm" and layout.num_prefix_tokens == 1


# --------------------------------------------------------------------------- one small model per family
def _nontrivial(model: torch.nn.Module) -> torch.nn.Module:
    """Random 1-d tensors too (biases, norm affines, LayerScale), so that folding into them is tested."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _vit(**kw):
    return VisionTransformer(num_classes=0, embed_dim=48, depth=2, num_heads=3, **kw)


# variant -> (build, input size, the registered backbone it stands for)
SMALL = {
    "vit": (lambda: _vit(img_size=32, patch_size=8), 32, "vit_base_patch16_224"),
    # built for 56 px (4x4 table), fed 28 px (2x2): timm interpolates the table per forward
    "dinov2": (lambda: _vit(img_size=56, patch_size=14, init_values=0.5, dynamic_img_size=True), 28,
               "vit_base_patch14_dinov2"),
    "clip": (lambda: _vit(img_size=32, patch_size=8, pre_norm=True), 32, "vit_base_patch16_clip_224"),
    "swin": (lambda: SwinTransformer(img_size=32, patch_size=2, window_size=2, embed_dim=32, depths=(2, 2, 2, 2),
                                     num_heads=(1, 2, 4, 8), num_classes=0), 32, "swin_base_patch4_window7_224"),
}


def small(variant: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _nontrivial(SMALL[variant][0]())


def images(variant: str, n: int = 3) -> torch.Tensor:
    size = SMALL[variant][1]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def models():
    return {variant: small(variant) for variant in SMALL}


def test_small_models_have_the_structure_they_stand_for(models):
    vit, dinov2, clip, swin = (layout_of(models[v]) for v in ("vit", "dinov2", "clip", "swin"))
    assert vit.stem_bias and vit.extra_norms == () and vit.final_norm == "norm"
    assert hasattr(models["dinov2"].blocks[0].ls1, "gamma") and dinov2.stem_bias
    assert not clip.stem_bias and clip.extra_norms == ("norm_pre",)
    assert swin.family == "swin" and swin.widths == (32, 32, 64, 64, 128, 128, 256, 256)
    assert swin.extra_norms == ("patch_embed.norm", "layers.1.downsample.norm", "layers.2.downsample.norm",
                                "layers.3.downsample.norm")
    assert swin.blocks[:3] == ("layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0")


def _perturb_trainable(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


def _plain_keys(base, num_classes):
    plain = copy.deepcopy(base)
    plain.reset_classifier(num_classes)
    return list(plain.state_dict())


@pytest.mark.parametrize("variant", list(SMALL))
@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_and_merges_on_every_family(models, name, variant):
    """Apply and forward work, or the method refuses the family it declares it does not run on;
    a mergeable method folds back into the plain timm model: its state_dict keys, its logits."""
    base, x = models[variant], images(variant)
    method = methods.get(name)
    if not methods.supports(name, layout_of(base).family):
        with pytest.raises(methods.Unsupported):
            method.apply(base, num_classes=5)
        return
    torch.manual_seed(0)
    model = method.apply(base, num_classes=5).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (len(x), 5) and torch.isfinite(out).all()
    if not method.mergeable:
        with pytest.raises(methods.NotMergeable):
            method.merge(model)
        return
    _perturb_trainable(model)
    merged = method.merge(model).eval()
    assert type(merged) is type(base)
    assert list(merged.state_dict()) == _plain_keys(base, 5)
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max().item() < 1e-4


# --------------------------------------------------------------------------- strict loading per family
def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("variant", list(SMALL))
def test_a_timm_state_dict_of_each_family_loads_exactly(tmp_path, variant):
    source, target = small(variant, seed=1), small(variant, seed=2)
    state = source.state_dict()
    if variant == "dinov2":  # Meta's original DINOv2 file: timm's names plus its pretraining mask token
        state = {**state, "mask_token": torch.zeros(1, 48)}
    load_weights(target, _save(state, tmp_path / "w.safetensors"), SMALL[variant][2])
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    x = images(variant)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg.startswith("cannot load ") and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("source, target, needle", [
    ("swin", "vit", "holds a Swin Transformer, the backbone is a ViT"),
    ("vit", "swin", "holds a ViT, the backbone is a Swin Transformer"),
    ("clip", "vit", "1 backbone tensors missing (patch_embed.proj.bias); "
                    "2 unexpected tensors (norm_pre.bias, norm_pre.weight)"),
], ids=["swin-into-vit", "vit-into-swin", "clip-into-vit"])
def test_a_file_of_another_backbone_is_one_line(tmp_path, source, target, needle):
    path = _save(small(source).state_dict(), tmp_path / "other.safetensors")
    backbone = SMALL[target][2]
    with pytest.raises(UserError) as exc_info:
        load_weights(small(target), path, backbone)
    msg = _one_line(exc_info)
    assert f"does not fit {backbone}: " in msg and needle in msg, msg
    assert msg.endswith(f"; {backbone} reads {backbones.get(backbone).weights}")


def test_microsofts_original_swin_layout_is_refused_not_converted(tmp_path):
    """The original release keeps each patch merging at the end of the stage before (timm moved
    it to the start of the next): timm converts it on download, the strict loader says no."""
    state = {k.replace("layers.1.downsample", "layers.0.downsample"): v for k, v in small("swin").state_dict().items()}
    with pytest.raises(UserError) as exc_info:
        load_weights(small("swin"), _save(state, tmp_path / "ms.safetensors"), "swin_base_patch4_window7_224")
    msg = _one_line(exc_info)
    assert "3 backbone tensors missing (layers.1.downsample.norm.weight" in msg
    assert "3 unexpected tensors (layers.0.downsample." in msg
    assert "reads timm/swin_base_patch4_window7_224.ms_in22k" in msg


# --------------------------------------------------------------------------- bench methods --backbone
@pytest.mark.parametrize("backbone", ["swin_base_patch4_window7_224", "vit_large_patch16_224"])
def test_bench_methods_prints_the_counts_of_the_backbone(capsys, backbone):
    assert main(["methods", "--backbone", backbone]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"backbone: {backbone}; trainable parameters, head = 100 classes")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("|")}
    assert set(methods.names()) <= set(rows)
    family = backbones.get(backbone).family
    for (name, hp), count in zip(CONFIGS, COUNTS[backbone]):
        if not hp:
            assert rows[name][0] == (f"not on {family}" if count == UNSUPPORTED else f"{count:,}"), name
    for name in methods.names():
        if not methods.supports(name, family):
            assert rows[name][:2] == [f"not on {family}", "-"]


def test_bench_methods_unknown_backbone_is_one_line(capsys):
    assert main(["methods", "--backbone", "vit_gigantic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone 'vit_gigantic'; known: demo, vit_base_patch16_224, ")
    assert len(err.strip().splitlines()) == 1
