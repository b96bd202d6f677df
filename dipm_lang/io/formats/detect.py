"""Which layout, which modules, which model family: everything decided from the header alone.

Steps, each with its own error (an `AdapterError` naming the file, what it found, what is supported):
1. `group_modules` sorts every tensor name into one key layout — kohya's (`lora_unet_…`), diffusers'
   PEFT-style (`unet.….lora_A.weight`) or diffusers' older attention-processor style
   (`…processor.to_q_lora.down.weight`, `…lora_linear_layer.up.weight`) — and groups the tensors
   into modules with one algorithm each (LoRA/LoCon, LoHa, LoKr). Full checkpoints, PEFT adapter
   files, two layouts in one file, Tucker forms, `dora_scale`, other LyCORIS algorithms and unknown
   keys stop here.
2. `factors.*_shape` checks each module's tensor shapes fit together.
3. `infer_family` keeps the families whose module trees hold every module (names, block structure,
   convolution vs Linear), then narrows with the metadata (`ss_base_model_version`,
   `modelspec.architecture`, `ss_v2`) and with the widths of real models (cross-attention 768 / 1024
   / 2048, text-encoder 768 / 1024 / 1280). A file that still fits two families is an error that
   says which, and how to choose (`family=`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dipm_lang.errors import AdapterError
import dipm_lang.io.formats.kohya as kohya
import dipm_lang.io.formats.names as names
from dipm_lang.io.formats.factors import FactorShape, ShapeError, lokr_shape, loha_shape, lora_shape
from dipm_lang.io.formats.header import FLOAT_DTYPES, Header

KOHYA, DIFFUSERS, DIFFUSERS_OLD = "kohya", "diffusers", "diffusers-old"
LAYOUT_TITLES = {KOHYA: "kohya (`lora_unet_…`, `lora_te…_`)",
                 DIFFUSERS: "diffusers (`unet.….lora_A.weight`, `….lora.down.weight`)"}
SUPPORTED = ("supported: kohya LoRA/LoCon, LyCORIS LoHa/LoKr (kohya keys), diffusers LoRA files "
             "(PEFT-style or old), for SD 1.x, SD 2.x, SDXL and Flux.1")

_KOHYA_ROLES = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"),
    "hada_w1_a": ("loha", "w1a"), "hada_w1_b": ("loha", "w1b"), "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1a"), "lokr_w1_b": ("lokr", "w1b"),
    "lokr_w2": ("lokr", "w2"), "lokr_w2_a": ("lokr", "w2a"), "lokr_w2_b": ("lokr", "w2b"),
}
_TUCKER = "is in Tucker form ({}), which dipm does not read: its factors are not a matrix product"
_REFUSED = {
    "lora_mid.weight": _TUCKER.format("LoCon `lora_mid`"),
    "hada_t1": _TUCKER.format("LoHa `hada_t1`/`hada_t2`"), "hada_t2": _TUCKER.format("LoHa `hada_t1`/`hada_t2`"),
    "lokr_t1": _TUCKER.format("LoKr `lokr_t1`/`lokr_t2`"), "lokr_t2": _TUCKER.format("LoKr `lokr_t1`/`lokr_t2`"),
    "dora_scale": "is a DoRA module (`dora_scale`): its update depends on the base model's weights, "
                  "which a LoRA file does not hold",
    "oft_blocks": "is an OFT/BOFT module (`oft_blocks`), not a low-rank update",
    "rescale": "is an OFT/BOFT module (`rescale`), not a low-rank update",
    "w_norm": "is a LyCORIS norm module (`w_norm`), not a low-rank update",
    "b_norm": "is a LyCORIS norm module (`b_norm`), not a low-rank update",
    "diff": "is a LyCORIS full-weight module (`diff`), not a low-rank update",
    "diff_b": "is a LyCORIS full-weight module (`diff_b`), not a low-rank update",
    "a1.weight": "is a GLoRA module, not a plain low-rank update",
    "on_input": "is an (IA)³ module, not a low-rank update",
    "weight": "is an (IA)³ module, not a low-rank update",
    "lora_up.bias": "has a bias on its LoRA (`lora_up.bias`), which dipm does not carry",
    "lora_down.bias": "has a bias on its LoRA (`lora_down.bias`), which dipm does not carry",
}
for _glora in ("a2.weight", "b1.weight", "b2.weight", "bm.weight"):
    _REFUSED[_glora] = _REFUSED["a1.weight"]

_DIFFUSERS_KEY = re.compile(
    r"(?P<component>unet|text_encoder|text_encoder_2|transformer)\.(?P<path>.+)"
    r"\.(?P<tensor>lora_A\.weight|lora_B\.weight|alpha|lora_B\.bias|lora_magnitude_vector|lora_embedding_[AB])")
_DIFFUSERS_REFUSED = {
    "lora_B.bias": "has a LoRA bias (`lora_B.bias`), which dipm does not carry",
    "lora_magnitude_vector": "is a DoRA module (`lora_magnitude_vector`): its update depends on the base "
                             "model's weights, which a LoRA file does not hold",
    "lora_embedding_A": "is an embedding LoRA, which dipm does not read from diffusers files",
    "lora_embedding_B": "is an embedding LoRA, which dipm does not read from diffusers files",
}
# Old diffusers keys: `DIFFUSERS_OLD_TO_PEFT`/`UNET_TO_DIFFUSERS` in diffusers/utils/state_dict_utils.py.
_OLD_KEY = re.compile(
    r"(?:(?P<component>unet|text_encoder|text_encoder_2)\.)?(?P<path>.+?)(?:\.processor)?"
    r"\.(?P<proc>to_q_lora|to_k_lora|to_v_lora|to_out_lora|lora_linear_layer|lora)\.(?P<ud>up|down)\.weight")
_OLD_PROCESSOR = {  # attention-processor LoRA → module (UNet, text encoder)
    "to_q_lora": ("to_q", "q_proj"), "to_k_lora": ("to_k", "k_proj"), "to_v_lora": ("to_v", "v_proj"),
    "to_out_lora": ("to_out.0", "out_proj"),
}
_CHECKPOINT_HINTS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                     "double_blocks.", "single_blocks.", "down_blocks.", "input_blocks.", "text_model.")


@dataclass
class RawModule:
    """One module as the file stores it, before it has a canonical name."""

    layout: str
    key: str  # the file's name for the module: kohya module name, or the diffusers key prefix
    algo: str = "lora"  # "lora" | "loha" | "lokr"
    tensors: dict[str, str] = field(default_factory=dict)  # role → tensor name in the file
    alpha_key: str | None = None
    component: str | None = None  # diffusers layouts
    path: str | None = None  # diffusers layouts: the module path inside the component
    shape: FactorShape | None = None
    dtype: torch.dtype | None = None


def _error(message: str, path: Path, hint: str | None = None) -> AdapterError:
    return AdapterError(message, path, hint=hint)


def _examples(keys, count: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def group_modules(header: Header) -> tuple[str, list[RawModule]]:
    """The file's key layout and its modules (tensors grouped, algorithm and shapes checked)."""
    path = header.path
    keys = list(header.tensors)
    if any(key.startswith("base_model.model.") for key in keys):
        raise _error("is a PEFT adapter's weights file (`base_model.model.…` keys); load its folder, whose "
                     "adapter_config.json holds the scales", path)
    bundled = [key for key in keys if key.startswith("bundle_emb.")]
    if bundled:
        raise _error(f"bundles textual-inversion embeddings ({_examples(bundled)}), which are not LoRA updates "
                     "and cannot be composed; " + SUPPORTED, path)
    by_layout: dict[str, list[str]] = defaultdict(list)
    unknown = []
    for key in keys:
        if kohya.KEY.fullmatch(key):
            by_layout[KOHYA].append(key)
        elif _DIFFUSERS_KEY.fullmatch(key) or _OLD_KEY.fullmatch(key):
            by_layout[DIFFUSERS].append(key)
        else:
            unknown.append(key)
    if not by_layout:
        if any(key.startswith(_CHECKPOINT_HINTS) for key in keys) or all(
                key.endswith((".weight", ".bias")) for key in keys):
            raise _error(f"looks like a full model checkpoint ({len(keys)} tensors such as {_examples(keys, 2)}), "
                         "not a LoRA; " + SUPPORTED, path)
        raise _error(f"has no LoRA keys dipm knows (e.g. {_examples(keys)}); " + SUPPORTED, path)
    if unknown:
        raise _error(f"has keys outside the {LAYOUT_TITLES[next(iter(by_layout))]} layout: {_examples(unknown)}; "
                     + SUPPORTED, path)
    if len(by_layout) > 1:
        mixed = "; ".join(f"{LAYOUT_TITLES[layout]} keys such as {_examples(found, 1)}"
                          for layout, found in by_layout.items())
        raise _error(f"mixes key layouts ({mixed}); one file must use one layout", path)
    layout, found = next(iter(by_layout.items()))
    modules = _group_kohya(found, path) if layout == KOHYA else _group_diffusers(found, path)
    for module in modules.values():
        _check_shapes(module, header)
    if layout == DIFFUSERS and all(module.layout == DIFFUSERS_OLD for module in modules.values()):
        layout = DIFFUSERS_OLD
    return layout, list(modules.values())


