"""An example peft-bench plugin: ``mlp_scale`` (``mlp_scale.method``), registered through the entry
point of group ``peft_bench.methods`` in this distribution's pyproject.toml."""
