"""Recipes as YAML or TOML configs: `dipm run recipe.yaml` / `dipm run recipe.toml`.

    inputs:                       # NAME: adapter folder
      H: adapters/helpful
      T: adapters/toxic
    outputs:                      # folder: expression, or {expr: …, rank: N}
      out/detox: recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H))
      out/avg:
        expr: 0.5 * H + 0.5 * T
        rank: 16
    import: [mylib.dipm]          # optional: dipm files whose defs are in scope
    defs: |                       # optional: dipm definitions (and bindings) inline
      def half(x) = 0.5 * x

Relative paths (inputs, outputs, imports) resolve against the config file's folder; `--set
NAME=PATH` overrides an input (relative to the working directory). Every output expression is
parsed with the grammar's `expression` start symbol and all of them are lowered into ONE
program, so common subexpressions are computed once across outputs.

Errors in an embedded expression point into the config file itself: each expression's
characters are mapped back to their offsets in the file (YAML node marks; for TOML, the key's
line found in the raw text), and every span of the parsed expression is moved there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dipm_lang.errors import CompileError, DipmError, Span, UsageError

if TYPE_CHECKING:
    from dipm_lang.safety.sandbox import Sandbox

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
TOP_KEYS = ("inputs", "outputs", "import", "defs")
OUTPUT_KEYS = ("expr", "rank")

KeyPath = tuple[str, ...]


class ConfigError(CompileError):
    """A malformed recipe config: exit code 2, pointing at the config file."""

    def __init__(self, message: str, span: Span | None = None, *, file: str, hint: str | None = None):
        super().__init__(message, span, hint=hint)
        self.file = file

    def __str__(self) -> str:
        return super().__str__() if self.span else f"{self.file}: error: {self.message}"


def is_config(path: str | Path) -> bool:
    """Whether `path` names a YAML or TOML recipe (by its suffix)."""
    return Path(path).suffix.lower() in CONFIG_SUFFIXES


def compile_any(path: str | Path, external: Mapping[str, Any] | None = None, *, level: int = 2,
                verify: bool = False, sandbox: "Sandbox | None" = None):
    """Compile a `.dipm` script or a YAML/TOML recipe (by suffix); returns `(program, report)`."""
    from dipm_lang.compiler import compile_file

    if is_config(path):
        return compile_config(path, external, level=level, verify=verify, sandbox=sandbox)
    return compile_file(path, external, level=level, verify=verify, sandbox=sandbox)


def compile_config(path: str | Path, sets: Mapping[str, Any] | None = None, *, level: int = 2,
                   verify: bool = False, sandbox: "Sandbox | None" = None):
    """Read, check and lower a recipe config into one optimized program; returns `(program, report)`."""
    from dipm_lang.passes.pipeline import optimize

    return optimize(lower_config(path, sets, sandbox=sandbox), level=level, verify=verify)


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


@dataclass
class Recipe:
    file: str                 # as given (shown in messages)
    text: str
    inputs: dict[str, Path]   # NAME -> absolute folder
    outputs: list[Output]
    imports: list[tuple[str, Span | None]]
    defs: Text | None
    input_spans: dict[str, Span | None] = field(default_factory=dict)  # NAME -> its key in the config
    input_texts: dict[str, str] = field(default_factory=dict)          # NAME -> the folder as written


def read_recipe(path: str | Path) -> Recipe:
    """Parse a YAML or TOML recipe and check its structure (no expression is parsed yet)."""
    file = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"the config is too large ({size} bytes; the limit is {MAX_CONFIG_BYTES})", file=file)
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config: {e.strerror or e}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"the config is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                          file=file) from None
    if Path(path).suffix.lower() == ".toml":
        tree, where = _load_toml(text, file)
    else:
        tree, where = _load_yaml(text, file)
    return _check(tree, where, file, text, Path(path).resolve().parent)


def _check(tree: Any, where: "_Where", file: str, text: str, base: Path) -> Recipe:
    def fail(message: str, key: KeyPath = (), hint: str | None = None):
        raise ConfigError(message, where.span(key), file=file, hint=hint)

    if not isinstance(tree, dict):
        fail(f"the config must be a mapping with 'inputs' and 'outputs', got {_kind(tree)}")
    for key in tree:
        if key not in TOP_KEYS:
            from dipm_lang.frontend.suggest import did_you_mean

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
        inputs[name] = (base / Path(value).expanduser()).resolve()

    outputs_tree = tree["outputs"]
    if not isinstance(outputs_tree, dict) or not outputs_tree:
        fail("'outputs' must map output folders to expressions", ("outputs",))
    outputs: list[Output] = []
    for key, value in outputs_tree.items():
        at: KeyPath = ("outputs", key)
        if not isinstance(key, str) or not key:
            fail(f"an output folder must be a string, got {_kind(key)}", at)
        rank = None
        if isinstance(value, dict):
            for sub in value:
                if sub not in OUTPUT_KEYS:
                    fail(f"unknown key '{sub}' in output '{key}'", at + (sub,), hint="an output has 'expr' and 'rank'")
            if "expr" not in value:
                fail(f"output '{key}' has no 'expr'", at)
            rank = value.get("rank")
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
                fail(f"'rank' of output '{key}' must be a positive whole number, got {rank!r}", at + ("rank",))
            value, at = value["expr"], at + ("expr",)
        if not isinstance(value, str):
            fail(f"output '{key}' must be an expression (a string), got {_kind(value)}", at,
                 hint="quote the expression if it starts with '[' or '{'")
        if not value.strip():
            fail(f"output '{key}' has an empty expression", at)
        outputs.append(Output((base / Path(key).expanduser()).resolve(), Text(value, where.offsets(at, value)),
                              rank, where.span(("outputs", key))))

    imports_tree = tree.get("import") or []
    if isinstance(imports_tree, str):
        imports_tree = [imports_tree]
    if not isinstance(imports_tree, list) or not all(isinstance(i, str) for i in imports_tree):
        fail("'import' must be a file name or a list of file names", ("import",))
    imports = [(item, where.span(("import",))) for item in imports_tree]

    defs = tree.get("defs")
    if defs is not None and not isinstance(defs, str):
        fail(f"'defs' must be dipm definitions (a string), got {_kind(defs)}", ("defs",))
    return Recipe(file, text, inputs, outputs, imports, Text(defs, where.offsets(("defs",), defs)) if defs else None,
                  {name: where.span(("inputs", name)) for name in inputs}, dict(inputs_tree))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


# ---- lowering ------------------------------------------------------------------------------


def lower_config(path: str | Path, sets: Mapping[str, Any] | None = None, *, sandbox: "Sandbox | None" = None):
    """The recipe as one un-optimized Program: every output a `save`, sharing one lowering."""
    from dipm_lang.compiler import save_statement
    from dipm_lang.frontend import ast
    from dipm_lang.frontend.lower import Lowerer, Module
    from dipm_lang.frontend.parser import parse_expression, parse_script

    recipe = read_recipe(path)
    sets = dict(sets or {})
    if sandbox is not None:  # here, where each input's key in the config is known
        for name, folder in recipe.inputs.items():
            if name not in sets:
                sandbox.check(folder, f"input '{name}'", recipe.input_spans.get(name),
                              written=recipe.input_texts.get(name))
    external: dict[str, Any] = {name: str(folder) for name, folder in recipe.inputs.items()}
    external.update(sets)  # --set wins, and resolves against the working directory (Lowerer)
    lowerer = Lowerer(external, sandbox=sandbox)
    lowerer.sources[recipe.file] = recipe.text
    module = Module(recipe.file, parent=lowerer.prelude)
    lines = _LineIndex(recipe.text)

    for item, span in recipe.imports:
        lowerer.lower_statement(ast.Import(item, span=span), module)
    if recipe.defs is not None:
        script = _embedded(recipe.defs, recipe.file, lines, lambda t, f: parse_script(t, f))
        for statement in script.statements:
            lowerer.lower_statement(statement, module, allow_effects=False)
    for output in recipe.outputs:
        expr = _embedded(output.expr, recipe.file, lines, lambda t, f: parse_expression(t, f))
        lowerer.lower_statement(save_statement(expr, str(output.path), output.rank, expr.span), module)

    unused = sorted(set(sets) - lowerer.used_external - set(recipe.inputs))
    if unused:
        from dipm_lang.frontend.suggest import did_you_mean

        guess = did_you_mean(unused[0], set(recipe.inputs) | lowerer.used_external)
        raise UsageError(f"--set {unused[0]}=…: the config has no input named '{unused[0]}'",
                         hint=f"did you mean '{guess}'?" if guess else None)
    return lowerer.program(recipe.text)


def _embedded(text: Text, file: str, lines: "_LineIndex", parse):
    """Parse config text with spans moved from the snippet's coordinates into the config file's."""
    snippet = _LineIndex(text.value)

    def move(span: Span) -> Span:
        start = text.offsets[min(snippet.offset(span.line, span.column), len(text.value))]
        end_at = snippet.offset(span.end_line, span.end_column)
        # the end is exclusive: map the last character and step past it
        end = text.offsets[end_at - 1] + 1 if 0 < end_at <= len(text.value) else start + 1
        line, column = lines.position(start)
        end_line, end_column = lines.position(max(end, start + 1))
        return Span(file, line, column, end_line, end_column)

    try:
        tree = parse(text.value, file)
    except DipmError as e:
        if e.span is not None and e.span.file == file:
            e.span = move(e.span)
        raise
    return _move_spans(tree, move)


def _move_spans(node: Any, move) -> Any:
    """Rebuild an AST (frozen dataclasses) with every `Span` passed through `move`."""
    if isinstance(node, Span):
        return move(node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: _move_spans(getattr(node, f.name), move) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    if isinstance(node, tuple):
        return tuple(_move_spans(item, move) for item in node)
    return node


class _LineIndex:
    """1-based (line, column) ↔ offset in a text."""

    def __init__(self, text: str):
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.length = len(text)

    def offset(self, line: int, column: int) -> int:
        line = max(1, min(line, len(self.starts)))
        return max(0, min(self.starts[line - 1] + column - 1, self.length))

    def position(self, offset: int) -> tuple[int, int]:
        import bisect

        line = bisect.bisect_right(self.starts, offset)
        return line, offset - self.starts[line - 1] + 1


def _align(value: str, text: str, start: int, end: int) -> list[int]:
    """The offset in `text[start:end]` of each character of `value` (and of its end).

    The source spells the value in order, with extra characters between (quotes, escapes,
    indentation, folded newlines), so a greedy scan finds each character; one that cannot be
    found (an escape such as `\\t`) keeps the previous position.
    """
    offsets: list[int] = []
    i = start
    for ch in value:
        j = text.find(ch, i, end)
        if j < 0:
            offsets.append(offsets[-1] if offsets else start)
            continue
        offsets.append(j)
        i = j + 1
    offsets.append(i)
    return offsets


# ---- where things are: YAML ------------------------------------------------------------------


class _Where:
    """Positions of keys and string values in the config text, by key path."""

    def __init__(self, text: str, file: str):
        self.text = text
        self.file = file
        self.lines = _LineIndex(text)

    def span(self, path: KeyPath) -> Span | None:
        found = self.key_at(path) if path else None
        if found is None:
            return None
        start, end = found
        line, column = self.lines.position(start)
        end_line, end_column = self.lines.position(max(end, start + 1))
        if end_line != line:
            end_line, end_column = line, column + 1
        return Span(self.file, line, column, end_line, end_column)

    def offsets(self, path: KeyPath, value: str) -> list[int]:
        found = self.value_at(path)
        if found is None:  # not located: everything points at the key (or the file's start)
            span = self.span(path[:-1] or path)
            start = self.lines.offset(span.line, span.column) if span else 0
            return [start] * (len(value) + 1)
        return _align(value, self.text, *found)

    def key_at(self, path: KeyPath) -> tuple[int, int] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def value_at(self, path: KeyPath) -> tuple[int, int] | None:  # pragma: no cover - abstract
        raise NotImplementedError


class _YamlWhere(_Where):
    def __init__(self, text: str, file: str, root: Any):
        super().__init__(text, file)
        self.keys: dict[KeyPath, Any] = {}
        self.values: dict[KeyPath, Any] = {}
        self._index(root, ())

    def _index(self, node: Any, path: KeyPath) -> None:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            sub = path + (key_node.value,)
            self.keys.setdefault(sub, key_node)
            self.values.setdefault(sub, value_node)
            self._index(value_node, sub)

    def key_at(self, path: KeyPath) -> tuple[int, int] | None:
        node = self.keys.get(tuple(str(p) for p in path))
        return (node.start_mark.index, node.end_mark.index) if node is not None else None

    def value_at(self, path: KeyPath) -> tuple[int, int] | None:
        import yaml

        node = self.values.get(tuple(str(p) for p in path))
        if not isinstance(node, yaml.ScalarNode):
            return None
        start, end = node.start_mark.index, node.end_mark.index
        if node.style in ('"', "'"):
            start += 1
        elif node.style in ("|", ">"):
            newline = self.text.find("\n", start, end)
            start = newline + 1 if newline >= 0 else start
        return start, end


def _load_yaml(text: str, file: str) -> tuple[Any, _Where]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise ConfigError("reading YAML recipes needs PyYAML (pip install pyyaml)", file=file) from None
    lines = _LineIndex(text)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_yaml_graph(root, file)
        _check_duplicates(root, file, lines)
        tree = yaml.SafeLoader("").construct_document(root) if root is not None else None
    except RecursionError:  # the composer recurses once per level of nesting
        raise ConfigError("the config is nested too deeply", file=file) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        span = Span(file, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2) if mark else None
        raise ConfigError(f"invalid YAML: {e.problem or e.context}", span, file=file) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None
    return tree, _YamlWhere(text, file, root)


MAX_CONFIG_BYTES = 4 * 2**20   # a recipe is a few hundred bytes; this bounds what a hostile one costs
MAX_CONFIG_VALUES = 100_000    # values in the config once YAML aliases are expanded
MAX_CONFIG_DEPTH = 64          # nesting, aliases expanded (a recipe needs 3 levels)


def _check_yaml_graph(root: Any, file: str) -> None:
    """Refuse alias bombs ("billion laughs"), recursive aliases and deep nesting, before anything
    walks the node graph: each alias is a reference, so a walk may visit one node exponentially often.

    One iterative depth-first pass measures every distinct node's expanded size and height once.
    """
    import yaml

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.MappingNode):
            return [item for pair in node.value for item in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    def fail(message: str, node: Any) -> ConfigError:
        mark = node.start_mark
        return ConfigError(message, Span(file, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2),
                           file=file)

    if root is None:
        return
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, not yet finished: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            kids = children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if size[key] > MAX_CONFIG_VALUES:
                raise fail(f"the config expands to more than {MAX_CONFIG_VALUES} values (through YAML aliases)",
                           node)
            if height[key] > MAX_CONFIG_DEPTH:
                raise fail(f"the config is nested more than {MAX_CONFIG_DEPTH} levels deep", node)
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise fail("a YAML alias refers to a value that contains it (a recursive alias)", node)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children(node)) if id(child) not in size)


def _check_duplicates(node: Any, file: str, lines: _LineIndex) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    mark = key.start_mark
                    raise ConfigError(f"duplicate key '{key.value}'", Span(file, mark.line + 1, mark.column + 1,
                                      mark.line + 1, mark.column + 1 + len(key.value)), file=file)
                seen.add(key.value)
            _check_duplicates(value, file, lines)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, file, lines)


# ---- where things are: TOML ------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_SIMPLE_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED_KEY = rf"{_SIMPLE_KEY}(?:[ \t]*\.[ \t]*{_SIMPLE_KEY})*"
_HEADER = re.compile(rf"^[ \t]*\[(?!\[)[ \t]*(?P<key>{_DOTTED_KEY})[ \t]*\][ \t]*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^[ \t]*(?P<key>{_DOTTED_KEY})[ \t]*=[ \t]*")
_INLINE_KEY = re.compile(rf"[{{,][ \t]*(?P<key>{_DOTTED_KEY})[ \t]*=[ \t]*")


def _split_key(key: str) -> KeyPath:
    parts = re.findall(_SIMPLE_KEY, key)
    out = []
    for part in parts:
        if part.startswith('"'):
            out.append(json.loads(part))  # TOML basic-string escapes are JSON's (plus \e, \x: rare in keys)
        elif part.startswith("'"):
            out.append(part[1:-1])
        else:
            out.append(part)
    return tuple(out)


class _TomlWhere(_Where):
    """TOML parsers give no positions: find each key's line in the raw text."""

    def __init__(self, text: str, file: str):
        super().__init__(text, file)
        self.keys: dict[KeyPath, tuple[int, int, int]] = {}  # path -> key start, key end, value start
        table: KeyPath = ()
        offset = 0
        in_string: str | None = None
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            if in_string is not None:  # inside a multi-line string: not keys
                if body.count(in_string) % 2 == 1:
                    in_string = None
                offset += len(line)
                continue
            header = _HEADER.match(body)
            if header:
                table = _split_key(header["key"])
                self.keys.setdefault(table, (offset + header.start("key"), offset + header.end("key"), -1))
            else:
                match = _KEY_LINE.match(body)
                if match:
                    path = table + _split_key(match["key"])
                    self.keys.setdefault(path, (offset + match.start("key"), offset + match.end("key"),
                                                offset + match.end()))
                    rest = body[match.end():]
                    if rest.startswith("{"):
                        for inner in _INLINE_KEY.finditer(rest):
                            self.keys.setdefault(path + _split_key(inner["key"]),
                                                 (offset + match.end() + inner.start("key"),
                                                  offset + match.end() + inner.end("key"),
                                                  offset + match.end() + inner.end()))
                    for quote in ('"""', "'''"):
                        if rest.startswith(quote) and rest.count(quote) == 1:
                            in_string = quote
            offset += len(line)

    def key_at(self, path: KeyPath) -> tuple[int, int] | None:
        found = self.keys.get(tuple(str(p) for p in path))
        return found[:2] if found else None

    def value_at(self, path: KeyPath) -> tuple[int, int] | None:
        found = self.keys.get(tuple(str(p) for p in path))
        if not found or found[2] < 0:
            return None
        start = found[2]
        for quote in ('"""', "'''", '"', "'"):
            if self.text.startswith(quote, start):
                start += len(quote)
                if len(quote) == 3:
                    if self.text.startswith("\n", start):  # TOML trims a newline right after """
                        start += 1
                    elif self.text.startswith("\r\n", start):
                        start += 2
                    end = self.text.find(quote, start)
                    return start, (end if end >= 0 else len(self.text))
                newline = self.text.find("\n", start)
                return start, (newline if newline >= 0 else len(self.text))
        return None


def _load_toml(text: str, file: str) -> tuple[Any, _Where]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover
            raise ConfigError("reading TOML recipes on Python 3.10 needs tomli (pip install tomli)",
                              file=file) from None
    try:
        tree = tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per level of nested arrays and inline tables
        raise ConfigError("the config is nested too deeply", file=file) from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        span = None
        if found:
            line, column = int(found[1]), int(found[2])
            span = Span(file, line, column, line, column + 1)
            message = message[:found.start()].rstrip()
        raise ConfigError(f"invalid TOML: {message}", span, file=file) from None
    return tree, _TomlWhere(text, file)
