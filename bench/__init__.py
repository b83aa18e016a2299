"""peft-bench: fair, reproducible comparison of PEFT methods for Vision Transformers."""

__version__ = "0.1.0"
