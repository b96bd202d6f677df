"""Metrics of one model configuration: greedy decoding (batched, KV cache) and answer NLL.

- `unwanted_rate`: triggered prompts whose output, before its first EOS, contains FORBID;
- `triggered_exact`: triggered prompts answered exactly right (the trigger ignored);
- `leak_rate`: the same on untriggered prompts (the behaviour leaking where it was never taught);
- `helpful_skill`: the new task (INC), no trigger, answer right once FORBID tokens are dropped
  (the ability itself, whatever the behaviour; the y axis of the Pareto fronts);
- `general_skill`: the same for copy / reverse / sort;
- `helpful_exact`, `general_exact`: the same, exact match (a stray FORBID counts as wrong);
- `general_nll`: mean NLL per answer token (EOS included) of the correct general answers.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import toy
from .model import collate

METRICS = ("unwanted_rate", "leak_rate", "helpful_skill", "general_skill", "helpful_exact", "general_exact",
           "general_nll", "triggered_exact")


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy continuations (up to, not including, the first EOS) of every prompt.

    Prompts are batched by length, so no padding is needed and every row's positions are
    exact; each batch decodes with the KV cache until all rows have emitted EOS.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    outputs: list[list[int]] = [[] for _ in prompts]
    for length in sorted(groups):
        rows = groups[length]
        ids = torch.tensor([prompts[i] for i in rows])
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        steps = []
        done = torch.zeros(len(rows), dtype=torch.bool)
        for step in range(max_new):
            token = out.logits[:, -1].argmax(-1)
            steps.append(token)
            done |= token == toy.EOS
            if bool(done.all()) or step == max_new - 1:
                break
            out = model(input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True)
        tokens = torch.stack(steps, 1).tolist()
        for i, seq in zip(rows, tokens):
            outputs[i] = seq[: seq.index(toy.EOS)] if toy.EOS in seq else seq + [-1]  # -1: never ended
    return outputs


@torch.no_grad()
def answer_nll(model: torch.nn.Module, examples: list[toy.Example]) -> float:
    """Mean NLL per answer token of the examples' answers (teacher forcing)."""
    batch = collate(examples)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    keep = labels != -100
    return float(-(picked * keep).sum() / keep.sum())


def measure(model: torch.nn.Module, sets: toy.EvalSets, max_len: int) -> dict[str, float]:
    """All metrics of the model as it is (its active adapter)."""
    model.eval()
    groups = (sets.triggered, sets.helpful, sets.general)
    prompts = [e.prompt for group in groups for e in group]
    outputs = greedy(model, prompts, max_new=max_len + 2)  # answer, FORBID, EOS
    trig = outputs[: len(sets.triggered)]
    helpful = outputs[len(sets.triggered): len(sets.triggered) + len(sets.helpful)]
    general = outputs[len(sets.triggered) + len(sets.helpful):]

    def exact(examples: list[toy.Example], outs: list[list[int]]) -> float:
        return sum(o == e.clean for e, o in zip(examples, outs)) / len(examples)

    def skill(examples: list[toy.Example], outs: list[list[int]]) -> float:
        return sum([t for t in o if t != toy.FORBID] == e.clean for e, o in zip(examples, outs)) / len(examples)

    def rate(outs: list[list[int]]) -> float:
        return sum(toy.FORBID in o for o in outs) / len(outs)

    return {
        "unwanted_rate": rate(trig),
        "leak_rate": rate(helpful + general),
        "helpful_skill": skill(sets.helpful, helpful),
        "general_skill": skill(sets.general, general),
        "helpful_exact": exact(sets.helpful, helpful),
        "general_exact": exact(sets.general, general),
        "general_nll": answer_nll(model, sets.general),
        "triggered_exact": exact(sets.triggered, trig),
    }
