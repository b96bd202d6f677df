"""One seed of the experiment: base model → adapters H, T, C → every recipe at every sweep value."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics, toy
from .model import (ADAPTERS, ModelSettings, TrainSettings, attach_adapters, base_folder, base_model,
                    train_adapters)
from .recipes import METHODS, Evaluator


@dataclass(frozen=True)
class Preset:
    name: str
    base: TrainSettings
    adapters: TrainSettings
    lengths: tuple[int, int]
    eval_n: int
    t_values: tuple[float, ...]
    lam_values: tuple[float, ...]
    alpha_values: tuple[float, ...]
    seeds: tuple[int, ...]

    def sweep(self, param: str) -> tuple[float, ...]:
        return {"t": self.t_values, "lam": self.lam_values, "alpha": self.alpha_values}[param]


def _grid(stop: float, step: float) -> tuple[float, ...]:
    return tuple(round(i * step, 6) for i in range(round(stop / step) + 1))


PRESETS = {
    "smoke": Preset("smoke", base=TrainSettings(steps=500, batch=64, lr=3e-3),
                    adapters=TrainSettings(steps=150, batch=64, lr=8e-3, warmup=20), lengths=(2, 5), eval_n=96,
                    t_values=_grid(1.0, 0.25), lam_values=(0.0, 0.5, 1.0, 2.0, 3.0), alpha_values=_grid(1.0, 0.25),
                    seeds=(0,)),
    "full": Preset("full", base=TrainSettings(steps=1200, batch=64, lr=3e-3),
                   adapters=TrainSettings(steps=400, batch=64, lr=5e-3, warmup=20), lengths=(2, 6), eval_n=240,
                   t_values=_grid(1.0, 0.1), lam_values=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0),
                   alpha_values=_grid(1.0, 0.1), seeds=(0, 1, 2)),
}


@dataclass(frozen=True)
class Options:
    preset: Preset
    encoding: str = "suffix"
    shared_init: bool = True
    threads: int = 1
    cache: Path = Path("cache")
    adapters_dir: Path | None = None   # where to save H, T, C (PEFT folders), per seed
    model: ModelSettings = field(default_factory=ModelSettings)
    quiet: bool = False

    def settings(self) -> dict[str, Any]:
        """Everything that determines the rows (recorded in rows.json)."""
        p = self.preset
        return {"preset": p.name, "encoding": self.encoding, "shared_init": self.shared_init,
                "threads": self.threads, "model": asdict(self.model), "base_training": asdict(p.base),
                "adapter_training": asdict(p.adapters), "lora": {"r": 8, "alpha": 16, "targets": "all seven projections"},
                "lengths": list(p.lengths), "eval_prompts_per_set": p.eval_n,
                "sweeps": {"t": list(p.t_values), "lam": list(p.lam_values), "alpha": list(p.alpha_values)}}


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels, restored afterwards (tests run in-process)."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


@contextlib.contextmanager
def quiet_deterministic(threads: int) -> Iterator[None]:
    """`deterministic`, and peft's call of a transformers API that transformers 5 deprecates silenced
    (nothing for us to do)."""
    with deterministic(threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def adapters_on_base(options: Any, seed: int, timings: dict[str, Any], names: tuple[str, ...],
                     train_all: Callable[[Any], Any], on_base: Callable[[Any], Any] | None = None) -> Any:
    """The base model with fresh adapters `names`, trained by `train_all(model)`, timed, logged and
    saved under `options.adapters_dir` when given; `on_base(base)` sees the base before PEFT wraps it."""
    base = load_base(options, seed, timings)
    if on_base is not None:
        on_base(base)
    start = time.perf_counter()
    model = attach_adapters(base, seed, options.shared_init, names)
    train_all(model)
    timings["adapters_s"] = round(time.perf_counter() - start, 3)
    log(options, f"[seed {seed}] adapters {', '.join(names)} trained in {timings['adapters_s']:.1f} s")
    if options.adapters_dir is not None:
        model.save_pretrained(str(options.adapters_dir / f"seed{seed}"))
    return model


def is_zero(value: Any) -> bool:
    """Whether every module's update is exactly zero (PEFT cannot hold such an adapter)."""
    return all(v.rank == 0 or not bool(v.B.any()) or not bool(v.A.any()) for v in value.values())


def log(options: Options, message: str) -> None:
    if not options.quiet:
        print(message, file=sys.stderr, flush=True)


