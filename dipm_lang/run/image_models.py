"""Planning for LoRAs of image models (SPEC §7.10): their family, block weights, and where a save goes.

Everything here is decided from the opened inputs and the program, before any tensor is read:
- the program's model family — inputs of two families, or an image-model LoRA beside a language
  model's adapter, stop at the second input's `load`;
- every block-weight vector (`lbw`) fits that family (17/26 values for SD 1.x/2.x, 12/20 for SDXL,
  61 for Flux; any of the UNet forms for any UNet family, as sd-webui-lora-block-weight takes them);
- each `save`'s output: its format (`format=`, else the first input reached in the saved expression:
  kohya, LyCORIS → kohya's layout, diffusers → diffusers', a PEFT component folder → PEFT) and path
  (`….safetensors` is one file; diffusers and PEFT write folders).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipm_lang.errors import AdapterError, ExecutionError, Span
from dipm_lang.io.formats.adapter import FormatAdapter
from dipm_lang.io.formats.write import writable_format
from dipm_lang.io.lora_files import LoraFileSource, check_families, family_message
from dipm_lang.ir.blocks import FAMILY_TITLES, length_problem
from dipm_lang.ir.node import Node, Program
from dipm_lang.ir.schedules import blocks_in
from dipm_lang.ir.numbers import format_value


@dataclass(frozen=True)
class Target:
    """Where and how one `save` of an image-model LoRA is written."""

    format: str  # "kohya" | "diffusers" | "peft"
    family: str
    template: FormatAdapter | None  # the input whose names, kernels, fusing and metadata the output follows
    destination: Path  # the file, or the folder
    file: bool  # one file (the path ends in .safetensors)


def check_inputs(program: Program, sources: Mapping[str, Any], schedules: list[tuple[Node, Any]],
                 at_load: Callable[[AdapterError, Span | None], AdapterError]) -> str | None:
    """The program's model family (None when no input is an image-model LoRA); raises for inputs that
    do not combine (pointed at their `load` by `at_load`) and for block weights that do not fit."""
    family, misfit = check_families(sources)
    if misfit is not None:
        node = next(n for n in program.nodes() if n.op == "load" and n.attr("path") == misfit)
        error = AdapterError(family_message(sources, family, misfit), Path(misfit))
        raise at_load(error, program.spans.get(node))
    for node, schedule in schedules:
        for vector in blocks_in(schedule):
            if family is None:
                raise ExecutionError(f"{format_value(vector)}: block weights apply to LoRAs of image models (SD 1.x/2.x, "
                                     "SDXL, Flux), and no input of this program is one", program.spans.get(node))
            problem = length_problem(len(vector.values), family)
            if problem:
                raise ExecutionError(f"{format_value(vector)}: {problem}; the inputs are {FAMILY_TITLES[family]} LoRAs",
                                     program.spans.get(node))
    return family


def first_lora_input(node: Node, sources: Mapping[str, Any]) -> LoraFileSource | None:
    """The first image-model LoRA input reached in `node`'s expression (depth first, left to right)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.op == "load":
            source = sources.get(current.attr("path"))
            if isinstance(source, LoraFileSource):
                return source
        stack.extend(reversed(current.args))
    return None


def output_target(program: Program, save: Node, sources: Mapping[str, Any], family: str | None) -> Target | None:
    """How `save` writes (see the module docstring); None for a PEFT folder of a language model
    (`io/writer.py`'s `AdapterStage`, as before image-model LoRAs)."""
    source = first_lora_input(save, sources) or next(
        (s for s in sources.values() if isinstance(s, LoraFileSource)), None)
    return choose_target(save.attr("path"), save.attr("format"), source, family, program.spans.get(save),
                         serving=save.attr("target"))


def choose_target(path: str | Path, chosen: str | None, source: LoraFileSource | None, family: str | None,
                  span: Span | None = None, *, serving: str | None = None) -> Target | None:
    """Where and how an output at `path` is written: `chosen` (format=) or the format of `source` (the
    template input); None for a PEFT folder of a language model. Shared by scripts and the Python API.
    `serving` (target=, a language-model server) is refused for image models."""
    if family is None:
        if chosen in (None, "peft"):
            return None
        raise ExecutionError(f"format={chosen!r} writes LoRA files of image models, and no input of this program "
                             "is one", span)
    if serving is not None:
        raise ExecutionError(f"target={serving!r} serves language-model adapters; these are LoRAs of "
                             f"{FAMILY_TITLES[family]}", span)
    template = source.adapter if source is not None else None
    if chosen is None:
        if template is None:
            chosen = "diffusers"
        else:
            chosen = "peft" if template.format == "peft" else writable_format(template.format)
    path = Path(path)
    file = path.suffix == ".safetensors"
    if file and chosen == "peft":
        raise ExecutionError("a PEFT adapter is a folder (adapter_config.json + adapter_model.safetensors): give "
                             "a folder path, or format=\"kohya\" / \"diffusers\" for one .safetensors file", span)
    if not file and chosen in ("kohya", "loha", "lokr"):
        what = "a kohya LoRA" if chosen == "kohya" else f"a LyCORIS {chosen} file"
        raise ExecutionError(f"{what} is one file: give a path ending in .safetensors (or format=\"diffusers\" "
                             "or \"peft\" to write a folder)", span)
    return Target(chosen, family, template, path, file)
