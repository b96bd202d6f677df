"""The metadata of a written LoRA file (SPEC §7.10): what of the input's still holds, and the recipe.

Kept from the template input: its base-model and training-context keys, kohya's `ss_*` and the SAI
model spec's `modelspec.*`. Changed or dropped, because the written file is a different adapter:
- `ss_network_dim` / `ss_network_alpha`: the written ranks and alphas, dropped when they vary by module;
- `ss_network_args`: `conv_dim` / `conv_alpha` rewritten the same way; LyCORIS arguments (`algo`, …)
  dropped with the LoHa/LoKr algorithm they described, and `ss_network_module` becomes kohya's LoRA;
- `sshs_*` (kohya's hashes of the file itself), `modelspec.hash_sha256` and `modelspec.date` (of the
  input file) no longer hold: dropped; so is anything else the tool does not know to hold
  (diffusers' `lora_adapter_metadata`: its ranks and alphas were the input's).
`ss_base_model_version` is added when missing, so the family stays readable from the file.
The caller's keys (recipe, input hashes) come last and win.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
"""kohya's `ss_base_model_version` per family (sd-scripts 48d368fa: model_util, sdxl_model_util, flux_utils)."""

_STALE = ("modelspec.hash_sha256", "modelspec.date")
_LYCORIS_FORMATS = ("loha", "lokr", "lycoris")


def _number(value: float) -> str:
    return f"{value:g}"


def output_metadata(template: Mapping[str, str] | None, *, template_format: str | None, output_format: str,
                    family: str, ranks: Mapping[str, int], alphas: Mapping[str, float],
                    conv_modules: set[str], extra: Mapping[str, str]) -> dict[str, str]:
    """Metadata for a written file. `ranks`/`alphas`: per written kohya/diffusers module name;
    `conv_modules`: which of those are k×k convolutions with k > 1 (kohya's separate `conv_dim`;
    1×1 convolutions count with the Linear layers, as in sd-scripts' `networks/lora.py`)."""
    source = dict(template or {})
    out = {k: v for k, v in source.items() if k.startswith(("ss_", "modelspec.")) and k not in _STALE}
    linear = [name for name in ranks if name not in conv_modules]
    conv = [name for name in ranks if name in conv_modules]
    _set_uniform(out, "ss_network_dim", [ranks[n] for n in linear] or [ranks[n] for n in conv],
                 always=output_format != "diffusers")
    _set_uniform(out, "ss_network_alpha", [alphas[n] for n in linear] or [alphas[n] for n in conv],
                 always=output_format != "diffusers")
    if output_format in ("loha", "lokr"):  # LyCORIS' own description of the file (its `algo`)
        out["ss_network_module"] = "lycoris.kohya"
        out["ss_network_args"] = json.dumps({"algo": output_format})
    elif template_format in _LYCORIS_FORMATS:
        out.pop("ss_network_args", None)
        if "ss_network_module" in out:
            out["ss_network_module"] = "networks.lora"
        architecture = out.get("modelspec.architecture")
        if architecture and "/" in architecture:
            out["modelspec.architecture"] = architecture.split("/")[0] + "/lora"
    elif "ss_network_args" in out:
        out["ss_network_args"] = _network_args(out["ss_network_args"], [ranks[n] for n in conv],
                                               [alphas[n] for n in conv])
        if out["ss_network_args"] is None:
            out.pop("ss_network_args")
    out.setdefault("ss_base_model_version", BASE_MODEL_VERSIONS[family])
    if output_format == "diffusers":
        out["format"] = "pt"  # what diffusers' own `write_lora_layers` stores
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
        out[key] = value
    return dict(sorted(out.items()))


def _set_uniform(out: dict[str, str], key: str, values: list, *, always: bool) -> None:
    """Write the one value all modules share; drop the key when they differ (or there are none)."""
    if len(set(values)) == 1 and (always or key in out):
        out[key] = _number(values[0])
    else:
        out.pop(key, None)


def _network_args(text: str, conv_ranks: list[int], conv_alphas: list[float]) -> str | None:
    """kohya's JSON `ss_network_args` with `conv_dim`/`conv_alpha` made true for the written file."""
    try:
        args = json.loads(text)
    except ValueError:
        return None  # unreadable: it cannot be made to hold
    if not isinstance(args, dict):
        return None
    for key, values in (("conv_dim", conv_ranks), ("conv_alpha", conv_alphas)):
        args.pop(key, None)
        if len(set(values)) == 1:
            args[key] = _number(values[0])
    return json.dumps(args, sort_keys=True)
