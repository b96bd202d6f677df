"""dipm_lang: a small language and compiler for composing LoRA adapters (DiPM)."""

__version__ = "0.1.0"
