"""Common-subexpression elimination: rebuild the graph with interned nodes.

Lowering makes one node per operation as written; rebuilding each node without its unique id
makes structurally equal nodes the same object (tinygrad's and PyTensor's MergeOptimizer idea).
"""

from __future__ import annotations

from dipm_lang.ir.node import Node, Program


def cse(program: Program) -> Program:
    return program.rebuild(lambda node, args: Node.make(node.op, args, dict(node.attrs), node.type))
