"""The backend modules that the declarations' kernels call, imported on first use.

Declaring operators must not import torch: the lowering and `dipm check`, `dipm explain`,
`dipm --help` read the declarations and never run a kernel. Each name here is a stand-in that
imports the real module at its first attribute access, i.e. when a kernel first runs.

The stand-ins are not put in `sys.modules` (as `importlib.util.LazyLoader` does): code that walks
`sys.modules` touching attributes — `inspect.getmodule`, `inspect.stack()`, which torch's own import
calls — would then load one of them in the middle of another's import (`arith` while `lowrank` is
still importing torch) and fail with an ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Lazy:
    """A module, imported by `importlib.import_module` when one of its attributes is first read."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:  # only called for names the stand-in itself lacks
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


def _lazy(name: str) -> Any:
    return _Lazy(name)


L = _lazy("dipm_lang.backend.lowrank")          # factored kernels on LowRank values
F = _lazy("dipm_lang.backend.forms")            # … and on DoRA-form values diag(c)·W0 + K (SPEC §7.8)
D = _lazy("dipm_lang.backend.dense")            # the dense float64 reference
R = _lazy("dipm_lang.backend.ranks")            # rank by energy (SPEC §7.6)
arith = _lazy("dipm_lang.backend.arith")        # + - * / on values of either backend
merges = _lazy("dipm_lang.backend.baselines")   # PEFT's merge baselines, factored
merges_dense = _lazy("dipm_lang.backend.baselines_dense")  # … and their dense reference
FX = _lazy("dipm_lang.backend.factor_units")    # factors handed to the update kernels (SPEC §7.3)
svd_merges = _lazy("dipm_lang.backend.svd_merges")              # Iso-C, KnOTS, TSV, align, factored
svd_merges_dense = _lazy("dipm_lang.backend.svd_merges_dense")  # … and their dense reference
