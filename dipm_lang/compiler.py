"""The front door: every way into the compiler ends in one optimized `Program`, through one list of steps.

    PIPELINE: parse → lower → cse → simplify → dce → fuse → plan → execute → write

`compile(source)` runs the steps up to `fuse` for any of the four kinds of source — a script
(`ScriptText`, `ScriptFile`), one expression (`Expression`: `dipm eval`, the Python API), a YAML/TOML
recipe (`RecipeFile`), or a program the REPL lowered input by input (`Lowered`). The last three
steps run in `dipm_lang.run` (`run_program`). `dipm explain` names the steps from `PIPELINE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

from dipm_lang.errors import DipmTypeError, UsageError, did_you_mean
from dipm_lang.frontend.lower import Lowerer, read_source
from dipm_lang.frontend.parser import parse_expression, parse_script
from dipm_lang.frontend.recipes import is_config, lower_recipe, read_recipe
from dipm_lang.frontend import ast
from dipm_lang.ir.node import Node, Program
from dipm_lang.ir.numbers import format_number
from dipm_lang.ir.schedules import is_schedule, parameters, varies
from dipm_lang.ir.targets import TARGETS, vllm_max_rank_problem
from dipm_lang.ir.types import NUM
from dipm_lang.ir.verify import verify as verify_program
from dipm_lang.ops import OPERATORS
from dipm_lang.passes.cse import cse
from dipm_lang.passes.dce import dce
from dipm_lang.passes.fuse import fuse
from dipm_lang.passes.simplify import simplify
from dipm_lang.safety.files import FileProblem
from dipm_lang.safety.sandbox import Sandbox


@dataclass(frozen=True)
class Step:
    name: str
    does: str
    run: Callable[[Program], Program] | None = None  # the optimisation passes: Program -> Program


PIPELINE: tuple[Step, ...] = (
    Step("parse", "text → syntax tree (Lark), with a span for every node"),
    Step("lower", "syntax tree → typed IR: names resolved, defs inlined, every call typed by its operator"),
    Step("cse", "equal subexpressions become one node", cse),
    Step("simplify", "the operators' algebraic rules, to a fixed point",
         lambda program: simplify(program, OPERATORS.simplify_rules())),
    Step("dce", "drop what no save or result needs", dce),
    Step("fuse", "fold arithmetic and per-unit scalings into factor operations",
         lambda program: fuse(program, OPERATORS.fuse_rules())),
    Step("plan", "open every input and output; check shapes, ranks and paths before any tensor is read"),
    Step("execute", "run the program over batches of same-shape modules, on the factors"),
    Step("write", "stream each save into a staged folder; rename them all into place at the end"),
)

PASSES: list[tuple[str, Callable[[Program], Program]]] = [(s.name, s.run) for s in PIPELINE if s.run is not None]
"""The optimisation passes, in pipeline order (tests run them one by one)."""

# -O0 runs no pass; -O1 shares and prunes; -O2 (the default) also simplifies and fuses
LEVELS: dict[int, tuple[str, ...]] = {0: (), 1: ("cse", "dce"), 2: ("cse", "simplify", "dce", "fuse")}

RESULT = "value"
"""The name under which an `Expression`'s value is a result of the program (`Program.results`)."""


# ---- the sources --------------------------------------------------------------------------

@dataclass(frozen=True)
class ScriptText:
    """Script text; `file` names it in errors and anchors its relative paths."""
    text: str
    file: str = "<input>"


@dataclass(frozen=True)
class ScriptFile:
    path: str | Path


@dataclass(frozen=True)
class Expression:
    """One expression. Its value is the result `RESULT` and must be an update or magnitudes; with
    `save_to` the program is `save(EXPR, save_to, rank=rank, energy=energy, max_rank=max_rank)`
    instead. `require_used`: every external name must be read by it."""
    text: str
    file: str = "<expr>"
    save_to: str | None = None
    rank: int | None = None
    require_used: bool = False
    energy: float | None = None
    max_rank: int | None = None


@dataclass(frozen=True)
class RecipeFile:
    path: str | Path


