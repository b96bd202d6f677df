"""The IR's own guarantees: interning, types in the key, the operator table's consistency."""

from __future__ import annotations

from dipm_lang.ir.node import Node
from dipm_lang.ir.types import DELTA, dir_t
from dipm_lang.ops import OPERATORS


def test_the_type_is_part_of_the_interning_key():
    """Asking for `dir(a)` typed Delta must not return the cached `Dir[out]` node (a v1 bug)."""
    a = Node.make("load", (), {"path": "/a", "name": "a"}, DELTA)
    typed = Node.make("dir", (a,), {"by": "out"}, dir_t("out"))
    other = Node.make("dir", (a,), {"by": "out"}, DELTA)
    assert other is not typed and other.type == DELTA and typed.type == dir_t("out")
    assert Node.make("dir", (a,), {"by": "out"}, dir_t("out")) is typed  # same computation, same node


def test_every_operator_is_declared_whole():
    """What each layer reads is there: callable operators have docs and a factored kernel (or are
    sugar), every simplify rule matches its own operator, every kernel-less operator is sugar or a save."""
    for op in OPERATORS:
        assert op.doc.strip(), op.name
        if op.alias_of or op.expand:
            continue
        if op.name != "save":
            assert op.factored is not None, f"{op.name} has no factored kernel"
        for rule in op.simplify:
            assert rule.ops == (op.name,), (op.name, rule.name)