def _group_kohya(keys: list[str], path: Path) -> dict[str, RawModule]:
    modules: dict[str, RawModule] = {}
    for key in keys:
        match = kohya.KEY.fullmatch(key)
        name, tensor = match["module"], match["tensor"]
        module = modules.setdefault(name, RawModule(KOHYA, name))
        if tensor == "alpha":
            module.alpha_key = key
        elif tensor in _KOHYA_ROLES:
            algo, role = _KOHYA_ROLES[tensor]
            if module.tensors and module.algo != algo:
                raise _error(f"module {name!r} mixes {module.algo} and {algo} tensors", path)
            module.algo = algo
            module.tensors[role] = key
        elif tensor in _REFUSED:
            raise _error(f"module {name!r} {_REFUSED[tensor]}; " + SUPPORTED, path)
        else:
            raise _error(f"module {name!r} has a tensor {tensor!r} that no supported format uses; " + SUPPORTED,
                         path)
    return modules


def _group_diffusers(keys: list[str], path: Path) -> dict[str, RawModule]:
    """diffusers' spellings: PEFT-style (`….to_q.lora_A.weight`) and the older ones, which
    diffusers' training scripts still mix in (`….to_q.lora.down.weight` next to `….proj_in.lora_A.weight`)."""
    modules: dict[str, RawModule] = {}
    alphas = []
    for key in keys:
        match = _DIFFUSERS_KEY.fullmatch(key)
        if match:
            prefix, tensor = f"{match['component']}.{match['path']}", match["tensor"]
            if tensor in _DIFFUSERS_REFUSED:
                raise _error(f"module {prefix!r} {_DIFFUSERS_REFUSED[tensor]}; " + SUPPORTED, path)
            if tensor == "alpha":
                alphas.append((prefix, key))
                continue
            module = modules.setdefault(prefix, RawModule(DIFFUSERS, prefix, component=match["component"],
                                                          path=match["path"]))
            role = "down" if tensor == "lora_A.weight" else "up"
        else:
            match = _OLD_KEY.fullmatch(key)
            component = match["component"] or "unet"  # `unet.save_attn_procs` files have no prefix
            module_path = match["path"]
            if match["proc"] in _OLD_PROCESSOR:
                unet_name, text_name = _OLD_PROCESSOR[match["proc"]]
                module_path += "." + (unet_name if component == "unet" else text_name)
            module = modules.setdefault(f"{component}.{module_path}", RawModule(
                DIFFUSERS_OLD, key[:match.start("ud") - 1], component=component, path=module_path))
            role = match["ud"]
        if role in module.tensors:
            raise _error(f"module {module.key!r} stores its {role} factor twice ({module.tensors[role]!r}, {key!r})",
                         path)
        module.tensors[role] = key
    for prefix, key in alphas:
        if prefix not in modules:
            raise _error(f"has an alpha {key!r} for no module", path)
        modules[prefix].alpha_key = key
    return modules