@dataclass(frozen=True)
class Lowered:
    """A program already lowered (the REPL lowers input by input into one long-lived session)."""
    program: Program


Source = Union[ScriptText, ScriptFile, Expression, RecipeFile, Lowered]


def source_of(path: str | Path) -> ScriptFile | RecipeFile:
    """A file as a source: a recipe config by its suffix (.yaml, .yml, .toml), else a script."""
    return RecipeFile(path) if is_config(path) else ScriptFile(path)


def text_source(text: str, file: str = "<input>") -> ScriptText | Expression:
    """Text as a source (the Python API): one expression statement that is not a `save(…)` or a
    `bake(…)` (SPEC §7.8) is an `Expression` (every name given from outside must be read by it);
    anything else a script."""
    statements = parse_script(text, file).statements
    if len(statements) == 1 and isinstance(statements[0], ast.ExprStmt):
        expr = statements[0].expr
        if not (isinstance(expr, ast.Call) and expr.func in ("save", "bake")):
            return Expression(text, file, require_used=True)
    return ScriptText(text, file)


@dataclass
class PassReport:
    """Node counts as written and after each pass (for `dipm explain`)."""

    nodes_before: int
    passes: list[dict] = field(default_factory=list)

    @property
    def nodes_after(self) -> int:
        return self.passes[-1]["nodes"] if self.passes else self.nodes_before

    def as_json(self) -> dict:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "passes": self.passes}


class Compiled(NamedTuple):
    program: Program
    report: PassReport


# ---- the one entry ------------------------------------------------------------------------

def compile(source: Source, external: Mapping[str, Any] | None = None, *, level: int = 2, verify: bool = False,
            sandbox: Sandbox | None = None) -> Compiled:  # noqa: A001 - the compiler's own name
    """Parse, lower and optimize `source` (steps parse … fuse of `PIPELINE`).

    `external` gives names from outside (`--set`, config inputs, API inputs): NAME → an absolute
    adapter path, a `<memory:…>` key, a string or a number. `sandbox` confines every path.
    `verify` runs the IR verifier after lowering and after every pass.
    """
    return optimize(lower(source, external, sandbox=sandbox), level=level, verify=verify)


def lower(source: Source, external: Mapping[str, Any] | None = None, *, sandbox: Sandbox | None = None) -> Program:
    """Steps parse and lower: the un-optimized program of `source`."""
    if isinstance(source, Lowered):
        return source.program
    return _parse(source).lower(external, sandbox=sandbox)


@dataclass(frozen=True)
class _Parsed:
    """A source read and parsed once (step parse), ready to be lowered with any external names."""

    source: ScriptText | Expression | RecipeFile
    tree: Any  # ast.Script, ast.Expr, or a read Recipe

    def lower(self, external: Mapping[str, Any] | None, *, sandbox: Sandbox | None = None,
              free_numbers: bool = False) -> Program:
        if isinstance(self.source, RecipeFile):
            return lower_recipe(self.tree, external, sandbox=sandbox, free_numbers=free_numbers)
        lowerer = Lowerer(external, sandbox=sandbox, free_numbers=free_numbers)
        if isinstance(self.source, ScriptText):
            return lowerer.script(self.tree, self.source.text)
        return _expression(lowerer, self.source, self.tree)


def _parse(source: Source) -> _Parsed:
    if isinstance(source, RecipeFile):
        return _Parsed(source, read_recipe(source.path))
    if isinstance(source, ScriptFile):
        path = Path(source.path)
        try:
            text = read_source(path)
        except FileProblem as e:
            raise UsageError(f"{path}: cannot read the script: {e}") from None
        source = ScriptText(text, str(path))
    if isinstance(source, ScriptText):
        return _Parsed(source, parse_script(source.text, source.file))
    if isinstance(source, Expression):
        return _Parsed(source, parse_expression(source.text, source.file))
    raise TypeError(f"cannot parse {source!r}")  # pragma: no cover - Lowered has no text


