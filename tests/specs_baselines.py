"""Test tables of the reviewer baselines (issue 13: bitfit, fact_tt, fact_tk, convpass, repadapter),
merged into the registry-wide tables of ``test_methods.py``."""
# (method, hparams, trainable parameters without head on a ViT-B/16), literals from the official code
VIT_B_COUNTS: list[tuple[str, dict, int]] = []
# method -> regex of the names of its trainable tensors besides the head, on the demo ViT
TRAINABLE: dict[str, str] = {}
# (method, hparams) of modes besides the defaults, tested like the defaults
EXTRA_CONFIGS: list[tuple[str, dict]] = []
