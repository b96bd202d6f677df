"""Planning with base weights (SPEC §7.8), before any tensor is read.

- **The base**: `--base DIR` (`RunOptions.base`) or the program's own `base("DIR")` / config `base:`
  (`Program.base`; `--base` overrides it, as `--set` overrides a load's path). It is opened from its
  config, index and headers (`io/base_model.py`), confined to `--sandbox` file by file, and every
  module of the program is checked against it (name and shape), naming the module.
- **Which values are in DoRA's form** diag(c)·W0 + K: DoRA adapters' loads, `base(...)`, and every
  matrix computed from one (`form_nodes`). A save of such a value writes a DoRA adapter, so the
  decision is made here, from the program alone, the same for every batch.
- **Refusals**: an operator that leaves the form (`by="in"`, `lowrank`, `x.A`/`x.B`, the merge
  baselines other than `cat`) on a value in it; a DoRA adapter, a weight, `bake` or `extract`
  without a base. Each names the call's position.
- **extract**: the fine-tune and its base are opened and the modules chosen
  (`io/extract_source.py`), so an extracted LoRA plans like a loaded adapter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dipm_lang.errors import AdapterError, ExecutionError, UsageError
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ops.baselines import METHODS

BASE_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def source_key(node: Node) -> str:
    """The key of the input a `load` or `extract` node reads (`Plan.inputs`)."""
    if node.op == "load":
        return node.attr("path")
    return "extract:" + json.dumps(dict(node.attrs), sort_keys=True)


def source_nodes(program: Program) -> list[Node]:
    """The nodes that read an input: `load`s and `extract`s."""
    return [n for n in walk(program.all_roots()) if n.op in ("load", "extract")]


def needs_base(program: Program) -> list[Node]:
    """Nodes that cannot run without the base: `base()`, `bake`, `extract` without its own base."""
    return [n for n in walk(program.all_roots())
            if n.op in ("base", "bake") or (n.op == "extract" and n.attr("base") is None)]


def touched_modules(program: Program, sources: Mapping[str, Any],
                    modules: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """With a base, the modules of the inputs the outputs read (SPEC §7.8: only those are read).
    Without one, a module only an unused input has is a zero update and is left out of every output;
    with one, `W0 + x` there is not zero, so an unused binding (which the optimizer drops) must not
    add modules: the program means the same at every optimization level."""
    used = {source_key(n) for n in walk(program.roots) if n.op in ("load", "extract")}
    names = {name for key in used if key in sources for name in sources[key].modules}
    return {name: shape for name, shape in modules.items() if name in names}


def base_path(program: Program, options: Any) -> str | None:
    """The program's base folder: `--base` (options.base), else the program's own."""
    return getattr(options, "base", None) or program.base


def open_base(path: str, options: Any, span: Any = None):
    """Open (and, under --sandbox, confine file by file) a model folder (AdapterError naming the file)."""
    from dipm_lang.io.base_layout import weights_files
    from dipm_lang.io.base_model import open_base_model

    if options.sandbox is not None:
        options.sandbox.check_files(path, BASE_FILES, "base", span)
        if Path(path).is_dir():
            _, shards = weights_files(Path(path))
            options.sandbox.check_files(path, tuple(shards), "base", span)
    return open_base_model(path)


def form_nodes(program: Program, dora_loads: set[int]) -> frozenset[int]:
    """Ids of the nodes whose value is in DoRA's form: DoRA loads (`dora_loads`), `base()`, and the
    matrices computed from them (a magnitude is a vector, never a form)."""
    forms: set[int] = set()
    for node in walk(program.all_roots()):
        if node.op == "base" or (node.op == "load" and id(node) in dora_loads):
            forms.add(id(node))
        elif node.op == "list":
            if any(id(a) in forms for a in node.args):
                forms.add(id(node))
        elif (node.type.is_matrix or node.type.kind == "Unit") and any(id(a) in forms for a in node.args):
            forms.add(id(node))
    return frozenset(forms)


_LEAVE = {"lowrank": "the best rank-r approximation of diag(c)·W0 + K is not of that form",
          "factor": "a DoRA adapter's factors alone are not its update"}


def check_forms(program: Program, forms: frozenset[int]) -> None:
    """Refuse operators that leave DoRA's form on a value in it, before any tensor is read."""
    for node in walk(program.all_roots()):
        operands = [a for a in node.args if id(a) in forms]
        if not operands:
            continue
        span = program.spans.get(node)
        if node.attr("by") == "in" and node.op in ("dir", "mag", "unit_scale"):
            raise ExecutionError(f"{_name(node)}(…, by=\"in\") of a value in DoRA's form (a DoRA adapter or a "
                                 "weight): column norms of diag(c)·W0 + K leave the form", span,
                                 hint='use by="out" (DoRA\'s own axis) or by="matrix"')
        if node.op in _LEAVE:
            raise ExecutionError(f"{_name(node)} of a value in DoRA's form: {_LEAVE[node.op]}", span)
        if node.op == "save" and node.attr("target") is not None:
            raise ExecutionError("save of a value in DoRA's form (a DoRA adapter or a weight): it is written as a "
                                 "DoRA adapter, and target= is for LoRA results (vLLM serves no DoRA adapters)",
                                 span, hint="leave target= out; rank=N or energy=E truncate its low-rank part")
        if node.op in METHODS:
            raise ExecutionError(f"{node.op} merges LoRA updates; a DoRA adapter's update is diag(c)·W0 + K", span,
                                 hint="cat([...], w), + and k* combine DoRA updates exactly")


def _name(node: Node) -> str:
    return "x.A / x.B" if node.op == "factor" else node.op


def check_modules(base, modules: Mapping[str, tuple[int, int]], sources: Mapping[str, Any]) -> None:
    """Every module of the program exists in the base with the update's shape (AdapterError naming it)."""
    specs: dict[str, Any] = {}
    for source in sources.values():
        for name, info in source.modules.items():
            specs.setdefault(name, info)
    base.check_modules({name: specs.get(name, shape) for name, shape in modules.items()})


def require_base(program: Program, dora: list[tuple[Node, Any]]) -> tuple[AdapterError, Node] | None:
    """Without a base: weights, bake and extract are refused at their call (UsageError); for a DoRA
    input, the error to raise at its load (returned with the load node: the planner points it there)."""
    from dipm_lang.io.reader import DORA_HINT, DORA_MESSAGE

    if dora:
        node, source = dora[0]
        return AdapterError(DORA_MESSAGE, Path(source.path) / "adapter_config.json", hint=DORA_HINT), node
    for node in needs_base(program):
        what = {"base": "base() has no folder", "bake": "bake writes W0 + x and needs the base model",
                "extract": "extract without base= needs the program's base model"}[node.op]
        raise UsageError(f"{what}: give it with --base DIR", program.spans.get(node),
                         hint='or write base("DIR") in the script (a config: base: DIR)')
    return None