def _check_shapes(module: RawModule, header: Header) -> None:
    path = header.path
    needed = {"lora": ("down", "up"), "loha": ("w1a", "w1b", "w2a", "w2b")}.get(module.algo)
    if needed is not None:
        missing = [role for role in needed if role not in module.tensors]
        if missing:
            raise _error(f"module {module.key!r} lacks its {', '.join(missing)} tensor(s)", path)
    infos = {role: header.tensors[key] for role, key in module.tensors.items()}
    shapes = {role: info.shape for role, info in infos.items()}
    try:
        if module.algo == "lora":
            module.shape = lora_shape(shapes["down"], shapes["up"])
        elif module.algo == "loha":
            module.shape = loha_shape(shapes["w1a"], shapes["w1b"], shapes["w2a"], shapes["w2b"])
        else:
            module.shape = lokr_shape(shapes)
    except ShapeError as exc:
        raise _error(f"module {module.key!r}: {exc}", path) from None
    dtypes = {info.dtype for info in infos.values()}
    if len(dtypes) != 1 or not dtypes <= set(FLOAT_DTYPES):
        raise _error(f"module {module.key!r} has tensors of dtype {', '.join(sorted(map(str, dtypes)))}; "
                     "its factors must share one floating-point dtype", path)
    module.dtype = dtypes.pop()
    if module.alpha_key is not None and header.tensors[module.alpha_key].shape not in ((), (1,)):
        raise _error(f"{module.alpha_key!r} must be one number, it has shape "
                     f"{list(header.tensors[module.alpha_key].shape)}", path)


