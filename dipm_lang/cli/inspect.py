"""`dipm inspect ADAPTER [ADAPTER …]`: ranks, scales, norms, magnitudes; direction cosines between adapters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dipm_lang.cli.options import positive_int, usable_path
from dipm_lang.errors import UsageError, printable


def register(sub, commands) -> None:
    p = sub.add_parser("inspect", help="per-module and per-layer statistics of adapters; direction cosines "
                                       "between them")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", type=usable_path,
                   help="PEFT LoRA adapter folders, or Hugging Face Hub ids "
                        "(ORG/NAME, hf://ORG/NAME@REVISION/SUBFOLDER)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--plot", metavar="OUT.png", type=usable_path, help="draw heat maps (layer × module type) of norms and cosines")
    p.add_argument("--force", action="store_true", help="replace an existing --plot file")
    p.add_argument("--target", choices=("vllm",), help="instead, list what this server's LoRA loader would refuse "
                                                       "and why (exit 1 when it would refuse any adapter)")
    p.add_argument("--max-rank", type=positive_int, metavar="N",
                   help="with --target vllm: the server's --max-lora-rank (default 16)")
    commands["inspect"] = run


def run(args: argparse.Namespace) -> int:
    if args.target == "vllm":
        return _serving(args)
    if args.max_rank is not None:
        raise UsageError("--max-rank goes with --target vllm (the server's --max-lora-rank)")
    from dipm_lang.io.atomic import check_file_output
    from dipm_lang.report.inspect import inspect_adapters, plot_report

    if args.plot:  # the destination is checked before any work
        check_file_output(args.plot, inputs=args.adapters, force=args.force)
    report = inspect_adapters(args.adapters)
    if args.plot:
        plot_report(report, args.plot, force=args.force, inputs=args.adapters)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(printable(report.text()))
        if args.plot:
            print(f"\nwrote {args.plot}")
    return 0


def _serving(args: argparse.Namespace) -> int:
    """`--target vllm`: per adapter, the vLLM rules it breaks (io/vllm.py)."""
    from dipm_lang.io.vllm import check_folder
    from dipm_lang.ir.targets import DEFAULT_MAX_LORA_RANK, vllm_max_rank_problem

    if args.plot:
        raise UsageError("--plot draws statistics; it does not go with --target")
    problem = vllm_max_rank_problem(args.max_rank)
    if problem:
        raise UsageError(f"--max-rank {args.max_rank}: {problem}")
    limit = args.max_rank or DEFAULT_MAX_LORA_RANK
    found = {path: check_folder(_folder(path), limit) for path in args.adapters}
    if args.json:
        print(json.dumps({"target": "vllm", "max_lora_rank": limit, "adapters": [
            {"adapter": path, "served": not refusals,
             "refusals": [{"rule": r.rule, "message": r.message, "modules": list(r.modules)} for r in refusals]}
            for path, refusals in found.items()]}, indent=2))
    else:
        lines = []
        for path, refusals in found.items():
            if not refusals:
                lines.append(f"{path}: vLLM would serve it (--max-lora-rank {limit})")
                continue
            lines.append(f"{path}: vLLM (--max-lora-rank {limit}) would refuse it or serve something else:")
            lines += [f"  {refusal.text()}" for refusal in refusals]
        print(printable("\n".join(lines)))
    return 1 if any(found.values()) else 0


def _folder(text: str) -> str:
    """The folder vLLM's rules are checked on: `text`, or for a Hub id (SPEC §7.5) its files in
    huggingface_hub's cache (fetched there first when online)."""
    from dipm_lang.io.hub_ref import hub_input

    ref = hub_input(text, base_dir=Path.cwd())
    if ref is None:
        return text
    from dipm_lang.io.hub import resolve

    return str(resolve(ref, progress=None if sys.stderr.isatty() else False).folder)
