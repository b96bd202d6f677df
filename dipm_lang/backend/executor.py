"""The executor: runs an optimized Program over modules, group by group.

Every value in the language is a field over modules, and no operator mixes modules, so
the whole DAG runs for one *group* of modules at a time — modules of equal shape, equal
input ranks and equal module-selection outcome, stacked along a batch dim so each kernel
is one batched call. Within a group each value is freed after its last use (torch.fx's
interpreter idea); numbers and strings are computed once for all groups.

Failures are annotated with the node's source span and the module being processed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from dipm_lang.backend import lowrank as L
from dipm_lang.backend.context import GroupContext
from dipm_lang.backend.dora import DoraForm
from dipm_lang.backend.forms import DoraOutput
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import DipmError, ExecutionError
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.operator import OperatorTable

_GLOBAL_KINDS = ("Num", "Str")


@dataclass
class SaveResult:
    """What one `save` (or `bake`: any statement with an effect) produced: per-module factors and,
    with rank=N, the error dropped (with energy=, also per module)."""

    node: Node
    modules: dict[str, Any] = field(default_factory=dict)
    dropped_sq: float = 0.0
    total_sq: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)  # module -> relative error dropped (energy=)

    @property
    def relative_error(self) -> float:
        return math.sqrt(self.dropped_sq / self.total_sq) if self.total_sq > 0 else 0.0


@dataclass
class ExecutionResult:
    saves: list[SaveResult]
    results: dict[str, dict[str, Any]]  # named result -> module -> value


def _is_global(node: Node) -> bool:
    t = node.type
    return t.kind in _GLOBAL_KINDS or (t.kind == "List" and (t.item is None or t.item.kind in _GLOBAL_KINDS))


class Executor:
    """Interprets a Program with the operators' kernels (factored by default, dense for tests)."""

    def __init__(self, program: Program, operators: OperatorTable, *, loader: Callable[[Node, list[str]], Any],
                 eps: float = L.EPS, layers: int = 1,
                 dense: bool = False, on_group: Callable[[int], None] | None = None,
                 adapter: Callable[[Node], Any] | None = None,
                 factors: Callable[[Node, list[str]], Any] | None = None,
                 base: Callable[[list[str]], Any] | None = None,
                 magnitudes: Callable[[Node, list[str]], Any] | None = None,
                 in_form: Callable[[Node], bool] | None = None):
        self.program = program
        self.base = base  # names -> the batch's W0 (SPEC §7.8), when the program has base weights
        self.magnitudes = magnitudes  # (load node, names) -> a DoRA adapter's magnitudes, or None
        self.in_form = in_form or (lambda node: False)
        self.loader = loader
        self.adapter = adapter  # load node -> its AdapterInfo (for GroupContext.adapter)
        self.factors = factors  # (load node, names) -> LowRank, in both backends (GroupContext.factors)
        self.eps = eps
        self.layers = layers  # L for schedules (ramp) without `layers=`
        self.operators = operators
        self.dense = dense
        self.on_group = on_group
        # The operands a kernel reads (not an operator's `unevaluated` ones, which only the plan reads)
        self.operands: dict[int, list[Node | None]] = {}
        for node in walk(program.all_roots()):
            op = operators.get(node.op)
            read = op.evaluated(node.args) if op is not None else [True] * len(node.args)
            self.operands[id(node)] = [arg if keep else None for arg, keep in zip(node.args, read)]
        self.order = [n for n in walk(program.all_roots(), self._read_args) if id(n) in self.operands]
        self.uses: dict[int, int] = {}
        for node in self.order:
            for arg in self._read_args(node):
                self.uses[id(arg)] = self.uses.get(id(arg), 0) + 1
        self.globals: dict[int, Any] = {}

    # ---- running ----------------------------------------------------------------------

    def run(self, groups: Iterable[list[str]]) -> ExecutionResult:
        saves = [SaveResult(node) for node in self.program.roots]
        results: dict[str, dict[str, Any]] = {name: {} for name in self.program.results}
        for index, names in enumerate(groups):
            self._run_group(names, saves, results)
            if self.on_group:
                self.on_group(index + 1)
        return ExecutionResult(saves, results)

    def _run_group(self, names: list[str], saves: list[SaveResult], results: dict[str, dict[str, Any]]) -> None:
        factors = self.factors
        base, magnitudes = self.base, self.magnitudes
        ctx = GroupContext(names=names, eps=self.eps, load=lambda node: self.loader(node, names), layers=self.layers,
                           adapter=self.adapter,
                           factors=(lambda node: factors(node, names)) if factors is not None else None,
                           base=(lambda: base(names)) if base is not None else None,
                           magnitudes=(lambda node: magnitudes(node, names)) if magnitudes is not None else None,
                           in_form=self.in_form)
        values: dict[int, Any] = {}
        remaining = dict(self.uses)
        wanted = {id(n) for n in self.program.results.values()}
        for node in self.order:
            if id(node) in self.globals:
                values[id(node)] = self.globals[id(node)]
                continue
            if node.type.kind == "Unit":  # save, bake: (value, squared error dropped, squared total)
                save = next(s for s in saves if s.node is node)
                value, dropped_sq, total_sq, *per_module = self._apply(node, [values[id(node.args[0])]], ctx)
                if per_module:  # energy=: each module's own relative error, in batch order
                    save.errors.update(zip(names, per_module[0]))
                save.dropped_sq += dropped_sq
                save.total_sq += total_sq
                # one LowRank per module where the modules were truncated to different ranks
                save.modules.update(dict(zip(names, value)) if isinstance(value, list) else self._unbatch(value, names))
            else:
                args = [None if a is None else values[id(a)] for a in self.operands[id(node)]]
                values[id(node)] = self._apply(node, args, ctx)
                if _is_global(node):
                    self.globals[id(node)] = values[id(node)]
            for arg in self._read_args(node):  # free after last use
                remaining[id(arg)] -= 1
                if remaining[id(arg)] == 0 and id(arg) not in wanted:
                    values.pop(id(arg), None)
        for key, node in self.program.results.items():
            results[key].update(self._unbatch(values[id(node)], names))

    def _read_args(self, node: Node) -> tuple[Node, ...]:
        return tuple(a for a in self.operands.get(id(node), node.args) if a is not None)

    def _apply(self, node: Node, args: list, ctx: GroupContext) -> Any:
        kernel = self.operators.kernel(node.op, self.dense)
        if kernel is None:
            raise ExecutionError(f"no kernel for {node.op}", self.program.spans.get(node))
        try:
            return kernel(ctx, node, *args)
        except DipmError as e:
            if e.span is None and not getattr(e, "path", None):
                e.span = self.program.spans.get(node)
                e.message = f"{e.message} (module {ctx.names[0]})"
            raise
        except (RuntimeError, ValueError, IndexError) as e:
            raise ExecutionError(f"{node.op} failed on module {ctx.names[0]}: {e}",
                                 self.program.spans.get(node)) from e

    def _unbatch(self, value: Any, names: list[str]) -> dict[str, Any]:
        if self.dense:
            return {names[0]: value}
        if isinstance(value, LowRank):
            return {name: LowRank(value.B[i].contiguous(), value.A[i].contiguous()) for i, name in enumerate(names)}
        if isinstance(value, (DoraForm, DoraOutput)):
            return {name: value[i] for i, name in enumerate(names)}
        if isinstance(value, torch.Tensor):
            return {name: value[i] for i, name in enumerate(names)}
        return {name: value for name in names}
