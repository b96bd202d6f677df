"""The REPL's session: bindings kept across inputs, `:commands`, evaluation, completion.

This module knows nothing about terminals: `Session.handle(text)` takes one complete input
(a statement, several, or a `:command`) and writes to the session's streams. The terminal
front end (prompt_toolkit, or a plain line reader when stdin is not a terminal) lives in
`dipm_lang.cli.repl`.

Every input is lowered by one long-lived `Lowerer` into one `Module`, so `h = load(...)` and
`def`s stay in scope. An expression computes only what it needs: it becomes the single named
result of a fresh `Program` (`Program.results`), which goes through the compiler's front door
(`compiler.Lowered`) and is executed over the modules of the adapters it reads, and is shown as
a summary, never as tensors.

The session keeps a transcript of the statements that succeeded, each with the names it defines
and the statements it depends on; an adapter saved from the REPL records, as its recipe, exactly
the statements that produced it (as a script would).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from dipm_lang.errors import (AdapterError, DipmError, DipmTypeError, NameResolutionError, UsageError, did_you_mean,
                              printable, render, render_warnings)
from dipm_lang.frontend import ast
from dipm_lang.frontend.lower import Lowerer
from dipm_lang.frontend.parser import parse_expression, parse_script
from dipm_lang.frontend.printer import format_string, print_expr, print_statement
from dipm_lang.io.hub_ref import HF_SCHEME, hub_input, is_hub_path, library_problem
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.node import Node, Program
from dipm_lang.ir.numbers import NotConstant, const_eval
from dipm_lang.ir.types import UNIT
from dipm_lang.ops import OPERATORS
from dipm_lang.repl.transcript import Transcript, free_names
from dipm_lang.run import RunOptions

FUNCTIONS = OPERATORS.callables()

PYTHON_HABITS = {
    **{word: ":quit (or Ctrl-D) leaves the REPL" for word in ("exit", "exit()", "quit", "quit()")},
    **{word: ":help lists the commands; :doc NAME documents an operator or function" for word in ("help", "help()")},
}

_PLAIN_KINDS = ("Num", "Str")

OPERATOR_DOCS = {
    "+": "x + y — Delta + Delta → Delta (exact: factors concatenate, ranks add); "
         "Mag + Mag (same by) or Mag + Num → Mag (elementwise); Num + Num → Num.",
    "-": "x - y, -x — like +; -x negates (a negated Dir is a Delta; reverse(d) keeps a Dir).",
    "*": "k * x, x * k — a Delta scaled by a number; Mag * Mag or Mag * Num elementwise; Num * Num.",
    "/": "x / k — a Delta divided by a number; Mag / Mag or Mag / Num elementwise; Num / Num.",
}


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    run: Callable[["Session", str, str, int], bool | None]  # (session, args, raw input, args offset)


class Session:
    """One REPL session: its names, its options, and what it prints."""

    def __init__(self, options: RunOptions | None = None, *, out: TextIO | None = None,
                 err: TextIO | None = None):
        self.options = options or RunOptions(progress=False)
        self.options.progress = False
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lowerer = Lowerer(sandbox=self.options.sandbox)  # --sandbox: load, save, import stay inside
        self.module = self.lowerer.module("<repl>", "")
        self.transcript = Transcript()
        self.inputs_seen = 0
        self.errors = 0
        self.last_exit_code = 0
        self._adapters: dict[tuple, tuple[tuple, Any]] = {}  # (path, family) -> (file stamps, AdapterSource)

    # ---- the one entry point ---------------------------------------------------------

    def handle(self, text: str) -> bool:
        """Run one complete input; errors are printed, never raised. False means: quit."""
        if not text.strip() or text.strip().startswith("#"):
            return True
        hint = PYTHON_HABITS.get(text.strip())
        if hint is not None:  # `exit`, `quit()`, `help`: what a Python user types first
            self.say(hint)
            return True
        self.inputs_seen += 1
        file = f"<input-{self.inputs_seen}>"
        self.lowerer.begin_input(file, text)
        values, functions = dict(self.module.values), dict(self.module.functions)
        try:
            stripped = text.lstrip()
            if stripped.startswith(":"):
                return self._command(text) is not False
            self._statements(text, file)
        except AdapterError as e:  # `save(...)` over an existing folder: say how to force it from here
            self.module.values, self.module.functions = values, functions
            if "(use --force to replace it)" in e.message:
                e.message = e.message.replace("(use --force to replace it)",
                                              "(:save EXPR PATH --force replaces it from the REPL)")
            self._error(e)
        except DipmError as e:
            self.module.values, self.module.functions = values, functions  # an error changes no binding
            self._error(e)
        except KeyboardInterrupt:
            self.module.values, self.module.functions = values, functions
            raise
        except Exception as e:  # a bug: report it, keep the session
            self.module.values, self.module.functions = values, functions
            self.errors += 1
            self.last_exit_code = 1
            print(printable(f"internal error: {type(e).__name__}: {e}"), file=self.err)
        return True

    def _warnings(self) -> None:
        if self.lowerer.warnings:
            print(render_warnings(self.lowerer.warnings, self.lowerer.sources), file=self.err)
            self.lowerer.warnings.clear()

    def _error(self, error: DipmError) -> None:
        self.errors += 1
        self.last_exit_code = error.exit_code
        print(render(error, self.lowerer.sources), file=self.err)

    def say(self, text: str = "") -> None:
        print(printable(text), file=self.out)

    # ---- statements ------------------------------------------------------------------

    def _statements(self, text: str, file: str) -> None:
        script = parse_script(text, file)
        for statement in script.statements:
            if isinstance(statement, ast.Binding):
                node = self.lowerer.statement(statement, self.module)
                self._warnings()
                self.say(self._describe_binding(statement.name, node))
                self.transcript.add(print_statement(statement), {statement.name}, free_names(statement.value))
            elif isinstance(statement, ast.Def):
                self.lowerer.statement(statement, self.module)
                self._warnings()
                self.say(f"defined {_signature(self.module.function(statement.name).definition)}")
                self.transcript.add(print_statement(statement), {statement.name}, free_names(statement))
            elif isinstance(statement, ast.Import):
                before = set(self.module.functions) | set(self.module.values)
                self.lowerer.statement(statement, self.module)
                self._warnings()
                new = sorted((set(self.module.functions) | set(self.module.values)) - before)
                self.say(f"imported {', '.join(new) if new else 'nothing new'}")
                self.transcript.add(print_statement(statement), set(new), set())
            else:
                node = self.lowerer.statement(statement, self.module, allow_values=True)
                self._warnings()
                if node.type == UNIT:
                    self._save(node, self.transcript.script(print_statement(statement), free_names(statement.expr)))
                else:
                    self.show(node)

    def _describe_binding(self, name: str, node: Node | None, *, path: str | None = None) -> str:
        """`name: Type`, or for an adapter what it holds (the adapter is opened and validated)."""
        if node is not None and node.op != "load":
            return f"{name}: {node.type}"
        path = node.attr("path") if node is not None else path
        if path is None:
            raise UsageError(f"'{name} = load()' has no path here; write load(\"folder\") or :load {name} PATH",
                             self.lowerer.spans.get(node))
        info = self.adapter(path)
        ranks = sorted({m.rank for m in info.modules.values()})
        rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}–{ranks[-1]}"
        return (f"{name}: Delta  ← {_display(path)} ({len(info.modules)} modules, {rank}, "
                f"{str(info.dtype).removeprefix('torch.')})")

    def show(self, node: Node) -> None:
        """Compute a value and print its summary; `_` names the last value."""
        from dipm_lang.report.summary import summarize

        self.say(summarize(node.type, self.evaluate(node)))
        self.module.values["_"] = node

    def _save(self, save: Node, script: str) -> None:
        """Run one save; `script` (the statements that produced it) is its recorded recipe."""
        from dipm_lang.run import run_program

        program = self._program(roots=[save], text=script)
        summary = run_program(program, self.options, quiet=True)
        self.say(summary.text())

    # ---- evaluation ------------------------------------------------------------------

    def evaluate(self, node: Node) -> dict[str, Any]:
        """module name → value of `node` (for plain values, one entry "*")."""
        kind, item = node.type.kind, node.type.item
        if kind in _PLAIN_KINDS or (kind == "List" and (item is None or item.kind in _PLAIN_KINDS)):
            try:
                return {"*": const_eval(node)}
            except NotConstant:
                pass
        if kind == "List" and node.op == "list":
            keys = [f"_{i}" for i in range(len(node.args))]
            results = self._execute(dict(zip(keys, node.args)))
            names = sorted({name for k in keys for name in results[k]}, key=_natural)
            return {name: [results[k][name] for k in keys] for name in names}
        return self._execute({"_": node})["_"]

    def _execute(self, results: dict[str, Node]) -> dict[str, dict[str, Any]]:
        from dipm_lang.run import execute

        program, _ = self.compile(results=results)
        return execute(self._plan(program), self.options).results

    def compile(self, *, roots: list[Node] | None = None, results: dict[str, Node] | None = None,
                text: str = "", verify: bool = False):
        """Through the compiler's front door: this session's program for `roots` / `results`."""
        from dipm_lang.compiler import Lowered, compile

        return compile(Lowered(self._program(roots=roots, results=results, text=text)), verify=verify)

    def _program(self, *, roots: list[Node] | None = None, results: dict[str, Node] | None = None,
                 text: str = "") -> Program:
        return self.lowerer.program(text, roots=list(roots or []), results=results).replace(inputs={})

    def _plan(self, program: Program):
        """runtime.plan, with adapters opened once per session (re-opened when their files change)."""
        from dipm_lang.run import plan

        return plan(program, self.options, check_outputs=False, opener=self.adapter)

    def adapter(self, path: str, family: str | None = None):
        """The opened adapter at `path` (validated; cached while its files are unchanged); `family`
        as `load(…, family=)` gives it, for LoRA files of image models. A Hub adapter is fetched once
        per session: its files come from one commit, which does not change."""
        from dipm_lang.io.sources import open_source

        self.check_readable(path)
        if is_hub_path(path):
            if (path, None) not in self._adapters:  # huggingface_hub shows its download bars
                self._adapters[(path, None)] = ((), open_source(path))
            return self._adapters[(path, None)][1]
        stamp = _stamp(path)
        cached = self._adapters.get((path, family))
        if cached is not None and cached[0] == stamp and stamp:
            return cached[1]
        info = open_source(path, family=family)
        self._adapters[(path, family)] = (stamp, info)
        return info

    def check_readable(self, path: str) -> None:
        """Under --sandbox, the adapter folder `path` and the files in it must lie inside the sandbox."""
        from dipm_lang.io.layout import ADAPTER_FILES

        if self.options.sandbox is not None and is_hub_path(path):
            self.options.sandbox.check_hub(path, "load")
        elif self.options.sandbox is not None:
            self.options.sandbox.check_files(path, ADAPTER_FILES, "load")

    # ---- :commands -------------------------------------------------------------------

    def _command(self, text: str) -> bool | None:
        stripped = text.lstrip()
        match = re.match(r":(\w*)", stripped)
        word = match.group(1)
        command = COMMANDS.get(ALIASES.get(word, word))
        if command is None:
            guess = did_you_mean(word, list(COMMANDS) + list(ALIASES))
            raise UsageError(f"unknown command ':{word}'",
                             hint=(f"did you mean ':{guess}'? " if guess else "") + ":help lists the commands")
        offset = len(text) - len(stripped) + match.end()
        args = text[offset:]
        lead = len(args) - len(args.lstrip())
        return command.run(self, args.strip(), text, offset + lead)

    def _lower_arg(self, raw: str, offset: int, what: str) -> Node:
        """Lower the expression that starts at `offset` of the raw input; spans point into it."""
        if not raw[offset:].strip():
            raise UsageError(f"{what}: an expression is missing")
        file = f"<input-{self.inputs_seen}>"
        # Blank out what precedes the expression so columns match the line the user typed.
        text = re.sub(r"[^\n]", " ", raw[:offset]) + raw[offset:]
        return self.lowerer.lower_expr(parse_expression(text, file), {}, self.module)

    def names(self) -> dict[str, str]:
        """Completion candidates: name → a short description."""
        out: dict[str, str] = {}
        for name, op in FUNCTIONS.items():
            out[name] = op.signature
        module = self.module
        while module is not None:
            for name, function in module.functions.items():
                out.setdefault(name, _signature(function.definition))
            for name, node in module.values.items():
                out.setdefault(name, str(node.type))
            module = module.parent
        return out

    def completions(self, before: str) -> list[tuple[str, int, str]]:
        """(completion, start position relative to the cursor, description) for the text before the cursor."""
        line = before.rsplit("\n", 1)[-1]
        command = re.fullmatch(r"\s*:(\w*)", line) if "\n" not in before else None
        if command:
            word = command.group(1)
            return [(f":{c.name}", -len(word) - 1, c.help) for c in COMMANDS.values() if c.name.startswith(word)]
        string = _open_string(line)
        if string is not None:
            return _hub_completions(string) + _path_completions(string)
        path_arg = re.match(r"\s*:(?P<cmd>load\s+\w+|inspect|save\s+.+)\s+(?:\S+\s+)*?(?P<path>\S*)$", line)
        word = re.search(r"[A-Za-z_]\w*$", line)
        prefix = word.group(0) if word else ""
        if path_arg:
            partial = path_arg.group("path")
            hub = _hub_completions(partial) if not path_arg.group("cmd").startswith("save") else []
            if path_arg.group("cmd").startswith("load") or "/" in partial or partial.startswith(("~", ".")):
                return hub + _path_completions(partial)
            if hub:
                return hub
        if not prefix:
            return []
        candidates = self.names()
        candidates.update({"def": "define a function", "import": "import a .dipm file"})
        return [(name, -len(prefix), meta) for name, meta in sorted(candidates.items())
                if name.startswith(prefix) and name != prefix]


# ---- the commands --------------------------------------------------------------------

def _cmd_type(session: Session, args: str, raw: str, offset: int) -> None:
    name = args.strip()
    if name.isidentifier() and session.module.value(name) is None:
        if name in FUNCTIONS:
            session.say(FUNCTIONS[name].signature)
            return
        function = session.module.function(name)
        if function is not None:
            session.say(f"{_signature(function.definition)} (a function; its types follow its arguments)")
            return
    session.say(str(session._lower_arg(raw, offset, ":type").type))


def _cmd_explain(session: Session, args: str, raw: str, offset: int) -> None:
    from dipm_lang.ir.graph import print_program

    node = session._lower_arg(raw, offset, ":explain")
    program, report = session.compile(results={"_": node}, verify=True)
    steps = "".join(f" → {p['nodes']} after {p['name']}" for p in report.passes)
    session.say(f"{node.type}; nodes: {report.nodes_before} as written{steps}")
    for note in program.notes:
        session.say(f"  {note}")
    session.say(print_program(program, relative_to=Path.cwd()))


def _cmd_doc(session: Session, args: str, raw: str, offset: int) -> None:
    name = args.strip()
    if not name:
        session.say("built-in operators:")
        for op in FUNCTIONS.values():
            session.say(f"  {op.signature}\n      {op.doc}")
        session.say("standard library:")
        for fname, function in sorted(session.lowerer.prelude.functions.items()):
            session.say(f"  {_signature(function.definition)}\n      {_first_sentence(function.doc)}")
        session.say("operators: + - * / (see :doc +)")
        return
    if name in OPERATOR_DOCS:
        session.say(OPERATOR_DOCS[name])
        return
    if name in FUNCTIONS:
        op = FUNCTIONS[name]
        session.say(f"{op.signature}\n  {op.doc}")
        return
    function = session.module.function(name)
    value = session.module.value(name)
    if value is not None:
        where = f"  ← load({format_string(_display(value.attr('path')))})" if value.op == "load" else ""
        session.say(f"{name}: {value.type}{where}")
        return
    if function is not None:
        doc = function.doc or "(no documentation: write # comment lines directly above the def)"
        origin = "standard library" if function.module is session.lowerer.prelude else "defined in this session"
        session.say(f"{_signature(function.definition)}    [{origin}]\n" +
                    "\n".join(f"  {line}" for line in doc.splitlines()))
        return
    guess = did_you_mean(name, list(session.names()) + list(OPERATOR_DOCS))
    raise NameResolutionError(f":doc: no function, operator or name '{name}'",
                              hint=f"did you mean '{guess}'?" if guess else ":doc alone lists everything")


def _cmd_inspect(session: Session, args: str, raw: str, offset: int) -> None:
    from dipm_lang.report.inspect import adapter_source, inspect_sources, value_source

    words = _split(args)
    if not words:
        raise UsageError(":inspect NAME [NAME …]: give bound names or adapter folders")
    sources = []
    for word in words:
        node = session.module.value(word) if word.isidentifier() else None
        if node is not None and node.op == "load" and node.attr("path"):
            session.check_readable(node.attr("path"))
            sources.append(adapter_source(node.attr("path"), label=word))
        elif node is not None:
            if not node.type.is_update:
                raise DipmTypeError(f":inspect: '{word}' is a {node.type}; only updates (Delta, Dir) can be "
                                    "inspected")
            sources.append(value_source(word, session.evaluate(node)))
        elif (hub := hub_input(word, base_dir=Path.cwd())) is not None:  # an adapter on the Hub (SPEC §7.5)
            session.check_readable(str(hub))
            sources.append(adapter_source(str(hub), label=word))
        elif Path(word).expanduser().exists():
            session.check_readable(str(Path(word).expanduser()))
            sources.append(adapter_source(str(Path(word).expanduser().resolve()), label=word))
        else:
            guess = did_you_mean(word, [n for n, v in session.module.values.items()])
            raise NameResolutionError(f":inspect: '{word}' is neither a bound name nor an adapter folder",
                                      hint=f"did you mean '{guess}'?" if guess else None)
    session.say(inspect_sources(sources).text())


def _cmd_save(session: Session, args: str, raw: str, offset: int) -> None:
    usage = ":save EXPR PATH [--rank N] [--force]"
    text = raw
    rank, force = None, False
    # options and the path are taken from the end; the rest is the expression
    while True:
        if m := re.search(r"\s+--force\s*$", text):
            force, text = True, text[:m.start()]
        elif m := re.search(r"\s+--rank(?:\s+|=)(\d+)\s*$", text):
            rank, text = int(m.group(1)), text[:m.start()]
        else:
            break
    m = re.search(r"\s+(\"[^\"]*\"|'[^']*'|\S+)\s*$", text)
    if m is None or m.start() < offset:
        raise UsageError(f"{usage}: the output folder is missing")
    path = m.group(1).strip("\"'")
    node = session._lower_arg(text[:m.start()], offset, ":save")
    if not node.type.is_update:
        raise DipmTypeError(f":save needs an update (Delta or Dir), got {node.type}", session.lowerer.spans.get(node))
    target = str(Path(path).expanduser().resolve())
    save = session.lowerer.emit("save", (node,), {"path": target, "rank": rank}, session.lowerer.spans.get(node))
    expr = parse_expression(re.sub(r"[^\n]", " ", text[:offset]) + text[offset:m.start()], "<save>")
    statement = ast.save_call(expr, path, rank)  # the recipe records the path as typed
    options = session.options
    previous, options.force = options.force, force or options.force
    try:
        session._save(save, session.transcript.script(print_statement(statement), free_names(expr)))
    finally:
        options.force = previous


def _cmd_load(session: Session, args: str, raw: str, offset: int) -> None:
    m = re.fullmatch(r"([A-Za-z_]\w*)\s+(.+)", args, re.S)
    if m is None:
        raise UsageError(":load NAME PATH: bind NAME to the adapter folder (or Hub id) PATH")
    name, path = m.group(1), m.group(2).strip().strip("\"'")
    if name in FUNCTIONS:
        raise NameResolutionError(f"'{name}' is a built-in operator and cannot be rebound")
    hub = hub_input(path, base_dir=Path.cwd())  # a Hub id (SPEC §7.5), or a folder
    target = str(hub) if hub is not None else str(Path(path).expanduser().resolve())
    session.say(session._describe_binding(name, None, path=target))  # opens and validates the adapter first
    session.lowerer.bind_input(name, target, session.module)
    session.transcript.add(f"{name} = load({format_string(path)})", {name}, set())  # the path as typed


def _cmd_names(session: Session, args: str, raw: str, offset: int) -> None:
    if not session.module.values and not session.module.functions:
        session.say("nothing bound yet; try  h = load(\"folder\")  or  :load h folder")
    for name, node in session.module.values.items():
        session.say(session._describe_binding(name, node) if node.op == "load" else f"{name}: {node.type}")
    for function in session.module.functions.values():
        session.say(f"{_signature(function.definition)}")


def _cmd_help(session: Session, args: str, raw: str, offset: int) -> None:
    session.say("Type a statement or an expression; an expression prints a summary of its value.")
    session.say("  h = load(\"adapters/helpful\")        bind a name (kept for the session)")
    session.say("  detox(h, bad, t=0.25)               compute and summarize (as `_` afterwards)")
    session.say("  save(detox(h, bad), \"out/detox\")    write an adapter")
    session.say("Brackets left open continue the input on the next line; Tab completes.")
    width = max(len(c.usage) for c in COMMANDS.values())
    for command in COMMANDS.values():
        session.say(f"  {command.usage.ljust(width)}  {command.help}")


def _cmd_quit(session: Session, args: str, raw: str, offset: int) -> bool:
    return False


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("type", ":type EXPR", "the type of an expression (computes nothing)", _cmd_type),
    Command("explain", ":explain EXPR", "the optimized plan of an expression", _cmd_explain),
    Command("doc", ":doc NAME", "documentation of an operator, stdlib function or name", _cmd_doc),
    Command("inspect", ":inspect NAME [NAME …]", "ranks, norms, magnitudes; direction cosines between several",
            _cmd_inspect),
    Command("save", ":save EXPR PATH [--rank N] [--force]", "write an expression as an adapter folder", _cmd_save),
    Command("load", ":load NAME PATH", "bind NAME to an adapter folder or a Hugging Face Hub id", _cmd_load),
    Command("names", ":names", "what this session has bound and defined", _cmd_names),
    Command("help", ":help", "this help", _cmd_help),
    Command("quit", ":quit", "leave (also Ctrl-D)", _cmd_quit),
]}
ALIASES = {"q": "quit", "exit": "quit", "h": "help", "t": "type", "d": "doc"}


# ---- helpers -----------------------------------------------------------------------------

def _signature(definition: ast.Def) -> str:
    params = [p.name if p.default is None else f"{p.name}={print_expr(p.default)}" for p in definition.params]
    return f"{definition.name}({', '.join(params)})"


def _first_sentence(doc: str | None, limit: int = 100) -> str:
    text = " ".join((doc or "").split())
    end = text.find(". ")
    text = text[:end + 1] if 0 < end < limit else text
    return textwrap.shorten(text, limit, placeholder=" …")


def _display(path: str | None) -> str:
    if path is None:
        return "?"
    if is_hub_path(path):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path


def _stamp(path: str) -> tuple:
    """Sizes and modification times of an adapter folder's files, or of a LoRA file (empty when unreadable)."""
    try:
        if Path(path).is_file():
            return ((Path(path).name, Path(path).stat().st_mtime_ns, Path(path).stat().st_size),)
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                            for p in Path(path).iterdir() if p.is_file()))
    except OSError:
        return ()


