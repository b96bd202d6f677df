"""The dtypes `--dtype` / `--out-dtype` accept, by name (torch-free: the CLI parses them before importing torch)."""

DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
