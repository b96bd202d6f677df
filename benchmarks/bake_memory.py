"""Peak memory of `bake` on a model of several shards (SPEC §7.8: streamed shard by shard).

    python -m benchmarks.bake_memory [--hidden 1024] [--layers 8] [--shard-size 100MB] [--rank 16]

A randomly initialised Llama is written by transformers' `save_pretrained` in shards, and a LoRA
of rank `--rank` on every linear layer (and the embedding and lm_head) is made in memory. A
fresh process then opens the base and bakes the adapter into a staging folder while a thread
samples its resident memory (`/proc/self/statm`) every few milliseconds. The claim checked:
the peak growth during `bake` stays within one shard plus the adapter (plus a fixed allowance
for the float32 work of one group of modules), whatever the model's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_base(folder: Path, hidden: int, layers: int, shard_size: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
                                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                                      vocab_size=8192, tie_word_embeddings=False)
    with torch.no_grad():
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(folder), max_shard_size=shard_size)


def child(base_dir: str, out_dir: str, rank: int) -> None:
    """Runs in a fresh process: open, build the adapter, bake; print the measurements as JSON."""
    import torch

    from dipm_lang.backend.lowrank import LowRank
    from dipm_lang.io.bake import bake
    from dipm_lang.io.base_model import open_base_model
    from dipm_lang.io.base_modules import select_modules

    base = open_base_model(base_dir)
    modules = dict(select_modules(base, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj", "embed_tokens", "lm_head"]).modules)
    g = torch.Generator().manual_seed(1)
    factors = {}
    for name, kind in modules.items():
        m, n = base.weight(name, kind).shape
        factors[name] = LowRank(torch.randn(m, rank, generator=g) * 0.01, torch.randn(rank, n, generator=g) / n**0.5)
    adapter_bytes = sum(f.B.nbytes + f.A.nbytes for f in factors.values())

    def deltas(names):
        return LowRank(torch.stack([factors[n].B for n in names]), torch.stack([factors[n].A for n in names]))

    peak, stop = [rss_bytes()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    before = rss_bytes()
    peak[0] = before
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    bake(base, deltas, out_dir, modules=modules)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join()
    peak[0] = max(peak[0], rss_bytes())
    shards = [s.size for s in base.layout.shards]
    print(json.dumps({
        "shards": len(shards), "largest_shard_mb": max(shards) / MB, "model_mb": sum(shards) / MB,
        "adapter_mb": adapter_bytes / MB, "modules": len(modules), "bake_seconds": seconds,
        "rss_before_mb": before / MB, "peak_growth_mb": (peak[0] - before) / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base, out = Path(tmp) / "base", Path(tmp) / "baked"
        make_base(base, args.hidden, args.layers, args.shard_size)
        out.mkdir()
        result = subprocess.run([sys.executable, "-m", "benchmarks.bake_memory", "--child", str(base), str(out),
                                 str(args.rank)], capture_output=True, text=True, check=True)
        stats = json.loads(result.stdout.strip().splitlines()[-1])
    bound = stats["largest_shard_mb"] + stats["adapter_mb"]
    stats["bound_mb"] = bound
    stats["within_bound"] = stats["peak_growth_mb"] <= bound
    print(json.dumps(stats, indent=2))
    print(f"peak growth {stats['peak_growth_mb']:.0f} MB during bake of a {stats['model_mb']:.0f} MB model in "
          f"{stats['shards']} shards (largest {stats['largest_shard_mb']:.0f} MB, adapter {stats['adapter_mb']:.1f} MB):"
          f" {'within' if stats['within_bound'] else 'ABOVE'} one shard + the adapter; {stats['bake_seconds']:.1f} s")


if __name__ == "__main__":
    main()
