"""Backbones: timm models (ViTs and Swin), built without any download.

Every backbone is built with ``timm.create_model(name, pretrained=False)`` and gets its weights
only from a local file (``--pretrained FILE``), except ``demo``: a small ViT with ViT-B's module
structure, pretrained by ``python -m bench.commands.pretrain_demo`` (checkpoint committed under
``bench/assets/``). Each registry entry says which family it belongs to (``methods.families``:
where its blocks, Linears and norms are), the image size it runs at, its input normalisation
(from timm's pretrained config of the weights users are told to pass) and that weights file.

Choices per backbone, where timm offers several:
- ``vit_base_patch14_dinov2`` is built as timm builds DINOv2 (518 px, a 37x37 position table) with
  ``dynamic_img_size=True``: the checkpoint's table loads exactly (the strict loader never
  resamples a tensor) and timm interpolates it to the input's patch grid on every forward (16x16
  at the suites' 224 px), as DINOv2 itself does (``interpolate_pos_encoding``).
- ``vit_base_patch16_224.mae`` is timm's MAE ViT-B/16: timm's config of that tag, i.e. the class
  token after the pretrained final norm, like every other ViT here. VPT's MAE runs (KMnP/vpt
  ``src/models/vit_backbones/vit_mae.py``, MAE's fine-tuning default) pool the patch tokens and
  put a new, randomly initialised ``fc_norm`` in place of the pretrained final norm; that needs a
  tensor that is not in the weights file, which the strict loader refuses, and it changes the
  head's input for one backbone only. Numbers of this backbone are therefore not VPT's MAE setup.

Every weights file goes through one strict loader, :func:`load_weights`, whatever the backbone:
the original Google ``.npz`` (ViT-B_16.npz, with or without ``pre_logits``) and AugReg ``.npz``
through timm's own npz reader, timm ``.pth`` / ``.safetensors`` state dicts (bare or under a
``model`` / ``state_dict`` key) through torch/safetensors and timm's ``clean_state_dict``. Every
backbone tensor must be in the file with exactly the backbone's shape; nothing is resampled. Only
the classifier (``head.*``), the representation layer (``pre_logits.*``, which timm's ViT-B and
the NOAH/VPT/RLRR code bases do not have) and what a backbone declares unused (DINOv2's
``mask_token``, a pretraining-only tensor) may be absent or extra, and they are never loaded: the
methods put their own head on the backbone. Anything else is one ``UserError`` line saying what is
wrong and which file the backbone expects.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn

from ..errors import UserError, first_line

ASSETS = Path(__file__).parent.parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_vit.safetensors"
# Same module structure as ViT-B/16 (patch conv, class token, pre-norm blocks, fused qkv, MLP x4),
# sized so that the whole demo suite trains on two CPU cores in minutes.
DEMO_CONFIG = dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0)
REAL_BACKBONE = "vit_base_patch16_224"
HALF = (0.5, 0.5, 0.5)  # the normalisation of the ImageNet-21k ViTs (and of the demo)


@dataclass(frozen=True)
class Backbone:
    """One backbone: how to build it randomly initialised (no download), what it expects."""

    name: str
    family: str  # the ``methods.families`` family its model belongs to: "vit" | "swin"
    build: Callable[[int], nn.Module]  # num_classes -> model
    image_size: int  # the input size it runs at; a suite's recipe must use the same
    mean: tuple[float, float, float]  # input normalisation of its pretrained weights
    std: tuple[float, float, float]
    weights: str  # the file to pass with --pretrained, in one line (messages, docs/backbones.md)
    default_weights: Path | None = None
    unused: tuple[str, ...] = ()  # key prefixes a weights file may carry that are never loaded


def _build_demo(num_classes: int) -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(num_classes=num_classes, **DEMO_CONFIG)


def _timm(name: str, family: str, tag: str, weights: str, unused: tuple[str, ...] = (), **kwargs) -> Backbone:
    """A timm architecture, randomly initialised (``pretrained=False``: never a download), with the
    normalisation timm's pretrained config ``tag`` gives the weights that users are told to pass."""
    cfg = timm.models.get_pretrained_cfg(tag)

    def build(num_classes: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    return Backbone(name, family, build, 224, tuple(cfg.mean), tuple(cfg.std), weights, unused=unused)


_REGISTRY = {b.name: b for b in (
    Backbone("demo", "vit", _build_demo, DEMO_CONFIG["img_size"], HALF, HALF,
             "bench/assets/demo_vit.safetensors (committed; the default) or a `python -m bench.commands.pretrain_demo` file",
             DEMO_CHECKPOINT),
    _timm(REAL_BACKBONE, "vit", "vit_base_patch16_224.augreg_in21k",
          "ViT-B_16.npz (original ImageNet-21k release, the papers' weights) or "
          "timm/vit_base_patch16_224.augreg_in21k"),
    _timm("vit_large_patch16_224", "vit", "vit_large_patch16_224.augreg_in21k",
          "ViT-L_16.npz (original ImageNet-21k release) or timm/vit_large_patch16_224.augreg_in21k"),
    _timm("vit_huge_patch14_224", "vit", "vit_huge_patch14_224.orig_in21k",
          "ViT-H_14.npz (original ImageNet-21k release) or timm/vit_huge_patch14_224.orig_in21k"),
    _timm("vit_base_patch14_dinov2", "vit", "vit_base_patch14_dinov2.lvd142m",
          "timm/vit_base_patch14_dinov2.lvd142m or Meta's dinov2_vitb14_pretrain.pth",
          unused=("mask_token",), dynamic_img_size=True),
    _timm("vit_base_patch16_clip_224", "vit", "vit_base_patch16_clip_224.openai",
          "timm/vit_base_patch16_clip_224.openai (its model.safetensors: the image tower in timm's names)"),
    _timm("vit_base_patch16_224.mae", "vit", "vit_base_patch16_224.mae", "timm/vit_base_patch16_224.mae"),
    _timm("swin_base_patch4_window7_224", "swin", "swin_base_patch4_window7_224.ms_in22k",
          "timm/swin_base_patch4_window7_224.ms_in22k (timm's layout; Microsoft's original .pth is not read)"),
)}
BACKBONES = tuple(_REGISTRY)


def get(name: str) -> Backbone:
    """The registered backbone ``name``; a ``UserError`` listing the known ones otherwise."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UserError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return spec


def create_demo(pretrained: bool | str | Path = True, num_classes: int = 0) -> nn.Module:
    """The demo ViT; ``pretrained=True`` loads the committed checkpoint, a path loads that file."""
    if not pretrained:
        return _build_demo(num_classes)
    return create_backbone("demo", None if pretrained is True else pretrained, num_classes=num_classes)


def create_backbone(name: str, pretrained: str | Path | None = None, num_classes: int = 0) -> nn.Module:
    """Build backbone ``name``. ``pretrained`` is a local .npz/.pth/.safetensors file, loaded
    strictly (see :func:`load_weights`); without one the demo loads its committed checkpoint and
    every other backbone is randomly initialised (tests, ``--pretrained none``)."""
    spec = get(name)
    path = pretrained or spec.default_weights
    if path is None:
        return spec.build(num_classes)
    # the file is read (and a bad one refused) before the model is built: no ViT-B initialisation
    # is spent on a typo or a text file
    return _build_loaded(spec.build, read_weights(path), num_classes, name)


def create_meta(name: str, num_classes: int = 0) -> nn.Module:
    """Backbone ``name`` on the meta device: every shape, no memory, no initialisation. Enough to
    count parameters (``bench methods``) on any backbone, ViT-H's 632M included, instantly."""
    spec = get(name)
    with torch.device("meta"):
        return spec.build(num_classes)


def _build_loaded(build: Callable[[int], nn.Module], weights: WeightsFile, num_classes: int,
                  backbone: str) -> nn.Module:
    """Build a backbone and load ``weights`` into it. Without a head the file provides every
    tensor, so the random initialisation is skipped (built on the meta device: ~1.5 s saved on
    ViT-B); a model that would keep any tensor not from the file is built normally."""
    if num_classes == 0:
        with torch.device("meta"):
            model = build(0)
        state = model.state_dict()
        if (not any(k.startswith(_OPTIONAL) for k in state)
                and all(k in state for k, _ in model.named_buffers())):  # no non-persistent buffers
            model = model.to_empty(device="cpu")
            load_weights(model, weights, backbone)
            return model
    model = build(num_classes)
    load_weights(model, weights, backbone)
    return model


# --------------------------------------------------------------------------- the strict loader
# Tensors a weights file may lack or carry without being loaded: the classifier and the
# representation layer (original ViT release), in timm's names and in the npz layout's.
_OPTIONAL = ("head.", "pre_logits.")
_OPTIONAL_NPZ = ("head/", "pre_logits/")
_NPZ_PREFIXES = ("", "opt/target/")  # the layouts of the original and AugReg releases


@dataclass
class WeightsFile:
    """A weights file that has been read and found to be one of the supported formats."""

    path: Path
    kind: str  # "npz" | "torch" | "safetensors"
    state: dict | None = None  # torch / safetensors: the state dict
    npz_shapes: dict | None = None  # npz: array name (prefix removed) -> shape, no data read yet
    npz_prefix: str = ""


def read_weights(path: str | Path) -> WeightsFile:
    """Open a weights file without a model: whatever is wrong with the file itself (missing,
    truncated, not weights, an unsupported layout) is a ``UserError`` here."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    kind = _sniff(path)
    if kind != "npz":
        return WeightsFile(path, kind, state=_read_state_dict(path, kind))
    shapes = _npz_shapes(path)
    prefix = next((p for p in reversed(_NPZ_PREFIXES) if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise UserError(f"cannot load {path}: an .npz without ViT weights (no embedding/kernel array)")
    if f"{prefix}pos_embedding" in shapes or f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in shapes:
        raise UserError(f"cannot load {path}: a big_vision .npz (stacked layers); give the original or "
                        "AugReg release, or a timm .pth/.safetensors")
    shapes = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}  # not opt/state/...
    return WeightsFile(path, kind, npz_shapes=shapes, npz_prefix=prefix)


def load_weights(model: nn.Module, weights: str | Path | WeightsFile, backbone: str) -> None:
    """Load a weights file into ``model`` (any timm model; ``backbone`` names it in messages and,
    when registered, says which extra tensors its files may carry), strictly: every tensor of
    ``model`` except its head must be in the file with the same shape; the file may hold nothing
    else but ``head.*`` / ``pre_logits.*`` and the backbone's ``unused`` tensors, never loaded.
    Shapes are checked before anything is copied, so timm's readers never resample. Raises
    ``UserError``."""
    if not isinstance(weights, WeightsFile):
        weights = read_weights(weights)
    if weights.kind == "npz":
        _load_npz(model, weights, backbone)
    else:
        _load_state_dict(model, weights.state, weights.path, backbone)


def _sniff(path: Path) -> str:
    """'npz', 'torch' or 'safetensors' from the file's content (not its name), else a UserError
    saying what the file is."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if size == 0:
        raise UserError(f"cannot load {path}: the file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise UserError(f"cannot load {path}: truncated or corrupt zip archive (.npz or .pth)") from None
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise UserError(f"cannot load {path}: a zip archive that is neither an .npz nor a PyTorch checkpoint")
    if head[:1] == b"\x80":  # a pickle: PyTorch's legacy (non-zip) format
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if header > size - 8:
            raise UserError(f"cannot load {path}: truncated or corrupt safetensors file")
        return "safetensors"
    what = "a text file" if _is_text(head) else "unknown binary data"
    raise UserError(f"cannot load {path}: not a weights file ({what}; expected .npz, .pth or .safetensors)")


def _is_text(data: bytes) -> bool:
    text = data.decode("utf-8", errors="replace")
    return "\ufffd" not in text[:-4] and all(c.isprintable() or c.isspace() for c in text[:-4])


def _read_state_dict(path: Path, kind: str) -> dict:
    """A timm state dict from a .safetensors or torch file: bare, or under ``model`` / ``state_dict``."""
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path))
        else:
            import argparse

            # timm training checkpoints carry their argparse.Namespace; nothing else is unpickled
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/torch raise many types; none of their text is for users
        if kind == "torch" and "weights only" in str(exc).lower().replace("_", " "):
            reason = "a pickle of objects, not a plain state dict (save model.state_dict() instead)"
        else:
            reason = f"truncated or corrupt {'safetensors' if kind == 'safetensors' else 'PyTorch'} file"
        raise UserError(f"cannot load {path}: {reason}") from None
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise UserError(f"cannot load {path}: holds a {type(checkpoint).__name__}, not a state dict")
    return timm.models.clean_state_dict(checkpoint)  # strips DDP 'module.' / torch.compile prefixes