def _expression(lowerer: Lowerer, source: Expression, expr: ast.Expr) -> Program:
    if source.save_to is not None:
        module = lowerer.module(source.file, source.text)
        lowerer.statement(ast.save_call(expr, source.save_to, source.rank, energy=source.energy,
                                        max_rank=source.max_rank), module)
        return lowerer.program(source.text)
    node, program = lowerer.expression(expr, source.text, source.file, require_used=source.require_used)
    if node.type.kind not in ("Delta", "Dir", "Mag", "Factor"):
        raise DipmTypeError(f"this expression is a {node.type}; expected an update (Delta, Dir), "
                            "magnitudes (Mag) or a factor (x.A, x.B)", expr.span)
    return program.replace(results={RESULT: node})


def verify(program: Program, *, after: str = "") -> None:
    """The IR verifier with every operator's typing rule (raises `VerifyError` on a compiler bug)."""
    verify_program(program, OPERATORS, after=after)


def optimize(program: Program, *, level: int = 2, verify: bool = False) -> Compiled:
    """Steps cse … fuse, as `level` asks; node counts after each; the verifier after each with `verify`."""
    wanted = LEVELS[level]
    report = PassReport(nodes_before=len(program.nodes()))
    if verify:
        verify_program(program, OPERATORS, after="lower")
    for step in PIPELINE:
        if step.run is None or step.name not in wanted:
            continue
        program = step.run(program)
        if verify:
            verify_program(program, OPERATORS, after=step.name)
        report.passes.append({"name": step.name, "nodes": len(program.nodes())})
    return Compiled(program, report)


# ---- numbers given later ------------------------------------------------------------------

class Template:
    """A source parsed once and lowered again for each set of numbers: `dipm sweep`'s points and the
    Python API's `program(t=0.3)`.

    Binding lowers again from the syntax tree instead of substituting numbers into compiled IR:
    every check that depends on a number's value (ranges, zero divisors, static arguments such as
    `rank=`, warnings) lives in the lowering, so a bound program is the very program
    `dipm run --set NAME=VALUE` compiles, made by the same code — for about 2 ms of lowering, next
    to seconds of tensor work.

    `free`: the names defined nowhere (numbers `bind` must be given); `defaults`: the numbers the
    source binds itself (`t = 0.3` in a script, a recipe's `parameters:`), which `bind` may
    override. `symbolic` is the program with every free number a `Parameter`, for `explain`.
    """

    def __init__(self, source: Source, external: Mapping[str, Any] | None = None, *, level: int = 2,
                 sandbox: Sandbox | None = None):
        if isinstance(source, Lowered):
            raise TypeError("a Template needs source text")
        self.parsed = _parse(source)
        self.external = dict(external or {})
        self.level = level
        self.sandbox = sandbox
        lowered = self.parsed.lower(self.external, sandbox=sandbox, free_numbers=True)
        self.defaults: dict[str, float] = self._defaults(lowered)
        self.symbolic = optimize(lowered, level=level)
        self.free: tuple[str, ...] = parameter_names(lowered)
        self.inputs: tuple[str, ...] = tuple(lowered.inputs)  # its adapter inputs (named loads, free names given)

    @property
    def numbers(self) -> tuple[str, ...]:
        """Every name `bind` accepts: the free numbers first, then the source's own."""
        return self.free + tuple(name for name in self.defaults if name not in self.free)

    def bind(self, numbers: Mapping[str, float]) -> Compiled:
        """The program with these numbers (every free one given; the source's own overridable)."""
        return optimize(self.lower(numbers), level=self.level)

    def lower(self, numbers: Mapping[str, float]) -> Program:
        """`bind` before the optimisation passes (every input the source reads is still there)."""
        self.check(numbers)
        external = {**self.external, **{name: float(value) for name, value in numbers.items()}}
        return self.parsed.lower(external, sandbox=self.sandbox)

    def check(self, numbers: Mapping[str, Any]) -> None:
        """Usage errors for names the source has no number for, free numbers not given, and values
        that are not finite numbers."""
        known = self.numbers
        for name, value in numbers.items():
            if name not in known:
                guess = did_you_mean(name, known)
                raise UsageError(f"the recipe has no number named '{name}'"
                                 + (f" (its numbers: {', '.join(known)})" if known else " (it has none to set)"),
                                 hint=f"did you mean '{guess}'?" if guess else None)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"'{name}' must be a finite number, got {value!r}")
        missing = [name for name in self.free if name not in numbers]
        if missing:
            raise UsageError(f"the recipe needs a number for {', '.join(repr(m) for m in missing)} "
                             "(a name it uses but never defines)")

    def _defaults(self, program: Program) -> dict[str, float]:
        found = {name: node.value for name, node in program.bindings.items()
                 if node.op == "const" and node.type == NUM and isinstance(node.value, float)}
        if isinstance(self.parsed.source, RecipeFile):
            found.update({name: float(value) for name, value in self.parsed.tree.parameters.items()
                          if isinstance(value, (int, float)) and not isinstance(value, bool)})
        return {name: value for name, value in found.items() if name not in self.external}


