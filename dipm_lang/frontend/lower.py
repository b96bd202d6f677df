"""AST → typed IR: name resolution, the standard-library prelude, inlining of `def`s,
imports, and type checking. Nothing here reads a tensor.

Every call of a built-in operator is checked by that operator's own declaration (`dipm_lang/ops/`):
its parameters, the kinds of value they take, its typing rule. Lowering emits *un-interned* nodes
(one per operation as written) and records each node's source span, so `dipm explain` can show
what CSE and the other passes remove.

`Lowerer` is used through its public methods: `script` (a whole file), `expression` (one
expression: `dipm eval`, the Python API), `module`/`statement` (recipe configs and the REPL,
statement by statement), `begin_input` (the REPL, once per input) and `program`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dipm_lang.errors import (DipmError, DipmSyntaxError, DipmTypeError, NameResolutionError, PathError,
                              ResourceLimitError, Span, UsageError, did_you_mean)
from dipm_lang.frontend import ast
from dipm_lang.frontend.parser import STATEMENT_KEYWORDS, parse_script
from dipm_lang.frontend.recursion import stack_room
from dipm_lang.frontend.resources import stdlib_dir
from dipm_lang.io.hub_ref import hub_input
from dipm_lang.ir.constants import BOOLEANS
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.numbers import NotConstant, const_eval, numeric
from dipm_lang.ir.operator import Builder, Operator, OperatorTable
from dipm_lang.ir.signature import REQUIRED, Path as PathKind, Typing
from dipm_lang.ir.schedules import Parameter, is_schedule, varies
from dipm_lang.ir.types import DELTA, NUM, STR, UNIT, Type, list_t
from dipm_lang.ops import OPERATORS
from dipm_lang.safety.files import FileProblem, absolute, path_problem, read_bytes_limited
from dipm_lang.safety.limits import MAX_SOURCE_BYTES

if TYPE_CHECKING:
    from dipm_lang.io.hub_ref import HubRef
    from dipm_lang.safety.sandbox import Sandbox

MAX_NODES = 100_000          # nodes one program may lower to (inlining blow-up guard)
MAX_INLINE_DEPTH = 50        # nested calls of defs
MAX_EXPR_DEPTH = 200         # nesting of one expression
FRAMES_PER_LEVEL = 8         # Python frames one level of lowering may take (calls, inlining, list mapping)
OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}  # infix operators -> IR operators


@dataclass
class Function:
    """A `def`, with the module whose names its body sees."""

    definition: ast.Def
    module: "Module"

    @property
    def doc(self) -> str:
        return self.definition.doc


@dataclass
class Module:
    """The names one file defines. Lookups fall back to the parent (the prelude)."""

    file: str
    functions: dict[str, Function] = field(default_factory=dict)
    values: dict[str, Node] = field(default_factory=dict)
    parent: "Module | None" = None

    def function(self, name: str) -> Function | None:
        if name in self.functions:
            return self.functions[name]
        return self.parent.function(name) if self.parent else None

    def value(self, name: str) -> Node | None:
        if name in self.values:
            return self.values[name]
        return self.parent.value(name) if self.parent else None

    def visible_names(self) -> set[str]:
        names = set(self.functions) | set(self.values)
        return names | (self.parent.visible_names() if self.parent else set())


def _number_text(raw: Any) -> float | None:
    """A value from the command line that reads as a finite number (`0.3`, `-1`, `2e-3`), else None."""
    if not isinstance(raw, str):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_stdlib(file: str) -> bool:
    return file.startswith("<stdlib>/")


class Lowerer:
    """Lowers scripts, statements and expressions into one Program's worth of IR."""

    def __init__(self, external: Mapping[str, Any] | None = None, *, sandbox: "Sandbox | None" = None,
                 operators: OperatorTable = OPERATORS, free_numbers: bool = False):
        # external: NAME -> value given from outside (--set, config inputs): an absolute adapter
        # path for a load, a string or a number for a binding of that type.
        self.external = dict(external or {})
        # free_numbers: a name defined nowhere is a number given later (a `Parameter`), not an
        # error — the Python API's and `dipm sweep`'s free numbers; `parameters` collects them.
        self.free_numbers = free_numbers
        self.parameters: dict[str, Span | None] = {}
        self.given_numbers: dict[str, float] = {}  # external numbers read (recorded with each output)
        self.sandbox = sandbox  # --sandbox: load/save/import paths must resolve inside it
        self.operators = operators
        self.functions = operators.callables()  # the operators a script may call by name
        self.prelude = load_prelude()
        self.sources: dict[str, str] = dict(prelude_sources())  # file -> text, for diagnostics
        self.spans: dict[Node, Span] = {}
        self.inputs: dict[str, Node] = {}       # input name -> its load node
        self.used_external: set[str] = set()
        self.warnings: list[tuple[str, Span | None]] = []  # allowed but probably not meant (shown by the CLI)
        self.schedules: list[Any] = []  # every schedule written, in order
        self.base: str | None = None    # the base model's folder: base("DIR") or a config's base: (SPEC §7.8)
        self._base_span: Span | None = None
        self._roots: list[Node] = []            # the saves lowered so far, in statement order
        self._node_count = 0
        self._numbers: dict[Node, float] = {}  # the value of every Num node made (all are constants)
        self._inline_stack: list[str] = []
        self._call_sites: list[Span | None] = []  # where each def on _inline_stack was called
        self._import_stack: list[str] = []
        self._imported: dict[str, Module] = {}  # resolved path -> the module an import made
        self._source_bytes = 0
        self._depth = 0

    # ---- the public entry points -----------------------------------------------------

    def script(self, script: ast.Script, text: str) -> Program:
        """A whole script: every statement, then the check that each `--set` name was used."""
        self._source_bytes += len(text.encode("utf-8", "surrogatepass"))
        module = self.module(script.file, text)
        # the script itself is on the import stack, so a cycle back to it is caught where it closes
        main = [] if script.file.startswith("<") else [str(Path(script.file).resolve())]
        self._import_stack.extend(main)
        try:
            for statement in script.statements:
                self.statement(statement, module)
        finally:
            del self._import_stack[len(self._import_stack) - len(main):]
        self.check_external_used()
        return self.program(text, module)

    def expression(self, expr: ast.Expr, text: str, file: str, *, require_used: bool = False) -> tuple[Node, Program]:
        """One expression (`dipm eval`, the Python API): its node and a program holding it as
        `results["value"]`. With `require_used`, an external name it never reads is an error."""
        module = self.module(file, text)
        node = self.expr(expr, module)
        unused = self.unused_external()
        if require_used and unused:
            raise UsageError(f"input '{unused[0]}' is not used by the expression")
        return node, self.program(text, results={"value": node})

    def module(self, file: str, text: str) -> "Module":
        """A new module (the names one file defines, over the prelude); registers its text for errors."""
        self.sources[file] = text
        return Module(file, parent=self.prelude)

    def begin_input(self, file: str, text: str) -> None:
        """The REPL: a new input starts — its text joins the sources, the node budget is per input,
        and saves lowered by the previous input are forgotten."""
        self.sources[file] = text
        self._node_count = 0
        self._source_bytes = 0
        self.warnings.clear()
        self._roots.clear()

    def expr(self, expr: ast.Expr, module: "Module", scope: Mapping[str, Node] | None = None) -> Node:
        """Lower one expression in `module` (and a def's parameter `scope`)."""
        return self.lower_expr(expr, scope or {}, module)

    def unused_external(self) -> list[str]:
        """Names given from outside that nothing has read yet."""
        return sorted(set(self.external) - self.used_external)

    def program(self, text: str = "", module: "Module | None" = None, *, roots: list[Node] | None = None,
                results: Mapping[str, Node] | None = None) -> Program:
        """The program lowered so far: its saves (or `roots`), named results, and side tables."""
        bindings = {k: v for k, v in module.values.items() if v.type.kind != "Unit"} if module else {}
        roots = list(self._roots if roots is None else roots)
        given = {root.attr("path"): dict(self.given_numbers) for root in roots} if self.given_numbers else {}
        return Program(roots=roots, results=dict(results or {}),
                       spans=dict(self.spans), sources=dict(self.sources), inputs=dict(self.inputs),
                       script_text=text, bindings=bindings, warnings=list(self.warnings),
                       schedules=list(self.schedules), given=given, base=self.base)

    def make(self, op: str, args, attrs: dict[str, Any] | None, type_: Type, span: Span | None = None) -> Node:
        """A new un-interned node (the node factory of everything lowered; counts the node budget)."""
        self._node_count += 1
        if self._node_count > MAX_NODES:
            raise self._too_large(span)
        node = Node.make(op, args, attrs, type_, unique=True)
        if span is not None:
            self.spans[node] = span
        if type_ == NUM:
            self._numbers[node] = self._number_value(node, span)
        return node

    def emit(self, op_name: str, args: tuple[Node, ...] | list[Node], attrs: Mapping[str, Any], span: Span | None,
             *, label: str | None = None) -> Node:
        """A node of operator `op_name`, typed by that operator's own rule (errors at `span`)."""
        op = self.operators[op_name]
        return self._typed(op, self._typing(op, args, attrs, span, label=label), list(args), span)

    def _typing(self, op: Operator, args, attrs: Mapping[str, Any], span: Span | None, *,
                label: str | None = None) -> Typing:
        operands = op.bind_operands(args)

        def fail(param: str | None, message: str, hint: str | None = None):
            raise self._refusal(operands.get(param) if param else None, message, span, hint)

        return Typing(op, operands, attrs, fail, label=label)

    def _refusal(self, operand: Any, message: str, span: Span | None, hint: str | None) -> DipmError:
        """The type error for an operand — or, where the operand is made of a name defined nowhere
        that `free_numbers` took for a number, an unknown-name error pointing at that name."""
        nodes = operand if isinstance(operand, (list, tuple)) else [operand]
        if self.free_numbers and all(isinstance(n, Node) for n in nodes):
            for node in walk(nodes):
                if node.op == "const" and isinstance(node.value, Parameter):
                    name = node.value.name
                    return NameResolutionError(f"unknown name '{name}'", self.spans.get(node, span),
                                               hint="a name defined nowhere is a number given later; an adapter "
                                                    f"must be loaded ({name} = load(…)) or given as an input")
        return DipmTypeError(message, span, hint=hint)

    def _typed(self, op: Operator, typing: Typing, args: list[Node], span: Span | None) -> Node:
        type_ = op.infer(typing)
        if op.name == "base" and typing.attrs.get("path") is not None:
            self.set_base(typing.attrs["path"], span)
        return self.make(op.name, args, typing.attrs, type_, span)

    def set_base(self, path: str, span: Span | None) -> None:
        """The program's base model (SPEC §7.8): one folder, however often `base(…)` names it."""
        if self.base is not None and Path(self.base) != Path(path):
            raise DipmTypeError(f"a program has one base model, but base({path!r}) differs from {self.base!r}",
                                span, hint="use one folder (or base() everywhere, with --base DIR)")
        if self.base is None:
            self.base, self._base_span = path, span

    def _warn(self, message: str, span: Span | None) -> None:
        """A warning; one inside the standard library points at the user's call, as errors do."""
        if span is not None and _is_stdlib(span.file):
            for name, site in zip(reversed(self._inline_stack), reversed(self._call_sites)):
                if site is not None and not _is_stdlib(site.file):
                    message, span = f"in {name}(…): {message}", site
                    break
        self.warnings.append((message, span))

    def _too_large(self, span: Span | None) -> ResourceLimitError:
        """The node budget is spent: point at the outermost call being inlined, if any (a blow-up such
        as `def f1(x) = f0(x) + f0(x)` chained deep is that call's doing, not the innermost body's)."""
        message = f"the program is too large (more than {MAX_NODES} operations after inlining)"
        if self._inline_stack:
            names = self._inline_stack
            chain = " -> ".join(names if len(names) <= 6 else names[:3] + ["…"] + names[-2:])
            message += f" while inlining {chain}"
            span = next((s for s in self._call_sites if s is not None), span)
        return ResourceLimitError(message, span, hint="each call of a def copies its body; calls that call a def "
                                                      "twice, nested, double the program at every level")

    def _number_value(self, node: Node, span: Span | None) -> float:
        """A number computed in the script must be finite and divide by nonzero numbers only; the error
        points at the arithmetic that breaks this (the passes and the backend rely on it)."""
        if node.op == "const":
            return node.value
        try:
            value = numeric(node.op, [self._numbers[a] if a in self._numbers else const_eval(a) for a in node.args])
        except DipmTypeError as e:  # division by zero
            raise DipmTypeError(e.message, span) from None
        if is_schedule(value):  # a parameter's arithmetic: known when the parameter is
            return value
        if not math.isfinite(value):
            raise DipmTypeError("this number is too large (the arithmetic overflows)", span)
        return value

    # ---- statements ------------------------------------------------------------------

    def check_external_used(self) -> None:
        unused = self.unused_external()
        if unused:
            name = unused[0]
            guess = did_you_mean(name, self.used_external | set(self.inputs))
            raise UsageError(f"--set {name}=…: the script has no input or binding named '{name}'",
                             hint=f"did you mean '{guess}'?" if guess else None)

    def statement(self, statement: ast.Statement, module: "Module", *, allow_effects: bool = True,
                  allow_values: bool = False) -> Node | None:
        """Lower one statement into `module`: a def or binding adds a name, an import adds a file's
        names, a `save(...)` becomes a root of the program. `allow_effects=False`: an imported file
        or a config's `defs` (no saves); `allow_values`: the REPL (a bare expression is shown)."""
        if isinstance(statement, ast.Import):
            self._import(statement, module)
            return None
        if isinstance(statement, ast.Def):
            if statement.name in self.functions:
                raise NameResolutionError(f"'{statement.name}' is a built-in operator and cannot be redefined",
                                          statement.span)
            module.functions[statement.name] = Function(statement, module)
            module.values.pop(statement.name, None)
            return None
        if isinstance(statement, ast.Binding):
            if statement.name in self.functions:
                raise NameResolutionError(f"'{statement.name}' is a built-in operator and cannot be rebound",
                                          statement.span)
            node = self._binding_value(statement, module)
            module.values[statement.name] = node
            module.functions.pop(statement.name, None)
            return node
        assert isinstance(statement, ast.ExprStmt)
        node = self.lower_expr(statement.expr, {}, module)
        if node.type == UNIT:
            if not allow_effects:
                raise DipmTypeError("an imported file may only define functions and values, not save",
                                    statement.span)
            self._add_root(node, statement.span)
        elif not allow_values:
            raise DipmTypeError(f"this {node.type} is computed but never used", statement.span,
                                hint="save it with save(x, \"folder\") or bind it to a name")
        return node

    def bind_input(self, name: str, path: str, module: "Module", span: Span | None = None) -> Node:
        """`name = load(path)` without source text (the REPL's `:load NAME PATH`)."""
        node = self.make("load", (), {"path": path, "family": None, "name": name}, DELTA, span)
        self.inputs[name] = node
        module.values[name] = node
        module.functions.pop(name, None)
        return node

    def _add_root(self, node: Node, span: Span | None) -> None:
        path = Path(node.attr("path"))
        for other in self._roots:
            there = Path(other.attr("path"))
            if there == path:
                raise DipmTypeError(f"two saves write to the same folder {str(path)!r}", span)
            if there in path.parents or path in there.parents:
                inner, outer = (path, there) if there in path.parents else (there, path)
                raise DipmTypeError(f"one output would be inside another: {str(inner)!r} is in {str(outer)!r}",
                                    span, hint="outputs are whole folders; write them side by side")
        self._roots.append(node)

    def _binding_value(self, statement: ast.Binding, module: "Module") -> Node:
        name = statement.name
        node = self.lower_expr(statement.value, {}, module)
        if node.op == "load" and node.attr("name") is None:  # `g = h` aliases the input h, no new input
            path = node.attr("path")
            if name in self.external:
                self.used_external.add(name)
                path = self._external_path(name)
            node = self.make("load", (), {**dict(node.attrs), "path": path, "name": name}, node.type,
                             self.spans.get(node))  # keeps family=
            self.inputs[name] = node
        elif name in self.external:
            self.used_external.add(name)
            node = self._external_value(name, node, statement.span)
        if node.type == UNIT:
            raise DipmTypeError("save(...) has no value to bind", statement.span)
        return node

    def _hub_input(self, text: str, span: Span | None) -> "HubRef | None":
        """The Hub adapter a load's string names (SPEC §7.5), relative to the file it is written in."""
        return hub_input(text, base_dir=_base_dir(span.file) if span is not None else Path.cwd(), span=span)

    def _external_path(self, name: str) -> str:
        """An adapter path given from outside; a relative one resolves against the working directory
        (absolute paths and `<memory:…>` keys are kept as given); a Hub id becomes `hf://…`."""
        value = str(self.external[name])
        if value.startswith("<"):
            return value
        try:
            hub = self._hub_input(value, COMMAND_LINE)
        except DipmError as e:
            raise type(e)(f"--set {name}=…: {e.message}", COMMAND_LINE, hint=e.hint) from None
        if hub is not None:
            if self.sandbox is not None:
                self.sandbox.check_hub(str(hub), f"input '{name}'", COMMAND_LINE, written=value)
            return str(hub)
        problem = path_problem(value)
        if problem:
            raise PathError(f"--set {name}=…: {problem}", COMMAND_LINE)
        path = value if os.path.isabs(value) else str(absolute(value))
        if self.sandbox is not None:
            self.sandbox.check(path, f"input '{name}'", COMMAND_LINE, written=value)
        return path

    def _external_value(self, name: str, node: Node, span: Span | None) -> Node:
        raw = self.external[name]
        if node.type == STR:  # a string from the command line: relative paths resolve against the cwd
            return self.make("const", (), {"value": str(raw)}, STR, COMMAND_LINE)
        if node.type.is_number and is_schedule(raw):  # a schedule or a parameter (recipes, sweeps, the API)
            return self._const(raw, span)
        if node.type.is_number:
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"--set {name}={raw}: '{name}' is a number in the script") from None
            if not math.isfinite(value):
                raise UsageError(f"--set {name}={raw}: '{name}' must be a finite number")
            self.given_numbers[name] = value
            return self.make("const", (), {"value": value}, NUM, span)
        raise UsageError(f"--set {name}=…: '{name}' is bound to a {node.type} expression, which cannot be set "
                         "from outside (only load(...), strings and numbers can)")

    def _import(self, statement: ast.Import, module: "Module") -> None:
        problem = path_problem(statement.path)
        if problem:
            raise PathError(f"cannot import {statement.path!r:.200}: {problem}", statement.span)
        base = _base_dir(module.file)
        path = (base / os.path.expanduser(statement.path)).resolve()
        if self.sandbox is not None:
            self.sandbox.check(path, "import", statement.span, written=statement.path)
        key = str(path)
        if key in self._import_stack:
            chain = " -> ".join(Path(p).name for p in self._import_stack + [key])
            raise NameResolutionError(f"import cycle: {chain}", statement.span)
        imported = self._imported.get(key)
        if imported is None:  # a file imported many times is read and parsed once
            try:
                text = self._read(path, statement.span)
            except FileProblem as e:
                raise NameResolutionError(f"cannot import {statement.path!r:.200}: {e}", statement.span) from None
            self._import_stack.append(key)
            try:
                script = parse_script(text, _display_path(path))
                imported = self.module(script.file, text)
                for st in script.statements:
                    self.statement(st, imported, allow_effects=False)
            finally:
                self._import_stack.pop()
            self._imported[key] = imported
        module.functions.update(imported.functions)
        module.values.update(imported.values)

    def _read(self, path: Path, span: Span | None) -> str:
        """A source file's text, counted against the program's budget of source text."""
        text = read_source(path)
        self._source_bytes += len(text.encode("utf-8", "surrogatepass"))
        if self._source_bytes > MAX_SOURCE_BYTES:
            raise ResourceLimitError(f"the program reads more than {MAX_SOURCE_BYTES} bytes of dipm source "
                                     "(the script and its imports together)", span)
        return text

    # ---- expressions -----------------------------------------------------------------

    def lower_expr(self, expr: ast.Expr, scope: Mapping[str, Node], module: "Module") -> Node:
        if self._depth == 0:  # the outermost expression: room for MAX_EXPR_DEPTH levels of recursion
            with stack_room(FRAMES_PER_LEVEL * MAX_EXPR_DEPTH):
                return self._lower_nested(expr, scope, module)
        return self._lower_nested(expr, scope, module)

    def _lower_nested(self, expr: ast.Expr, scope: Mapping[str, Node], module: "Module") -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_EXPR_DEPTH:
                raise ResourceLimitError(f"expression nested too deeply (more than {MAX_EXPR_DEPTH} levels)",
                                         expr.span)
            return self._lower(expr, scope, module)
        finally:
            self._depth -= 1

    def _lower(self, expr: ast.Expr, scope: Mapping[str, Node], module: "Module") -> Node:
        if isinstance(expr, ast.Number):
            if not math.isfinite(expr.value):
                raise DipmTypeError(f"number {expr.text} is too large", expr.span)
            return self.make("const", (), {"value": expr.value}, NUM, expr.span)
        if isinstance(expr, ast.String):
            return self.make("const", (), {"value": expr.value}, STR, expr.span)
        if isinstance(expr, ast.Name):
            return self._name(expr, scope, module)
        if isinstance(expr, ast.ListExpr):
            items = [self.lower_expr(i, scope, module) for i in expr.items]
            item_type = items[0].type if items else None
            for item, node in zip(expr.items, items):
                if node.type.kind == "List":
                    raise DipmTypeError("lists cannot be nested", item.span)
                if item_type is not None and node.type.kind != item_type.kind:
                    raise DipmTypeError(f"a list holds values of one kind: {item_type} and {node.type}", item.span)
            return self.emit("list", items, {}, expr.span)
        if isinstance(expr, ast.BinOp):
            left = self.lower_expr(expr.left, scope, module)
            right = self.lower_expr(expr.right, scope, module)
            op = self.operators[OP_NAMES[expr.op]]
            typing = self._typing(op, (left, right), {}, expr.span)
            type_ = op.infer(typing)
            if expr.op == "/" and right.type == NUM and self._numbers.get(right) == 0.0:
                raise DipmTypeError("division by zero", expr.right.span)
            return self.make(op.name, (left, right), typing.attrs, type_, expr.span)
        if isinstance(expr, ast.Neg):
            operand = self.lower_expr(expr.operand, scope, module)
            return self.emit("neg", (operand,), {}, expr.span)
        if isinstance(expr, ast.Attr):
            value = self.lower_expr(expr.value, scope, module)
            if expr.name not in ("A", "B"):
                raise DipmTypeError(f"unknown attribute '.{expr.name}'; an update has .A and .B", expr.span)
            return self.emit("factor", (value,), {"which": expr.name}, expr.span)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope, module)
        raise TypeError(f"unknown AST node {expr!r}")  # pragma: no cover

    def _name(self, expr: ast.Name, scope: Mapping[str, Node], module: "Module") -> Node:
        if expr.id in scope:
            return scope[expr.id]
        node = module.value(expr.id)
        if node is not None:
            return node
        if expr.id in self.external:
            self.used_external.add(expr.id)
            raw = self.external[expr.id]
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):  # a number from the Python API
                if not math.isfinite(raw):
                    raise UsageError(f"input '{expr.id}' must be a finite number, got {raw!r}")
                self.given_numbers[expr.id] = float(raw)
                return self.make("const", (), {"value": float(raw)}, NUM, expr.span)
            if is_schedule(raw):  # a schedule (recipe parameters) or a parameter given later (sweeps, the API)
                return self._const(raw, expr.span)
            number = _number_text(raw)
            if number is not None:  # `--set t=0.3` for a free name: a number (an adapter folder named 0.3 is ./0.3)
                self.given_numbers[expr.id] = number
                return self.make("const", (), {"value": number}, NUM, expr.span)
            if expr.id not in self.inputs:
                self.inputs[expr.id] = self.make("load", (), {"path": self._external_path(expr.id), "family": None,
                                                                   "name": expr.id},
                                                 DELTA, expr.span)
            return self.inputs[expr.id]
        if expr.id in BOOLEANS:  # exact=true: after every binding, so a user's own `true` wins
            return self.make("const", (), {"value": BOOLEANS[expr.id]}, NUM, expr.span)
        if module.function(expr.id) is not None or expr.id in self.functions:
            raise DipmTypeError(f"'{expr.id}' is a function; call it: {expr.id}(…)", expr.span)
        if self.free_numbers and expr.id not in STATEMENT_KEYWORDS:
            self.parameters.setdefault(expr.id, expr.span)
            return self._const(Parameter(expr.id), expr.span)
        if expr.id in STATEMENT_KEYWORDS:
            raise DipmSyntaxError(f"'{expr.id}' starts a statement of its own and cannot be used as a value",
                                  expr.span, hint=STATEMENT_KEYWORDS[expr.id])
        visible = set(scope) | module.visible_names() | set(self.external)
        guess = did_you_mean(expr.id, visible)
        # in a file run from the command line, a name may also come from outside
        outside = None if module.file.startswith("<") else f"define it, or give it with --set {expr.id}=… (a folder or a number)"
        raise NameResolutionError(f"unknown name '{expr.id}'", expr.span,
                                  hint=f"did you mean '{guess}'?" if guess else outside)

    def _call(self, expr: ast.Call, scope: Mapping[str, Node], module: "Module") -> Node:
        op = self.functions.get(expr.func)
        function = None if op else module.function(expr.func)
        if op is None and function is None:
            candidates = set(self.functions) | {n for n in module.visible_names() if module.function(n)}
            guess = did_you_mean(expr.func, candidates)
            raise NameResolutionError(f"unknown function '{expr.func}'", expr.span,
                                      hint=f"did you mean '{guess}'?" if guess else None)
        if op is not None:
            params = [(p.name, p.default) for p in op.call_params]
        else:
            params = [(p.name, REQUIRED if p.default is None else p.default) for p in function.definition.params]
        bound = _bind_arguments(expr, params)
        if op is not None:
            return self._apply(op, expr, bound, scope, module)
        return self._inline(function, expr, bound, scope, module)

    def _apply(self, op: Operator, expr: ast.Call, bound: dict[str, Any], scope: Mapping[str, Node],
               module: "Module") -> Node:
        """A call of a built-in operator: lower its arguments, evaluate its static ones, then type it
        with the operator's own rule (`ir/operator.py`)."""
        operands: dict[str, Node] = {}
        values: dict[str, Any] = {}
        spans: dict[str, Span | None] = {}
        for param in op.call_params:
            given = bound[param.name]
            if not isinstance(given, _Given):  # a default
                if param.static:
                    values[param.name] = given
                else:
                    operands[param.name] = self._default_node(given, expr.span)
                continue
            node = self.lower_expr(given.expr, scope, module)
            spans[param.name] = given.expr.span
            if not param.static:
                operands[param.name] = node
                continue
            value = self._constant(node, param.name, op.name, given.expr.span)
            if isinstance(param.kind, PathKind) and isinstance(value, str):
                # relative to the file the string literal is written in (the cwd for --set values)
                origin = self.spans.get(node) or expr.span
                hub = self._hub_input(value, origin) if param.kind.hub else None
                written, value = value, str(hub) if hub is not None else _resolve_path(value, origin)
                if self.sandbox is not None and hub is not None:
                    self.sandbox.check_hub(value, op.name, origin, written=written)
                elif self.sandbox is not None:
                    self.sandbox.check(value, op.name, origin, written=written)
            values[param.name] = value

        def fail(param: str | None, message: str, hint: str | None = None):
            raise self._refusal(operands.get(param) if param else None, message,
                                (spans.get(param) if param else None) or expr.span, hint)

        def warn(param: str | None, message: str) -> None:
            self._warn(message, (spans.get(param) if param else None) or expr.span)

        target = self.operators[op.alias_of] if op.alias_of else op
        first = op.call_params[0].name if op.call_params else None
        if op.maps_over_lists and first in operands and operands[first].op == "list":
            # dir([a, b]) is [dir(a), dir(b)]: lets recipes like multitask take any number of inputs
            items = [self._typed(target, Typing(target, {**operands, first: item}, values, fail, label=op.name,
                                                warn=warn),
                                 [item if p.name == first else operands[p.name] for p in target.operand_params],
                                 expr.span)
                     for item in operands[first].args]
            return self.make("list", items, {}, list_t(items[0].type if items else None), expr.span)
        typing = Typing(target, operands, values, fail, label=op.name, warn=warn)
        if op.expand is not None:
            op.infer(typing)
            return op.expand(Builder(typing, emit=lambda name, *args, **attrs: self.emit(name, args, attrs, expr.span),
                                     const=lambda value: self._const(value, expr.span)))
        return self._typed(target, typing, [operands[p.name] for p in target.operand_params], expr.span)

    def _const(self, value: Any, span: Span | None) -> Node:
        """A constant: a string, a number, or a schedule (typed by the `const` operator's own rule)."""
        if not isinstance(value, str) and not is_schedule(value):
            value = float(value)
        if varies(value) and value not in self.schedules:
            self.schedules.append(value)  # as written: `dipm run` shows its numbers per layer
        return self.emit("const", (), {"value": value}, span)

    def _default_node(self, value: Any, span: Span | None) -> Node:
        """The node of a default value of an operand parameter (a number, string or list)."""
        if isinstance(value, (list, tuple)):
            items = [self._default_node(v, span) for v in value]
            return self.make("list", items, {}, list_t(items[0].type if items else None), span)
        return self._const(value, span)

    def _constant(self, node: Node, param: str, func: str, span: Span | None) -> Any:
        try:
            return const_eval(node)
        except NotConstant:
            raise DipmTypeError(f"{func}: '{param}' must be a constant (a number, string or list of them), "
                                f"got a {node.type}", span) from None

    def _inline(self, function: "Function", expr: ast.Call, bound: dict[str, Any], scope: Mapping[str, Node],
                module: "Module") -> Node:
        name = function.definition.name
        if name in self._inline_stack:
            chain = " -> ".join(self._inline_stack[self._inline_stack.index(name):] + [name])
            raise NameResolutionError(f"recursive call of '{name}' ({chain}); definitions are inlined, so "
                                      "recursion is not supported", expr.span)
        if len(self._inline_stack) >= MAX_INLINE_DEPTH:
            raise ResourceLimitError(f"calls nested more than {MAX_INLINE_DEPTH} deep", expr.span)
        # Arguments are evaluated in the caller's scope, defaults in the definition's.
        local: dict[str, Node] = {}
        for param in function.definition.params:
            given = bound[param.name]
            if isinstance(given, _Given):
                local[param.name] = self.lower_expr(given.expr, scope, module)
        self._inline_stack.append(name)
        self._call_sites.append(expr.span)
        try:
            for param in function.definition.params:
                if param.name not in local:
                    local[param.name] = self.lower_expr(param.default, local, function.module)
            return self.lower_expr(function.definition.body, local, function.module)
        except DipmError as e:
            raise _from_call_site(e, name, expr.span) from None
        finally:
            self._inline_stack.pop()
            self._call_sites.pop()


