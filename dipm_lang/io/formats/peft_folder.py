"""PEFT adapter folders of one component of an image model (a UNet or Flux transformer, a text encoder).

`get_peft_model(unet, LoraConfig(…)).save_pretrained(folder)` — and dipm's `save(…, format="peft")` —
write `adapter_config.json` and `adapter_model.safetensors` with keys `base_model.model.<path>.lora_A.weight`
relative to that one model, convolutions as PEFT's 4-D `Conv2d` factors. Such a folder names neither the
model family nor the component, so it is read as one only when told: `load(folder, family=…)`, or the
`dipm_family` / `dipm_component` metadata dipm writes into its own PEFT outputs.

Reading renames every key to diffusers' PEFT-style layout (`<component>.<path>.lora_A.weight`), so the
same grouping, shape checks, canonical names and family checks apply as for a diffusers file
(`detect`, `adapter.assemble`); scales come from the config with PEFT's rules (`io/peft_config.py`).
"""

from __future__ import annotations

from pathlib import Path

from dipm_lang.errors import AdapterError
import dipm_lang.io.formats.detect as detect
import dipm_lang.io.formats.names as names
from dipm_lang.io.formats.adapter import FormatAdapter, assemble
from dipm_lang.io.formats.header import Header, read_header
from dipm_lang.io.layout import CONFIG_NAME, SAFETENSORS_NAME
from dipm_lang.io.peft_config import parse_settings
from dipm_lang.io.reader import KEY_PREFIX, check_lora_variant, read_config

FAMILY_KEY = "dipm_family"
COMPONENT_KEY = "dipm_component"
"""Safetensors metadata of dipm's PEFT outputs of an image model: the family and the component."""


def peft_component_metadata(path: str | Path) -> tuple[str | None, str | None]:
    """(family, component) that a PEFT folder's weights metadata names (dipm's own outputs); (None, None)
    for any other folder, or one dipm cannot read the header of (the PEFT reader then says why)."""
    file = Path(path) / SAFETENSORS_NAME
    try:
        metadata = read_header(file).metadata
    except AdapterError:
        return None, None
    return metadata.get(FAMILY_KEY), metadata.get(COMPONENT_KEY)


def open_peft_component(folder: str | Path, *, family: str | None = None) -> FormatAdapter:
    """Open a PEFT folder of one component of an image model as canonical modules of `family`
    (default: the family its metadata names)."""
    folder = Path(folder).expanduser().resolve()
    config_path = folder / CONFIG_NAME
    config = read_config(config_path, folder)
    check_lora_variant(config, config_path)
    settings = parse_settings(config, config_path)
    header = read_header(folder / SAFETENSORS_NAME)
    family = family or header.metadata.get(FAMILY_KEY)
    if family not in names.FAMILIES:
        raise AdapterError(f"is a PEFT adapter folder that does not say which image model it adapts; give "
                           f"family= one of {', '.join(map(repr, names.FAMILIES))}", folder)
    paths = {}
    for key in header.tensors:
        if not key.startswith(KEY_PREFIX):
            raise AdapterError(f"has a key outside PEFT's layout: {key!r} (expected '{KEY_PREFIX}<module>.lora_A"
                               ".weight')", header.path)
        paths[key] = key[len(KEY_PREFIX):]
    component = header.metadata.get(COMPONENT_KEY) or _component(paths.values(), family, folder)
    renamed = Header(header.path, {f"{component}.{paths[key]}": info for key, info in header.tensors.items()},
                     header.metadata)
    layout, raw = detect.group_modules(renamed)
    for module in raw:  # read the tensors under their names in the file
        module.tensors = {role: KEY_PREFIX + key[len(component) + 1:] for role, key in module.tensors.items()}
        if module.alpha_key is not None:
            raise AdapterError(f"has an alpha tensor for {module.path!r}; a PEFT folder's scales are in its config",
                               header.path)
    return assemble(header, layout, raw, {component: settings}, family, format="peft")


def _component(paths, family: str, folder: Path) -> str:
    """The one component of `family` whose module tree holds every module of the folder."""
    modules = sorted({path.rsplit(".lora_", 1)[0] for path in paths})
    fitting = [component for component in names.FAMILY_COMPONENTS[family]
               if all(names.fits(_canonical(component, module), family) for module in modules)]
    if len(fitting) != 1:
        what = "no component" if not fitting else f"more than one component ({', '.join(fitting)})"
        raise AdapterError(f"is a PEFT adapter whose modules (such as {modules[0]!r}) fit {what} of a "
                           f"{names.FAMILY_TITLES[family]} pipeline ({', '.join(names.FAMILY_COMPONENTS[family])})",
                           folder)
    return fitting[0]


def _canonical(component: str, path: str) -> str:
    if component.startswith("text_encoder") and path.startswith("encoder.layers."):
        path = "text_model." + path  # transformers ≥ 5 flattens CLIPTextModel
    return f"{component}.{path}"