# --- canonical names and the model family --------------------------------------------------------

def canonical_parts(module: RawModule, family: str) -> list[kohya.Part] | None:
    """The canonical module(s) `module` holds in `family`, or None when it is no module there."""
    if module.layout == KOHYA:
        return kohya.to_parts(module.key, family, module.shape.m, module.shape.n)
    if module.component not in names.FAMILY_COMPONENTS[family]:
        return None
    path = module.path
    if module.component.startswith("text_encoder") and path.startswith("encoder.layers."):
        path = "text_model." + path  # transformers ≥ 5 flattens CLIPTextModel
    name = f"{module.component}.{path}"
    return [kohya.Part(name)] if names.fits(name, family) else None


def _file_kernel(module: RawModule) -> tuple[int, ...] | None | bool:
    """The convolution kernel the file shows, None for a Linear layer, False when it cannot tell
    (LyCORIS stores convolution factors of LoHa/LoKr flattened, like a Linear's)."""
    if module.shape.kernel is not None:
        return module.shape.kernel
    return None if module.algo == "lora" else False


def _kinds_fit(module: RawModule, parts: list[kohya.Part], family: str) -> bool:
    shown = _file_kernel(module)
    if shown is False:
        return True
    return all(names.module_kernel(part.name, family) == shown for part in parts)


_VERSION_FAMILIES = (("sd_v1", "sd1"), ("sd_v2", "sd2"), ("sdxl", "sdxl"), ("flux", "flux"))
_ARCH_FAMILIES = (("stable-diffusion-v1", "sd1"), ("stable-diffusion-v2", "sd2"), ("stable-diffusion-xl", "sdxl"),
                  ("flux-1", "flux"))


def metadata_family(metadata: dict[str, str], path: Path) -> str | None:
    """The family the metadata names (kohya's `ss_base_model_version`, `modelspec.architecture`,
    `ss_v2`), None when it names none; an unsupported architecture is an error."""
    claims: dict[str, str] = {}
    version = metadata.get("ss_base_model_version", "").strip()
    if version:
        found = next((family for prefix, family in _VERSION_FAMILIES if version.startswith(prefix)), None)
        if found is None:
            raise _error(f"is a LoRA for {version!r} (ss_base_model_version); " + SUPPORTED, path)
        claims[found] = f"ss_base_model_version={version!r}"
    architecture = metadata.get("modelspec.architecture", "").strip()
    if architecture:
        base = architecture.split("/")[0]
        found = next((family for prefix, family in _ARCH_FAMILIES if base.startswith(prefix)), None)
        if found is None:
            raise _error(f"is a LoRA for {base!r} (modelspec.architecture); " + SUPPORTED, path)
        claims.setdefault(found, f"modelspec.architecture={architecture!r}")
    if not claims and metadata.get("ss_v2", "").strip().lower() == "true":
        claims["sd2"] = "ss_v2='True'"
    if len(claims) > 1:
        raise _error(f"has metadata naming two model families ({', '.join(claims.values())})", path)
    return next(iter(claims), None)


# Widths of the real models: cross-attention context (UNet attn2.to_k/to_v inputs) and text-encoder
# hidden size per component. Tiny test models have other widths and give no evidence.
_CONTEXT_WIDTH = {768: {"sd1"}, 1024: {"sd2"}, 2048: {"sdxl"}}
_TEXT_WIDTH = {("text_encoder", 768): {"sd1", "sdxl", "flux"}, ("text_encoder", 1024): {"sd2"},
               ("text_encoder_2", 1280): {"sdxl"}, ("text_encoder_2", 4096): {"flux"}}
_TEXT_INPUTS = re.compile(r"\.(?:q_proj|k_proj|v_proj|out_proj|fc1)$|\.SelfAttention\.[qkvo]$")


def _width_evidence(module: RawModule, name: str) -> set[str] | None:
    component, _ = names.split_component(name)
    if component == "unet" and re.search(r"\.attn2\.to_[kv]$", name):
        return _CONTEXT_WIDTH.get(module.shape.n)
    if component.startswith("text_encoder") and _TEXT_INPUTS.search(name):
        return _TEXT_WIDTH.get((component, module.shape.n))
    return None


