"""bilora-bench: a reproducible benchmark harness for Bi-LoRA synthetic image detection."""

__version__ = "0.1.0"