def _never_loaded(backbone: str) -> tuple[str, ...]:
    """Key prefixes a file for ``backbone`` may carry that are never loaded: the head, the
    representation layer and what the backbone declares ``unused``."""
    spec = _REGISTRY.get(backbone)
    return _OPTIONAL + (spec.unused if spec else ())


def _load_state_dict(model: nn.Module, state: dict, path: Path, backbone: str) -> None:
    skip = _never_loaded(backbone)
    needed = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()
            if not k.startswith(skip)}
    _check_fits(needed, have, _timm_signature, path, backbone)
    # timm's checkpoint_filter_fn is not applied: it exists to resample mismatched shapes, and
    # here every shape already matches
    result = model.load_state_dict({k: state[k] for k in needed}, strict=False)
    assert not result.unexpected_keys and all(k.startswith(skip) for k in result.missing_keys), result


def _load_npz(model: nn.Module, weights: WeightsFile, backbone: str) -> None:
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    path = weights.path
    if not isinstance(model, VisionTransformer):
        raise UserError(f"cannot load {path}: backbone {backbone} does not read .npz files; give a .pth or "
                        ".safetensors file")
    try:
        expected = _npz_expected(model)
    except KeyError:
        raise UserError(f"cannot load {path}: backbone {backbone} does not read .npz files; give a .pth or "
                        ".safetensors file") from None
    have = {k: s for k, s in weights.npz_shapes.items() if not k.startswith(_OPTIONAL_NPZ)}
    _check_fits(expected, have, _npz_signature, path, backbone)
    keep = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(_OPTIONAL)}
    try:
        _load_weights(model, str(path), prefix=weights.npz_prefix)
    except Exception as exc:  # shapes were checked: what is left is a damaged archive member
        raise UserError(f"cannot load {path}: corrupt .npz archive ({first_line(exc, 80)})") from None
    model.load_state_dict(keep, strict=False)  # the reader may fill a matching head: never from the file