def load_base(options: Any, seed: int, timings: dict[str, Any]) -> torch.nn.Module:
    """The preset's base model for `seed` (from `options.cache` when there), timed and logged."""
    p = options.preset
    start = time.perf_counter()
    base, cached = base_model(options.model, p.base, p.lengths, seed, options.cache)
    timings["base_model_s"] = round(time.perf_counter() - start, 3)
    timings["base_model_cached"] = cached
    log(options, f"[seed {seed}] base model {'loaded from cache' if cached else 'trained'} "
                 f"in {timings['base_model_s']:.1f} s")
    return base


class Scorer:
    """Scores a PEFT model as it is — the base (`None`: adapters disabled) or one of its adapters — or a
    dipm value, added as a temporary adapter; `seconds` is the time spent scoring."""

    def __init__(self, model: Any, score: Callable[[Any], dict[str, Any]], idle: str):
        self.model, self.score, self.idle = model, score, idle  # idle: active while none is scored
        self.seconds = 0.0

    def __call__(self, adapter: str | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        if adapter is None:
            with self.model.disable_adapter():
                result = self.score(self.model)
        else:
            self.model.set_adapter(adapter)
            result = self.score(self.model)
        self.seconds += time.perf_counter() - t0
        return result

    def value(self, value: Any) -> dict[str, Any]:
        import dipm_lang

        if is_zero(value):  # e.g. (1 - 1.0) * H: no update at all, i.e. the base model
            return self(None)
        dipm_lang.add_to_peft_model(self.model, value, "recipe")
        return self.once("recipe")

    def once(self, adapter: str) -> dict[str, Any]:
        """Score an adapter added for this one measurement, then delete it."""
        try:
            return self(adapter)
        finally:
            self.model.set_adapter(self.idle)  # deleting the active adapter would warn
            self.model.delete_adapter(adapter)


def finish_timings(timings: dict[str, Any], evaluator: Evaluator, scorer: Scorer, rows: list[Any],
                   cpu_start: float) -> None:
    timings["dipm_s"] = round(evaluator.seconds, 3)
    timings["dipm_calls"] = evaluator.calls
    timings["dipm_ms_per_call"] = round(1000 * evaluator.seconds / max(evaluator.calls, 1), 2)
    timings["metrics_s"] = round(scorer.seconds, 3)
    timings["configurations"] = len(rows)
    timings["cpu_s"] = round(time.process_time() - cpu_start, 3)


def run_seed(options: Options, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows of one seed, and its timings."""
    p = options.preset
    timings: dict[str, Any] = {}
    cpu_start = time.process_time()
    with quiet_deterministic(options.threads):
        base_dirs: list[Path] = []  # the weight-level recipes read W0 from a folder (`base()`)
        model = adapters_on_base(options, seed, timings, ADAPTERS,
                                 lambda m: train_adapters(m, seed, options.encoding, p.adapters, p.lengths),
                                 on_base=lambda base: base_dirs.append(
                                     base_folder(base, options.model, p.base, p.lengths, seed, options.cache)))

        sets = toy.eval_sets(seed, p.eval_n, *p.lengths, options.encoding)
        work = tempfile.TemporaryDirectory(prefix="detox-miniature-")
        evaluator = Evaluator(model, base_dirs[0], Path(work.name))
        measure = Scorer(model, lambda m: metrics.measure(m, sets, p.lengths[1]), idle="H")
        rows: list[dict[str, Any]] = []
        for name in ("base", "H", "T", "C"):
            rows.append({"seed": seed, "family": "reference", "method": name, "param": None, "value": None,
                         "expr": name if name != "base" else "", **measure(None if name == "base" else name)})
        for method in METHODS:
            for value in p.sweep(method.param):
                row = {"seed": seed, "family": method.family, "method": method.name, "param": method.param,
                       "value": value, "expr": method.expr(value)}
                if method.weight_level:  # a weight, saved as a DoRA adapter that PEFT loads
                    evaluator.add_weight_level(method, value, "recipe")
                    row["row_norm_rel_err"] = evaluator.weight_row_norm_error("recipe", method.keeps)
                    row.update(measure.once("recipe"))
                    rows.append(row)
                    continue
                result = evaluator.value(method, value)
                if method.keeps:
                    row["row_norm_rel_err"] = evaluator.row_norm_error(result, method.keeps)
                row.update(measure.value(result))
                rows.append(row)
            log(options, f"[seed {seed}] {method.name}: {len(p.sweep(method.param))} configurations")
        work.cleanup()
        finish_timings(timings, evaluator, measure, rows, cpu_start)
    return rows, timings
