"""Score one adapter on held-out prompts and print its metrics as ONE JSON line — a `dipm sweep --eval` evaluator.

    dipm sweep examples/detox.dipm --grid t=0:1:0.1 -o out/detox_t \\
        --eval "python -m examples.evaluate_adapter {adapter}" --maximize helpful_skill --jobs 2

(run from the repository root; `python examples/evaluate_adapter.py {adapter}` works too). The
adapter is loaded onto its base model with PEFT (`PeftModel.from_pretrained`) and scored by the
detox miniature's own measures (`examples/experiments/detox_miniature/metrics.py`: greedy
decoding on fixed prompts of its toy language — unwanted behaviour rate, helpful and general
skill, answer NLL). The base model is

- `--base DIR`: a causal LM folder (`save_pretrained`) trained on that toy language, or
- by default, the detox miniature's pretrained base for `--seed` (its smoke preset's settings),
  trained once and cached in `--toy-cache` by the miniature's own `model.base_model`.

Everything but the last stdout line goes to stderr or is free-form: dipm reads the last line.
A folder holding several adapters (a recipe with several saves) is passed as `{adapter}/NAME`.
`--compare-base` adds `base_<metric>` for the base model alone (the adapter disabled), so a
sweep's table shows what each point changed.

Other evaluators plug in the same way; whatever the command, its last stdout line is the JSON.

**lm-evaluation-harness** (`pip install lm-eval`) evaluates a PEFT adapter directly; point its
output at a scratch folder (not inside the sweep folder, which dipm keeps to its own files) and
turn its results file into one line with this module's `--from-lm-eval`:

    --eval 'out=$(mktemp -d) && lm_eval --model hf \\
              --model_args pretrained=BASE,peft={adapter} --tasks arc_easy,hellaswag \\
              --batch_size 8 --output_path "$out" >&2 \\
            && python -m examples.evaluate_adapter --from-lm-eval "$out"'

`--from-lm-eval DIR` reads the newest `results_*.json` under DIR and prints
`{"arc_easy/acc": 0.71, "arc_easy/acc_norm": 0.66, …}` (one key per task and metric; the
`,none` filter suffix dropped, other filters kept as `metric,filter`; standard errors left out).

**vLLM** serves many adapters over one copy of the base, which suits sweeps (no base reload per
point). Offline, in an evaluator script:

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    llm = LLM(model=BASE, enable_lora=True, max_lora_rank=64)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=64),
                        lora_request=LoRARequest("point", 1, adapter_path))
    # …score outs, then print(json.dumps(metrics))

or as a server started once (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora
--max-lora-rank 64`, or `--lora-modules NAME=PATH` for fixed adapters), with an eval command that
loads the point (`POST /v1/load_lora_adapter {"lora_name": …, "lora_path": {adapter}}`), queries
`/v1/completions` with `"model": NAME`, prints the JSON line and unloads it. `--max-lora-rank`
must cover the sweep's ranks: DiPM results are exact, so ranks add (`save(…, rank=N)` caps them).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `examples` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.experiments.detox_miniature import metrics, toy  # noqa: E402
from examples.experiments.detox_miniature.model import ModelSettings, TrainSettings, base_model  # noqa: E402
from examples.experiments.detox_miniature.run import PRESETS, deterministic  # noqa: E402

CONFIG_NAME = "adapter_config.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    smoke = PRESETS["smoke"]
    parser = argparse.ArgumentParser(prog="python -m examples.evaluate_adapter",
                                     description="Score a LoRA adapter on the toy language; print one JSON line.")
    parser.add_argument("adapter", nargs="?", help="a PEFT adapter folder (what dipm sweep passes as {adapter})")
    parser.add_argument("--base", type=Path, help="base model folder (default: the detox miniature's toy base)")
    parser.add_argument("--toy-cache", type=Path, default=Path(os.environ.get("DIPM_TOY_CACHE", "cache/toy_base")),
                        help="where the toy base is cached (default: cache/toy_base, or $DIPM_TOY_CACHE)")
    parser.add_argument("--toy-steps", type=int, default=smoke.base.steps,
                        help=f"pretraining steps of the toy base (default {smoke.base.steps}, the smoke preset)")
    parser.add_argument("--seed", type=int, default=0, help="toy base seed and evaluation prompts (default 0)")
    parser.add_argument("--n", type=int, default=smoke.eval_n, help=f"prompts per set (default {smoke.eval_n})")
    parser.add_argument("--encoding", choices=toy.ENCODINGS, default="suffix",
                        help="how the unwanted behaviour is written (default suffix)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: byte-stable results)")
    parser.add_argument("--compare-base", action="store_true", help="also report base_<metric> without the adapter")
    parser.add_argument("--from-lm-eval", metavar="DIR", type=Path,
                        help="print the metrics of lm-eval's newest results_*.json under DIR, and nothing else")
    args = parser.parse_args(argv)
    if args.from_lm_eval is None and args.adapter is None:
        parser.error("give an adapter folder (or --from-lm-eval DIR)")
    return args


def adapter_folder(path: Path) -> Path:
    """`path` itself, or the single adapter inside it; a clear error otherwise."""
    if (path / CONFIG_NAME).is_file():
        return path
    inside = sorted(p.name for p in path.iterdir() if (p / CONFIG_NAME).is_file()) if path.is_dir() else []
    if len(inside) == 1:
        return path / inside[0]
    if inside:
        raise SystemExit(f"{path} holds several adapters ({', '.join(inside)}); pass {path}/NAME")
    raise SystemExit(f"{path} is not a PEFT adapter folder (no {CONFIG_NAME})")


def load_base(args: argparse.Namespace) -> Any:
    import transformers

    if args.base is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(args.base), dtype="float32")
    else:
        smoke = PRESETS["smoke"]
        training = TrainSettings(args.toy_steps, smoke.base.batch, smoke.base.lr,
                                 min(smoke.base.warmup, max(1, args.toy_steps)))
        with _locked(args.toy_cache):  # `--jobs N` evaluators: one trains the base, the others load it
            model, cached = base_model(ModelSettings(), training, smoke.lengths, args.seed, args.toy_cache)
        print(f"toy base (seed {args.seed}, {args.toy_steps} steps) {'from cache' if cached else 'trained'}",
              file=sys.stderr)
    model.eval()
    return model


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: evaluators may train the base side by side (the cache write is atomic)
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def score(args: argparse.Namespace) -> dict[str, float]:
    import peft

    lengths = PRESETS["smoke"].lengths
    with deterministic(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = peft.PeftModel.from_pretrained(load_base(args), str(adapter_folder(Path(args.adapter))))
        sets = toy.eval_sets(args.seed, args.n, *lengths, args.encoding)
        result = metrics.measure(model, sets, lengths[1])
        if args.compare_base:
            with model.disable_adapter():
                result.update({f"base_{k}": v for k, v in metrics.measure(model, sets, lengths[1]).items()})
    return result


def lm_eval_metrics(folder: Path) -> dict[str, float]:
    """Flatten lm-eval's newest results file under `folder` into `task/metric` → number."""
    files = sorted(glob.glob(str(folder / "**" / "results_*.json"), recursive=True), key=os.path.getmtime)
    if not files:
        raise SystemExit(f"no lm-eval results_*.json under {folder}")
    results = json.loads(Path(files[-1]).read_text())["results"]
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or metric.endswith("_stderr"):
                continue
            if not math.isfinite(value):  # lm-eval writes NaN for undefined scores; dipm refuses them
                continue
            flat[f"{task}/{metric}" + (f",{filter_name}" if filter_name not in ("", "none") else "")] = value
    return flat


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = lm_eval_metrics(args.from_lm_eval) if args.from_lm_eval is not None else score(args)
    sys.stdout.flush()
    print(json.dumps(result))  # the last stdout line: what dipm sweep reads
    return 0


if __name__ == "__main__":
    sys.exit(main())
