"""What distinguishes one merge baseline from another: one row of the family table in
`ops/baselines.py`, read by the kernels in `backend/baselines*.py` (torch-free, so declaring the
operators imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MergeMethod:
    name: str        # the language's function name (PEFT's combination_type)
    base: str        # task_arithmetic | linear | ties | dare_linear | dare_ties | magnitude_prune
    space: str       # "factors" (A and B separately) or "delta" (ΔW, then truncated SVD)
    density: bool = False  # which parameters it takes
    sign: bool = False     # majority_sign_method
    seed: bool = False     # DARE: random pruning, seeded, density > 0 (it rescales by 1/density)
    doc: str = ""

    @property
    def rank(self) -> bool:
        """Takes `rank` (the delta methods end with a truncated SVD)."""
        return self.space == "delta"

    @property
    def random(self) -> bool:
        return self.seed

    @property
    def dense(self) -> bool:
        """Needs ΔW entry by entry (`ties_svd`, `dare_*_svd`, `magnitude_prune_svd`): merged as an m×n
        matrix, truncated by a randomized SVD (SPEC §7.11), `exact=true` for the full one."""
        return self.space == "delta" and self.base != "task_arithmetic"
