"""Sweeps of a recipe's numbers (SPEC §7.7): the compute step `dipm sweep` and `dipm_lang.sweep`
share, and `sweep` itself.

The sweep folder, grids, evaluations, searches and the table are `dipm_lang.sweeps`' job; this
module gives it the step that writes the points' adapters. Each point is the recipe lowered with
its numbers (`Template.bind`: the very program `dipm run --set NAME=VALUE` compiles), its saves
moved into the point's staging folder; the points of one pass are merged into ONE program, whose
interned nodes make the work they share — reading the inputs, `dir`, `mag`, their norms — happen
once per module for all of them, and whose outputs stream to disk batch by batch as in any run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipm_lang.errors import DipmError, UsageError

if TYPE_CHECKING:
    from dipm_lang.api.programs import CompiledProgram
    from dipm_lang.compiler import Template
    from dipm_lang.io.memory import MemoryAdapter
    from dipm_lang.ir.node import Program
    from dipm_lang.run import RunOptions
    from dipm_lang.sweeps import Fingerprint, Point, PointSink, SweepSummary

POINTS_PER_PASS = 32
"""Points computed in one pass over the modules. One pass reads every input once for all of them,
but holds each batch's outputs for every point at once; past this many, the sweep makes another
pass (reading the inputs again) rather than let memory grow without bound."""


class PointCompute:
    """`compute(points, sink)` for `dipm_lang.sweeps.Sweep`: every point's adapter, in passes of up
    to `POINTS_PER_PASS` points, each pass one merged program.

    A point whose numbers the recipe refuses (a rank that is not whole, a divisor that is zero …)
    fails alone, with the compiler's message. When a pass fails at run time, its points are run
    one by one, so that only the points that fail are reported failed.
    """

    def __init__(self, template: Template, options: RunOptions, *, memory: Mapping[str, MemoryAdapter] | None = None,
                 on_program: Callable[[Program], None] | None = None):
        self.template = template
        self.options = options
        self.memory = dict(memory or {})
        self.on_program = on_program  # sees each pass's program before it runs (the CLI shows its warnings)
        self.layout = output_layout(template)

    def __call__(self, points: Sequence[Point], sink: PointSink) -> None:
        for start in range(0, len(points), POINTS_PER_PASS):
            self._pass(points[start:start + POINTS_PER_PASS], sink)

    def _pass(self, points: Sequence[Point], sink: PointSink) -> None:
        bound: list[tuple[Point, Program]] = []
        for point in points:
            try:
                program = self.template.bind(point.values).program
            except DipmError as e:
                sink.failed(point, str(e))
                continue
            target = sink.begin(point)
            bound.append((point, _moved(program, self.layout, target)))
        if not bound:
            return
        try:
            self._run([program for _, program in bound])
        except DipmError as e:
            if len(bound) == 1:
                self._fail(sink, bound[0][0], e)
                return
            for point, program in bound:  # find the points that fail
                try:
                    self._run([program])
                except DipmError as e:
                    self._fail(sink, point, e)
                    continue
                self._commit(sink, point)
            return
        except BaseException:
            for point, _ in bound:
                sink.discard(point)
            raise
        for point, _ in bound:
            self._commit(sink, point)

    def _run(self, programs: list[Program]) -> None:
        from dipm_lang.compiler import merge
        from dipm_lang.run import run_program

        program = merge(programs) if len(programs) > 1 else programs[0]
        if self.on_program is not None:
            self.on_program(program)
        run_program(program, self.options, quiet=True, memory=self.memory)

    @staticmethod
    def _commit(sink: PointSink, point: Point) -> None:
        sink.commit(point)
        sink.written(point)

    @staticmethod
    def _fail(sink: PointSink, point: Point, error: DipmError) -> None:
        sink.discard(point)
        sink.failed(point, str(error))


def output_layout(template: Template) -> dict[str, str]:
    """Each save's folder (as the recipe writes it) → where it goes inside a point's folder (SPEC
    §7.7): one save is the point's folder itself (""); several go to `<point>/<basename>`."""
    paths = [root.attr("path") for root in template.symbolic.program.roots]
    if not paths:
        raise UsageError("the recipe saves nothing, so a sweep has nothing to write",
                         hint="sweep a script with save(…, \"folder\") statements, or a recipe's outputs")
    if len(paths) == 1:
        return {paths[0]: ""}
    names: dict[str, str] = {}
    for path in paths:
        name = Path(path).name
        if name in names:
            raise UsageError(f"two saves end in the same folder name {name!r} ({names[name]} and {path}); a sweep "
                             "writes each save to DIR/<point>/<folder name>, so they must differ")
        names[name] = path
    return {path: name for name, path in names.items()}


def _moved(program: Program, layout: Mapping[str, str], target: Path) -> Program:
    from dipm_lang.compiler import bind_outputs

    return bind_outputs(program, {path: str(target / name) if name else str(target)
                                  for path, name in layout.items()})


