"""The recipes compared, each one dipm expression with a swept parameter, computed by dipm_lang.

Every configuration is `dipm_lang.evaluate(expression, H=…, T=…, C=…)` on the in-memory
adapters, added to the PEFT model with `dipm_lang.add_to_peft_model`. Evaluating directly is
cheap here (a few milliseconds per call for 14 modules: parse, optimise and run), so each
sweep value is simply its own expression; `timings.json` records the measured cost.
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
    template: str          # the dipm expression, `{p}` standing for the swept parameter
    param: str             # "t", "lam" or "alpha"
    keeps: str | None = None  # the input whose row norms the result must keep (DiPM's claim)

    def expr(self, value: float) -> str:
        return self.template.format(p=number(value))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name in ("H", "T", "C") if re.search(rf"\b{name}\b", self.template))


METHODS = (
    Method("dipm_detox", "DiPM detox", "detox", "recombine(shift(dir(H), reverse(dir(T)), {p}), mag(H))", "t", "H"),
    Method("task_arithmetic", "H − λ·T", "detox", "H - {p} * T", "lam"),
    Method("ta_keep_mag", "recombine(dir(H − λ·T), mag(H))", "detox", "recombine(dir(H - {p} * T), mag(H))", "lam",
           "H"),
    Method("shrink", "(1 − α)·H", "detox", "(1 - {p}) * H", "alpha"),
    Method("dipm_transfer", "DiPM transfer", "transfer", "recombine(shift(dir(C), dir(T), {p}), mag(C))", "t", "C"),
    Method("ta_transfer", "C + λ·T", "transfer", "C + {p} * T", "lam"),
)
REFERENCES = ("base", "H", "T", "C")


def number(value: float) -> str:
    """A sweep value as dipm source text (shortest round-trip form: 0.1, 2.5, 3.0)."""
    return repr(float(value))


class Evaluator:
    """Evaluates recipes with dipm_lang on a PEFT model's adapters and times every call."""

    def __init__(self, peft_model: Any):
        self.model = peft_model
        self.seconds = 0.0
        self.calls = 0
        self._mags: dict[str, Any] = {}

    def value(self, expr: str, inputs: tuple[str, ...]) -> Any:
        start = time.perf_counter()
        value = dipm_lang.evaluate(expr, **{name: (self.model, name) for name in inputs})
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return value

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
