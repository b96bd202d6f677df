"""`dipm inspect ADAPTER [ADAPTER …]`: ranks, scales, norms, magnitudes; direction cosines between adapters."""

from __future__ import annotations

import argparse
import json

from dipm_lang.cli.options import usable_path
from dipm_lang.errors import printable


def register(sub, commands) -> None:
    p = sub.add_parser("inspect", help="per-module and per-layer statistics of adapters; direction cosines "
                                       "between them")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", type=usable_path,
                   help="PEFT LoRA adapter folders, or Hugging Face Hub ids (ORG/NAME, hf://ORG/NAME@REVISION/SUBFOLDER)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--plot", metavar="OUT.png", type=usable_path, help="draw heat maps (layer × module type) of norms and cosines")
    p.add_argument("--force", action="store_true", help="replace an existing --plot file")
    commands["inspect"] = run


def run(args: argparse.Namespace) -> int:
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