class _Given:
    """An argument written at the call site (as opposed to a default)."""

    __slots__ = ("expr",)

    def __init__(self, expr: ast.Expr):
        self.expr = expr


def _bind_arguments(call: ast.Call, params: list[tuple[str, Any]]) -> dict[str, Any]:
    """Match positional and keyword arguments to parameters; defaults fill the rest."""
    names = [p for p, _ in params]
    if len(call.args) > len(params):
        extra = call.args[len(params)]
        raise DipmTypeError(f"{call.func}() takes {_count(len(params), 'argument')} but "
                            f"{len(call.args)} were given", extra.span, hint=f"{call.func}({', '.join(names)})")
    bound: dict[str, Any] = {name: _Given(arg) for name, arg in zip(names, call.args)}
    for kw in call.kwargs:
        if kw.name not in names:
            guess = did_you_mean(kw.name, names)
            raise DipmTypeError(f"{call.func}() has no parameter '{kw.name}'", kw.span,
                                hint=(f"did you mean '{guess}'? " if guess else "")
                                + f"parameters: {', '.join(names) or 'none'}")
        if kw.name in bound:
            raise DipmTypeError(f"{call.func}() got '{kw.name}' twice (by position and by keyword)", kw.span)
        bound[kw.name] = _Given(kw.value)
    for name, default in params:
        if name not in bound:
            if default is REQUIRED:
                raise DipmTypeError(f"{call.func}() is missing the argument '{name}'", call.span,
                                    hint=f"{call.func}({', '.join(names)})")
            bound[name] = default
    return bound


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _from_call_site(error: DipmError, name: str, call_span: Span | None) -> DipmError:
    """Errors inside the standard library point at the user's call, not at library code."""
    if error.span is not None and _is_stdlib(error.span.file) and call_span is not None \
            and not _is_stdlib(call_span.file):
        return type(error)(f"in {name}(…): {error.message}", call_span, hint=error.hint)
    return error


