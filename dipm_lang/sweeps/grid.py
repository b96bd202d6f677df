"""`--grid NAME=…` items: parsing (SPEC §7.7), checking, and the points they span.

Three forms:

- `NAME=V1,V2,…` — the values as written;
- `NAME=START:STOP:STEP` — `START + i·STEP` for every `i ≥ 0` with the value `≤ STOP`, computed in
  **decimal** from the literals (so `0:1:0.1` gives exactly 0.0, 0.1, …, 1.0 and its 0.3 is
  `float("0.3")`, not the binary `3 * 0.1 = 0.30000000000000004`); each value then becomes a float;
- `NAME=LOW:HIGH` — a continuous range, meaningful only to `--search` (a grid cannot enumerate it).

Every mistake is a `GridError` (a usage error, exit 2) that quotes the item and puts a caret under
the wrong characters, because a sweep typed on a command line is easy to get subtly wrong and
expensive to run wrongly.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext

from dipm_lang.errors import UsageError
from dipm_lang.sweeps.points import Point

MAX_POINTS = 1000
"""Default cap on the points of one grid (`--max-points` overrides it): every point is a whole
adapter folder on disk and an evaluation, so a typo such as `0:1:0.0001` should stop, not run."""

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # dipm's NAME token (grammar/dipm.lark)
SHOWN = 120  # characters of an item shown under an error; longer items are windowed


class GridError(UsageError):
    """A wrong `--grid` item: the message, then the item with a caret under the culprit."""

    def __init__(self, message: str, item: str | None = None, ordinal: int = 0, start: int = 0, end: int = 0,
                 *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.item, self.ordinal, self.start, self.end = item, ordinal, start, end

    def __str__(self) -> str:
        if self.item is None:
            return f"error: {self.message}"
        which = f" (--grid #{self.ordinal})" if self.ordinal else ""
        text, start, end = _window(self.item, self.start, max(self.end, self.start + 1))
        prefix = "    --grid "
        return (f"error: in --grid {_clip(self.item)}{which}: {self.message}\n"
                f"{prefix}{text}\n{' ' * (len(prefix) + start)}^{'~' * (end - start - 1)}")


@dataclass(frozen=True)
class Axis:
    """One swept parameter: discrete `values`, or a continuous `[low, high]` (search only)."""

    name: str
    values: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    text: str = ""  # the --grid item as given, for messages and the manifest

    @property
    def continuous(self) -> bool:
        return self.low is not None

    def describe(self) -> dict:
        """A JSON-able description (recorded in the sweep manifest to recognise a search space)."""
        if self.continuous:
            return {"name": self.name, "low": self.low, "high": self.high}
        return {"name": self.name, "values": list(self.values)}


def parse_grid(items: Sequence[str], *, parameters: Collection[str] | None = None, search: bool = False,
               max_points: int = MAX_POINTS) -> list[Axis]:
    """Parse and check every `--grid` item, in order.

    `parameters` are the recipe's number parameters (None: not checked); an unknown name is an
    error suggesting the nearest ones. Continuous ranges are allowed only with `search`. Without
    `search`, the grid's point count (the product of the axes' sizes) must be at most
    `max_points`; it is computed before any range is materialised.
    """
    if not items:
        raise GridError("dipm sweep needs at least one --grid NAME=VALUES (e.g. --grid t=0:1:0.1)")
    numbered = len(items) > 1
    known = list(parameters) if parameters is not None else None
    specs: list[tuple[str, str, str, list[_Part], int]] = []
    seen: dict[str, int] = {}
    for ordinal, item in enumerate(items, 1):
        label = ordinal if numbered else 0
        name, kind, parts = _split(item, label)
        if known is not None and name not in known:
            raise GridError(f"the recipe has no number parameter {name!r}{_suggest(name, known)}", item, label, 0,
                            len(name), hint=_known_list(known))
        if name in seen:
            raise GridError(f"{name} is already swept by --grid #{seen[name]}", item, label, 0, len(name))
        seen[name] = ordinal
        specs.append((name, item, kind, parts, label))

    sizes, checked = [], []
    for name, item, kind, parts, label in specs:
        size, make = _axis_plan(name, item, kind, parts, label, search)
        sizes.append(size)
        checked.append(make)
    if not search:
        total = math.prod(sizes)
        if total > max_points:
            shape = " × ".join(f"{spec[0]}: {size} value{'s' if size != 1 else ''}"
                               for spec, size in zip(specs, sizes))
            raise GridError(f"the grid has {total} points ({shape}), more than the limit of {max_points}",
                            hint="use coarser steps, fewer values, or raise the limit with --max-points N")
    return [make() for make in checked]


def expand(axes: Sequence[Axis]) -> list[Point]:
    """The cartesian product of the axes in order, the last axis varying fastest (SPEC §7.7)."""
    for axis in axes:
        if axis.continuous:
            raise GridError(f"{axis.name}={axis.text.partition('=')[2]} is a continuous range; "
                            "only --search can sample it")
    names = [axis.name for axis in axes]
    return [Point(tuple(zip(names, combo)), index)
            for index, combo in enumerate(itertools.product(*(axis.values for axis in axes)))]


def count_points(axes: Sequence[Axis]) -> int:
    return math.prod(len(axis.values) for axis in axes)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Part:
    text: str   # stripped
    start: int  # column (0-based) in the item
    end: int


def _split(item: str, label: int) -> tuple[str, str, list[_Part]]:
    """NAME, "list" or "range", and the value parts; checks the shape, not the numbers."""
    name, sep, values = item.partition("=")
    if not sep:
        raise GridError("expected NAME=VALUES, e.g. t=0,0.5,1 or t=0:1:0.1", item, label, 0, len(item))
    stripped = name.strip()
    lead = len(name) - len(name.lstrip())
    if not NAME.match(stripped):
        what = "a parameter name is missing before '='" if not stripped else f"{stripped!r} is not a parameter name"
        raise GridError(what, item, label, lead, lead + max(len(stripped), 1))
    if stripped != name:
        raise GridError("no spaces around the parameter name", item, label, 0, len(name))
    at = len(name) + 1
    if not values.strip():
        raise GridError("no values after '='", item, label, at - 1, at)
    comma, colon = values.find(","), values.find(":")
    if comma >= 0 and colon >= 0:
        first = at + min(comma, colon)
        raise GridError("an item is either a list (V1,V2,…) or a range (START:STOP:STEP), not both",
                        item, label, first, first + 1)
    sep = ":" if colon >= 0 else ","
    parts, offset = [], at
    for piece in values.split(sep):
        text = piece.strip()
        start = offset + (len(piece) - len(piece.lstrip()))
        parts.append(_Part(text, start, start + len(text)))
        offset += len(piece) + 1
    if sep == ":" and len(parts) > 3:
        extra = at + [m.start() for m in re.finditer(":", values)][2]
        raise GridError("a range is START:STOP:STEP (or LOW:HIGH for --search); this has more than three parts",
                        item, label, extra, extra + 1)
    for part in parts:
        if not part.text:
            raise GridError(f"an empty value between {sep!r}s" if sep == "," else "an empty part of the range",
                            item, label, part.start, part.start + 1)
    return stripped, ("range" if sep == ":" else "list"), parts


def _axis_plan(name: str, item: str, kind: str, parts: list[_Part], label: int, search: bool):
    """(number of values, a function that builds the Axis): sizes come first so that a huge range
    is refused before it is materialised."""
    numbers = [_number(part, item, label) for part in parts]
    if kind == "list":
        floats = [_float(d, part, item, label) for d, part in zip(numbers, parts)]
        for i, value in enumerate(floats):
            for j in range(i):
                if floats[j] == value:
                    raise GridError(f"{parts[i].text} repeats {parts[j].text} (both are {value!r})",
                                    item, label, parts[i].start, parts[i].end)
        return len(floats), lambda: Axis(name, tuple(floats), text=item)
    if len(parts) == 2:
        if not search:
            raise GridError("LOW:HIGH (no STEP) is a continuous range, which only --search can sample; "
                            "give a STEP (e.g. 0:1:0.1) or a list", item, label, parts[0].start, parts[1].end)
        low, high = (_float(d, p, item, label) for d, p in zip(numbers, parts))
        if not low < high:
            raise GridError(f"LOW must be below HIGH (got {parts[0].text}:{parts[1].text})", item, label,
                            parts[0].start, parts[1].end)
        return 1, lambda: Axis(name, low=low, high=high, text=item)
    start, stop, step = numbers
    if step <= 0:
        raise GridError(f"STEP must be positive (got {parts[2].text})", item, label, parts[2].start, parts[2].end)
    if start > stop:
        raise GridError(f"the range is empty: START {parts[0].text} is above STOP {parts[1].text}", item, label,
                        parts[0].start, parts[1].end)
    for d, part in zip(numbers[:2], parts[:2]):
        _float(d, part, item, label)  # START and STOP must be floats; the values in between then are
    try:
        with _exact() as ctx:
            size = int(ctx.divide_int(stop - start, step)) + 1
    except InvalidOperation:  # the quotient has more digits than any grid could have points
        raise GridError(f"STEP {parts[2].text} makes a range of astronomically many values", item, label,
                        parts[2].start, parts[2].end) from None

    def build() -> Axis:
        with _exact():
            decimals = [start + i * step for i in range(size)]
        floats = [float(d) for d in decimals]
        for i in range(1, size):
            if floats[i] == floats[i - 1]:
                raise GridError(f"STEP {parts[2].text} is below float precision here: values {i - 1} and {i} "
                                f"of the range are both {floats[i]!r}", item, label, parts[2].start, parts[2].end)
        return Axis(name, tuple(floats), text=item)

    return size, build


def _number(part: _Part, item: str, label: int) -> Decimal:
    try:
        value = Decimal(part.text)
    except InvalidOperation:
        raise GridError(f"{part.text!r} is not a number", item, label, part.start, part.end) from None
    if not value.is_finite():
        raise GridError(f"{part.text} is not a finite number", item, label, part.start, part.end)
    return value


def _float(value: Decimal, part: _Part, item: str, label: int) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise GridError(f"{part.text} is too large for a float", item, label, part.start, part.end)
    return number


def _exact():
    """A decimal context wide enough that sums and products of the literals are exact."""
    return localcontext(Context(prec=10_000, Emax=10**9, Emin=-10**9))


# --------------------------------------------------------------------------- messages


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _known_list(known: list[str]) -> str:
    if not known:
        return "the recipe has no number parameters to sweep"
    return "the recipe's number parameters: " + ", ".join(sorted(known))


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def _window(text: str, start: int, end: int) -> tuple[str, int, int]:
    """`text` cut to about SHOWN characters around [start, end), and the shifted columns."""
    if len(text) <= SHOWN:
        return text, start, min(end, max(len(text), start + 1))
    left = max(0, min(start - SHOWN // 3, len(text) - SHOWN))
    shown = ("…" if left else "") + text[left:left + SHOWN] + ("…" if left + SHOWN < len(text) else "")
    shift = left - (1 if left else 0)
    return shown, start - shift, min(end - shift, start - shift + SHOWN)
