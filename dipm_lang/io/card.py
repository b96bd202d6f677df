"""The model card (README.md) every output carries, in the Hugging Face Hub's convention.

The Hub reads a card's YAML front matter: `library_name: peft` (what loads the folder), `base_model`
(a Hub id: the model page links the adapter), `tags` (PEFT's own cards tag `base_model:adapter:ID`),
`pipeline_tag` and `license`. So `hf upload ORG/NAME OUT` of an output folder publishes a page that
says what it is. Only what is known goes in: the base model when the inputs name one by Hub id (a
local folder is nobody's business, safety/privacy.py), the pipeline from PEFT's `task_type`, the
license when every input's own card gives the same one.

The body says how the adapter was made: the recipe, the ranks it keeps per module (and, with
`energy=`, the relative error each dropped), its inputs by name and content hash (a Hub input also
by the commit its revision resolved to), the numbers given from outside and the provenance metadata.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from dipm_lang.ir.modules import natural_key

CARD_NAME = "README.md"

# PEFT's task types and the Hub's pipeline tags (transformers' pipelines for the same heads).
PIPELINE_TAGS = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `gpt2`, `meta-llama/Llama-3.1-8B`
_LICENSE = re.compile(r"^[\w.+-]+$")
_MAX_CARD_BYTES = 1 << 20  # an input's card read for its license


def hub_model_id(name: object) -> str | None:
    """`name` when it reads as a Hub model id (never a local path: absolute, `~`, `./`, `..`)."""
    if not isinstance(name, str) or not _HUB_ID.fullmatch(name) or name.startswith(".") or ".." in name:
        return None
    return name


def shared_license(folders: Sequence[str | Path]) -> str | None:
    """The license every input's own card declares, when they all declare the same one."""
    found = set()
    for folder in folders:
        license_ = _card_license(Path(folder) / CARD_NAME)
        if license_ is None:
            return None
        found.add(license_)
    return found.pop() if len(found) == 1 else None


def _card_license(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            text = handle.read(_MAX_CARD_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split("\n---", 1) if text.startswith("---\n") else []
    if len(parts) != 2:
        return None
    import yaml

    try:
        front = yaml.safe_load(parts[0][4:])
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return value if isinstance(value, str) and _LICENSE.fullmatch(value) else None


def model_card(name: str, recipe: str, base_model: str | None, metadata: Mapping[str, str], *,
               ranks: Mapping[str, int] | None = None, errors: Mapping[str, float] | None = None,
               written_rank: int | None = None, task_type: str | None = None, license: str | None = None,
               target: str | None = None) -> str:
    """The README.md of an output named `name`.

    `ranks`: the rank each module keeps; `errors`: each module's relative error dropped (energy=);
    `written_rank`: the one rank every module is written at (a vLLM output, zero-padded); `metadata`:
    the safetensors metadata (inputs by name and hash, numbers given). `recipe` is shown as given
    (the caller shortens its paths, run/outputs.py `recipe_text`)."""
    base = hub_model_id(base_model)
    front = ["---", "library_name: peft"]
    if base:
        front.append(f"base_model: {json.dumps(base)}")
    if task_type in PIPELINE_TAGS:
        front.append(f"pipeline_tag: {PIPELINE_TAGS[task_type]}")
    if license:
        front.append(f"license: {json.dumps(license)}")
    tags = ([f"base_model:adapter:{base}"] if base else []) + ["lora", "peft", "dipm_lang"]
    front += ["tags:"] + [f"- {json.dumps(tag)}" for tag in tags] + ["---"]
    lines = front + ["", f"# {name}", "", "A LoRA adapter made with dipm_lang"
                     + (f" from `{base}`" if base else "") + ".", ""]
    if target == "vllm":
        lines += ["Written for vLLM's LoRA loader: one rank for every module, no patterns, scales folded into "
                  "the factors.", ""]
    lines += ["## Recipe", "", *_fenced(recipe), ""]
    if ranks:
        lines += ["## Ranks", "", *_ranks(ranks, errors or {}, written_rank), ""]
    lines += ["## Inputs", ""]
    lines += [f"- `{input_name}`: `{entry.get('source', input_name)}`"
              + (f" at commit `{entry['commit']}`" if entry.get("commit") else "")  # a Hub input (SPEC §7.5)
              + f", sha256 `{entry.get('sha256', '?')}`"
              for input_name, entry in sorted(_json(metadata, "dipm_inputs").items())] or ["- (none)"]
    numbers = _json(metadata, "dipm_numbers")
    if numbers:  # given from outside (`--set`, a sweep's point): the recipe above reads them by name
        lines += ["", "## Numbers given", ""] + [f"- `{key}` = {value!r}" for key, value in sorted(numbers.items())]
    if metadata:
        lines += ["", "## Metadata", ""] + [f"- {key}: `{value}`" for key, value in sorted(metadata.items())]
    return "\n".join(lines) + "\n"


def _fenced(recipe: str) -> list[str]:
    # A fence longer than any backtick run in the recipe keeps the code block intact.
    longest = run = 0
    for char in recipe:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}dipm", recipe.rstrip("\n"), fence]


def _ranks(ranks: Mapping[str, int], errors: Mapping[str, float], written_rank: int | None) -> list[str]:
    """A one-line summary (how many modules keep each rank), then a table of every module."""
    counts = Counter(ranks.values())
    summary = ", ".join(f"rank {rank} × {count}" for rank, count in sorted(counts.items()))
    lines = [f"{len(ranks)} module{'s' if len(ranks) != 1 else ''}: {summary}."]
    if written_rank is not None:
        lines[0] += f" Written at rank {written_rank} (zero-padded where a module keeps fewer)."
    header, rule = "| module | rank |", "|---|---:|"
    if errors:
        header, rule = header + " relative error dropped |", rule + "---:|"
    lines += ["", header, rule]
    for module in sorted(ranks, key=natural_key):
        row = f"| `{module}` | {ranks[module]} |"
        if errors:
            row += f" {errors[module]:.2e} |" if module in errors else " |"
        lines.append(row)
    return lines


def _json(metadata: Mapping[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata.get(key, "{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
