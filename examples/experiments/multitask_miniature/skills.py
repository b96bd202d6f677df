"""The three new skills, their training mixtures and the validation / test prompt sets.

The skills are tasks of the detox miniature's toy language (`detox_miniature/toy.py`) that its
base model never saw: `inc` (each symbol + 1 mod 16), `swap` (swap adjacent pairs) and `rotate`
(rotate left by one). Each adapter S1, S2, S3 learns one of them with replay of the general tasks
(copy / reverse / sort); the oracle learns all three from one mixture. No prompt has a trigger.
Validation and test prompts are drawn from separate `random.Random` streams per seed.
"""

from __future__ import annotations

import random

from examples.experiments.detox_miniature import toy

SKILLS = {"S1": toy.INC, "S2": toy.SWAP, "S3": toy.ROTATE}   # adapter name -> the task token it learns
SKILL_NAMES = tuple(toy.TASK_NAMES[task] for task in SKILLS.values())  # ("inc", "swap", "rotate")
ORACLE = "O"
ADAPTERS = (*SKILLS, ORACLE)
SPLITS = ("val", "test")
P_SKILL = 0.5  # the share of an adapter's training examples that are its new skill(s); the rest is replay


def mixture(name: str) -> toy.Mixture:
    """S1/S2/S3: one new skill + replay; O (the oracle): all three new skills + replay, equal shares."""
    skills = tuple(SKILLS.values()) if name == ORACLE else (SKILLS[name],)
    replay = (1.0 - P_SKILL) / len(toy.GENERAL_TASKS)
    return toy.Mixture((*skills, *toy.GENERAL_TASKS),
                       (*(P_SKILL / len(skills),) * len(skills), *(replay,) * len(toy.GENERAL_TASKS)), 0.0, None)


def eval_sets(seed: int, split: str, n: int, min_len: int, max_len: int) -> dict[str, list[toy.Example]]:
    """`n` prompts per new skill and `n` general ones (copy / reverse / sort in turn) for `split`."""
    rng = random.Random(f"multitask-{split}-{seed}")
    sets = {toy.TASK_NAMES[task]: [toy.example(rng, task, min_len, max_len, False) for _ in range(n)]
            for task in SKILLS.values()}
    sets["general"] = [toy.example(rng, toy.GENERAL_TASKS[i % len(toy.GENERAL_TASKS)], min_len, max_len, False)
                       for i in range(n)]
    return sets
