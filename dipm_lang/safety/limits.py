"""Bounds on what a hostile input can make dipm parse (one home, so every reader enforces the same)."""

MAX_CONFIG_BYTES = 4 * 2**20
"""Largest JSON/YAML/TOML config read: adapter configs are a few KB (a few hundred KB with a large
`rank_pattern`), recipes a few hundred bytes."""

MAX_SOURCE_BYTES = 2**20
"""Largest amount of dipm source text one program reads: the script and every file it imports,
together (a script is a few KB; this bounds how much parsing a small script can cause)."""
