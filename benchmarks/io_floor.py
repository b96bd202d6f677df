"""The I/O floor as a whole process: read the inputs, write an output of a given size, nothing else.

    python -m benchmarks.io_floor --like OUTPUT_FOLDER [--like …] --out FOLDER INPUT_FOLDER [INPUT_FOLDER …]

It reads every input's config and tensors with `safetensors.torch.load_file`, then writes
tensors with the names, shapes and dtypes of `--like`'s weights file (the output the recipe
produced) with `safetensors.torch.save_file`, plus a config. Any PyTorch tool that reads and
writes PEFT adapters pays at least this: interpreter and torch start-up, reading, writing.
With several `--like` folders (a sweep's points) it writes one output like each, to
`FOLDER/<its name>`. `--fsync` also flushes each written file to disk, as dipm does before it
renames an output into place (without it the outputs may still be in the page cache at exit).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("inputs", nargs="+")
    p.add_argument("--like", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fsync", action="store_true", help="flush every written file to disk")
    args = p.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    loaded = []
    for folder in map(Path, args.inputs):
        json.loads((folder / CONFIG_NAME).read_text())
        loaded.append(load_file(str(folder / WEIGHTS_NAME)))
    likes = [Path(like) for like in args.like]
    for like in likes:
        spec = {k: v for k, v in header(like / WEIGHTS_NAME).items() if k != "__metadata__"}
        tensors = {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]]) for k, v in spec.items()}
        out = Path(args.out) / like.name if len(likes) > 1 else Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        (out / CONFIG_NAME).write_text((like / CONFIG_NAME).read_text())
        if args.fsync:
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                with open(out / name, "rb") as handle:
                    os.fsync(handle.fileno())
    print(json.dumps({"inputs": len(loaded), "tensors": len(tensors)}))


if __name__ == "__main__":
    main()
