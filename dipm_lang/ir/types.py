"""The value types of SPEC §2.

`Delta` (an update), `Dir[by]` (a normalised update), `Mag[by]` (norms per unit),
`Factor[A|B]` (one LoRA factor, `x.A` / `x.B`), `Num`, `Str`, `List[T]`, and `Unit`
(the result of `save`). A `Dir` may stand wherever a `Delta` is expected.
"""

from __future__ import annotations

from dataclasses import dataclass

BY_VALUES = ("out", "in", "matrix")


@dataclass(frozen=True)
class Type:
    kind: str  # Delta | Dir | Mag | Factor | Num | Str | List | Unit
    by: str | None = None  # Dir, Mag: the granularity; Factor: "A" or "B"; Num: "module" for a schedule
    item: "Type | None" = None  # List: element type (None for the empty list)

    def __str__(self) -> str:
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
        """Delta or Dir: something with a per-module m×n update."""
        return self.kind in ("Delta", "Dir")


DELTA = Type("Delta")
NUM = Type("Num")
SCHEDULE = Type("Num", "module")  # a number that varies by layer and module (SPEC §7.2)
STR = Type("Str")
UNIT = Type("Unit")


def dir_t(by: str) -> Type:
    return Type("Dir", by)


def mag_t(by: str) -> Type:
    return Type("Mag", by)


def factor_t(which: str) -> Type:
    return Type("Factor", which)


def list_t(item: Type | None) -> Type:
    return Type("List", None, item)