def _npz_shapes(path: Path) -> dict[str, tuple | None]:
    """Each array's shape from its .npy header (None when not a float array), reading no data."""
    import numpy as np

    shapes = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                shapes[name[:-4]] = tuple(shape) if dtype.kind == "f" else None
    except Exception as exc:
        raise UserError(f"cannot load {path}: corrupt .npz archive ({first_line(exc, 80)})") from None
    return shapes


def vit_npz_arrays(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """A timm ViT state dict in the original Google ``.npz`` layout: the exact inverse of timm's
    npz reader (``vision_transformer._load_weights``), key names and transposes. Works on meta
    tensors (shapes only). A key it cannot place raises ``KeyError``."""
    out, rest = {}, dict(state)

    def take(key):
        return rest.pop(key)

    def hwio(w):  # conv OIHW -> HWIO
        return w.permute(2, 3, 1, 0)

    out["embedding/kernel"] = hwio(take("patch_embed.proj.weight"))
    out["embedding/bias"] = take("patch_embed.proj.bias")
    out["cls"] = take("cls_token")
    out["Transformer/posembed_input/pos_embedding"] = take("pos_embed")
    out["Transformer/encoder_norm/scale"] = take("norm.weight")
    out["Transformer/encoder_norm/bias"] = take("norm.bias")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    for i in range(depth):
        b, n = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = n + "MultiHeadDotProductAttention_1/"
        for ln, sub in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"{n}{sub}/scale"] = take(f"{b}{ln}.weight")
            out[f"{n}{sub}/bias"] = take(f"{b}{ln}.bias")
        qkv_w, qkv_b = take(f"{b}attn.qkv.weight"), take(f"{b}attn.qkv.bias")
        dim = qkv_w.shape[1]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{mha}{name}/kernel"] = qkv_w[j * dim:(j + 1) * dim].T.reshape(dim, num_heads, -1)
            out[f"{mha}{name}/bias"] = qkv_b[j * dim:(j + 1) * dim].reshape(num_heads, -1)
        out[f"{mha}out/kernel"] = take(f"{b}attn.proj.weight").reshape(dim, num_heads, -1).permute(1, 2, 0)
        out[f"{mha}out/bias"] = take(f"{b}attn.proj.bias")
        for r in range(2):
            out[f"{n}MlpBlock_3/Dense_{r}/kernel"] = take(f"{b}mlp.fc{r + 1}.weight").T
            out[f"{n}MlpBlock_3/Dense_{r}/bias"] = take(f"{b}mlp.fc{r + 1}.bias")
    if "head.weight" in rest:
        out["head/kernel"] = take("head.weight").T
        out["head/bias"] = take("head.bias")
    if rest:
        raise KeyError(next(iter(rest)))
    return out


