"""What a REPL session did, as a script: the statements that succeeded and what each depends on.

An adapter saved from the REPL records its recipe like one saved by `dipm run`: the statements
that produced it, in order — the closure of the save over the names it reads, where each name
means the statement that defined it *at the time* (a later redefinition does not rewrite history).
"""

from __future__ import annotations

from dataclasses import dataclass

from dipm_lang.frontend import ast


@dataclass(frozen=True)
class Entry:
    text: str                 # the statement as dipm source
    needs: frozenset[int]     # the entries it depends on (indices)


class Transcript:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._defined: dict[str, int] = {}  # name -> the entry that defines it now

    def add(self, text: str, defines: set[str], uses: set[str]) -> None:
        """Record a statement that succeeded: the names it defines and the names it reads."""
        needs = frozenset(self._defined[name] for name in uses if name in self._defined)
        self.entries.append(Entry(text, needs))
        for name in defines:
            self._defined[name] = len(self.entries) - 1

    def script(self, final: str, uses: set[str]) -> str:
        """The statements `final` (a save) needs, in session order, followed by `final` itself."""
        wanted: set[int] = set()
        stack = [self._defined[name] for name in uses if name in self._defined]
        while stack:
            index = stack.pop()
            if index not in wanted:
                wanted.add(index)
                stack.extend(self.entries[index].needs)
        return "".join(self.entries[i].text + "\n" for i in sorted(wanted)) + final + "\n"


def free_names(node: object) -> set[str]:
    """Names a statement or expression reads (variables and called functions), minus a def's own
    parameters."""
    if isinstance(node, ast.Def):
        inner = free_names(node.body) | {n for p in node.params if p.default is not None for n in free_names(p.default)}
        return inner - {p.name for p in node.params}
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Call):
        names = {node.func}
        for arg in node.args:
            names |= free_names(arg)
        for kw in node.kwargs:
            names |= free_names(kw.value)
        return names
    if isinstance(node, ast.ListExpr):
        return set().union(*(free_names(i) for i in node.items)) if node.items else set()
    if isinstance(node, ast.BinOp):
        return free_names(node.left) | free_names(node.right)
    if isinstance(node, (ast.Neg,)):
        return free_names(node.operand)
    if isinstance(node, ast.Attr):
        return free_names(node.value)
    return set()
