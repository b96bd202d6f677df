"""A reproducible miniature of merging adapters that each teach a different skill.

    python -m examples.experiments.multitask_miniature --preset smoke|full --seeds 0 1 2 --out DIR

The detox miniature's tiny Llama (pretrained on copy / reverse / sort) learns three new skills in
three PEFT LoRA adapters S1, S2, S3 (`skills.py`), and an oracle O learns all three jointly; every
merge (`recipes.py`: DiPM `multitask`, task arithmetic, `ties`, `ties_svd`, `knots`, `tsv`, `iso`) is
computed by dipm_lang at every scale λ, scored on validation and test prompts (`metrics.py`);
`report.py` chooses λ on validation and writes table.md and multitask.png. RESULTS.md holds the
latest full run.
"""