def _natural(name: str):
    return natural_key(name)


def _split(args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError as e:
        raise UsageError(f"cannot split the arguments: {e}") from None


def _open_string(line: str) -> str | None:
    """The text of a string literal left open at the end of `line`, if any."""
    quote, start, i = None, 0, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote, start = c, i + 1
        elif c == "#":
            return None
        i += 1
    return line[start:] if quote else None


def _hub_completions(partial: str) -> list[tuple[str, int, str]]:
    """The Hub adapters huggingface_hub's cache holds (`hf://org/name@rev/sub`), for a partial that
    starts spelling `hf://` (read from the cache alone; nothing without huggingface_hub)."""
    if not partial or not (partial.startswith(HF_SCHEME) or HF_SCHEME.startswith(partial)) \
            or library_problem() is not None:
        return []
    from huggingface_hub import constants

    from dipm_lang.io.hub import cached_adapter_ids

    try:
        ids = cached_adapter_ids(cache_dir=constants.HF_HUB_CACHE)
    except OSError:  # an unreadable cache: no completions, never an error while typing
        return []
    return [(found, -len(partial), "Hub adapter (cached)") for found in ids if found.startswith(partial)]


def _path_completions(partial: str) -> list[tuple[str, int, str]]:
    """Folders and files completing `partial` (folders end with /)."""
    folder, sep, stem = partial.rpartition("/")
    base = Path(os.path.expanduser(folder or "/")) if sep else Path(".")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(stem) and (stem.startswith(".") or not entry.name.startswith(".")):
            suffix = "/" if entry.is_dir() else ""
            meta = "adapter" if (entry / "adapter_config.json").exists() else ("folder" if suffix else "file")
            out.append((entry.name + suffix, -len(stem), meta))
    return out


def open_brackets(text: str) -> int:
    """How many ( and [ are still open at the end of `text` (strings and comments ignored)."""
    depth, quote, i = 0, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote or c == "\n":
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        i += 1
    return depth
