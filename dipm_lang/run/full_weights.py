"""Step `plan`, for full-weight modules and biases (SPEC §7.4): what each save writes of them.

For every save and every full-weight tensor of the program's inputs, the affine analysis
(`ir/full_weights.py`) says what the saved value carries: `Σ cᵢ·inputᵢ` and the parts it
cannot follow. Before any tensor is read this module then decides, per tensor:

- no input the value reads holds it: the output does not write it;
- the inputs that contribute all hold it, their coefficients sum to 1 and its shapes agree: the
  output writes `Σ cᵢ·tensorᵢ` (`io.full.FullOutput`; one input with coefficient 1: its tensor, bit
  for bit);
- anything else stops the run (exit 1) naming the tensors' modules and the explicit choices
  `keep_full(x, src)` and `drop_full(x)`: an operator that does not combine them, inputs that
  disagree on which exist, coefficients that do not sum to 1, shapes that differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dipm_lang.errors import ExecutionError, Span
from dipm_lang.io.full import FullOutput, FullTensor
from dipm_lang.io.sources import AdapterSource
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.node import Node, Program
from dipm_lang.ir.full_weights import Carry

TOLERANCE = 1e-9  # coefficients that sum to 1 up to rounding (0.1 + 0.2 + 0.7)

CHOICES = ("full-weight modules and biases are whole tensors, not updates, and the base model is not known, so "
           "only affine recipes (Σ cᵢ·inputᵢ with Σ cᵢ = 1: 0.5*H + 0.5*T, multitask, transfer, detox, unlearn) "
           "combine them; otherwise say what the output keeps: keep_full(x, H) keeps input H's (bit for bit), "
           "drop_full(x) writes none (the base model's own are used)")


def full_tensors(sources: Sequence[tuple[str, AdapterSource]]) -> dict[str, dict[str, FullTensor]]:
    """Every full-weight tensor of the inputs: name → {load path: the tensor in that input}."""
    found: dict[str, dict[str, FullTensor]] = {}
    for path, source in sources:
        for name, tensor in getattr(source, "full", {}).items():
            found.setdefault(name, {})[path] = tensor
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0])))


def full_modules(infos: Mapping[str, AdapterSource]) -> list[str]:
    """The modules the inputs' full-weight tensors belong to (for schedules' layer count)."""
    return sorted({t.module for source in infos.values() for t in getattr(source, "full", {}).values()},
                  key=natural_key)


@dataclass
class _Problems:
    """What one save cannot write, by reason, to report at once."""

    blocked: dict[int, tuple[Node, list[str], set[str]]] = field(default_factory=dict)  # node → (tensors, holders)
    disagree: list[tuple[str, list[str], list[str]]] = field(default_factory=list)     # (tensor, have, lack)
    not_affine: list[tuple[str, float, str]] = field(default_factory=list)             # (tensor, sum, formula)

    def __bool__(self) -> bool:
        return bool(self.blocked or self.disagree or self.not_affine)


def plan_full_weights(program: Program, infos: Mapping[str, AdapterSource], layers: int,
                      lora_modules: Sequence[str] = ()) -> dict[int, list[FullOutput]]:
    """Per save (by `id` of its node), the full-weight tensors it writes; raises `ExecutionError`
    (exit 1, positioned) for what it cannot write. Reads no tensor."""
    if not full_tensors(list(infos.items())):
        return {}
    carry = Carry(layers)
    outputs = {}
    for save in program.roots:
        outputs[id(save)] = carried_outputs(save.args[0], save, program, infos, carry, lora_modules)
        check_target(outputs[id(save)], save.attr("target"), program.spans.get(save))
    return outputs


def check_target(outputs: Sequence[FullOutput], target: str | None, span: Span | None = None) -> None:
    """vLLM serves neither full-weight modules nor adapter biases (io/vllm.py): say so before any work."""
    if target == "vllm" and outputs:
        raise ExecutionError(f"vLLM serves no full-weight modules or biases, and this output would carry "
                             f"{describe([out.name for out in outputs])}", span,
                             hint="save drop_full(x) to leave them out (the base model's own weights are used "
                                  "there), or merge them into the base model and serve that")


def carried_outputs(value: Node, at: Node, program: Program, infos: Mapping[str, AdapterSource], carry: Carry,
                    lora_modules: Sequence[str] = ()) -> list[FullOutput]:
    """The full-weight tensors `value` carries (what saving it writes), or `ExecutionError` pointed
    at `at` (the save) or at the operator that does not combine them."""
    holders = full_tensors(list(infos.items()))
    by_module: dict[str, list[str]] = {}
    for name, held in holders.items():
        by_module.setdefault(next(iter(held.values())).module, []).append(name)
    names = _input_names(program, infos)
    outputs: list[FullOutput] = []
    problems = _Problems()
    for module, tensors in by_module.items():
        carried = carry.of(value, module)
        terms: dict[str, float] = {}
        for load, coeff in carried.terms:
            terms[load.attr("path")] = terms.get(load.attr("path"), 0.0) + coeff
        terms = {path: c for path, c in terms.items() if c != 0.0}
        for name in tensors:
            held = holders[name]
            blocking = [b for b, _ in carried.blocked if any(load.attr("path") in held for load in b.loads)]
            if blocking:
                entry = problems.blocked.setdefault(id(blocking[0].node), (blocking[0].node, [], set()))
                entry[1].append(name)
                entry[2].update(names[load.attr("path")] for load in blocking[0].loads if load.attr("path") in held)
                continue
            have = [path for path in terms if path in held]
            if not have:
                continue  # no input the value reads holds it: not written
            lack = [path for path in terms if path not in held]
            lack += [load.attr("path") for b, _ in carried.blocked for load in b.loads]
            if lack:
                problems.disagree.append((name, _unique(names[p] for p in have), _unique(names[p] for p in lack)))
                continue
            total = sum(terms.values())
            if abs(total - 1.0) > TOLERANCE:
                formula = " + ".join(f"{c:g}·{names[p]}" for p, c in terms.items()).replace("+ -", "- ")
                problems.not_affine.append((name, total, formula))
                continue
            _check_shapes(name, {names[p]: held[p] for p in have}, program.spans.get(at))
            outputs.append(FullOutput(held[have[0]], tuple((infos[p], terms[p]) for p in have)))
    if problems:
        raise _refusal(problems, program, at)
    _check_not_lora(outputs, lora_modules, program.spans.get(at))
    return outputs


def _input_names(program: Program, infos: Mapping[str, AdapterSource]) -> dict[str, str]:
    """Load path → how messages name the input: its name in the script, else its label."""
    names = {path: getattr(source, "label", path) for path, source in infos.items()}
    for name, node in program.inputs.items():
        if node.attr("path") in names:
            names[node.attr("path")] = name
    for node in _loads(program):
        if node.attr("name"):
            names[node.attr("path")] = node.attr("name")
    return names


def _loads(program: Program) -> list[Node]:
    return [node for node in program.nodes() if node.op == "load"]


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def _check_shapes(name: str, tensors: Mapping[str, FullTensor], span: Span | None) -> None:
    shapes = {input_name: tensor.shape for input_name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{'×'.join(map(str, shape))} in {input_name}" for input_name, shape in shapes.items())
        raise ExecutionError(f"the full-weight tensor {name} has different shapes ({shown}); they cannot be combined",
                             span, hint=CHOICES)


def _check_not_lora(outputs: Sequence[FullOutput], lora_modules: Sequence[str], span: Span | None) -> None:
    """PEFT cannot hold one module both as LoRA and in modules_to_save."""
    lora = set(lora_modules)
    both = sorted({out.tensor.module for out in outputs if out.tensor.kind == "module" and out.tensor.module in lora},
                  key=natural_key)
    if both:
        raise ExecutionError(f"{_listed(both)} would be both a LoRA module and a full-weight module "
                             "(modules_to_save) of the output, which PEFT cannot load", span, hint=CHOICES)


def describe(names: Sequence[str]) -> str:
    """Tensor names as modules: `lm_head, model.embed_tokens and the biases of 3 modules (…)`."""
    modules = _unique(name.rsplit(".", 1)[0] if not name.endswith(".bias") else name for name in names)
    plain = [m for m in modules if not m.endswith(".bias")]
    biases = [m[:-len(".bias")] for m in modules if m.endswith(".bias")]
    parts = []
    if plain:
        parts.append(_listed(plain))
    if biases:
        parts.append(f"the bias of {biases[0]}" if len(biases) == 1
                     else f"the biases of {len(biases)} modules ({_listed(biases, 2)})")
    return " and ".join(parts)


def _listed(names: Sequence[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _refusal(problems: _Problems, program: Program, save: Node) -> ExecutionError:
    clauses = []
    span = program.spans.get(save)
    for node, tensors, held_by in problems.blocked.values():
        clauses.append(f"{_operator(node)} does not combine the full-weight modules and biases of "
                       f"{', '.join(sorted(held_by))}: {describe(tensors)}")
        span = program.spans.get(node) or span
    if problems.disagree:
        parts = [f"{describe([name])} is in {', '.join(have)} but not in {', '.join(lack)}"
                 for name, have, lack in problems.disagree[:3]]
        more = len(problems.disagree) - 3
        clauses.append("the inputs disagree on which full-weight modules and biases exist: " + "; ".join(parts)
                       + (f" (and {more} more)" if more > 0 else ""))
    if problems.not_affine:
        name, total, formula = problems.not_affine[0]
        others = [n for n, _, _ in problems.not_affine[1:]]
        clauses.append(f"full-weight modules and biases combine only when the coefficients sum to 1, but "
                       f"{describe([name])} would be {formula} (sum {total:g})"
                       + (f", and so would {describe(others)}" if others else ""))
    return ExecutionError("; ".join(clauses), span, hint=CHOICES)


def _operator(node: Node) -> str:
    """How a refusal names the operator the analysis cannot follow."""
    if node.type.kind == "Dir" or (node.op == "unit_scale" and len(node.args) == 1):
        return "a direction (it has no magnitudes, so no owner of full weights)"
    if node.type.kind == "Mag":
        return ("arithmetic on magnitudes of different adapters (mean([mag(a), mag(b)], w) averages their "
                "full weights)")
    if node.type.kind == "Factor" or node.op == "lora":
        return "a value built from LoRA factors"
    shown = {"unit_scale": "recombine", "lincomb": "this arithmetic"}.get(node.op, node.op)
    return f"{shown}(…)"