def _is_flux_evidence(module: RawModule, name: str) -> bool:
    """Flux-only facts about a diffusers-named transformer module (SD3 and other DiTs share the
    double-stream names): single-stream blocks, the 64-channel patch input, the 3072 width."""
    return (".single_transformer_blocks." in name or (name == "transformer.x_embedder" and module.shape.n == 64)
            or (name.startswith("transformer.transformer_blocks.") and module.shape.n == 3072))


def infer_family(modules: list[RawModule], metadata: dict[str, str], path: Path,
                 forced: str | None = None) -> tuple[str, dict[str, list[kohya.Part]]]:
    """The model family and every module's canonical parts."""
    if forced is not None and forced not in names.FAMILIES:
        raise _error(f"unknown model family {forced!r}; families: {', '.join(names.FAMILIES)}", path)
    fitting = {family: {} for family in names.FAMILIES}
    for family in names.FAMILIES:
        for module in modules:
            parts = canonical_parts(module, family)
            if parts is None or not _kinds_fit(module, parts, family):
                fitting.pop(family)
                break
            fitting[family][module.key] = parts
    candidates = [family for family in names.FAMILIES if family in fitting]
    if not candidates:
        raise _no_family(modules, path)
    if forced is not None:
        if forced not in fitting:
            raise _error(f"does not fit {names.FAMILY_TITLES[forced]} (family={forced!r}): "
                         f"{_misfit(modules, forced)}; it fits {_titles(candidates)}", path)
        return forced, fitting[forced]
    claimed = metadata_family(metadata, path)
    if claimed is not None:
        if claimed not in candidates:
            raise _error(f"has metadata naming {names.FAMILY_TITLES[claimed]}, but its modules fit "
                         f"{_titles(candidates)}: {_misfit(modules, claimed)}", path)
        candidates = [claimed]
    for module in modules:
        if len(candidates) == 1:
            break
        name = fitting[candidates[0]][module.key][0].name
        evidence = _width_evidence(module, name)
        if evidence is not None and evidence & set(candidates):
            candidates = [family for family in candidates if family in evidence]
    if len(candidates) > 1:
        raise _error(f"fits more than one model family ({_titles(candidates)}) and its metadata does not say which",
                     path, hint=f"pass family= one of {', '.join(repr(f) for f in candidates)}")
    family = candidates[0]
    if family == "flux" and claimed is None and all(m.layout != KOHYA or m.key.startswith("lora_transformer")
                                                    for m in modules):
        flux_named = [(m, fitting["flux"][m.key][0].name) for m in modules]
        if not any(_is_flux_evidence(m, name) for m, name in flux_named if name.startswith("transformer.")):
            raise _error("is a transformer LoRA with diffusers names that other DiTs (SD3, …) share, and nothing "
                         "in it is Flux-only (single-stream blocks, width 3072, metadata)", path,
                         hint="pass family='flux' if it is a Flux.1 LoRA")
    return family, fitting[family]


def _titles(families) -> str:
    return " / ".join(names.FAMILY_TITLES[f] for f in families)


def _misfit(modules: list[RawModule], family: str) -> str:
    for module in modules:
        parts = canonical_parts(module, family)
        if parts is None:
            return f"module {module.key!r} is not one of its modules"
        if not _kinds_fit(module, parts, family):
            shown = _file_kernel(module)
            return (f"module {module.key!r} is stored as a {'convolution' if shown else 'Linear'} LoRA, which "
                    f"{names.FAMILY_TITLES[family]} does not have there")
    return "no reason found"


def _no_family(modules: list[RawModule], path: Path) -> AdapterError:
    alone = [m.key for m in modules
             if all(canonical_parts(m, family) is None for family in names.FAMILIES)]
    if alone:
        return _error(f"has modules that are in no supported model: {_examples(alone)}; " + SUPPORTED, path)
    per_family = {family: [m.key for m in modules if canonical_parts(m, family) is not None]
                  for family in names.FAMILIES}
    best = max(per_family, key=lambda f: len(per_family[f]))
    others = [m.key for m in modules if m.key not in set(per_family[best])]
    return _error(f"mixes modules of different model families: most fit {names.FAMILY_TITLES[best]}, but "
                  f"{_examples(others)} do not (or are stored with another layer type)", path)
