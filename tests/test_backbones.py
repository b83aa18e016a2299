"""Backbone weights: every supported format loads bit-exact, nothing that does not fit loads at all.

Format and refusal tests run on the demo backbone (a ViT with ViT-B/16's key layout, 32x32 input,
width 96): ``create_backbone("demo", FILE)`` goes through the same strict loader as
``create_backbone("vit_base_patch16_224", FILE)``, which one test exercises with a real ViT-B/16
original-layout ``.npz``. Files are written from seeded models here; the ``.npz`` writer is
checked against timm's own npz reader first.
"""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer, _load_weights

from bench.backbones import DEMO_CHECKPOINT, DEMO_CONFIG, REAL_BACKBONE, create_backbone, create_demo, file_sha256
from bench.backbones.weights import vit_npz_arrays
from bench.cli import main
from bench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = 10  # classes of the heads written into the files


def vit(seed: int = 0, num_classes: int = HEAD, **changes) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(num_classes=num_classes, **{**DEMO_CONFIG, **changes})
    with torch.no_grad():  # make the zero/one-initialised tensors (biases, norms) distinct too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model




@pytest.fixture(scope="module")
def source() -> VisionTransformer:
    return vit()


def write_npz(model, path, *, pre_logits=True, head=True, prefix="", drop=(), replace=None):
    """``model`` in the original Google ViT .npz layout (``pre_logits``: the representation layer
    of the original ImageNet-21k release; AugReg files have none)."""
    state = {k: v for k, v in model.state_dict().items() if head or not k.startswith("head.")}
    arrays = {k: v.detach().numpy() for k, v in vit_npz_arrays(state, model.blocks[0].attn.num_heads).items()}
    if pre_logits:
        dim = model.embed_dim
        rng = np.random.default_rng(0)
        arrays["pre_logits/kernel"] = rng.standard_normal((dim, dim), dtype=np.float32)
        arrays["pre_logits/bias"] = rng.standard_normal(dim, dtype=np.float32)
    arrays = {prefix + k: v for k, v in {**arrays, **(replace or {})}.items() if not k.startswith(drop)}
    if prefix:
        arrays["opt/state/step"] = np.zeros(1, np.float32)  # optimizer state beside opt/target/
    np.savez(path, **arrays)
    return path


def backbone_state(model, drop=()):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", *drop))}


def write_pth(state, path):
    torch.save(state, path)
    return path


def write_safetensors(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def assert_same_backbone(loaded, model, forward=True):
    expected = backbone_state(model)
    got = loaded.state_dict()
    assert set(got) == set(expected)  # num_classes=0: no head
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    if forward:  # and it runs: nothing of the model was left uninitialised
        x = torch.randn(2, 3, *model.patch_embed.img_size)
        loaded.eval(), model.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), model.forward_head(model.forward_features(x), pre_logits=True))


def assert_one_line_user_error(exc_info, needle):
    msg = str(exc_info.value)
    assert needle in msg, msg
    assert msg.startswith("cannot load ") and "\n" not in msg
    for internal in ("hasRecord", "PytorchStreamReader", "size mismatch", "Error(s) in loading", "Traceback"):
        assert internal not in msg


