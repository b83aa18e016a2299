"""Test tables of the vision methods of issue 31 (adapter_plus, dtl, gps, spt_lora, spt_adapter),
merged into the registry-wide tables of ``test_methods.py``. SPT's rows are those of ``apply``'s
placeholder selection (a structured module on q and v of every block): its selection from training
data decides its real count (``tests/test_spt.py``)."""
# (method, hparams, trainable parameters without head on a ViT-B/16: width 768, 12 blocks, MLP 3072,
# patch conv 768 x 3*16*16), from each official code's formula (cited in the methods' docstrings)
VIT_B_COUNTS: list[tuple[str, dict, int]] = [
    # visinf/adapter_plus Adapter (dim 8, scaling "channel"), one per block:
    # 12 x (down 768*8 + 8 + up 8*768 + 768 + scale 768) = 12 x 13,832
    ("adapter_plus", {}, 165_984),
    ("adapter_plus", {"bottleneck": 32}, 608_640),  # 12 x (768*32 + 32 + 32*768 + 768 + 768)
    # heekhero/DTL LoRALinear (r 2) before each of the 12 blocks: 12 x (2*768 + 768*2)
    ("dtl", {}, 36_864),
    ("dtl", {"fusion_size": 3}, 43_776),  # DTL+: + one depthwise 3x3 kernel per channel, 768*9
    # FightingFighting/GPS prune_by_percentile_gradient_perCell, times_para k: k entries per row of the
    # patch conv (768 rows) and of qkv (2304), proj (768), fc1 (3072), fc2 (768), plus every bias
    # but the norms': k=1: 768 + 768 + 12 x (2304 + 768 + 3072 + 768 = 6,912 weights + 6,912 biases)
    ("gps", {}, 167_424),
    ("gps", {"k": 2}, 251_136),  # 2 x 768 + 768 + 12 x (2 x 6,912 + 6,912)
    # ziplab/SPT get_structured_param_num on q and v of the 12 blocks, plus the class token (768):
    # LoRA 768*8 + 8*768 = 12,288; adapter (sequential, with biases) 768*8 + 8*768 + 8 + 768 = 13,064
    ("spt_lora", {}, 295_680),  # 768 + 24 x 12,288
    ("spt_lora", {"rank": 4}, 148_224),  # 768 + 24 x (768*4 + 4*768)
    ("spt_adapter", {}, 314_304),  # 768 + 24 x 13,064
]
# method -> regex of the names of its trainable tensors besides the head, on the demo ViT
_LINEARS = r"(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
_SPT = (r"cls_token|blocks\.\d+\." + _LINEARS + r"\.(structured\.(q|k|v|proj|fc1|fc2)\.learnable\.[012]\.(weight|bias)"
        r"|delta_(weight|bias))|(blocks\.\d+\.norm[12]|norm)\.(weight|bias)")
TRAINABLE: dict[str, str] = {
    "adapter_plus": r"blocks\.\d+\.adapter\.((down|up)\.(weight|bias)|scale)",
    "dtl": r"blocks\.lora_(A|B|fusion)",
    "gps": r"(patch_embed\.proj|blocks\.\d+\." + _LINEARS + r")\.(delta|base\.bias)",
    # the placeholder's modules, and what a selection may add: single entries of the Linears, whole norms
    "spt_lora": _SPT,
    "spt_adapter": _SPT,
}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = [
    ("dtl", {"fusion_size": 3}),
    ("dtl", {"pool": "token"}),
    ("gps", {"k": 2}),
]
# (decayed, not decayed) trainable parameters with a 10-class head (960 + 10) on the demo
# architecture (width 96, depth 4, MLP 384, patch conv 96 x 192), keyed like test_methods.DECAY_SPLIT
DECAY_SPLIT: dict[str, tuple[int, int]] = {
    # official add_weight_decay (timm's rule + ``.scaling``): down and up weights 2 x 96*8 per block;
    # biases 8 + 96 and the scale 96 per block not
    "adapter_plus": (6_144 + 960, 800 + 10),
    # official: every tensor but ``.bias`` names: A and B 2 x 2*96 per block (and the DTL+ kernel 96*9)
    "dtl": (1_536 + 960, 10),
    "dtl-3": (2_400 + 960, 10),
    "dtl-token": (1_536 + 960, 10),
    # official weight decay 0: only the head's weight (the project's rule) is decayed;
    # patch conv 96 + 96, per block qkv 288 + 288, proj 96 + 96, fc1 384 + 384, fc2 96 + 96
    "gps": (960, 7_104 + 10),
    "gps-2": (960, 7_104 + 96 + 4 * 864 + 10),  # a second entry per row: 96 + 4 x (288 + 96 + 384 + 96)
    # official build_optimizer (timm's rule): the modules' weights decayed; the class token (96), the
    # adapters' biases (8 + 96 each) and single entries not. Placeholder: 8 modules (q, v of 4 blocks)
    "spt_lora": (8 * 1_536 + 960, 96 + 10),
    "spt_adapter": (8 * 1_536 + 960, 8 * 104 + 96 + 10),
}
# methods whose trainable tensors start from constants, whatever the seed: GPS's deltas are zero and
# its biases are the backbone's own
NO_RANDOM_INIT: tuple[str, ...] = ("gps",)