def _npz_expected(model: nn.Module) -> dict[str, tuple]:
    """The npz arrays (name -> shape) that timm's reader reads into ``model``, head excepted."""
    meta = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()
            if not k.startswith(_OPTIONAL)}
    arrays = vit_npz_arrays(meta, model.blocks[0].attn.num_heads)
    return {k: tuple(v.shape) for k, v in arrays.items()}


# --------------------------------------------------------------------------- fit check and messages
def _check_fits(needed: dict, have: dict, signature: Callable, path: Path, backbone: str) -> None:
    """UserError unless ``have`` (name -> shape, None for a non-tensor) matches ``needed`` exactly."""
    missing = [k for k in needed if k not in have]
    unexpected = [k for k in have if k not in needed]
    misshaped = [k for k in needed if k in have and have[k] != needed[k]]
    if not (missing or unexpected or misshaped):
        return
    if len(missing) == len(needed):
        sample = ", ".join(list(have)[:3]) or "nothing"
        raise UserError(f"cannot load {path}: not weights for {backbone}: none of its {len(needed)} backbone "
                        f"tensors is in the file (it holds {len(have)} entries: {sample}{', ...' if len(have) > 3 else ''})"
                        f"{_expected(backbone)}")
    parts = _architecture_hints(signature(have), signature(needed))
    if missing:
        parts.append(f"{len(missing)} backbone tensors missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors ({_names(unexpected)})")
    if misshaped:
        shown = ", ".join(f"{k} {_shape(have[k])} vs {_shape(needed[k])}" for k in misshaped[:2])
        parts.append(f"{len(misshaped)} of the wrong shape ({shown}{', ...' if len(misshaped) > 2 else ''})")
    raise UserError(f"cannot load {path}: does not fit {backbone}: {'; '.join(parts)}{_expected(backbone)}")


