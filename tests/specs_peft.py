"""Test tables of the Hugging Face peft tuners (methods/peft_tuners.py: issue 13's dora, vera, ia3,
loha, lokr, fourierft and issue 31's further tuners), merged into the registry-wide tables of
``test_methods.py``."""
# (method, hparams, trainable parameters without head on a ViT-B/16): literals measured with peft 0.21
# on a randomly initialised timm vit_base_patch16_224 (pretrained=False), each equal to the formula in
# its comment. Every tuner is on the 12 fused qkv Linears (768 -> 2304) unless its comment says
# otherwise; vera, ia3, fourierft and beft differ from their papers' q/v (ia3: k/v; beft: v)
# placement, documented deviations (methods/peft_tuners.py): the papers' counts are in the comments
VIT_B_COUNTS: list[tuple[str, dict, int]] = [
    ("dora", {}, 322_560),       # 12 x (8 x 768 + 2304 x 8 + 2304 magnitudes)
    ("vera", {}, 30_720),        # 12 x (256 d + 2304 b); paper (q, v): 12 x 2 x (256 + 768) = 24,576
    ("ia3", {}, 64_512),         # 12 x (2304 qkv outputs + 3072 fc2 inputs); paper (k, v, ff): 55,296
    ("loha", {}, 589_824),       # 12 x 2 x (2304 x 8 + 8 x 768)
    ("lokr", {}, 21_504),        # 12 x (48 x 24 W1 + 48 x 8 + 8 x 32): 2304 = 48 x 48, 768 = 24 x 32
    ("lokr", {"factor": 4}, 73_920),  # 12 x (4 x 4 W1 + 576 x 8 + 8 x 192): 2304 = 4 x 576, 768 = 4 x 192
    ("fourierft", {}, 12_000),   # 12 x 1000 coefficients; official code (q, v): 2 x 12 x 1000 = 24,000
    # issue 31: LoRA's initialisations and variants (A 8 x 768, B 2304 x 8)
    ("pissa", {}, 294_912),      # 12 x 8 x (768 + 2304)
    ("olora", {}, 294_912),      # 12 x 8 x (768 + 2304)
    ("rslora", {}, 294_912),     # 12 x 8 x (768 + 2304)
    # orthogonal and rotation tuners
    ("oft", {}, 142_848),        # 12 x (768 / 32 blocks) x (32 x 31 / 2 skew-symmetric entries)
    ("boft", {}, 64_512),        # 12 x ((768 / 4) x 4 x 4 blocks + 2304 output scales)
    ("hra", {}, 73_728),         # 12 x 768 x 8 reflection vectors
    ("road", {}, 27_648),        # 12 x 2304: road_1, one angle and one scale per pair of outputs (2 x 1152)
    ("road", {"variant": "road_4"}, 110_592),  # 12 x 4 x 2304
    ("psoft", {}, 6_720),        # 12 x (32 x 31 / 2 packed rotation + 32 + 32 scaling vectors)
    # low-rank relatives
    ("glora", {}, 663_672),      # 12 x (2 x (2304 x 8 + 8 x 768) A, B + 768 x 8 + 8 x 1 C + 1 D + 1 E)
    ("delora", {}, 294_924),     # 12 x (8 x 768 + 2304 x 8 + 1 lambda)
    ("randlora", {}, 230_400),   # 12 x (32 x 24 lambda + 24 x 768 gamma): 768 / 32 = 24 bases
    ("vblora", {}, 212_992),     # 256 x 256 bank + 12 x (4 x 3 x 256 + 9 x 4 x 256 logits): 768 = 3 x 256, 2304 = 9 x 256
    ("hira", {}, 1_179_648),     # 12 x 32 x (768 + 2304)
    ("gralora", {}, 1_179_648),  # 12 x 32 x (768 + 2304): as LoRA of rank 32, in 2 x 2 blocks
    ("deft", {}, 294_912),       # 12 x 8 x (2304 P + 768 R)
    ("peanut", {}, 1_769_472),   # 12 x 2 x 32 x 2304 (A over the weight's 2304 outputs and B back)
    ("lily", {}, 443_136),       # 12 x (32 x 768 A + 2 x 32 router) + 2 x 32 x 2304 B's shared by the 12 layers
    # sparse and spectral tuners
    ("shira", {}, 589_824),      # 12 x 16 x (768 + 2304) trained entries
    ("waveft", {}, 31_104),      # 12 x 2592 wavelet coefficients
    ("c3a", {}, 82_944),         # 12 x (768 x 2304 / 256): (3 x 9 blocks) x 256
    ("supertuning", {}, 212_328),  # 12 x floor(0.01 x 768 x 2304) = 12 x 17,694 entries
    # vectors
    ("beft", {}, 27_648),        # 12 x 2304 bias entries; peft's BeftModel (v only): 12 x 768 = 9,216
    ("pvera", {}, 33_792),       # 12 x (2 x 256 d (mean, log-variance) + 2304 b)
    ("unilora", {}, 256),        # one theta_d of 256 shared by the 12 layers
    ("tinylora", {}, 768),       # 12 x 64
    # structure-preserving subspaces
    ("miss", {}, 884_736),       # 12 x 32 x 2304 shard
    ("osf", {}, 14_160_384),     # 12 x (2304 x 384 + 384 + 384 x 768): half of rank 768 trained
    # LayerNorms, not Linears: norm1 and norm2 of 12 blocks and the final norm
    ("ln_tuning", {}, 38_400),   # 25 x 2 x 768
    # AdaLoRA on every block Linear (qkv 768 -> 2304, proj 768 -> 768, fc1 768 -> 3072, fc2 3072 -> 768): the
    # tensors it trains, at init_r = 12 (A 12 x in, E 12 x 1, B out x 12), fixed for the whole fit; the budget
    # masks singular values (E entries) down to target_r = 8 per matrix on average without removing any tensor:
    # 12 x (12 x (3072 + 1536 + 3840 + 3840) + 4 x 12) = 12 x 147,504; at the final budget, 8 of 12 triplets kept
    # on average, the non-zero update has about 2/3 of that (1,180,032 if every matrix kept 8)
    ("adalora", {}, 1_770_048),
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
    "pissa": _QKV + r"lora_[AB]\.default\.weight",
    "olora": _QKV + r"lora_[AB]\.default\.weight",
    "rslora": _QKV + r"lora_[AB]\.default\.weight",
    "oft": _QKV + r"oft_R\.default\.weight",
    "boft": _QKV + r"boft_[Rs]\.default",
    "hra": _QKV + r"hra_u\.default",
    "road": _QKV + r"road_(theta|alpha)\.default",
    "psoft": _QKV + r"psoft_R\.default\.(weight|vector_a|vector_b)",
    "glora": _QKV + r"glora_([ABC]\.default\.X[du]|[DE]\.default\.X)",
    "delora": _QKV + r"delora_(A|B|lambda)\.default",
    "randlora": _QKV + r"randlora_(lambda|gamma)\.default",
    "vblora": _QKV + r"vblora_(logits_A|logits_B|vector_bank)\.default",
    "hira": _QKV + r"hira_[AB]\.default",
    "gralora": _QKV + r"gralora_[AB]\.default",
    "deft": _QKV + r"deft_[PR]\.default",
    "peanut": _QKV + r"peanut_[AB]\.default\.weight",
    "lily": _QKV + r"lily_(A|B|router)\.default\.weight",
    "shira": _QKV + r"shira_weight\.default",
    "waveft": _QKV + r"waveft_spectrum\.default",
    "c3a": _QKV + r"c3a_kernel\.default",
    "supertuning": _QKV + r"supertuning_values\.default",
    "beft": _QKV + r"beft_bias\.default",
    "pvera": _QKV + r"pvera_lambda_[bd]\.default",
    "unilora": _QKV + r"unilora_theta_d\.default",
    "tinylora": _QKV + r"tinylora_v\.default\.\d+",
    "miss": _QKV + r"miss_block\.default",
    "osf": _QKV + r"osf_svd_params\.default\.(U_low|S_low|V_low)",
    "ln_tuning": r"(blocks\.\d+\.norm[12]|norm)\.ln_tuning_layers\.default\.(weight|bias)",
    "adalora": r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.lora_[AEB]\.default",
}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = [("lokr", {"factor": 4}), ("road", {"variant": "road_4"})]
# (decayed, not decayed) trainable parameters with a 10-class head (960 + 10) on the demo
# architecture (width 96, depth 4; qkv 96 -> 288, fc2 input 384), keyed like test_methods.DECAY_SPLIT:
# timm's rule for every peft tuner (tensors stored as matrices decayed, vectors not; vectors that peft
# stores as (n, 1) / (1, n) matrices not either: IA3's scales, BOFT's output scales, BEFT's biases,
# RandLoRA's stacked diagonals); the head's weight is decayed, its bias not
DECAY_SPLIT: dict[str, tuple[int, int]] = {
    "dora": (12_288 + 960, 1_152 + 10),  # A 8 x 96 + B 288 x 8 per block; magnitudes 288 per block
    "vera": (960, 2_176 + 10),           # lambda d 256 + lambda b 288 per block
    "ia3": (960, 2_688 + 10),            # 288 qkv + 384 fc2 scales per block
    "loha": (24_576 + 960, 10),          # 2 x (288 x 8 + 8 x 96) per block
    "lokr": (1_472 + 960, 10),           # 288 = 16 x 18, 96 = 8 x 12: W1 16 x 8 + 18 x 8 + 8 x 12
    "lokr-4": (3_136 + 960, 10),         # 288 = 4 x 72, 96 = 4 x 24: W1 4 x 4 + 72 x 8 + 8 x 24
    "fourierft": (960, 4_000 + 10),      # 1000 coefficients per block
    "pissa": (12_288 + 960, 10),         # 4 x (8 x 96 + 288 x 8)
    "olora": (12_288 + 960, 10),
    "rslora": (12_288 + 960, 10),
    "oft": (5_952 + 960, 10),            # 4 x 3 blocks x 496: the packed blocks are stored as a matrix
    "boft": (1_536 + 960, 1_152 + 10),   # R 4 x 24 blocks x 4 x 4; output scales 4 x 288, stored (288, 1)
    "hra": (3_072 + 960, 10),            # 4 x 96 x 8
    "road": (960, 1_152 + 10),           # 4 x (144 angles + 144 scales), vectors
    "road-road_4": (960, 4_608 + 10),    # 4 x 4 x 288
    "psoft": (960, 2_240 + 10),          # 4 x (496 + 32 + 32): all stored as vectors, the rotation too
    "glora": (27_680 + 960, 8 + 10),     # 4 x (2 x (288 x 8 + 8 x 96) + 96 x 8 + 8); D, E scalars
    "delora": (12_288 + 960, 4 + 10),    # 4 x (8 x 96 + 288 x 8); lambda scalars
    "randlora": (960, 1_536 + 10),       # 4 x (32 x 3 + 3 x 96): 96 / 32 = 3 bases; stacked diagonals
    "vblora": (57_344 + 960, 10),        # 256 x 32 bank (vector length 32: the largest divisor of 256
                                         # dividing 96 and 288) + 4 x (4 x 3 x 256 + 9 x 4 x 256)
    "hira": (49_152 + 960, 10),          # 4 x 32 x (96 + 288)
    "gralora": (49_152 + 960, 10),       # 4 x 32 x (96 + 288)
    "deft": (12_288 + 960, 10),          # 4 x 8 x (288 + 96)
    "peanut": (73_728 + 960, 10),        # 4 x 2 x 32 x 288
    "lily": (30_976 + 960, 10),          # 4 x (32 x 96 + 2 x 32) + 2 x 32 x 288
    "shira": (960, 24_576 + 10),         # 4 x 16 x (96 + 288) entries, a vector
    "waveft": (960, 10_368 + 10),        # 4 x 2592
    "c3a": (3_456 + 960, 10),            # 4 x (96 x 288 / 32): block size 32, the largest divisor of 256 dividing 96
    "supertuning": (960, 1_104 + 10),    # 4 x floor(0.01 x 96 x 288)
    "beft": (960, 1_152 + 10),           # 4 x 288, stored (1, 288)
    "pvera": (960, 3_200 + 10),          # 4 x (2 x 256 + 288)
    "unilora": (960, 256 + 10),
    "tinylora": (960, 256 + 10),         # 4 x 64
    "miss": (36_864 + 960, 10),          # 4 x 32 x 288
    "osf": (73_728 + 960, 192 + 10),     # 4 x (288 x 48 + 48 x 96) U, V; 4 x 48 S
    "ln_tuning": (960, 1_728 + 10),      # 9 norms x 2 x 96
    "adalora": (73_728 + 960, 192 + 10),  # A, B: 4 x 12 x ((96 + 288) + (96 + 96) + 2 x (96 + 384)); E, stored
                                          # (12, 1): 4 x 4 x 12, not decayed
}
# methods whose trainable tensors start from constants (or from the weights alone), whatever the seed
# (like full and linear in test_methods.test_head_init_depends_on_the_seed_only): IA3's scales are
# ones; VeRA's and PVeRA's vectors are d_initial and zeros, RandLoRA's lambda zeros and gamma a
# constant, SHiRA's, WaveFT's, TinyLoRA's and Super-Tuning's values zeros (their randomness is in frozen
# buffers: projections, bases, locations; seeded tests in test_peft_tuners.py check those); OFT's,
# BOFT's, PSOFT's rotations the identity (and BOFT's, PSOFT's scales ones), RoAd's angles and scales
# zero and one, MiSS's and BEFT's tensors zeros; PiSSA's, OLoRA's and OSF's factors come from
# the SVD / QR of the (pretrained) weights; LN tuning copies the norms
NO_RANDOM_INIT: tuple[str, ...] = ("ia3", "vera", "pvera", "randlora", "shira", "waveft", "tinylora", "supertuning",
                                   "oft", "boft", "psoft", "road", "miss", "beft", "pissa", "olora", "osf",
                                   "ln_tuning")