def parameter_names(program: Program) -> tuple[str, ...]:
    """The `Parameter`s (numbers given later) a program reads, in order of first use."""
    found: dict[str, None] = {}

    def scan(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for item in value:
                scan(item)
        elif is_schedule(value):
            found.update(dict.fromkeys(sorted(parameters(value))))

    for node in program.nodes():
        for _, value in node.attrs:
            scan(value)
    return tuple(found)


def merge(programs: Sequence[Program]) -> Program:
    """One program computing every save of `programs` (a sweep's points): equal subexpressions are
    one node after `cse` (nodes are interned), so work the programs share — the loads, `dir` and
    `mag` of the inputs — is done once per module for all of them."""
    if not programs:
        raise ValueError("nothing to merge")
    first = programs[0]
    merged = first.replace(results={}, bindings={}, notes=[])
    seen_warnings = set(first.warnings)
    for program in programs[1:]:
        merged.roots.extend(program.roots)
        merged.spans.update(program.spans)
        merged.sources.update(program.sources)
        merged.inputs.update(program.inputs)
        merged.given.update(program.given)
        merged.schedules.extend(s for s in program.schedules if s not in merged.schedules)
        for warning in program.warnings:
            if warning not in seen_warnings:
                seen_warnings.add(warning)
                merged.warnings.append(warning)
    bases = {program.base for program in programs} - {None}
    if len(bases) > 1:
        raise ValueError("merged programs name different base models")
    merged.base = next(iter(bases), None)
    paths = [root.attr("path") for root in merged.roots]
    if len(set(paths)) != len(paths):
        raise ValueError("merged programs write to the same folder")
    return cse(merged)


# ---- after compiling ----------------------------------------------------------------------

def explain_text(program: Program, report: PassReport, *, relative_to: Path | None = None) -> str:
    """What `dipm explain` prints: the pipeline, node counts after each pass, the passes' notes, the plan."""
    from dipm_lang.ir.graph import print_program

    counts = f"nodes: {report.nodes_before} as written"
    for p in report.passes:
        counts += f" → {p['nodes']} after {p['name']}"
    pipeline = "pipeline: " + " → ".join(step.name for step in PIPELINE)
    lines = [pipeline, counts, *(f"  {note}" for note in program.notes), "",
             print_program(program, relative_to=relative_to)]
    return "\n".join(lines)


EXPLAIN_FORMAT = 1
"""Version of `explain_json`'s layout: raised when a key changes meaning or goes away (new keys may appear)."""


def explain_json(program: Program, report: PassReport, *, level: int = 2, file: str | None = None) -> dict:
    """The optimized plan as data (`dipm explain --json`); `dipm explain --help` documents every key.

    Node ids are the listing's `%N` numbers; operands are ids, in order; paths are absolute, as
    the program holds them (in-memory inputs keep their `<memory:…>` keys); attribute values are
    JSON numbers, strings, lists, booleans or null, and a non-finite number is the string dipm
    would write for it ("1e999", "-1e999", "nan").
    """
    from dipm_lang.ir.view import plan_view

    view = plan_view(program, operators=OPERATORS)
    ran = set(LEVELS[level])
    notes: dict[str, list[str]] = {}
    for note in program.notes:
        step, _, text = note.partition(": ")
        notes.setdefault(step, []).append(text)
    outputs = {o.index: o for o in view.outputs}
    present = {id(n.node) for n in view.nodes}
    return {
        "format": EXPLAIN_FORMAT,
        "file": file,
        "level": level,
        "pipeline": [{"name": s.name, "does": s.does,
                      "ran": s.name in ("parse", "lower") or s.name in ran} for s in PIPELINE],
        "nodes_before": report.nodes_before,
        "nodes_after": report.nodes_after,
        "passes": [{**p, "notes": notes.get(p["name"], [])} for p in report.passes],
        "notes": list(program.notes),
        "nodes": [{
            "id": n.id,
            "op": n.node.op,
            "type": n.type,
            "attrs": {key: _json_value(value) for key, value in n.node.attrs},
            "operands": [e.source for e in view.operands(n.id)],
            "source": n.source,
            "outputs": [outputs[i].key for i in n.outputs],
            "shared": n.shared,
        } for n in view.nodes],
        "inputs": {name: node.attr("path") for name, node in program.inputs.items() if id(node) in present},
        "outputs": [{"path": o.path, "rank": o.rank, "node": o.node} for o in view.outputs if o.kind == "save"],
        "results": {o.name: o.node for o in view.outputs if o.kind == "result"},
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def bind_inputs(program: Program, paths: Mapping[str, str | None]) -> Program:
    """A copy of `program` whose inputs named in `paths` load from there instead.

    Inputs are the program's named loads (`H = load(…)`, free names given from outside), so a
    compiled program can run again on other adapters without compiling again. Paths are used
    as given (absolute folders, or `<memory:…>` keys of in-memory inputs).
    """
    return _with_paths(program, "load", lambda node: paths[node.attr("name")] if node.attr("name") in paths else _KEEP)


def bind_outputs(program: Program, paths: Mapping[str, str]) -> Program:
    """A copy of `program` whose saves to the folders in `paths` (old → new, absolute) write to the
    new folders instead (a sweep's point folders)."""
    moved = _with_paths(program, "save", lambda node: paths.get(node.attr("path"), _KEEP))
    moved.given = {paths.get(path, path): numbers for path, numbers in program.given.items()}
    return moved


_KEEP: Any = object()


def _with_paths(program: Program, op: str, new_path: Callable[[Node], Any]) -> Program:
    """`program` with the `path` of each `op` node replaced by `new_path(node)` (`_KEEP`: unchanged)."""
    def rewrite(node: Node, args: tuple[Node, ...]) -> Node:
        path = new_path(node) if node.op == op else _KEEP
        if path is _KEEP and all(a is b for a, b in zip(args, node.args)):
            return node
        attrs = dict(node.attrs) if path is _KEEP else {**dict(node.attrs), "path": path}
        return Node.make(node.op, args, attrs, node.type, unique=node.uid is not None)

    return program.rebuild(rewrite)


def with_target(program: Program, target: str | None) -> Program:
    """`--target NAME`: every save that names no target of its own writes for NAME (a usage error,
    positioned at the save, when its `max_rank=` cannot be that target's)."""
    if target is None:
        return program
    if target not in TARGETS:
        raise UsageError(f"--target {target}: expected one of {', '.join(TARGETS)}")

    def rewrite(node: Node, args: tuple[Node, ...]) -> Node:
        changed = node.op == "save" and node.attr("target") is None
        if not changed and all(a is b for a, b in zip(args, node.args)):
            return node
        attrs = dict(node.attrs)
        if changed:
            max_rank = node.attr("max_rank")
            problem = vllm_max_rank_problem(max_rank) if target == "vllm" and not (
                is_schedule(max_rank) and not varies(max_rank)) else None
            if problem:
                raise UsageError(f"--target {target}: {problem}", program.spans.get(node),
                                 hint="vLLM serves adapters up to the --max-lora-rank it was started with")
            attrs["target"] = target
        return Node.make(node.op, args, attrs, node.type, unique=node.uid is not None)

    return program.rebuild(rewrite)
