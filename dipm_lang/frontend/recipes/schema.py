"""A recipe config's structure: read the YAML/TOML file, check its keys and values, resolve its paths.

Nothing here parses a dipm expression; every problem is a `ConfigError` pointing into the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dipm_lang.errors import ConfigError, DipmError, Span, did_you_mean
from dipm_lang.io.hub_ref import hub_input
from dipm_lang.ir.schedules import Ramp
from dipm_lang.ir.targets import TARGETS
from dipm_lang.ir.schedules import Where as Choose
from dipm_lang.frontend.recipes.positions import KeyPath, Where, load_toml, load_yaml
from dipm_lang.safety.files import FileProblem, absolute, path_problem, read_bytes_limited
from dipm_lang.safety.limits import MAX_CONFIG_BYTES

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
TOP_KEYS = ("inputs", "outputs", "parameters", "import", "defs")
OUTPUT_KEYS = ("expr", "rank", "energy", "max_rank", "target", "format")


def is_config(path: str | Path) -> bool:
    """Whether `path` names a YAML or TOML recipe (by its suffix)."""
    return Path(path).suffix.lower() in CONFIG_SUFFIXES


# ---- the recipe, checked -------------------------------------------------------------------


@dataclass
class Text:
    """A string from the config and the file offset of each of its characters (plus its end)."""

    value: str
    offsets: list[int]


@dataclass
class Output:
    path: Path
    expr: Text
    rank: int | None
    span: Span | None  # the output's key
    energy: float | None = None     # SPEC §7.6, next to rank
    max_rank: int | None = None
    target: str | None = None       # "vllm": written for vLLM's LoRA loader
    spans: dict[str, Span | None] = field(default_factory=dict)  # where each of these was given
    format: str | None = None       # SPEC §7.10: "kohya", "diffusers" or "peft" (save's format=, checked there)


@dataclass
class Recipe:
    file: str                 # as given (shown in messages)
    text: str
    inputs: dict[str, str]    # NAME -> absolute folder, or a Hub adapter's `hf://…` id (SPEC §7.5)
    outputs: list[Output]
    imports: list[tuple[str, Span | None]]
    defs: Text | None
    input_spans: dict[str, Span | None] = field(default_factory=dict)  # NAME -> its key in the config
    input_texts: dict[str, str] = field(default_factory=dict)          # NAME -> the folder as written
    parameters: dict[str, Any] = field(default_factory=dict)           # NAME -> a number or a schedule


def read_recipe(path: str | Path) -> Recipe:
    """Parse a YAML or TOML recipe and check its structure (no expression is parsed yet)."""
    file = str(path)
    try:
        data = read_bytes_limited(path, MAX_CONFIG_BYTES)
    except FileProblem as e:
        raise ConfigError(f"cannot read the config: {e}", file=file) from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ConfigError(f"the config is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                          file=file) from None
    if Path(path).suffix.lower() == ".toml":
        tree, where = load_toml(text, file)
    else:
        tree, where = load_yaml(text, file)
    return _check(tree, where, file, text, Path(path).resolve().parent)


def _check(tree: Any, where: "Where", file: str, text: str, base: Path) -> Recipe:
    def fail(message: str, key: KeyPath = (), hint: str | None = None):
        raise ConfigError(message, where.span(key), file=file, hint=hint)

    if not isinstance(tree, dict):
        fail(f"the config must be a mapping with 'inputs' and 'outputs', got {_kind(tree)}")
    for key in tree:
        if key not in TOP_KEYS:
            guess = did_you_mean(str(key), TOP_KEYS)
            fail(f"unknown key '{key}'", (key,), hint=f"did you mean '{guess}'?" if guess
                 else f"the keys are: {', '.join(TOP_KEYS)}")
    if "outputs" not in tree:
        fail("the config has no 'outputs': give at least one `folder: expression`")

    inputs_tree = tree.get("inputs") or {}
    if not isinstance(inputs_tree, dict):
        fail(f"'inputs' must map names to adapter folders, got {_kind(inputs_tree)}", ("inputs",))
    inputs: dict[str, Path] = {}
    for name, value in inputs_tree.items():
        if not isinstance(name, str) or not name.isidentifier():
            fail(f"input name {name!r} is not a valid name (letters, digits, '_')", ("inputs", name))
        if not isinstance(value, str) or not value:
            fail(f"input '{name}' must be an adapter folder (a string), got {_kind(value)}", ("inputs", name))
        if path_problem(value):
            fail(f"input '{name}': {path_problem(value)}", ("inputs", name))
        try:
            hub = hub_input(value, base_dir=base)
        except DipmError as e:  # a malformed hf:// id, or no huggingface_hub to read one
            fail(f"input '{name}': {e.message}", ("inputs", name), hint=e.hint)
        inputs[name] = str(hub) if hub is not None else str(absolute(base / Path(value).expanduser()))

    outputs_tree = tree["outputs"]
    if not isinstance(outputs_tree, dict) or not outputs_tree:
        fail("'outputs' must map output folders to expressions", ("outputs",))
    outputs: list[Output] = []
    for key, value in outputs_tree.items():
        at: KeyPath = ("outputs", key)
        if not isinstance(key, str) or not key:
            fail(f"an output folder must be a string, got {_kind(key)}", at)
        rank = energy = max_rank = target = format = None
        spans: dict[str, Span | None] = {}
        if isinstance(value, dict):
            for sub in value:
                if sub not in OUTPUT_KEYS:
                    fail(f"unknown key '{sub}' in output '{key}'", at + (sub,),
                         hint=f"an output has {', '.join(repr(k) for k in OUTPUT_KEYS)}")
            if "expr" not in value:
                fail(f"output '{key}' has no 'expr'", at)
            rank, energy, max_rank, target = (value.get(k) for k in ("rank", "energy", "max_rank", "target"))
            for name, number in (("rank", rank), ("max_rank", max_rank)):
                if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
                    fail(f"'{name}' of output '{key}' must be a positive whole number, got {number!r}", at + (name,))
            if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                       or not 0 < energy <= 1):
                fail(f"'energy' of output '{key}' must be a fraction with 0 < energy ≤ 1, got {energy!r}",
                     at + ("energy",), hint="the fraction of each module's squared norm to keep, e.g. 0.99")
            if rank is not None and energy is not None:
                fail(f"output '{key}' gives both 'rank' and 'energy'; give one", at + ("energy",),
                     hint="'max_rank' caps the ranks 'energy' keeps")
            if target is not None and target not in TARGETS:
                fail(f"'target' of output '{key}' must be one of {', '.join(TARGETS)}, got {target!r}", at + ("target",))
            format = value.get("format")
            if format is not None and not isinstance(format, str):
                fail(f"'format' of output '{key}' must be a string, got {_kind(format)}", at + ("format",))
            spans = {k: where.span(at + (k,)) for k in ("rank", "energy", "max_rank", "target", "format") if k in value}
            value, at = value["expr"], at + ("expr",)
        if not isinstance(value, str):
            fail(f"output '{key}' must be an expression (a string), got {_kind(value)}", at,
                 hint="quote the expression if it starts with '[' or '{'")
        if not value.strip():
            fail(f"output '{key}' has an empty expression", at)
        if path_problem(key):
            fail(f"output {key!r:.80}: {path_problem(key)}", ("outputs", key))
        outputs.append(Output(absolute(base / Path(key).expanduser()), Text(value, where.offsets(at, value)),
                              rank, where.span(("outputs", key)), energy, max_rank, target, spans, format))

    imports_tree = tree.get("import") or []
    if isinstance(imports_tree, str):
        imports_tree = [imports_tree]
    if not isinstance(imports_tree, list) or not all(isinstance(i, str) for i in imports_tree):
        fail("'import' must be a file name or a list of file names", ("import",))
    imports = [(item, where.span(("import",))) for item in imports_tree]

    defs = tree.get("defs")
    if defs is not None and not isinstance(defs, str):
        fail(f"'defs' must be dipm definitions (a string), got {_kind(defs)}", ("defs",))

    parameters_tree = tree.get("parameters") or {}
    if not isinstance(parameters_tree, dict):
        fail(f"'parameters' must map names to numbers or schedules, got {_kind(parameters_tree)}", ("parameters",))
    parameters = {}
    for name, value in parameters_tree.items():
        if not isinstance(name, str) or not name.isidentifier():
            fail(f"parameter name {name!r} is not a valid name (letters, digits, '_')", ("parameters", name))
        if name in inputs:
            fail(f"'{name}' is both an input and a parameter", ("parameters", name))
        try:
            parameters[name] = parameter_value(value)
        except ValueError as e:
            fail(f"parameter '{name}': {e}", ("parameters", name), hint=PARAMETER_SHAPES)
    return Recipe(file, text, inputs, outputs, imports, Text(defs, where.offsets(("defs",), defs)) if defs else None,
                  {name: where.span(("inputs", name)) for name in inputs}, dict(inputs_tree), parameters)


PARAMETER_SHAPES = ("a number (t: 0.3), a list for a gradient over the layers (t: [0, 0.5, 1]), or mergekit's "
                    "filtered list (t: [{filter: self_attn, value: [0, 1]}, {value: 0.5}])")


def parameter_value(value: Any) -> Any:
    """mergekit's parameter shapes (SPEC §7.2) as dipm values: a number; a list of numbers — a ramp;
    a list of `{filter, value}` entries — nested `where`s on the literal substring `filter` (`*` or no
    filter matches every module), the last entry the fallback."""
    if _is_number(value):
        return float(value)
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return Ramp(tuple(float(v) for v in value))
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        result: Any = None
        for entry in reversed(value):
            unknown = set(entry) - {"filter", "value"}
            if unknown or "value" not in entry:
                raise ValueError(f"an entry of a filtered list has keys {sorted(entry)}; it takes 'filter' and 'value'")
            piece = parameter_value(entry["value"])
            pattern = entry.get("filter")
            if pattern is not None and not isinstance(pattern, str):
                raise ValueError(f"a filter must be a string, got {_kind(pattern)}")
            if pattern in (None, "*"):
                result = piece  # matches every module: everything after it is unreachable
            elif result is None:
                raise ValueError("the last entry must have no filter (or filter: '*'): the value of the other modules")
            else:
                result = Choose(re.escape(pattern), piece, result)
        return result
    raise ValueError(f"expected {PARAMETER_SHAPES}, got {_kind(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