def _base_dir(file: str) -> Path:
    if file.startswith("<"):
        return Path.cwd()
    return Path(file).resolve().parent


def _display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


COMMAND_LINE = Span("<command line>", 1, 1, 1, 1)


def _resolve_path(path: str, span: Span | None) -> str:
    """Relative paths in a script resolve against the script's own folder (SPEC §3)."""
    problem = path_problem(path)
    if problem:
        raise PathError(f"{path!r:.200}: {problem}", span)
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    base = _base_dir(span.file) if span is not None else Path.cwd()
    return str(absolute(base / p))


def read_source(path: Path) -> str:
    """A .dipm file's text: a regular file (FileProblem for a FIFO, a device, a folder, a file larger
    than MAX_SOURCE_BYTES), UTF-8 (a positioned error otherwise), a leading byte-order mark dropped."""
    data = read_bytes_limited(path, MAX_SOURCE_BYTES)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DipmSyntaxError(f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                              Span(_display_path(path), line, 1, line, 2)) from None


@lru_cache(maxsize=1)
def prelude_sources() -> dict[str, str]:
    """The standard library's files (stdlib/*.dipm) by their display name, read once."""
    return {f"<stdlib>/{path.name}": path.read_text(encoding="utf-8") for path in sorted(stdlib_dir().glob("*.dipm"))}


@lru_cache(maxsize=1)
def load_prelude() -> Module:
    """The standard library: its defs are in scope in every script (parsed once per process)."""
    prelude = Module("<stdlib>")
    for file, text in prelude_sources().items():
        for st in parse_script(text, file).statements:
            if not isinstance(st, ast.Def):
                raise DipmError(f"{file}: the standard library may only hold definitions")
            prelude.functions[st.name] = Function(st, prelude)
    return prelude
