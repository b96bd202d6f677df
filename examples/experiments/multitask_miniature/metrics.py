"""Metrics of one configuration, per split: exact match on each new skill and on the general tasks
(greedy decoding, the detox miniature's `greedy`), the general answers' NLL, and the derived
`skill_mean` (mean of the three new skills) and `normalized` (mean of each skill's accuracy over
that skill's own adapter's accuracy, as merging papers report).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from examples.experiments.detox_miniature import toy
from examples.experiments.detox_miniature.metrics import answer_nll, greedy

from .skills import SKILL_NAMES, SKILLS


def measure(model: torch.nn.Module, sets: dict[str, dict[str, list[toy.Example]]], max_len: int
            ) -> dict[str, dict[str, float]]:
    """{split: {inc, swap, rotate, general, general_nll, skill_mean}} of the model as it is."""
    model.eval()
    result = {}
    for split, groups in sets.items():
        prompts = [e.prompt for group in groups.values() for e in group]
        outputs = iter(greedy(model, prompts, max_new=max_len + 1))
        scores: dict[str, float] = {}
        for name, group in groups.items():
            scores[name] = sum(next(outputs) == e.clean for e in group) / len(group)
        scores["general_nll"] = answer_nll(model, groups["general"])
        scores["skill_mean"] = statistics.fmean(scores[s] for s in SKILL_NAMES)
        result[split] = scores
    return result


def add_normalized(rows: list[dict[str, Any]]) -> None:
    """Give every row of one seed `normalized` per split: mean over skills of accuracy / own adapter's.

    A skill whose adapter scores 0 on a split counts as 0 (nothing to normalise by)."""
    own = {name: next(r for r in rows if r["method"] == name) for name in SKILLS}
    for row in rows:
        for split in row["metrics"]:
            ratios = []
            for name, skill in zip(SKILLS, SKILL_NAMES):
                mine = own[name]["metrics"][split][skill]
                ratios.append(row["metrics"][split][skill] / mine if mine > 0 else 0.0)
            row["metrics"][split]["normalized"] = statistics.fmean(ratios)
