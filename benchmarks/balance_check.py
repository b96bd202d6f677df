"""What faithful outputs cost at 7B shapes: the writer's balance check on every module, and the
re-factoring of a module that fails it, against writing the adapter.

    python -m benchmarks.balance_check [--layers 32] [--rank 16] [--repeat 3]

The value is `transfer(C, T, t=0.3)` of two 7B-shaped adapters (rank 32 per module). Every saved
module pays `writer.imbalance` (‖B‖·‖A‖/‖BA‖ from two r×r Gram matrices); only a module whose
factors are badly balanced for their product — a result that nearly cancels — pays
`balance.balanced` (QR of both factors, SVD of the core, in float64). The table shows both
over all modules, next to the time `AdapterValue.save` takes for the whole adapter (which
includes the check). Times are the best of `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import adapters as AD


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.balance_check", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes")
    args = p.parse_args(argv)

    import dipm_lang
    from dipm_lang.backend.balance import balanced
    from dipm_lang.io.writer import imbalance

    shapes = AD.TINY if args.quick else AD.LLAMA_7B
    work = Path(tempfile.mkdtemp(prefix="dipm-balance-"))
    try:
        inputs = {name: AD.make_adapter(work / name, layers=args.layers, rank=args.rank, shapes=shapes, adapter=i)
                  for i, name in enumerate(("C", "T"))}
        value = dipm_lang.evaluate("transfer(C, T, t=0.3)", **inputs)
        modules = list(value.values())
        check_s = best(lambda: [imbalance(x) for x in modules], args.repeat)
        refactor_s = best(lambda: [balanced(x.to(torch.float64)) for x in modules], args.repeat)

        def save() -> None:
            shutil.rmtree(work / "out", ignore_errors=True)
            value.save(work / "out")

        save_s = best(save, args.repeat)
        ratios = [imbalance(x) for x in modules]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"shapes": shapes.name, "layers": args.layers, "modules": len(modules),
              "rank": modules[0].rank, "check_s": check_s, "refactor_all_s": refactor_s, "save_s": save_s,
              "check_share_of_save": check_s / save_s, "refactor_all_vs_save": refactor_s / save_s,
              "max_imbalance": max(ratios), "threshold": 2 * modules[0].rank ** 0.5}
    print(f"{len(modules)} modules of {shapes.name}, rank {modules[0].rank}: "
          f"balance check {check_s:.3f} s ({100 * result['check_share_of_save']:.1f}% of the save's "
          f"{save_s:.2f} s); re-factoring every module would take {refactor_s:.2f} s "
          f"({result['refactor_all_vs_save']:.2f}× the save); this value's largest ‖B‖‖A‖/‖BA‖ is "
          f"{result['max_imbalance']:.2f} (re-factored above {result['threshold']:.1f})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
