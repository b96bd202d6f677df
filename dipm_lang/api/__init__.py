"""The Python API: compile scripts and expressions, evaluate them, sweep their numbers, and hand
results to PEFT.

    import dipm_lang as dl

    value = dl.evaluate("detox(H, T, t=0.3)", H="adapters/helpful", T=peft_model)
    print(value)                                  # type, modules, ranks, norms per layer
    value.save("out/detox")                       # a PEFT adapter folder
    dl.add_to_peft_model(peft_model, value, "detox")  # or a new adapter on the model itself

    program = dl.compile("transfer(C, T, t=t)", inputs={"C": "adapters/C", "T": "adapters/T"})
    for t in (0.1, 0.3, 0.5):
        program(t=t).save(f"out/t={t}")           # compiled once; each call binds the number t

    table = dl.sweep(program, {"t": "0:1:0.1"}, "out/sweep", eval="python score.py {adapter}",
                     maximize="acc")              # every point in one pass; table, plot, best

Inputs may be adapter folders (`str` or `Path`), adapters on the Hugging Face Hub (`"org/name"`,
`"hf://org/name@revision/subfolder"`), already computed values (`AdapterValue`, or a
mapping module name → `LowRank` with the scale folded into `B`), a `peft.PeftModel` (its active
adapter) or `(peft_model, "adapter_name")`. In-memory inputs are read directly, never written to
temporary files. Errors are `dipm_lang.errors.DipmError`s, whose `str()` says where and what.

Modules: `programs` (compile, CompiledProgram, evaluate), `values` (AdapterValue, inputs,
add_to_peft_model), `sweeps` (sweep, and the compute step `dipm sweep` shares).
"""

from dipm_lang.api.programs import CompiledProgram, compile, evaluate
from dipm_lang.api.sweeps import sweep
from dipm_lang.api.values import AdapterValue, add_to_peft_model

__all__ = ["AdapterValue", "CompiledProgram", "add_to_peft_model", "compile", "evaluate", "sweep"]
