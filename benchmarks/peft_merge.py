"""PEFT's side as a whole process: load a PeftModel with two adapters, `add_weighted_adapter`,
`save_pretrained` — what a user of PEFT runs today.

    python -m benchmarks.peft_merge --method svd --weights 0.7 0.3 --out OUT ADAPTER1 ADAPTER2 \
        --hidden 4096 --ffn 11008 --layers 2 [--density 0.5] [--device cpu]

The base model is a `LlamaForCausalLM` with the adapters' module shapes, built on the meta
device and given uninitialised storage (`to_empty`): no base weights are read or even touched
(untouched pages cost no resident memory), and the vocabulary has 32 entries. That is the
cheapest base PEFT can run on, so the comparison favours PEFT. Prints one JSON line with the
seconds of each phase and of `add_weighted_adapter` per LoRA module.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    start = time.perf_counter()
    p = argparse.ArgumentParser()
    p.add_argument("adapters", nargs="+")
    p.add_argument("--method", required=True)
    p.add_argument("--weights", type=float, nargs="+", required=True)
    p.add_argument("--density", type=float, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--ffn", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import peft
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    imported = time.perf_counter()
    heads = max(1, args.hidden // 128)
    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn,
                                      num_hidden_layers=args.layers, num_attention_heads=heads,
                                      num_key_value_heads=heads, vocab_size=32)
    with torch.device("meta"):
        base = transformers.LlamaForCausalLM(config)
    base = base.to_empty(device=args.device).eval()
    built = time.perf_counter()

    names = [f"a{i}" for i in range(len(args.adapters))]
    model = peft.PeftModel.from_pretrained(base, args.adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    loaded = time.perf_counter()

    kwargs = {} if args.density is None else {"density": args.density}
    torch.manual_seed(0)  # DARE's Bernoulli masks
    model.add_weighted_adapter(names, args.weights, "merged", combination_type=args.method, **kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    merged = time.perf_counter()
    model.save_pretrained(args.out, selected_adapters=["merged"])
    saved = time.perf_counter()

    modules = sum(1 for m in model.modules() if hasattr(m, "lora_A") and "merged" in m.lora_A)
    print(json.dumps({
        "modules": modules, "import_s": imported - start, "build_base_s": built - imported,
        "load_s": loaded - built, "merge_s": merged - loaded, "save_s": saved - merged,
        "merge_s_per_module": (merged - loaded) / max(modules, 1),
    }))


if __name__ == "__main__":
    main()
