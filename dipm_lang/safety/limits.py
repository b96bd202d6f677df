"""Bounds on what a hostile input can make dipm parse (one home, so every reader enforces the same)."""

MAX_CONFIG_BYTES = 4 * 2**20
"""Largest JSON/YAML/TOML config read: adapter configs are a few KB (a few hundred KB with a large
`rank_pattern`), recipes a few hundred bytes."""
