"""Test tables of the Hugging Face peft tuners (issue 13: dora, vera, ia3, loha, lokr, fourierft),
merged into the registry-wide tables of ``test_methods.py``."""
# (method, hparams, trainable parameters without head on a ViT-B/16), literals from the official code
# (peft 0.21 on a randomly initialised timm vit_base_patch16_224, all on the 12 fused qkv Linears;
# ia3 also on the 12 fc2). vera, ia3 and fourierft differ from their papers' q/v (ia3: k/v) placement,
# documented deviations (methods/peft_tuners.py): the papers' counts are in the comments
VIT_B_COUNTS: list[tuple[str, dict, int]] = [
    ("dora", {}, 322_560),       # 12 x (8 x 768 + 2304 x 8 + 2304 magnitudes)
    ("vera", {}, 30_720),        # 12 x (256 d + 2304 b); paper (q, v): 12 x 2 x (256 + 768) = 24,576
    ("ia3", {}, 64_512),         # 12 x (2304 qkv outputs + 3072 fc2 inputs); paper (k, v, ff): 55,296
    ("loha", {}, 589_824),       # 12 x 2 x (2304 x 8 + 8 x 768)
    ("lokr", {}, 21_504),        # 12 x (48 x 24 W1 + 48 x 8 + 8 x 32): 2304 = 48 x 48, 768 = 24 x 32
    ("lokr", {"factor": 4}, 73_920),  # 12 x (4 x 4 W1 + 576 x 8 + 8 x 192): 2304 = 4 x 576, 768 = 4 x 192
    ("fourierft", {}, 12_000),   # 12 x 1000 coefficients; official code (q, v): 2 x 12 x 1000 = 24,000
]
# method -> regex of the names of its trainable tensors besides the head, on the demo ViT
_QKV = r"blocks\.\d+\.attn\.qkv\."
TRAINABLE: dict[str, str] = {
    "dora": _QKV + r"(lora_A|lora_B|lora_magnitude_vector)\.default\.weight",
    "vera": _QKV + r"vera_lambda_[bd]\.default",
    "ia3": r"blocks\.\d+\.(attn\.qkv|mlp\.fc2)\.ia3_l\.default",
    "loha": _QKV + r"hada_w[12]_[ab]\.default",
    "lokr": _QKV + r"lokr_(w1|w1_a|w1_b|w2|w2_a|w2_b)\.default",
    "fourierft": _QKV + r"fourierft_spectrum\.default",
}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = [("lokr", {"factor": 4})]
# (decayed, not decayed) trainable parameters with a 10-class head (960 + 10) on the demo
# architecture (width 96, depth 4; qkv 288 x 96, fc2 input 384), keyed like test_methods.DECAY_SPLIT:
# timm's rule for every peft tuner (matrices decayed, vectors not; IA3's scales, stored as
# (n, 1) / (1, n) matrices, are vectors); the head's weight is decayed, its bias not
DECAY_SPLIT: dict[str, tuple[int, int]] = {
    "dora": (12_288 + 960, 1_152 + 10),  # A 8 x 96 + B 288 x 8 per block; magnitudes 288 per block
    "vera": (960, 2_176 + 10),           # lambda d 256 + lambda b 288 per block
    "ia3": (960, 2_688 + 10),            # 288 qkv + 384 fc2 scales per block
    "loha": (24_576 + 960, 10),          # 2 x (288 x 8 + 8 x 96) per block
    "lokr": (1_472 + 960, 10),           # 288 = 16 x 18, 96 = 8 x 12: W1 16 x 8 + 18 x 8 + 8 x 12
    "lokr-4": (3_136 + 960, 10),         # 288 = 4 x 72, 96 = 4 x 24: W1 4 x 4 + 72 x 8 + 8 x 24
    "fourierft": (960, 4_000 + 10),      # 1000 coefficients per block
}
# methods whose trainable tensors start from constants, whatever the seed (like full and linear in
# test_methods.test_head_init_depends_on_the_seed_only): IA3's scales are ones; VeRA's vectors are
# d_initial and zeros, its randomness is in the frozen shared projections (a seeded test in
# test_peft_tuners.py checks those)
NO_RANDOM_INIT: tuple[str, ...] = ("ia3", "vera")
