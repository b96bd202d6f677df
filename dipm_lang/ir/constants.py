"""The numeric thresholds SPEC §3 fixes (torch-free: the CLI reads them before importing torch)."""

EPS = 1e-12
"""Default zero-unit threshold: a unit with norm ≤ eps is a zero unit (settable with `--eps`)."""

SIN_EPS = 1e-6
"""`shift` takes the normalised linear path where sin θ is below this."""

BOOLEANS = {"true": 1.0, "false": 0.0, "True": 1.0, "False": 0.0}
"""Names the language gives 1 and 0, for switches such as `exact=true` (a binding of the same name wins)."""
