"""Serving targets of `save(…, target=…)` and `--target`: what must hold before any tensor is read.

A target names the program that will load the output. `"peft"` (the default) is PEFT itself; `"vllm"`
is vLLM's LoRA loader, whose rules `io/vllm.py` checks and enforces on the written folder. Only the
facts needed to check a recipe at compile time live here (torch-free: `dipm check` reads them).

vLLM facts, read from vllm-project/vllm (`vllm/config/lora.py` at a78dc92f43ae2471dd40675a47079aa1a9a157c1,
`MaxLoRARanks`): the server's `--max-lora-rank` is one of `SUPPORTED_MAX_LORA_RANKS`, 16 unless set.
"""

from __future__ import annotations

from typing import Any

TARGETS = ("peft", "vllm")

SUPPORTED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's `max_lora_rank` accepts (`MaxLoRARanks` in vllm/config/lora.py)."""

DEFAULT_MAX_LORA_RANK = 16
"""vLLM's `max_lora_rank` when the server is not told otherwise."""


def vllm_max_rank_problem(max_rank: Any) -> str | None:
    """Why `max_rank` cannot be a vLLM server's `max_lora_rank` (None when it can).

    With `target="vllm"`, `max_rank` is the rank the server is started with: every module is cut to
    it by energy, and the output is written at one rank no larger, so it must be a value vLLM allows.
    """
    if max_rank is None:
        return None
    if not isinstance(max_rank, int) or isinstance(max_rank, bool):
        return ("with target=\"vllm\", max_rank must be one number (vLLM serves every module at one "
                f"max_lora_rank), got {max_rank!r}")
    if max_rank not in SUPPORTED_MAX_LORA_RANKS:
        allowed = ", ".join(map(str, SUPPORTED_MAX_LORA_RANKS))
        return f"vLLM's --max-lora-rank accepts only {allowed}; max_rank={max_rank} is not one of them"
    return None


def smallest_served_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` that serves an adapter of rank `rank` (None: none does)."""
    return next((r for r in SUPPORTED_MAX_LORA_RANKS if r >= rank), None)
