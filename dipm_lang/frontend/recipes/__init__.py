"""Recipes as YAML or TOML configs: `dipm run recipe.yaml` / `dipm run recipe.toml`.

    inputs:                       # NAME: adapter folder
      H: adapters/helpful
      T: adapters/toxic
    outputs:                      # folder: expression, or {expr: …, rank: N}
      out/detox: recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H))
      out/avg:
        expr: 0.5 * H + 0.5 * T
        rank: 16
    import: [mylib.dipm]          # optional: dipm files whose defs are in scope
    defs: |                       # optional: dipm definitions (and bindings) inline
      def half(x) = 0.5 * x

Relative paths (inputs, outputs, imports) resolve against the config file's folder; `--set
NAME=PATH` overrides an input (relative to the working directory). Every output expression is
parsed with the grammar's `expression` start symbol and all of them are lowered into ONE
program, so common subexpressions are computed once across outputs.

Errors in an embedded expression point into the config file itself: each expression's
characters are mapped back to their offsets in the file (YAML node marks; for TOML, the key's
line found in the raw text), and every span of the parsed expression is moved there.

The package's three jobs, one module each: `schema` (read the file, check its structure),
`positions` (where each key and value sits in the file, for positioned errors), `lower` (the
recipe's expressions into one program).
"""

from __future__ import annotations

from dipm_lang.errors import ConfigError
from dipm_lang.frontend.recipes.lower import lower_recipe
from dipm_lang.frontend.recipes.schema import CONFIG_SUFFIXES, Recipe, is_config, read_recipe

__all__ = ["CONFIG_SUFFIXES", "ConfigError", "Recipe", "is_config", "lower_recipe", "read_recipe"]
