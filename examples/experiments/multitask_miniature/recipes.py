"""The merges compared, each one dipm expression of S1, S2, S3 with a free scale `lam`.

Every method is the merged update times λ — the scaling coefficient merging papers tune on
validation data (task arithmetic's λ, TIES' λ, TSV's α, Iso-C's α); for DiPM `multitask` it scales
the mean magnitudes. Each expression is compiled once by the detox miniature's `Evaluator`
(`dipm_lang.compile`, `program(lam=…)`) and added with `dipm_lang.add_to_peft_model`. Held fixed:
`density` of `ties` / `ties_svd` / `knots` (DENSITY, TIES' default top-20 %), `tsv`'s k (its
default ⌊r/n⌋ = 2 of rank 8), `ties_svd`'s rank (24 = the inputs' ranks together), equal weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .skills import SKILLS

DENSITY = 0.2


@dataclass(frozen=True)
class Method:
    name: str         # key in rows.json
    label: str        # legend / table label
    expression: str   # the dipm expression; `lam` is a free number in it
    param: str = "lam"
    family: str = "merge"

    def written(self, param: str) -> str:
        """The expression with the parameter written as `param` (a number, or a symbol for tables)."""
        return re.sub(rf"\b{self.param}\b", param, self.expression)

    def expr(self, value: float) -> str:
        return self.written(repr(float(value)))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name in SKILLS if re.search(rf"\b{name}\b", self.expression))


XS = "[S1, S2, S3]"
METHODS = (
    Method("dipm_multitask", "DiPM multitask", f"lam * multitask({XS})"),
    Method("task_arithmetic", "task arithmetic", "lam * (S1 + S2 + S3)"),
    Method("ties", "TIES (PEFT, on factors)", f"lam * ties({XS}, density={DENSITY})"),
    Method("ties_svd", "TIES on updates", f"lam * ties_svd({XS}, density={DENSITY}, rank=24)"),
    Method("knots", "KnOTS-TIES", f"lam * knots({XS}, density={DENSITY})"),
    Method("tsv", "TSV-M", f"lam * tsv({XS})"),
    Method("iso", "Iso-C", f"lam * iso({XS})"),
)
