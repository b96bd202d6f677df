"""The value types of SPEC §2 and §7.8.

`Delta` (an update), `Dir[by]` (a normalised update), `Mag[by]` (norms per unit),
`Factor[A|B]` (one LoRA factor, `x.A` / `x.B`), `Num`, `Str`, `List[T]`, and `Unit`
(the result of `save`). A `Dir` may stand wherever a `Delta` is expected.

With base weights (SPEC §7.8), `Weight` is a full weight matrix per module (`base("DIR") + x`), and
the direction of a weight is `Dir[by, weight]`: the same kind of value as a `Dir[by]` (unit rows),
but of the weight, so that recombining it gives a weight again. Saving a weight-level value writes
`W − W0`. Weights and updates do not mix in one direction operator (which would the result be?).

Factors decouple like updates (SPEC §7.3): `dir(x.B)` is a `Dir[out] of Factor[B]` — its units are
the rows of the factor, not of ΔW — and `mag(x.B, by="in")` a `Mag[in] of Factor[B]` (one norm per
rank component). The `of` field says whose units a Dir or Mag holds, so the typing rules keep the
spaces apart (a direction of B never meets a magnitude of ΔW or of A), and a Dir of a factor stands
wherever that factor does, as a Dir of an update stands for a Delta.
"""

from __future__ import annotations

from dataclasses import dataclass

BY_VALUES = ("out", "in", "matrix")


@dataclass(frozen=True)
class Type:
    kind: str  # Delta | Dir | Mag | Factor | Num | Str | List | Unit | Weight
    by: str | None = None  # Dir, Mag: the granularity; Factor: "A" or "B"; Num: "module" for a schedule
    item: "Type | None" = None  # List: element type (None for the empty list)
    of: str | None = None  # Dir, Mag: "A" or "B" for the units of a factor (SPEC §7.3); None: of an update
    space: str | None = None  # Dir: "weight" for the direction of a full weight (SPEC §7.8)

    def __str__(self) -> str:
        if self.of is not None:
            return f"{self.kind}[{self.by}] of Factor[{self.of}]"
        if self.kind == "Dir" and self.space:
            return f"Dir[{self.by}, {self.space}]"
        if self.kind in ("Dir", "Mag", "Factor") or (self.kind == "Num" and self.by):
            return f"{self.kind}[{self.by}]"
        if self.kind == "List":
            return f"List[{self.item}]" if self.item else "List"
        return self.kind

    @property
    def is_number(self) -> bool:
        """Num: one number, or a schedule (a number that varies by module, SPEC §7.2)."""
        return self.kind == "Num"

    @property
    def is_update(self) -> bool:
        """Delta or Dir (of an update): something with a per-module m×n update (not a direction of a
        factor, nor of a weight)."""
        return self.kind == "Delta" or (self.kind == "Dir" and self.of is None and self.space is None)

    @property
    def factor(self) -> str | None:
        """"A" or "B" for a factor and for a Dir or Mag of one (the factor whose units they hold)."""
        return self.by if self.kind == "Factor" else self.of

    @property
    def is_factor(self) -> bool:
        """A factor, or a direction of one (which stands wherever that factor does)."""
        return self.kind == "Factor" or (self.kind == "Dir" and self.of is not None)

    @property
    def rank_axis(self) -> int | None:
        """The axis of a per-module value that runs over the LoRA rank: B's columns, A's rows, the
        magnitudes of B's columns and of A's rows; None where the size is the module's m or n."""
        side = self.factor
        if side is None or self.kind not in ("Factor", "Dir", "Mag"):
            return None
        if self.kind == "Mag":
            return -1 if (side, self.by) in (("B", "in"), ("A", "out")) else None
        return -1 if side == "B" else -2

    @property
    def is_weight(self) -> bool:
        """Weight or Dir[by, weight]: a full weight matrix per module (saved as W − W0)."""
        return self.kind == "Weight" or (self.kind == "Dir" and self.space == WEIGHT_SPACE)

    @property
    def is_matrix(self) -> bool:
        """An m×n matrix per module: an update or a weight-level value."""
        return self.is_update or self.is_weight


WEIGHT_SPACE = "weight"

DELTA = Type("Delta")
WEIGHT = Type("Weight")  # W0 + x per module (SPEC §7.8)
NUM = Type("Num")
SCHEDULE = Type("Num", "module")  # a number that varies by layer and module (SPEC §7.2)
STR = Type("Str")
UNIT = Type("Unit")


def dir_t(by: str, of: str | None = None, space: str | None = None) -> Type:
    """`Dir[by]`; `of`: of a factor ("A"/"B", SPEC §7.3); `space="weight"`: of a full weight (SPEC §7.8)."""
    return Type("Dir", by, of=of, space=space)


def mag_t(by: str, of: str | None = None) -> Type:
    return Type("Mag", by, of=of)


def factor_t(which: str) -> Type:
    return Type("Factor", which)


def list_t(item: Type | None) -> Type:
    return Type("List", None, item)
