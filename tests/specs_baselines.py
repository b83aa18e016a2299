"""Test tables of the reviewer baselines (issue 13: bitfit, fact_tt, fact_tk, convpass, repadapter),
merged into the registry-wide tables of ``test_methods.py``."""
# (method, hparams, trainable parameters without head on a ViT-B/16), literals from the official code:
# KMnP/vpt tinytl-bias, JieShibo/PETL-ViT FacT/fact_tt.py, fact_tk.py, convpass/vtab/convpass.py and
# luogen1996/RepAdapter repadapter.py run on a randomly initialised timm vit_base_patch16_224
VIT_B_COUNTS: list[tuple[str, dict, int]] = [
    ("bitfit", {}, 102_912),
    ("fact_tt", {}, 21_504),
    ("fact_tt", {"rank": 4}, 8_448),
    ("fact_tt", {"rank": 16}, 61_440),
    ("fact_tk", {}, 86_528),
    ("fact_tk", {"rank": 16}, 30_976),
    ("convpass", {}, 327_552),
    ("convpass", {"mode": "attn"}, 163_776),
    ("repadapter", {}, 239_808),
    ("repadapter", {"mode": "attn"}, 119_904),
]
_LINEARS = r"(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
# method -> regex of the names of its trainable tensors besides the head, on the demo ViT
TRAINABLE: dict[str, str] = {
    "bitfit": r"(patch_embed\.proj|blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|norm1|norm2)|norm)\.bias",
    "fact_tt": r"fact\.(u|v)|blocks\.\d+\." + _LINEARS + r"\.core",
    "fact_tk": r"fact\.(u|v|p|c)",
    "convpass": r"blocks\.\d+\.(attn|mlp)\.adapter\.(down|conv|up)\.(weight|bias)",
    "repadapter": r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.adapter\.(down\.weight|down\.bias|up_weight|up_bias)",
}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = [
    ("convpass", {"mode": "attn"}),
    ("convpass", {"conv_init": "xavier"}),
    ("repadapter", {"mode": "attn"}),
]
# (decayed, not decayed) trainable parameters with a 10-class head (960 + 10) on the demo
# architecture, keyed like test_methods.DECAY_SPLIT (method or method-hparam values): every
# official optimizer decays all of the method's tensors, biases included; the head's bias is not
DECAY_SPLIT: dict[str, tuple[int, int]] = {
    "bitfit": (4_416 + 960, 10),       # patch 96 + 4 x 1,056 block biases + final norm 96
    "fact_tt": (4_608 + 960, 10),      # U, V 2 x 96 x 8 + 4 x (4 x 64 + 256 + 256) cores
    "fact_tk": (40_448 + 960, 10),     # U, V 2 x 96 x 32 + P 32 x 48 + C 32^3
    "convpass": (17_792 + 960, 10),    # 8 bypasses x (down 776 + conv 584 + up 864)
    "convpass-attn": (8_896 + 960, 10),
    "convpass-xavier": (17_792 + 960, 10),
    "repadapter": (10_048 + 960, 10),  # 8 adapters x (down 776 + grouped up 480)
    "repadapter-attn": (5_024 + 960, 10),
}
# methods that add no randomly initialised tensor (they train the backbone's own): like full and
# linear in test_methods.test_head_init_depends_on_the_seed_only
NO_RANDOM_INIT: tuple[str, ...] = ("bitfit",)