def sweep_fingerprint(template: Template, options: RunOptions, *, memory: Mapping[str, MemoryAdapter] | None = None,
                      numbers: Mapping[str, float] | None = None, fixed: Mapping[str, Any] | None = None
                      ) -> Fingerprint:
    """What a sweep's adapters depend on besides the swept numbers, for resuming (SPEC §7.7): the
    recipe's text (and its imports'), each input's content hash, and the settings that change the
    written tensors. `numbers`: any valid point, to plan the inputs (which also checks, before the
    sweep starts, that every input exists and fits: errors that would fail every point)."""
    from dipm_lang.run import plan
    from dipm_lang.sweeps import Fingerprint

    program = template.lower(dict(numbers or {}))  # not optimized: t = 0 may drop an input other points read
    the_plan = plan(program, options, check_outputs=False, memory=dict(memory or {}))
    sources = sorted(text for file, text in template.symbolic.program.sources.items()
                     if not file.startswith("<stdlib>"))
    recipe_hash = hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()
    inputs = {node.attr("name") or info.label: info.sha256
              for node in program.inputs.values() if (info := the_plan.inputs.get(node.attr("path"))) is not None}
    settings = {"dtype": options.dtype, "out_dtype": str(the_plan.out_dtype).removeprefix("torch."),
                "eps": options.eps, "level": template.level, "fixed": dict(fixed or {})}
    return Fingerprint(recipe_hash, inputs, settings)


# ---- the Python API -------------------------------------------------------------------------

def sweep(recipe: CompiledProgram | str | os.PathLike[str], grid: Mapping[str, Sequence[float] | str],
          output: str | os.PathLike[str], *, eval: str | None = None, maximize: str | None = None,  # noqa: A002
          minimize: str | None = None, eval_timeout: float | None = None, jobs: int = 1, executor: str = "local",
          ray_address: str | None = None, eval_cpus: float | None = None, eval_gpus: float | None = None,
          search: str | None = None, trials: int | None = None, seed: int | None = None, force: bool = False,
          plot: bool = True, progress: bool = False, device: str = "auto", dtype: str = "float32",
          out_dtype: str | None = None, numbers: Mapping[str, float] | None = None) -> SweepSummary:
    """`dipm sweep` from Python: every point of `grid` written under `output`, evaluated, tabled.

    `recipe`: a `CompiledProgram` (`dipm_lang.compile`; an expression's value is saved as each
    point's adapter) or the path of a script or YAML/TOML recipe. `grid`: NAME → the values (a
    list) or a range as `--grid` writes it (`"0:1:0.1"`, or `"0:1"` for a search). `numbers`:
    other numbers of the recipe, fixed for every point. The other arguments are `dipm sweep`'s
    flags. Returns the summary: `.rows` (sweep.json's objects, best marked), `.best`,
    `.exit_code` (1 when some point failed), `.text()` (the printed table).
    """
    from dipm_lang.run import RunOptions
    from dipm_lang.sweeps import SweepOptions, execute, plan_sweep

    template, memory = _template(recipe)
    if numbers:
        template = _with_fixed(template, numbers)
    output_layout(template)
    items = [f"{name}={values}" if isinstance(values, str) else f"{name}=" + ",".join(repr(float(v)) for v in values)
             for name, values in grid.items()]
    options = SweepOptions(grid=tuple(items), output=os.fspath(output), eval_command=eval, eval_timeout=eval_timeout,
                           maximize=maximize, minimize=minimize, jobs=jobs, executor=executor,
                           ray_address=ray_address, eval_cpus=eval_cpus, eval_gpus=eval_gpus, search=search,
                           trials=trials, seed=seed, force=force, progress=progress, quiet=True, plot=plot)
    the_plan = plan_sweep(options, parameters=template.numbers)
    run_options = RunOptions(device=device, dtype=dtype, out_dtype=out_dtype, progress=progress)
    first = first_point(the_plan.axes)
    fingerprint = sweep_fingerprint(template, run_options, memory=memory, numbers=first, fixed=numbers)
    return execute(the_plan, PointCompute(template, run_options, memory=memory), fingerprint)


def first_point(axes: Sequence[Any]) -> dict[str, float]:
    """A valid point of the axes (a grid's first; a search range's low end), to check the recipe."""
    return {axis.name: (axis.values[0] if axis.values else axis.low) for axis in axes}


def _template(recipe: Any) -> tuple[Template, dict[str, MemoryAdapter]]:
    from dipm_lang.api.programs import CompiledProgram
    from dipm_lang.compiler import Expression, Template, source_of

    if isinstance(recipe, CompiledProgram):
        if not recipe.is_expression:
            return recipe.template, recipe._memory
        # an expression: each point saves its value (to a folder the sweep then moves)
        source = Expression(recipe.template.parsed.source.text, recipe.file, save_to=str(Path.cwd() / "point"),
                            require_used=True)
        return Template(source, recipe.template.external, level=recipe.template.level), recipe._memory
    if isinstance(recipe, (str, os.PathLike)):
        return Template(source_of(os.fspath(recipe))), {}
    raise UsageError(f"recipe: expected a CompiledProgram or a recipe file's path, got {type(recipe).__name__}")


def _with_fixed(template: Template, numbers: Mapping[str, float]) -> Template:
    """The template with some numbers fixed for every point (they become part of the recipe)."""
    from dipm_lang.compiler import Template

    template.check({**{name: 0.0 for name in template.free}, **numbers})
    return Template(template.parsed.source, {**template.external, **{k: float(v) for k, v in numbers.items()}},
                    level=template.level, sandbox=template.sandbox)
