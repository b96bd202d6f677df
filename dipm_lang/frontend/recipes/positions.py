"""Where each key and value of a YAML or TOML recipe sits in the file (for positioned errors), and
the loaders that parse the file with the limits a hostile config needs.

YAML gives node marks; TOML does not, so a TOML key's position is found in the raw text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dipm_lang.errors import ConfigError, Span

KeyPath = tuple[str, ...]


class LineIndex:
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


class Where:
    """Positions of keys and string values in the config text, by key path."""

    def __init__(self, text: str, file: str):
        self.text = text
        self.file = file
        self.lines = LineIndex(text)

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


class YamlWhere(Where):
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


def load_yaml(text: str, file: str) -> tuple[Any, Where]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise ConfigError("reading YAML recipes needs PyYAML (pip install pyyaml)", file=file) from None
    lines = LineIndex(text)
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
    return tree, YamlWhere(text, file, root)


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


def _check_duplicates(node: Any, file: str, lines: LineIndex) -> None:
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


class TomlWhere(Where):
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


def load_toml(text: str, file: str) -> tuple[Any, Where]:
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
    return tree, TomlWhere(text, file)
