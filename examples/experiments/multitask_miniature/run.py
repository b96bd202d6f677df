"""One seed: base model (the detox miniature's, cached) → adapters S1, S2, S3 and the oracle O →
every merge at every λ, each measured on the validation and the test prompts."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from examples.experiments.detox_miniature.model import ModelSettings, TrainSettings, adapter_params, train
from examples.experiments.detox_miniature.recipes import Evaluator
from examples.experiments.detox_miniature.run import Scorer, adapters_on_base, finish_timings, log, quiet_deterministic

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
    p = options.preset
    timings: dict[str, Any] = {}
    cpu_start = time.process_time()
    with quiet_deterministic(options.threads):
        model = adapters_on_base(options, seed, timings, skills.ADAPTERS, lambda m: train_adapters(m, seed, p))

        sets = {split: skills.eval_sets(seed, split, p.eval_n, *p.skill_lengths) for split in skills.SPLITS}
        evaluator = Evaluator(model)
        measure = Scorer(model, lambda m: metrics.measure(m, sets, p.skill_lengths[1]), idle=skills.ADAPTERS[0])
        rows: list[dict[str, Any]] = []
        for name in ("base", *skills.ADAPTERS):
            rows.append({"seed": seed, "family": "reference", "method": name, "param": None, "value": None,
                         "expr": "" if name == "base" else name, "metrics": measure(None if name == "base" else name)})
        for method in METHODS:
            for value in p.lam_values:
                rows.append({"seed": seed, "family": method.family, "method": method.name, "param": method.param,
                             "value": value, "expr": method.expr(value),
                             "metrics": measure.value(evaluator.value(method, value))})
            log(options, f"[seed {seed}] {method.name}: {len(p.lam_values)} configurations")
        metrics.add_normalized(rows)
        finish_timings(timings, evaluator, measure, rows, cpu_start)
    return rows, timings
