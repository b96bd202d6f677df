"""The tiny base model (pretrained here, cached on disk) and the three LoRA adapters H, T, C.

Nothing is downloaded: the model is a `LlamaForCausalLM` built from a config and trained on
the toy language of `toy.py`. Training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import toy

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = ("H", "T", "C")
CACHE_FORMAT = 1  # bump when the base model's training code changes meaning


@dataclass(frozen=True)
class ModelSettings:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    vocab_size: int = toy.VOCAB_SIZE
    max_position_embeddings: int = 32


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch: int
    lr: float
    warmup: int = 50


def llama_config(settings: ModelSettings) -> Any:
    import transformers

    return transformers.LlamaConfig(
        **asdict(settings), num_key_value_heads=settings.num_attention_heads,
        pad_token_id=toy.PAD, bos_token_id=toy.BOS, eos_token_id=toy.EOS,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )


def collate(examples: list[toy.Example]) -> dict[str, torch.Tensor]:
    """Right-padded batch; the loss sees the answer tokens only."""
    seqs = [e.prompt + e.answer for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), toy.PAD, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (e, s) in enumerate(zip(examples, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, len(e.prompt): len(s)] = torch.tensor(e.answer)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(model: torch.nn.Module, params: list[torch.nn.Parameter], mixture: toy.Mixture, rng: random.Random,
          settings: TrainSettings, lengths: tuple[int, int]) -> list[float]:
    """AdamW with linear warm-up and cosine decay on fresh samples of `mixture`; returns the losses."""
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / settings.warmup)
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / settings.steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    for _ in range(settings.steps):
        batch = collate([mixture.draw(rng, *lengths) for _ in range(settings.batch)])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


# ---- the base model, cached ---------------------------------------------------------------


def base_key(model: ModelSettings, training: TrainSettings, lengths: tuple[int, int], seed: int) -> str:
    import transformers

    settings = {"format": CACHE_FORMAT, "model": asdict(model), "train": asdict(training),
                "lengths": list(lengths), "seed": seed, "mixture": repr(toy.base_mixture()),
                "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def base_model(model: ModelSettings, training: TrainSettings, lengths: tuple[int, int], seed: int,
               cache: Path) -> tuple[torch.nn.Module, bool]:
    """The pretrained base model for `seed`, from `cache` when there; returns (model, was_cached)."""
    import transformers
    from safetensors.torch import load_file, save_file

    path = cache / f"base-seed{seed}-{base_key(model, training, lengths, seed)}.safetensors"
    cached = path.exists()
    if not cached:
        torch.manual_seed(seed)
        net = transformers.LlamaForCausalLM(llama_config(model))
        train(net, list(net.parameters()), toy.base_mixture(), random.Random(f"base-{seed}"), training, lengths)
        cache.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
        save_file(state, str(tmp))
        os.replace(tmp, path)  # atomic: a killed run never leaves half a cache entry
    # Always load from disk, so a cold and a warm run start from the very same tensors.
    net = transformers.LlamaForCausalLM(llama_config(model))
    net.load_state_dict(load_file(str(path)))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cached


def base_folder(net: torch.nn.Module, model: ModelSettings, training: TrainSettings, lengths: tuple[int, int],
                seed: int, cache: Path) -> Path:
    """The base model `net` as a model folder (`save_pretrained`), written once per key beside the
    cache entry: dipm's weight-level recipes read W0 from it (`base()`, SPEC §7.8). Call it before
    adapters are attached (PEFT renames the weights in place)."""
    import shutil

    path = cache / f"base-seed{seed}-{base_key(model, training, lengths, seed)}"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, suffix=".tmp"))
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, not an error
                net.save_pretrained(str(staging))
            os.replace(staging, path)  # atomic, as the cache file
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return path


# ---- the adapters -------------------------------------------------------------------------


def lora_config(rank: int = 8, alpha: int = 16) -> Any:
    import peft

    return peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0,
                           bias="none")


def attach_adapters(base: torch.nn.Module, seed: int, shared_init: bool,
                    names: tuple[str, ...] = ADAPTERS) -> Any:
    """A PeftModel holding fresh adapters `names` (H, T, C); with `shared_init` all start from one `A`."""
    import peft

    config = lora_config()

    def init_seed(name: str) -> int:
        return 1000 * seed + (0 if shared_init else 1 + names.index(name))

    torch.manual_seed(init_seed(names[0]))
    model = peft.get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        torch.manual_seed(init_seed(name))
        model.add_adapter(name, config)
    return model


def adapter_params(model: torch.nn.Module, name: str) -> list[torch.nn.Parameter]:
    params = []
    for key, p in model.named_parameters():
        mine = "lora_" in key and f".{name}." in key
        p.requires_grad_(mine)
        if mine:
            params.append(p)
    return params


def train_adapters(model: Any, seed: int, encoding: str, training: TrainSettings,
                   lengths: tuple[int, int]) -> dict[str, list[float]]:
    """Train H, T and C in turn on their mixtures; H and C see the very same prompts."""
    mixtures = toy.adapter_mixtures(encoding)
    losses = {}
    for name in ADAPTERS:
        model.set_adapter(name)
        data_seed = f"adapter-{seed}-{'T' if name == 'T' else 'HC'}"  # C is H's data minus the behaviour
        losses[name] = train(model, adapter_params(model, name), mixtures[name], random.Random(data_seed),
                             training, lengths)
    for p in model.parameters():
        p.requires_grad_(False)
    return losses
