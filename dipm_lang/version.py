"""The package version (its own module: provenance, the CLI and the API read it without importing the API)."""

__version__ = "0.1.0"
