"""A reproducible miniature of the DiPM claim: detox and transfer on a toy language.

    python -m examples.experiments.detox_miniature --preset smoke|full --seeds 0 1 2 --out DIR

A tiny Llama is pretrained here on copy / reverse / sort (`toy.py`, `model.py`); LoRA adapters
H (a new skill plus an unwanted behaviour), T (the behaviour alone) and C (the skill alone) are
trained on it; every recipe is computed by dipm_lang (`recipes.py`) and scored by greedy
decoding (`metrics.py`); `report.py` turns the rows into Pareto fronts, table.md and
pareto.png. RESULTS.md holds the latest full run.
"""