def _expected(backbone: str) -> str:
    """The end of a refusal: which file the backbone reads (when it is a registered one)."""
    spec = _REGISTRY.get(backbone)
    return f"; {backbone} reads {spec.weights}" if spec else ""


def _names(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _shape(shape) -> str:
    return "(not a float tensor)" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


_FAMILY_NAMES = {"vit": "ViT", "swin": "Swin Transformer"}


def _architecture_hints(file: dict, model: dict) -> list[str]:
    """What the file looks like when it is another family, or a model of the same family with
    another width, patch size, depth or image size."""
    def fmt(key, value):
        return "x".join(map(str, value)) if key == "patch" else str(value)

    if file.get("family") and model.get("family") and file["family"] != model["family"]:
        return [f"holds a {_FAMILY_NAMES[file['family']]}, the backbone is a {_FAMILY_NAMES[model['family']]}"]
    noun = _FAMILY_NAMES[model.get("family") or "vit"]
    differs = [k for k in ("width", "patch") if file.get(k) and model.get(k) and file[k] != model[k]]
    if file.get("depth", 0) > model.get("depth", 0):  # fewer blocks: reported as missing tensors
        differs.append("depth")
    hints = []
    if differs:
        hints.append(f"looks like a {', '.join(f'{k}-{fmt(k, file[k])}' for k in differs)} {noun}, the backbone is "
                     f"{', '.join(f'{k} {fmt(k, model[k])}' for k in differs)}")
    if "patch" not in differs and file.get("tokens") and model.get("tokens") and file["tokens"] != model["tokens"]:
        hints.append(f"its position embedding has {file['tokens']} tokens, the backbone's {model['tokens']} "
                     "(made for another image size)")
    return hints


def _signature(shapes: dict, patch_key: str, hwio: bool, pos_key: str, block: str) -> dict:
    sig = {}
    w = shapes.get(patch_key)
    if w is not None and len(w) == 4:
        sig["width"], sig["patch"] = (w[3], w[:2]) if hwio else (w[0], w[2:])
    pos = shapes.get(pos_key)
    if pos is not None and len(pos) == 3:
        sig["tokens"] = pos[1]
    blocks = [int(m.group(1)) for k in shapes if (m := re.match(block, k))]
    sig["depth"] = 1 + max(blocks) if blocks else 0
    return sig


def _timm_signature(shapes: dict) -> dict:
    sig = _signature(shapes, "patch_embed.proj.weight", False, "pos_embed", r"blocks\.(\d+)\.")
    if any(re.match(r"layers\.\d+\.blocks\.", k) for k in shapes):  # timm's Swin: blocks in stages
        sig["family"] = "swin"
    elif sig["depth"]:
        sig["family"] = "vit"
    return sig


def _npz_signature(shapes: dict) -> dict:
    sig = _signature(shapes, "embedding/kernel", True, "Transformer/posembed_input/pos_embedding",
                     r"Transformer/encoderblock_(\d+)/")
    return {**sig, "family": "vit"}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, logged with every run so results name their exact weights."""
    from ..data.manifest import sha256_file

    return sha256_file(Path(path))