# --------------------------------------------------------------------------- the npz writer itself
def test_npz_writer_is_the_inverse_of_timms_npz_reader(source, tmp_path):
    path = write_npz(source, tmp_path / "orig.npz")
    with np.load(path) as z:
        assert {"embedding/kernel", "cls", "pre_logits/kernel", "head/kernel",
                "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel"} <= set(z.files)
        assert z["embedding/kernel"].shape == (8, 8, 3, 96)  # HWIO
        assert z["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (96, 3, 32)
        assert z["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"].shape == (3, 32, 96)
        assert z["head/kernel"].shape == (96, HEAD)
    fresh = vit(seed=1)
    _load_weights(fresh, str(path))  # timm's own reader
    for k, v in source.state_dict().items():
        assert (fresh.state_dict()[k] - v).abs().max().item() == 0.0, k
    x = torch.randn(2, 3, 32, 32)
    source.eval(), fresh.eval()
    with torch.no_grad():
        feats = [m.forward_head(m.forward_features(x), pre_logits=True) for m in (source, fresh)]
    assert torch.equal(*feats)


# --------------------------------------------------------------------------- good files
GOOD = {
    "npz-original-with-pre_logits": lambda m, p: write_npz(m, p / "w.npz"),
    "npz-augreg-no-pre_logits": lambda m, p: write_npz(m, p / "w.npz", pre_logits=False),
    "npz-no-head": lambda m, p: write_npz(m, p / "w.npz", pre_logits=False, head=False),
    "npz-opt-target-prefix": lambda m, p: write_npz(m, p / "w.npz", prefix="opt/target/"),
    "pth-bare": lambda m, p: write_pth(backbone_state(m), p / "w.pth"),
    "pth-with-head": lambda m, p: write_pth(m.state_dict(), p / "w.pth"),
    "pth-model-key": lambda m, p: write_pth({"model": m.state_dict(), "epoch": 3}, p / "w.pth"),
    "pth-state_dict-key": lambda m, p: write_pth({"state_dict": backbone_state(m)}, p / "w.pth"),
    "pth-ddp-prefix": lambda m, p: write_pth({f"module.{k}": v for k, v in m.state_dict().items()}, p / "w.pth"),
    "pth-with-pre_logits": lambda m, p: write_pth({**m.state_dict(), "pre_logits.fc.weight": torch.ones(96, 96)},
                                                  p / "w.pth"),
    "safetensors-bare": lambda m, p: write_safetensors(backbone_state(m), p / "w.safetensors"),
    "safetensors-with-head": lambda m, p: write_safetensors(m.state_dict(), p / "w.safetensors"),
    "safetensors-named-bin": lambda m, p: write_safetensors(m.state_dict(), p / "w.bin"),
}


@pytest.mark.parametrize("make", GOOD.values(), ids=GOOD.keys())
def test_good_files_load_bit_exact(source, tmp_path, make):
    assert_same_backbone(create_backbone("demo", make(source, tmp_path)), source)


@pytest.mark.parametrize("make", [GOOD["npz-original-with-pre_logits"], GOOD["pth-with-head"]], ids=["npz", "pth"])
def test_the_head_is_never_loaded_from_the_file(source, tmp_path, make):
    path = make(source, tmp_path)
    torch.manual_seed(5)
    reference = create_demo(pretrained=False, num_classes=HEAD)
    torch.manual_seed(5)
    model = create_backbone("demo", path, num_classes=HEAD)  # same head size as the file's
    assert torch.equal(model.head.weight, reference.head.weight)  # the fresh head, not the file's
    assert not torch.equal(model.head.weight, source.head.weight)
    assert torch.equal(model.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)


def test_demo_default_checkpoint_and_sha256():
    from safetensors.torch import load_file

    model = create_backbone("demo")
    for k, v in load_file(str(DEMO_CHECKPOINT)).items():
        assert torch.equal(model.state_dict()[k], v), k
    assert file_sha256(DEMO_CHECKPOINT) == hashlib.sha256(DEMO_CHECKPOINT.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("vit_huge")


# --------------------------------------------------------------------------- bad files
def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _half(m):
    return {k: v for k, v in backbone_state(m).items() if not k.startswith(("blocks.2.", "blocks.3.", "norm."))}


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    return path


BAD = {
    "truncated-npz": (lambda m, p: _truncated(write_npz(m, p / "w.npz")), "truncated or corrupt zip archive"),
    "truncated-pth": (lambda m, p: _truncated(write_pth(m.state_dict(), p / "w.pth")),
                      "truncated or corrupt zip archive"),
    "truncated-safetensors": (lambda m, p: _truncated(write_safetensors(m.state_dict(), p / "w.safetensors")),
                              "truncated or corrupt safetensors file"),
    "text-file": (lambda m, p: (p / "w.npz").write_text("model weights go here\n") and p / "w.npz",
                  "not a weights file (a text file"),
    "empty-file": (lambda m, p: (p / "w.pth").write_bytes(b"") or p / "w.pth", "the file is empty"),
    "zip-not-weights": (lambda m, p: _zip_of_text(p / "w.npz"), "neither an .npz nor a PyTorch checkpoint"),
    "npz-not-vit": (lambda m, p: np.savez(p / "w.npz", a=np.zeros(3)) or p / "w.npz", "no embedding/kernel"),
    "pth-half": (lambda m, p: write_pth(_half(m), p / "w.pth"),
                 "does not fit demo: 26 backbone tensors missing (blocks.2.norm1.weight, blocks.2.norm1.bias, "
                 "blocks.2.attn.qkv.weight, ...)"),
    "npz-half": (lambda m, p: write_npz(m, p / "w.npz", drop=("Transformer/encoderblock_3/",
                                                              "Transformer/encoder_norm/")),
                 "does not fit demo: 18 backbone tensors missing (Transformer/encoder_norm/scale"),
    "pth-patch-4": (lambda m, p: write_pth(backbone_state(vit(patch_size=4)), p / "w.pth"),
                    "looks like a patch-4x4 ViT, the backbone is patch 8x8"),
    "npz-patch-4": (lambda m, p: write_npz(vit(patch_size=4), p / "w.npz"),
                    "looks like a patch-4x4 ViT, the backbone is patch 8x8"),
    "safetensors-wider": (lambda m, p: write_safetensors(backbone_state(vit(embed_dim=128, num_heads=4)),
                                                         p / "w.safetensors"),
                          "looks like a width-128 ViT, the backbone is width 96"),
    "npz-wider": (lambda m, p: write_npz(vit(embed_dim=128, num_heads=4), p / "w.npz"),
                  "looks like a width-128 ViT, the backbone is width 96"),
    "safetensors-wider-deeper": (lambda m, p: write_safetensors(backbone_state(vit(embed_dim=128, num_heads=4, depth=6)),
                                                                p / "w.safetensors"),
                                 "looks like a width-128, depth-6 ViT, the backbone is width 96, depth 4; "
                                 "24 unexpected tensors (blocks.4."),
    "pth-deeper": (lambda m, p: write_pth(backbone_state(vit(depth=6)), p / "w.pth"),
                   "looks like a depth-6 ViT, the backbone is depth 4; 24 unexpected tensors (blocks.4."),
    "pth-other-image-size": (lambda m, p: write_pth(backbone_state(vit(img_size=64)), p / "w.pth"),
                             "position embedding has 65 tokens, the backbone's 17 (made for another image size)"),
    "pth-foreign-keys": (lambda m, p: write_pth({"foo": torch.ones(3), "bar.weight": torch.ones(2, 2)}, p / "w.pth"),
                         "not weights for demo: none of its 54 backbone tensors is in the file "
                         "(it holds 2 entries: foo, bar.weight)"),
    "pth-extra-tensor": (lambda m, p: write_pth({**m.state_dict(), "blocks.0.attn.gate": torch.ones(1)},
                                                p / "w.pth"),
                         "1 unexpected tensors (blocks.0.attn.gate)"),
    "pth-pickled-module": (lambda m, p: write_pth(m, p / "w.pth"), "not a plain state dict"),
    "pth-a-tensor": (lambda m, p: write_pth(torch.ones(3), p / "w.pth"), "holds a Tensor, not a state dict"),
}


@pytest.mark.parametrize("make, needle", BAD.values(), ids=BAD.keys())
def test_bad_files_are_one_line_user_errors(source, tmp_path, make, needle):
    path = make(source, tmp_path)
    with pytest.raises(UserError) as exc_info:
        create_backbone("demo", path)
    assert_one_line_user_error(exc_info, needle)


def test_a_bad_file_is_refused_before_the_backbone_is_built(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the backbone was built for a file that cannot be loaded")

    monkeypatch.setattr(timm, "create_model", no_build)
    with pytest.raises(UserError, match="pretrained weights file not found"):
        create_backbone(REAL_BACKBONE, tmp_path / "ViT-B_16.npz")
    (tmp_path / "ViT-B_16.npz").write_text("not weights")
    with pytest.raises(UserError, match="not a weights file"):
        create_backbone(REAL_BACKBONE, tmp_path / "ViT-B_16.npz")


def test_cli_refuses_a_half_checkpoint_in_one_line_and_writes_nothing(source, tmp_path, capsys):
    bad = write_pth(_half(source), tmp_path / "ViT-half.pth")
    code = main(["run", "--suite", "demo", "--methods", "linear", "--pretrained", str(bad),
                 "--out", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: cannot load ") and len(err.strip().splitlines()) == 1, err
    assert "26 backbone tensors missing" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the real ViT-B/16 path
def test_vit_b16_original_npz_loads_exactly_and_a_patch32_one_is_refused(tmp_path):
    with torch.device("meta"):  # shapes only; seeded values below (timm's init takes seconds)
        vit_b = timm.create_model(REAL_BACKBONE, pretrained=False, num_classes=HEAD)
    vit_b = vit_b.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for t in vit_b.state_dict().values():
            t.normal_(0, 0.02)
    path = write_npz(vit_b, tmp_path / "ViT-B_16.npz")  # original layout: pre_logits (768x768) and a head
    assert_same_backbone(create_backbone(REAL_BACKBONE, path), vit_b, forward=False)  # forward: seconds

    # the same file with ViT-B/32's patch embedding and position table: refused, not resampled
    b32 = write_npz(vit_b, tmp_path / "ViT-B_32.npz", replace={
        "embedding/kernel": np.zeros((32, 32, 3, 768), np.float32),
        "Transformer/posembed_input/pos_embedding": np.zeros((1, 50, 768), np.float32)})
    with pytest.raises(UserError) as exc_info:
        create_backbone(REAL_BACKBONE, b32)
    assert_one_line_user_error(
        exc_info, "does not fit vit_base_patch16_224: looks like a patch-32x32 ViT, the backbone is patch 16x16; "
                  "2 of the wrong shape (embedding/kernel (32, 32, 3, 768) vs (16, 16, 3, 768), "
                  "Transformer/posembed_input/pos_embedding (1, 50, 768) vs (1, 197, 768))")
