"""Benchmarks of dipm_lang against PEFT's `add_weighted_adapter` and against the I/O floor.

    python -m benchmarks.run [--layers N] [--rank R] [--adapters K] [--device cpu|cuda] [--quick] \
        --out benchmarks/results

Modules, one job each:
- `adapters`   builds Llama-shaped LoRA adapter folders (PEFT's file format) and reads them back;
- `measure`    runs a subprocess and reports its wall time and peak memory (`wait4` rusage);
- `peft_merge` the PEFT side as a whole process: load PeftModel, add_weighted_adapter, save;
- `io_floor`   the I/O floor as a whole process: load the inputs, save an output of a given size;
- `suite`      the measurements (PEFT comparison, recipes vs floor, scaling);
- `report`     results.md, results.json and scaling.png;
- `run`        the command line.

Nothing here is imported by dipm_lang, and importing this package is cheap (no torch).
"""
