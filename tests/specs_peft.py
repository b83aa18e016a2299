"""Test tables of the Hugging Face peft tuners (issue 13: dora, vera, ia3, loha, lokr, fourierft),
merged into the registry-wide tables of ``test_methods.py``."""
# (method, hparams, trainable parameters without head on a ViT-B/16), literals from the official code
VIT_B_COUNTS: list[tuple[str, dict, int]] = []
# method -> regex of the names of its trainable tensors besides the head, on the demo ViT
TRAINABLE: dict[str, str] = {}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = []
