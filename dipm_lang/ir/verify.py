"""The IR verifier: every node well-typed by its operator's typing rule, roots are saves (or bakes,
SPEC §7.8: statements with an effect), no save shared by two roots. It runs after every pass in tests (`compile(..., verify=True)`), so a pass
that breaks the program's meaning at the type level is caught, and named, where it happens.
"""

from __future__ import annotations

from dipm_lang.ir.node import Program, walk
from dipm_lang.ir.operator import IRTypeError, OperatorTable
from dipm_lang.ir.types import UNIT


class VerifyError(Exception):
    """The IR is malformed: a compiler bug, never a user error."""


def verify(program: Program, operators: OperatorTable, *, after: str = "") -> None:
    where = f" after {after}" if after else ""
    for node in walk(program.all_roots()):
        op = operators.get(node.op)
        if op is None:
            raise VerifyError(f"unknown operator {node.op!r}{where}")
        attrs = dict(node.attrs)
        try:
            expected, normalised = op.type_of_node(node.args, attrs)
        except IRTypeError as e:
            raise VerifyError(f"ill-formed node {node.op}{where}: {e}") from None
        if expected != node.type:
            raise VerifyError(f"node {node.op}{where} has type {node.type}, but its operands give {expected}")
        if normalised != attrs:
            raise VerifyError(f"node {node.op}{where} has attributes {attrs}, but its typing rule makes {normalised}")
        if node.type == UNIT and node not in program.roots:
            raise VerifyError(f"a {node.op} node{where} is not a root")
    for root in program.roots:
        if root.type != UNIT or root.op not in ("save", "bake"):
            raise VerifyError(f"root {root.op}{where} is not a save")
    paths = [r.attr("path") for r in program.roots]
    if len(paths) != len(set(paths)):
        raise VerifyError(f"two saves to one path{where}")
