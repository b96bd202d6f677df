"""Compile once, run many times: `compile` (a script or one expression, whose free names are numbers
given later), `CompiledProgram` (`program(t=0.3)`, `.run`, `.explain`), and `evaluate` (once)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipm_lang.api.values import (AdapterValue, InputValue, attach_sources, detached, run_options,
                                  split_inputs)
from dipm_lang.errors import DipmTypeError, UsageError

if TYPE_CHECKING:
    import torch

    from dipm_lang.compiler import PassReport, Template
    from dipm_lang.io.memory import MemoryAdapter
    from dipm_lang.ir.node import Program
    from dipm_lang.run import RunOptions, RunSummary


class CompiledProgram:
    """A script or one expression, compiled once, run as often as needed with other numbers or
    other adapters — without parsing it again.

        program = dl.compile("transfer(C, T, t=t)", inputs={"C": "adapters/C", "T": "adapters/T"})
        program.parameters                 # ('t',): used, defined nowhere, not an input
        value = program(t=0.3)             # an expression gives its value (an AdapterValue)
        dl.compile(script)(lam=0.5)        # a script runs its saves (a RunSummary)

    `parameters`: the free numbers every call must give; `numbers`: every number a call may give
    (also the script's own `t = 0.3` bindings, which a call overrides as `--set` does);
    `inputs`: the adapter inputs (`run`/a call may give other adapters for them). `program` and
    `report` are the optimized IR with each free number symbolic, as `explain` shows it.
    """

    def __init__(self, template: Template, *, memory: Mapping[str, MemoryAdapter], unbound: list[str],
                 file: str, text: str, is_expression: bool):
        self.template = template
        self.file = file
        self.is_expression = is_expression
        self._text = text
        self._memory = dict(memory)
        self._unbound = list(unbound)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.template.free

    @property
    def numbers(self) -> tuple[str, ...]:
        return self.template.numbers

    @property
    def inputs(self) -> list[str]:
        return list(self.template.inputs)

    @property
    def program(self) -> Program:
        return self.template.symbolic.program

    @property
    def report(self) -> PassReport:
        return self.template.symbolic.report

    def __call__(self, inputs: Mapping[str, InputValue] | None = None, **numbers: float) -> AdapterValue | RunSummary:
        """An expression's value (`value`), or a script's run (`run`), with these numbers."""
        return self.value(inputs, **numbers) if self.is_expression else self.run(inputs, **numbers)

    def value(self, inputs: Mapping[str, InputValue] | None = None, *, device: str = "cpu",
              dtype: str | torch.dtype = "float32", ignore_base_model: bool = False, **numbers: float) -> AdapterValue:
        """The expression's value with these numbers (and adapters, overriding the compiled ones)."""
        if not self.is_expression:
            raise UsageError("a script has no value of its own; run() writes its saves",
                             hint="compile one expression to get a value")
        program, memory = self.bind(inputs, numbers)
        options = run_options(device, dtype, None, ignore_base_model=ignore_base_model)
        return value_of(program, memory, options, recipe=self._text, numbers=numbers)

    def run(self, inputs: Mapping[str, InputValue] | None = None, *, device: str = "auto",
            dtype: str | torch.dtype = "float32", out_dtype: str | torch.dtype | None = None,
            force: bool = False, ignore_base_model: bool = False, progress: bool = False,
            eps: float | None = None, base: str | Path | None = None, **numbers: float) -> RunSummary:
        """Run every `save` of the script with these numbers; all outputs are written, or none.

        `inputs` maps input names to adapters (paths resolve against the working directory;
        in-memory values as for `evaluate`), overriding the paths written in the script.
        `device` is `auto` (CUDA when present), `cpu` or `cuda[:N]`; `force` replaces existing
        outputs. `base` is the base model's folder (`--base`, SPEC §7.8: DoRA inputs, `base()`, `bake`,
        `extract`), overriding the script's own `base("DIR")`. Returns the run's summary (`.text()`,
        `.outputs`).
        """
        from dipm_lang.run import run_program

        if self.is_expression:
            raise UsageError("an expression has no saves to run; call the program for its value",
                             hint="program(...).save(\"folder\") writes it")
        program, memory = self.bind(inputs, numbers)
        options = run_options(device, dtype, out_dtype, force=force, ignore_base_model=ignore_base_model,
                              progress=progress, eps=eps, base=None if base is None else str(Path(base).resolve()))
        return run_program(program, options, quiet=True, memory=memory)

    def bind(self, inputs: Mapping[str, InputValue] | None, numbers: Mapping[str, float]
             ) -> tuple[Program, dict[str, MemoryAdapter]]:
        """The optimized program with these numbers and adapters, and its in-memory inputs."""
        from dipm_lang.compiler import bind_inputs

        unknown = sorted(set(inputs or {}) - set(self.inputs))
        if unknown:
            raise UsageError(f"the program has no input named '{unknown[0]}'",
                             hint=f"its inputs: {', '.join(self.inputs) or 'none'}")
        paths, memory = split_inputs(inputs or {})
        given_numbers = [name for name, value in paths.items() if not isinstance(value, str)]
        if given_numbers:
            name = given_numbers[0]
            raise UsageError(f"input '{name}' is an adapter; numbers are keywords: program({name}=…) binds a "
                             "number the program reads by that name")
        with attach_sources(self.file, self._text):
            program = self.template.bind(numbers).program
        rebound = {**{name: None for name in self._unbound}, **paths}
        return (bind_inputs(program, rebound) if rebound else program), {**self._memory, **memory}

    def explain(self) -> str:
        """The optimized plan as `dipm explain` prints it: node counts per pass, notes, the DAG (free
        numbers by name)."""
        from dipm_lang.compiler import explain_text

        base = None if self.file.startswith("<") else Path(self.file).resolve().parent
        return explain_text(self.program, self.report, relative_to=base)

    def __repr__(self) -> str:
        what = "expression" if self.is_expression else (
            f"{len(self.program.roots)} save{'s' if len(self.program.roots) != 1 else ''}")
        numbers = f"; numbers {', '.join(self.parameters)}" if self.parameters else ""
        return (f"<CompiledProgram {self.file}: inputs {', '.join(self.inputs) or 'none'}{numbers}; "
                f"{what}; {self.report.nodes_after} nodes>")


def compile(text: str, *, file: str = "<input>", inputs: Mapping[str, InputValue | None] | None = None,
            level: int = 2) -> CompiledProgram:  # noqa: A001 - the package's public name
    """Parse, type-check and optimize a dipm script or one expression; returns a `CompiledProgram`.

    Text that is one expression (`"transfer(C, T, t=t)"`) compiles to a program whose call gives
    that value; anything else is a script, whose call runs its saves. Names the text uses but
    never defines are inputs when `inputs` names them and numbers otherwise, given at each call
    (`program(t=0.3)`). `inputs`: NAME → an adapter (a path relative to the working directory, a Hub id, an
    `AdapterValue`, a `PeftModel` …, as for `evaluate`) makes NAME an input or overrides the path
    of `NAME = load(…)`; NAME → None declares an input whose adapter is given to each call;
    strings and numbers override bindings of that type, as `--set` does. `file` names the text
    in errors and anchors its relative paths. `level`: the optimisation level (0, 1 or 2). A
    compile error `e` carries `e.sources`, so `dipm_lang.errors.render(e, e.sources)` shows the line.
    """
    from dipm_lang.compiler import Expression, Template, text_source

    if level not in (0, 1, 2):
        raise UsageError(f"level must be 0, 1 or 2, got {level!r}")
    inputs = dict(inputs or {})
    unbound = [name for name, value in inputs.items() if value is None]
    external, memory = split_inputs({name: value for name, value in inputs.items() if value is not None})
    external.update({name: "." for name in unbound})  # a placeholder path, unbound again in `bind`
    with attach_sources(file, text):
        source = text_source(text, file)
        template = Template(source, external, level=level)
    return CompiledProgram(template, memory=memory, unbound=unbound, file=file, text=text,
                           is_expression=isinstance(source, Expression))


def evaluate(expr: str, *, device: str = "cpu", dtype: str | torch.dtype = "float32", level: int = 2,
             ignore_base_model: bool = False, **inputs: InputValue) -> AdapterValue:
    """Compute one expression and return its value, per module, without writing anything.

    `expr` is a single dipm expression (standard-library functions in scope), e.g.
    `"recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H))"`; its free names are the
    keyword `inputs`: adapter folders (`str`/`Path`, relative to the working directory), Hugging
    Face Hub adapters (`"org/name"`, `"hf://org/name@revision/subfolder"`: SPEC §7.5),
    `AdapterValue`s, mappings module → `LowRank`, a `peft.PeftModel` (its active adapter) or
    `(peft_model, "adapter_name")` — and numbers: `evaluate("transfer(C, T, t=t)", C=…, T=…, t=0.3)`
    (to compute it for many numbers, `compile` it once). The result must be an update (Delta, Dir)
    or magnitudes (Mag); it is computed in `dtype` (default float32) on `device` (default cpu).

    Errors in the expression point at `<expr>:1:COLUMN`; `dipm_lang.errors.render(e, e.sources)`
    shows the expression with a caret under the column.
    """
    from dipm_lang.compiler import Expression, bind_inputs, lower, optimize

    if level not in (0, 1, 2):
        raise UsageError(f"level must be 0, 1 or 2, got {level!r}")
    paths, memory = split_inputs(inputs)
    with attach_sources("<expr>", expr):
        program = lower(Expression(expr, "<expr>", require_used=True), paths)
    memory_paths = {name: path for name, path in paths.items() if path in memory}
    if memory_paths:
        program = bind_inputs(program, memory_paths)
    program, _ = optimize(program, level=level)
    options = run_options(device, dtype, None, ignore_base_model=ignore_base_model)
    numbers = {name: float(value) for name, value in paths.items() if not isinstance(value, str)}
    return value_of(program, memory, options, recipe=expr, numbers=numbers)


def value_of(program: Program, memory: Mapping[str, MemoryAdapter], options: RunOptions, *, recipe: str,
             numbers: Mapping[str, float]) -> AdapterValue:
    """Run an expression's program and hold its value (nothing is written)."""
    from dipm_lang.compiler import RESULT
    from dipm_lang.io.sources import file_inputs
    from dipm_lang.run import execute, plan
    from dipm_lang.run.outputs import output_template, provenance

    node = program.results[RESULT]
    if node.type.kind not in ("Delta", "Dir", "Mag", "Factor"):  # pragma: no cover - the lowering checks it
        raise DipmTypeError(f"this expression is a {node.type}; expected an update, magnitudes or a factor")
    from dipm_lang.errors import ExecutionError
    from dipm_lang.ir.full_weights import Carry
    from dipm_lang.run.full_weights import carried_outputs

    the_plan = plan(program, options, check_outputs=False, memory=memory)
    try:  # what saving the value writes of its inputs' full-weight modules and biases (SPEC §7.4)
        full: Any = carried_outputs(node, node, program, the_plan.inputs, Carry(the_plan.layers), list(the_plan.modules))
    except ExecutionError as refusal:
        full = refusal  # the value is fine; only saving it needs a choice (raised by AdapterValue.save)
    result = execute(the_plan, options)
    modules = {name: detached(value) for name, value in result.results[RESULT].items()}
    metadata = provenance(program, the_plan)
    if numbers:  # as a save records `--set` numbers
        metadata["dipm_numbers"] = json.dumps(dict(numbers), sort_keys=True)
    return AdapterValue(str(node.type), modules, template=output_template(list(the_plan.inputs.values())),
                        recipe=recipe, metadata=metadata, out_dtype=the_plan.out_dtype,
                        input_paths=file_inputs(the_plan.inputs.values()), full=full)
