"""The backend modules that the declarations' kernels call, imported on first use.

Declaring operators must not import torch: the lowering and `dipm check`, `dipm explain`,
`dipm --help` read the declarations and never run a kernel. `importlib.util.LazyLoader` (the
standard library's lazy import) makes each module here a stand-in that imports the real one at its
first attribute access, i.e. when a kernel first runs.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def _lazy(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


L = _lazy("dipm_lang.backend.lowrank")          # factored kernels on LowRank values
D = _lazy("dipm_lang.backend.dense")            # the dense float64 reference
arith = _lazy("dipm_lang.backend.arith")        # + - * / on values of either backend
merges = _lazy("dipm_lang.backend.baselines")   # PEFT's merge baselines, factored
merges_dense = _lazy("dipm_lang.backend.baselines_dense")  # … and their dense reference
