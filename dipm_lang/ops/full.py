"""The explicit choices for full-weight modules and biases (SPEC §7.4): `keep_full`, `drop_full`.

PEFT adapters may hold whole tensors besides their LoRA factors (`modules_to_save`, trained biases;
`io/full.py`). Affine recipes combine them by themselves (`ir/full_weights.py`); for any other recipe
a script says what the output keeps. Both operators leave the update itself unchanged: they only
decide which full-weight tensors the saved value carries, which the plan reads, so `keep_full`'s
`src` is never computed (`unevaluated`) — `keep_full(ties([H, T], …), H)` does the work of the ties only.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import Param, Update
from dipm_lang.ir.types import DELTA

OPERATORS = [
    Operator("keep_full", (Param("x", Update()), Param("src", Update())), DELTA,
             "x, carrying src's full-weight modules and biases (PEFT modules_to_save, bias) instead of its "
             "own: keep_full(x, H) keeps input H's bit for bit; src may be any recipe that carries them "
             "(0.5*H + 0.5*T averages them).",
             factored=lambda ctx, node, x, src: x, unevaluated=("src",)),
    Operator("drop_full", (Param("x", Update()),), DELTA,
             "x, carrying no full-weight modules or biases: the output lists no modules_to_save and "
             "bias=\"none\", so the base model's own weights are used there.",
             factored=lambda ctx, node, x: x),
]
