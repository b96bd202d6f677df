"""The recipes compared, each one dipm expression with a swept parameter, computed by dipm_lang.

Each method's expression is compiled once (`dipm_lang.compile`, its parameter a free number) on
the in-memory adapters H, T, C, and every configuration is a call of it (`program(t=0.3)`) —
no source text is formatted per value; the value is added to the PEFT model with
`dipm_lang.add_to_peft_model`. `timings.json` records the measured cost of compiling and calls.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import dipm_lang


@dataclass(frozen=True)
class Method:
    name: str              # key in rows.json
    label: str             # legend / table label
    family: str            # "detox" (remove T's behaviour from H) or "transfer" (add it to C)
    expression: str        # the dipm expression; `param` is a free number in it
    param: str             # "t", "lam" or "alpha"
    keeps: str | None = None  # the input whose row norms the result must keep (DiPM's claim)

    def expr(self, value: float) -> str:
        """The configuration as literal dipm text (what rows.json records)."""
        return self.written(number(value))

    def written(self, param: str) -> str:
        """The expression with the parameter written as `param` (a number, or a symbol for tables)."""
        return re.sub(rf"\b{self.param}\b", param, self.expression)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name in ("H", "T", "C") if re.search(rf"\b{name}\b", self.expression))


METHODS = (
    Method("dipm_detox", "DiPM detox", "detox", "recombine(shift(dir(H), reverse(dir(T)), t), mag(H))", "t", "H"),
    Method("task_arithmetic", "H − λ·T", "detox", "H - lam * T", "lam"),
    Method("ta_keep_mag", "recombine(dir(H − λ·T), mag(H))", "detox", "recombine(dir(H - lam * T), mag(H))", "lam",
           "H"),
    Method("shrink", "(1 − α)·H", "detox", "(1 - alpha) * H", "alpha"),
    Method("dipm_transfer", "DiPM transfer", "transfer", "recombine(shift(dir(C), dir(T), t), mag(C))", "t", "C"),
    Method("ta_transfer", "C + λ·T", "transfer", "C + lam * T", "lam"),
    # the factor-level readings (SPEC §7.3; stdlib): modulate B's rows, keep the first adapter's A —
    # meaningful here because H, T, C share their initial A (`--no-shared-init` breaks that)
    Method("dipm_detox_b", "DiPM detox on B", "detox", "detox_b(H, T, t)", "t"),
    Method("dipm_transfer_b", "DiPM transfer on B", "transfer", "transfer_b(C, T, t)", "t"),
)
REFERENCES = ("base", "H", "T", "C")


def number(value: float) -> str:
    """A sweep value as dipm source text (shortest round-trip form: 0.1, 2.5, 3.0)."""
    return repr(float(value))


class Evaluator:
    """Computes recipes with dipm_lang on a PEFT model's adapters (each method compiled once) and
    times every call."""

    def __init__(self, peft_model: Any):
        self.model = peft_model
        self.seconds = 0.0
        self.calls = 0
        self._mags: dict[str, Any] = {}
        self._programs: dict[str, Any] = {}

    def value(self, method: Method, value: float) -> Any:
        start = time.perf_counter()
        program = self._programs.get(method.name)
        if program is None:
            program = dipm_lang.compile(method.expression, inputs={name: (self.model, name) for name in method.inputs})
            self._programs[method.name] = program
        result = program(**{method.param: value})
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result

    def row_norm_error(self, value: Any, keeps: str) -> float:
        """max |‖row_i(value)‖ − ‖row_i(keeps)‖| / max ‖row_i(keeps)‖ over all modules, by dipm's `mag`."""
        start = time.perf_counter()
        mine = dipm_lang.evaluate("mag(X)", X=value)
        self.calls += 1
        if keeps not in self._mags:
            self._mags[keeps] = dipm_lang.evaluate(f"mag({keeps})", **{keeps: (self.model, keeps)})
            self.calls += 1
        self.seconds += time.perf_counter() - start
        worst = 0.0
        for name, norms in self._mags[keeps].items():
            scale = float(norms.abs().max()) or 1.0
            worst = max(worst, float((mine[name] - norms).abs().max()) / scale)
        return worst
