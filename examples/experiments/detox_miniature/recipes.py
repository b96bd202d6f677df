"""The recipes compared, each one dipm expression with a swept parameter, computed by dipm_lang.

Each method's expression is compiled once (`dipm_lang.compile`, its parameter a free number) on
the in-memory adapters H, T, C, and every configuration is a call of it (`program(t=0.3)`) —
no source text is formatted per value; the value is added to the PEFT model with
`dipm_lang.add_to_peft_model`. The weight-level methods (`base()`, SPEC §7.8) are scripts run with
the base model's folder: their value is a weight, written as a DoRA adapter and loaded by PEFT.
`timings.json` records the measured cost of compiling and calls.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
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

    @property
    def weight_level(self) -> bool:
        """Whether the expression reads the base weights (`base()`, SPEC §7.8): its value is a weight,
        saved as a DoRA adapter."""
        return "base()" in self.expression


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
    # the weight-level readings (SPEC §7.8): dir/mag of the full weights W0 + x per output row, as DoRA
    # decouples them; the value is a weight, saved as a DoRA adapter and loaded by PEFT. `keeps` names
    # the weight whose row norms the result keeps: W0 + H.
    Method("dora_ta_keep_mag", "DoRA: dir(W0 + H − λ·T), mag(W0 + H)", "detox",
           "recombine(dir(base() + H - lam * T), mag(base() + H))", "lam", "H"),
    Method("dora_dipm_detox", "DiPM detox on weights", "detox",
           "recombine(shift(dir(base() + H), dir(base() - T), t), mag(base() + H))", "t", "H"),
)
REFERENCES = ("base", "H", "T", "C")


def number(value: float) -> str:
    """A sweep value as dipm source text (shortest round-trip form: 0.1, 2.5, 3.0)."""
    return repr(float(value))


class Evaluator:
    """Computes recipes with dipm_lang on a PEFT model's adapters (each method compiled once) and
    times every call."""

    def __init__(self, peft_model: Any, base_dir: Path | None = None, work_dir: Path | None = None):
        self.model = peft_model
        self.base_dir = base_dir  # the base model's folder, for the weight-level methods
        self.work_dir = work_dir  # where their DoRA adapters are written before PEFT loads them
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

    def add_weight_level(self, method: Method, value: float, adapter_name: str) -> None:
        """A weight-level configuration as users get one into PEFT: the script `save(EXPR, folder)` run
        with the base model's folder (`program.run(base=…)`, compiled once per method) writes a DoRA
        adapter, which `PeftModel.load_adapter` loads as `adapter_name`."""
        if self.base_dir is None or self.work_dir is None:
            raise ValueError(f"{method.name} reads the base weights: give the Evaluator base_dir and work_dir")
        folder = self.work_dir / method.name
        start = time.perf_counter()
        program = self._programs.get(method.name)
        if program is None:
            script = f'save({method.expression}, "{folder.resolve().as_posix()}")'
            program = dipm_lang.compile(script, inputs={name: (self.model, name) for name in method.inputs})
            self._programs[method.name] = program
        program.run(base=self.base_dir, force=True, **{method.param: value})
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.model.load_adapter(str(folder), adapter_name=adapter_name)

    def weight_row_norm_error(self, adapter_name: str, keeps: str) -> float:
        """max |m_i − ‖row_i(W0 + keeps)‖| / max ‖row_i(W0 + keeps)‖ over all modules: `m` is the loaded
        DoRA adapter's magnitude vector (its effective weight's row norms), the reference is computed
        here in float64 from the PEFT model's own base weights and `keeps`' factors."""
        worst, seen = 0.0, 0
        for module in self.model.modules():
            magnitudes = getattr(module, "lora_magnitude_vector", None)
            if magnitudes is None or adapter_name not in magnitudes:
                continue
            W0 = module.get_base_layer().weight.detach().double()
            B, A = module.lora_B[keeps].weight.detach().double(), module.lora_A[keeps].weight.detach().double()
            kept = W0 + module.scaling[keeps] * (B @ A)
            norms = kept.norm(dim=1)
            m = magnitudes[adapter_name].weight.detach().double().reshape(-1)
            worst = max(worst, float((m - norms).abs().max() / norms.max()))
            seen += 1
        if not seen:
            raise ValueError(f"adapter {adapter_name!r} is not a DoRA adapter of this model")
        return worst
