"""Fusion: mark chains the backend folds into factors in one kernel.

- `lincomb(x1, …, xk; c1, …, ck)`: a tree of `+ - *k /k` and unary minus over updates —
  one concatenation of factors with the coefficients folded into B;
- `unit_scale(x[, m]; by, coeff, normalize)`: `recombine` of a chain of `dir` / `reverse`
  (and a scalar on top) — one per-unit scaling folded into a factor, norms computed once.

Only nodes with a single user are absorbed, so nothing is computed twice and every fused
group is convex (PyTensor's rule). The fused ops' meaning is fixed in `ir/ops.py`.
"""

from __future__ import annotations

from dipm_lang.frontend.lower import const_eval
from dipm_lang.ir.graph import use_counts
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.types import DELTA, NUM, dir_t

_LINEAR = ("add", "sub", "neg", "mul", "div", "lincomb")


def fuse(program: Program) -> Program:
    uses = use_counts(program)
    notes: dict[int, str] = {}  # fused node -> what it absorbed; reported if it survives

    def single_use(node: Node) -> bool:
        return uses.get(id(node), 0) == 1

    def terms(node: Node, coeff: float, absorb: bool, out: list[tuple[Node, float]], parts: list[str]) -> None:
        """Flatten a linear tree into (operand, coefficient) pairs."""
        if absorb and node.type == DELTA and node.op in _LINEAR:
            parts.append(node.op)
            if node.op == "add":
                terms(node.args[0], coeff, single_use(node.args[0]), out, parts)
                terms(node.args[1], coeff, single_use(node.args[1]), out, parts)
                return
            if node.op == "sub":
                terms(node.args[0], coeff, single_use(node.args[0]), out, parts)
                terms(node.args[1], -coeff, single_use(node.args[1]), out, parts)
                return
            if node.op == "neg":
                terms(node.args[0], -coeff, single_use(node.args[0]), out, parts)
                return
            if node.op == "mul":
                k, x = node.args if node.args[0].type == NUM else node.args[::-1]
                terms(x, coeff * const_eval(k), single_use(x), out, parts)
                return
            if node.op == "div":
                x, k = node.args
                terms(x, coeff / const_eval(k), single_use(x), out, parts)
                return
            for arg, c in zip(node.args, node.attr("coeffs")):
                terms(arg, coeff * c, single_use(arg), out, parts)
            return
        out.append((node, coeff))

    def rewrite(old: Node, args: tuple[Node, ...]) -> Node:
        new = _fuse_node(old.replace(args=args) if args != old.args else old, id(old))
        uses.setdefault(id(new), uses.get(id(old), 0))  # the fused node inherits its users
        return new

    def _fuse_node(node: Node, key: int) -> Node:
        if node.type == DELTA and node.op in ("add", "sub", "neg", "mul", "div"):
            pairs: list[tuple[Node, float]] = []
            parts: list[str] = []
            terms(node, 1.0, True, pairs, parts)
            merged: dict[int, list] = {}
            for x, c in pairs:  # x + x -> 2x
                merged.setdefault(id(x), [x, 0.0])[1] += c
            items = [(x, c) for x, c in merged.values() if c != 0.0] or [(pairs[0][0], 0.0)]  # all cancelled
            if len(items) == 1 and items[0][0].op == "unit_scale" and len(items[0][0].args) == 2 \
                    and single_use(items[0][0]):
                # k * recombine(...) -> one per-unit scaling with k folded in
                inner, c = items[0]
                new = inner.replace(attrs={**dict(inner.attrs), "coeff": inner.attr("coeff") * c})
                notes[id(new)] = f"scaling by {c:g} folded into {notes.get(id(inner), 'unit_scale')}"
                return new
            new = Node.make("lincomb", [x for x, _ in items], {"coeffs": tuple(float(c) for _, c in items)}, DELTA)
            notes[id(new)] = f"{len(parts)} arithmetic op(s) → lincomb of {len(items)} term(s)"
            return new
        if node.op == "recombine":
            d, m = node.args
            base, coeff, normalize, chain = _direction_chain(d, single_use)
            if chain:
                new = Node.make("unit_scale", (base, m), {"by": node.attr("by"), "coeff": coeff,
                                                          "normalize": normalize}, DELTA)
                notes[id(new)] = f"recombine ∘ {' ∘ '.join(chain)} → unit_scale"
                return new
            return Node.make("unit_scale", (d, m), {"by": node.attr("by"), "coeff": 1.0, "normalize": False}, DELTA)
        if node.op == "reverse" and node.args[0].op == "dir" and single_use(node.args[0]):
            inner = node.args[0]
            new = Node.make("unit_scale", (inner.args[0],), {"by": inner.attr("by"), "coeff": -1.0,
                                                             "normalize": True}, dir_t(inner.attr("by")))
            notes[id(new)] = "reverse ∘ dir → unit_scale"
            return new
        return node

    result = program.rebuild(rewrite)
    result.notes.extend("fuse: " + notes[id(n)] for n in walk(result.all_roots()) if id(n) in notes)
    return result


def _direction_chain(d: Node, single_use) -> tuple[Node, float, bool, list[str]]:
    """Peel single-use `reverse` and `dir` (and fused ±dir) off a direction feeding recombine."""
    coeff, normalize, chain = 1.0, False, []
    by = d.type.by
    while single_use(d):
        if d.op == "reverse":
            coeff, chain, d = -coeff, chain + ["reverse"], d.args[0]
        elif d.op == "dir" and d.attr("by") == by:
            normalize, chain, d = True, chain + ["dir"], d.args[0]
            break
        elif d.op == "unit_scale" and len(d.args) == 1 and d.attr("by") == by:
            coeff, normalize, chain, d = coeff * d.attr("coeff"), True, chain + ["±dir"], d.args[0]
            break
        else:
            break
    return d, coeff, normalize, chain
