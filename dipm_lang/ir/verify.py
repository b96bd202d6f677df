"""The IR verifier: every node well-typed by the op table, roots are saves, no cycles.

Runs after every pass in tests (and with `--verify` in the CLI), so a pass that breaks the
program's meaning at the type level is caught where it happens.
"""

from __future__ import annotations

from dipm_lang.ir.node import Program, walk
from dipm_lang.ir.ops import IRTypeError, infer_type
from dipm_lang.ir.types import UNIT


class VerifyError(Exception):
    """The IR is malformed: a compiler bug, never a user error."""


def verify(program: Program, *, after: str = "") -> None:
    where = f" after {after}" if after else ""
    for node in walk(program.all_roots()):
        try:
            expected = infer_type(node.op, [a.type for a in node.args], dict(node.attrs))
        except IRTypeError as e:
            raise VerifyError(f"ill-formed node {node.op}{where}: {e}") from None
        if expected != node.type:
            raise VerifyError(f"node {node.op}{where} has type {node.type}, but its operands give {expected}")
        if node.op == "save" and node not in program.roots:
            raise VerifyError(f"a save node{where} is not a root")
    for root in program.roots:
        if root.type != UNIT or root.op != "save":
            raise VerifyError(f"root {root.op}{where} is not a save")
    paths = [r.attr("path") for r in program.roots]
    if len(paths) != len(set(paths)):
        raise VerifyError(f"two saves to one path{where}")
