"""The strict loader: every weights file goes through
:func:`load_weights`, whatever the backbone:
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

import torch
import torch.nn as nn

from ..compat.timm_npz import load_npz
from ..errors import UserError, first_line


# Tensors a weights file may lack or carry without being loaded: the classifier and the
# representation layer (original ViT release), in timm's names and in the npz layout's.
OPTIONAL = ("head.", "pre_logits.")
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
    from timm.models import clean_state_dict

    return clean_state_dict(checkpoint)  # strips DDP 'module.' / torch.compile prefixes


def _registered(backbone: str):
    """The registry entry of ``backbone`` (None: a model built outside the registry, e.g. in tests).
    Imported when asked: the registry imports this loader."""
    from . import _REGISTRY

    return _REGISTRY.get(backbone)


def _never_loaded(backbone: str) -> tuple[str, ...]:
    """Key prefixes a file for ``backbone`` may carry that are never loaded: the head, the
    representation layer and what the backbone declares ``unused``."""
    spec = _registered(backbone)
    return OPTIONAL + (spec.unused if spec else ())


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
    from timm.models.vision_transformer import VisionTransformer

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
    keep = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(OPTIONAL)}
    try:
        load_npz(model, path, prefix=weights.npz_prefix)
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
            if not k.startswith(OPTIONAL)}
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
    spec = _registered(backbone)
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


