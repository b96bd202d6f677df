"""`dipm run FILE`: compile, validate every input and output, execute, write atomically."""

from __future__ import annotations

import argparse

from dipm_lang.cli.options import (add_set_option, base_from, parse_sets, positive_int, positive_number,
                                   sandbox_from, show_warnings, usable_path)
from dipm_lang.compiler import compile, source_of, with_target
from dipm_lang.ir.targets import TARGETS
from dipm_lang.run.options import DTYPE_NAMES
from dipm_lang.errors import DipmError, printable
from dipm_lang.io import digest
from dipm_lang.io.hub_ref import is_hub_path
from dipm_lang.io.layout import ADAPTER_FILES
from dipm_lang.ir.node import walk

# This module stays torch-free: `run` compiles the script and starts hashing its inputs first,
# then imports the runtime (and torch, ~0.75 s) while the second core hashes (io/digest.py).


def register(sub, commands) -> None:
    p = sub.add_parser("run", help="run a script: read adapters, compute, write adapters")
    p.add_argument("file", type=usable_path, help="a .dipm script, or a YAML/TOML recipe")
    add_set_option(p)
    add_run_options(p)
    commands["run"] = run


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_compute_options(p)
    p.add_argument("--force", action="store_true", help="replace existing output folders")
    p.add_argument("--dry-run", action="store_true", help="compile and check inputs/outputs; compute nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.add_argument("--target", choices=TARGETS, help="write every output for this server (vllm: one rank, checked "
                                                     "against vLLM's rules), unless its save names a target")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """How a program is computed and written (`dipm run`, `dipm sweep`)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="compute dtype (default float32)")
    p.add_argument("--out-dtype", choices=list(DTYPE_NAMES), help="dtype of the written tensors (default: the inputs')")
    p.add_argument("--eps", type=positive_number, default=1e-12, help="zero-unit threshold (default 1e-12)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU worker threads (default: all cores); outputs are byte-identical for any N")
    p.add_argument("--ignore-base-model", action="store_true", help="combine adapters made for different bases")


def options_from(args: argparse.Namespace):
    from dipm_lang.run import RunOptions

    return RunOptions(device=args.device, dtype=args.dtype, out_dtype=args.out_dtype, eps=args.eps,
                      force=args.force, progress=args.progress, ignore_base_model=args.ignore_base_model,
                      sandbox=sandbox_from(args), threads=args.threads, base=base_from(args))


def run(args: argparse.Namespace) -> int:
    program, _ = compile(source_of(args.file), parse_sets(args.sets), level=args.level, sandbox=sandbox_from(args))
    return execute_program(program, args)


def execute_program(program, args: argparse.Namespace) -> int:
    program = with_target(program, getattr(args, "target", None))
    show_warnings(program)
    if not args.dry_run:
        digest.prefetch(_input_folders(program, args))
    from dipm_lang.run import plan, run_program

    options = options_from(args)
    if args.dry_run:
        from dipm_lang.run.planning import schedule_values

        the_plan = plan(program, options)
        print(f"dry run: {len(the_plan.inputs)} inputs, {len(the_plan.modules)} modules, "
              f"{len(program.roots)} outputs checked; nothing written")
        for save in program.roots:
            print(printable(f"  would write {save.attr('path')}"))
        _print_schedules(schedule_values(the_plan))
        return 0
    summary = run_program(program, options, quiet=args.quiet)
    if not args.quiet:
        print(printable(summary.text()))
        _print_schedules(summary.schedules)
    return 0


def _print_schedules(schedules) -> None:
    """The numbers each schedule gave, per layer and module kind (SPEC §7.2)."""
    from dipm_lang.ir.modules import split_module
    from dipm_lang.ir.numbers import format_value
    from dipm_lang.ir.schedules import blocks_in
    from dipm_lang.report.summary import layer_table

    for schedule, values in schedules:
        if blocks_in(schedule):  # block weights of an image model: per block, as sd-webui-lora-block-weight shows them
            print(printable(f"schedule {format_value(schedule)}, per block:"))
            print(block_table(values, flux=any(len(b.values) == 61 for b in blocks_in(schedule))))
            continue
        print(printable(f"schedule {format_value(schedule)}, per layer:"))
        cells = {split_module(name): value for name, value in values.items()}
        print("\n".join(layer_table(cells)))


def block_table(values, *, flux: bool) -> str:
    """`BLOCK  value` lines in block order (a range where the block's modules differ); `-` is outside every block."""
    from dipm_lang.ir.blocks import BLOCKID26, BLOCKIDFLUX, block_id
    from dipm_lang.ir.numbers import format_number

    found: dict[str, list[float]] = {}
    for name, value in values.items():
        found.setdefault(block_id(name, flux=flux) or "-", []).append(value)
    order = list(BLOCKIDFLUX if flux else BLOCKID26) + ["-"]
    lines = []
    for block in sorted(found, key=order.index):
        low, high = min(found[block]), max(found[block])
        shown = format_number(low) if low == high else f"{format_number(low)}–{format_number(high)}"
        lines.append(f"    {block:>5}  {shown}")
    return "\n".join(lines)


def _input_folders(program, args: argparse.Namespace) -> list[str]:
    """The adapter folders the program loads (under --sandbox, only those it may read)."""
    sandbox = sandbox_from(args)
    folders = []
    for node in walk(program.all_roots()):
        path = node.attr("path") if node.op == "load" else None
        if path is None or is_hub_path(path):  # a Hub input's files are known once it is resolved
            continue
        if sandbox is not None:
            try:
                sandbox.check_files(path, ADAPTER_FILES, "load")
            except DipmError:
                continue  # the run's own checks report it
        folders.append(path)
    return folders
