"""Vernacular: LoRA adapters that fit open ASR models to an accent or a domain."""

__version__ = "0.1.0"
