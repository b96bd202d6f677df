"""One seed: base model (the detox miniature's, cached) → adapters S1, S2, S3 and the oracle O →
every merge at every λ, each measured on the validation and the test prompts."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from examples.experiments.detox_miniature.model import (ModelSettings, TrainSettings, adapter_params,
                                                        attach_adapters, base_model, train)
from examples.experiments.detox_miniature.recipes import Evaluator
from examples.experiments.detox_miniature.run import deterministic, is_zero, log

from . import metrics, skills
from .recipes import DENSITY, METHODS


@dataclass(frozen=True)
class Preset:
    name: str
    base: TrainSettings
    adapters: TrainSettings
    oracle: TrainSettings           # O learns three skills at once: it gets more steps (see PRESETS)
    lengths: tuple[int, int]        # the base model's (the detox miniature's, so their caches agree)
    skill_lengths: tuple[int, int]  # adapters and prompts: from 3 symbols, where swap, rotate and reverse differ
    eval_n: int                     # prompts per new skill and for the general tasks, per split
    lam_values: tuple[float, ...]
    seeds: tuple[int, ...]


PRESETS = {
    "smoke": Preset("smoke", base=TrainSettings(steps=500, batch=64, lr=3e-3),
                    adapters=TrainSettings(steps=80, batch=32, lr=1e-2, warmup=10),
                    oracle=TrainSettings(steps=80, batch=32, lr=1e-2, warmup=10), lengths=(2, 5), skill_lengths=(3, 5),
                    eval_n=24, lam_values=(0.0, 0.5, 1.0), seeds=(0,)),
    "full": Preset("full", base=TrainSettings(steps=1200, batch=64, lr=3e-3),
                   adapters=TrainSettings(steps=300, batch=64, lr=5e-3, warmup=20),
                   oracle=TrainSettings(steps=600, batch=64, lr=5e-3, warmup=20), lengths=(2, 6), skill_lengths=(3, 6),
                   eval_n=96, lam_values=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0), seeds=(0, 1, 2)),
}


@dataclass(frozen=True)
class Options:
    preset: Preset
    shared_init: bool = False
    threads: int = 1
    cache: Path = Path("cache")
    adapters_dir: Path | None = None   # where to save S1, S2, S3, O (PEFT folders), per seed
    model: ModelSettings = field(default_factory=ModelSettings)
    quiet: bool = False

    def settings(self) -> dict[str, Any]:
        """Everything that determines the rows (recorded in rows.json)."""
        p = self.preset
        return {"preset": p.name, "shared_init": self.shared_init, "threads": self.threads,
                "model": asdict(self.model), "base_training": asdict(p.base), "adapter_training": asdict(p.adapters),
                "oracle_training": asdict(p.oracle),
                "lora": {"r": 8, "alpha": 16, "targets": "all seven projections"},
                "skills": dict(zip(skills.SKILLS, skills.SKILL_NAMES)), "p_skill": skills.P_SKILL,
                "lengths": list(p.lengths), "skill_lengths": list(p.skill_lengths), "eval_prompts_per_set": p.eval_n,
                "lam": list(p.lam_values),
                "density": DENSITY, "selection": "per method and seed, the λ with the best validation skill_mean "
                                                 "(ties: best validation general, then the smaller λ)"}


def train_adapters(model: Any, seed: int, preset: Preset) -> None:
    """S1, S2, S3 and the oracle in turn, each on its own mixture and data stream."""
    for name in skills.ADAPTERS:
        model.set_adapter(name)
        train(model, adapter_params(model, name), skills.mixture(name), random.Random(f"multitask-{seed}-{name}"),
              preset.oracle if name == skills.ORACLE else preset.adapters, preset.skill_lengths)
    for p in model.parameters():
        p.requires_grad_(False)


def run_seed(options: Options, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows of one seed, and its timings."""
    import dipm_lang

    p = options.preset
    timings: dict[str, Any] = {}
    cpu_start = time.process_time()
    with deterministic(options.threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        start = time.perf_counter()
        base, cached = base_model(options.model, p.base, p.lengths, seed, options.cache)
        timings["base_model_s"] = round(time.perf_counter() - start, 3)
        timings["base_model_cached"] = cached
        log(options, f"[seed {seed}] base model {'loaded from cache' if cached else 'trained'} "
                     f"in {timings['base_model_s']:.1f} s")

        start = time.perf_counter()
        model = attach_adapters(base, seed, options.shared_init, names=skills.ADAPTERS)
        train_adapters(model, seed, p)
        timings["adapters_s"] = round(time.perf_counter() - start, 3)
        log(options, f"[seed {seed}] adapters {', '.join(skills.ADAPTERS)} trained in {timings['adapters_s']:.1f} s")
        if options.adapters_dir is not None:
            model.save_pretrained(str(options.adapters_dir / f"seed{seed}"))

        sets = {split: skills.eval_sets(seed, split, p.eval_n, *p.skill_lengths) for split in skills.SPLITS}
        evaluator = Evaluator(model)
        rows: list[dict[str, Any]] = []
        measuring = 0.0

        def measure(adapter: str | None) -> dict[str, dict[str, float]]:
            nonlocal measuring
            t0 = time.perf_counter()
            if adapter is None:
                with model.disable_adapter():
                    result = metrics.measure(model, sets, p.skill_lengths[1])
            else:
                model.set_adapter(adapter)
                result = metrics.measure(model, sets, p.skill_lengths[1])
            measuring += time.perf_counter() - t0
            return result

        for name in ("base", *skills.ADAPTERS):
            rows.append({"seed": seed, "family": "reference", "method": name, "param": None, "value": None,
                         "expr": "" if name == "base" else name, "metrics": measure(None if name == "base" else name)})
        for method in METHODS:
            for value in p.lam_values:
                result = evaluator.value(method, value)
                row = {"seed": seed, "family": method.family, "method": method.name, "param": method.param,
                       "value": value, "expr": method.expr(value)}
                if is_zero(result):  # λ = 0: no update at all, i.e. the base model
                    row["metrics"] = measure(None)
                else:
                    dipm_lang.add_to_peft_model(model, result, "merged")
                    row["metrics"] = measure("merged")
                    model.set_adapter(skills.ADAPTERS[0])  # deleting the active adapter would warn
                    model.delete_adapter("merged")
                rows.append(row)
            log(options, f"[seed {seed}] {method.name}: {len(p.lam_values)} configurations")
        metrics.add_normalized(rows)
        timings["dipm_s"] = round(evaluator.seconds, 3)
        timings["dipm_calls"] = evaluator.calls
        timings["dipm_ms_per_call"] = round(1000 * evaluator.seconds / max(evaluator.calls, 1), 2)
        timings["metrics_s"] = round(measuring, 3)
        timings["configurations"] = len(rows)
        timings["cpu_s"] = round(time.process_time() - cpu_start, 3)
    return rows, timings
