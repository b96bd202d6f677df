"""The measurements: dipm vs PEFT, DiPM recipes vs the I/O floor, scaling.

Every whole-process number is a subprocess's wall time and peak RSS (`measure.run_process`);
every per-module number is in-process compute time divided by the number of modules.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import adapters as AD
from benchmarks.measure import best_of, dipm_cmd, python_cmd, repeat_process, run_process

METHODS = ("svd", "cat", "linear", "ties_svd", "dare_linear")
RECIPES = ("transfer", "detox", "multitask")
MEMORY_SLACK_MIB = 64.0
"""The "small constant" of the memory target: peak RSS may exceed the run's own baseline
(`dipm run --dry-run`: interpreter, imports, headers) plus inputs plus output by this much."""


@dataclass
class Settings:
    layers: int = 32               # recipes vs the I/O floor
    peft_layers: int = 2           # dipm vs PEFT
    rank: int = 16
    adapters: int = 3              # multitask's inputs
    device: str = "cpu"
    shapes: AD.Shapes = AD.LLAMA_7B
    weights: tuple[float, float] = (0.7, 0.3)
    density: float = 0.5
    repeats: int = 3               # whole-process runs of dipm and the floor (fastest); PEFT runs once
    inproc_repeats: int = 5        # in-process timings (best of)
    scaling_layers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    scaling_ranks: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    scaling_adapters: tuple[int, ...] = (2, 4, 8, 16, 32, 50)
    dtype: torch.dtype = torch.float32
    work: Path = Path("benchmarks/results/tmp")
    log: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr, flush=True))


# ---- dipm expressions ---------------------------------------------------------------------


def _builtins() -> set[str]:
    from dipm_lang.ops import OPERATORS

    return set(OPERATORS.callables())


def method_expr(method: str, names: list[str], s: Settings, rank: int | None = None) -> str | None:
    """The dipm expression for PEFT's `combination_type=method` on `names`, or None if dipm_lang
    has no such function yet. The svd and cat fallbacks are the same math in plain dipm."""
    xs = f"[{', '.join(names)}]"
    weights = list(s.weights) if len(names) == len(s.weights) else [round(1.0 / len(names), 6)] * len(names)
    ws = f"[{', '.join(repr(w) for w in weights)}]"
    rank = rank or s.rank
    have = _builtins()
    weighted_sum = " + ".join(f"{w!r} * {x}" for w, x in zip(weights, names))
    if method == "svd":
        return f"svd({xs}, {ws}, rank={rank})" if "svd" in have else f"lowrank({weighted_sum}, {rank})"
    if method == "cat":
        return f"cat({xs}, {ws})" if "cat" in have else weighted_sum
    if method not in have:
        return None
    if method == "linear":
        return f"linear({xs}, {ws})"
    if method == "ties_svd":
        return f'ties_svd({xs}, {ws}, density={s.density!r}, majority_sign_method="total", rank={rank})'
    if method == "dare_linear":
        return f"dare_linear({xs}, {ws}, density={s.density!r}, seed=0)"
    raise ValueError(method)


def recipe_expr(recipe: str, names: list[str]) -> str:
    if recipe == "transfer":
        return f"transfer({names[0]}, {names[1]}, t=0.3)"
    if recipe == "detox":
        return f"detox({names[0]}, {names[1]}, t=0.3)"
    if recipe == "multitask":
        return f"multitask([{', '.join(names)}])"
    raise ValueError(recipe)


def write_script(path: Path, inputs: dict[str, Path], expr: str, out: Path) -> Path:
    lines = [f'{name} = load("{folder.resolve().as_posix()}")' for name, folder in inputs.items()]
    lines.append(f'save({expr}, "{out.resolve().as_posix()}")')
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the suite -----------------------------------------------------------------------------


class Suite:
    def __init__(self, settings: Settings):
        self.s = settings
        self.work = settings.work
        self.results: dict[str, Any] = {"peft": [], "recipes": [], "scaling": {}, "io_floor_baseline": {}}

    # -- adapters

    def adapter(self, index: int, layers: int) -> Path:
        """Adapter `index` of the benchmark set with `layers` layers (built on first use)."""
        path = self.work / "adapters" / f"L{layers}_r{self.s.rank}" / f"adapter{index}"
        if not (path / AD.WEIGHTS_NAME).exists():
            AD.make_adapter(path, layers=layers, rank=self.s.rank, shapes=self.s.shapes, adapter=index,
                            dtype=self.s.dtype)
        return path

    def scratch(self, name: str) -> Path:
        path = self.work / "out" / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def _dipm_run(self, script: Path, *extra: str) -> list[str]:
        return dipm_cmd("run", str(script), "--force", "--quiet", "--no-progress", "--device", self.s.device, *extra)

    # -- 1. dipm vs PEFT

    def peft_comparison(self) -> None:
        s = self.s
        inputs = [self.adapter(0, s.peft_layers), self.adapter(1, s.peft_layers)]
        factors = [AD.read_factors(p) for p in inputs]
        exact = list(zip(s.weights, factors))
        memory = [self._in_memory(f) for f in factors]
        modules = len(factors[0])
        for method in METHODS:
            row: dict[str, Any] = {"method": method, "modules": modules, "layers": s.peft_layers}
            expr = method_expr(method, ["A", "B"], s)
            row["dipm_expr"] = expr
            if expr is not None:
                s.log(f"[peft comparison] dipm {method}: {expr}")
                row["dipm_s_per_module"] = self._inproc(expr, {"A": memory[0], "B": memory[1]}) / modules
                out = self.scratch(f"dipm_{method}")
                script = write_script(self.work / f"dipm_{method}.dipm", {"A": inputs[0], "B": inputs[1]}, expr, out)
                best, times = repeat_process(self._dipm_run(script), s.repeats)
                row.update(dipm_process_s=best.seconds, dipm_process_runs=times, dipm_peak_mib=best.peak_mb,
                           dipm_error=AD.relative_error(AD.read_factors(out), exact),
                           dipm_output_mib=AD.folder_bytes(out) / 2**20)
                shutil.rmtree(out, ignore_errors=True)
            s.log(f"[peft comparison] PEFT {method} ({s.peft_layers} layers; the svd methods take minutes)")
            out = self.scratch(f"peft_{method}")
            cmd = python_cmd("-m", "benchmarks.peft_merge", *map(str, inputs), "--method", method,
                             "--weights", *map(str, s.weights), "--out", str(out), "--hidden", str(s.shapes.hidden),
                             "--ffn", str(s.shapes.ffn), "--layers", str(s.peft_layers), "--device", s.device)
            if method in ("ties_svd", "dare_linear"):
                cmd += ["--density", str(s.density)]
            result = run_process(cmd)
            phases = result.last_json()
            row.update(peft_s_per_module=phases["merge_s_per_module"], peft_phases=phases,
                       peft_process_s=result.seconds, peft_peak_mib=result.peak_mb,
                       peft_error=AD.relative_error(AD.read_factors(out / "merged"), exact),
                       peft_output_mib=AD.folder_bytes(out / "merged") / 2**20)
            shutil.rmtree(out, ignore_errors=True)
            self.results["peft"].append(row)
            s.log(f"  {row}")

    def _in_memory(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
        from dipm_lang.backend.lowrank import LowRank

        return {name: LowRank(b.to(torch.float32).contiguous(), a.to(torch.float32).contiguous())
                for name, (b, a) in factors.items()}

    def _inproc(self, expr: str, inputs: dict) -> float:
        """Best-of wall time of `dipm_lang.evaluate(expr)` on in-memory inputs (compute only)."""
        import dipm_lang

        def once():
            value = dipm_lang.evaluate(expr, device=self.s.device, **inputs)
            if self.s.device.startswith("cuda"):
                torch.cuda.synchronize()
            return value

        return best_of(once, self.s.inproc_repeats)

    # -- 2. recipes vs the I/O floor

    def recipes(self) -> None:
        s = self.s
        self.results["io_floor_baseline"] = self._import_baselines()
        for recipe in RECIPES:
            count = s.adapters if recipe == "multitask" else 2
            inputs = {f"X{i}": self.adapter(i, s.layers) for i in range(count)}
            row = self._recipe_vs_floor(recipe, inputs, s.repeats)
            row["layers"] = s.layers
            self.results["recipes"].append(row)
            s.log(f"  {row}")

    def _import_baselines(self) -> dict[str, float]:
        """Start-up alone: `import torch` and `dipm --help`, as whole processes."""
        torch_run, _ = repeat_process(python_cmd("-c", "import torch"), self.s.repeats)
        dipm_run, _ = repeat_process(dipm_cmd("--help"), self.s.repeats)
        return {"import_torch_s": torch_run.seconds, "import_torch_peak_mib": torch_run.peak_mb,
                "dipm_help_s": dipm_run.seconds, "dipm_help_peak_mib": dipm_run.peak_mb}

    def _recipe_vs_floor(self, recipe: str, inputs: dict[str, Path], repeats: int) -> dict[str, Any]:
        s = self.s
        s.log(f"[recipes] {recipe} on {len(inputs)} adapters")
        out = self.work / "out" / f"recipe_{recipe}"
        script = write_script(self.work / f"recipe_{recipe}.dipm", inputs, recipe_expr(recipe, list(inputs)), out)
        best, times = repeat_process(self._dipm_run(script), repeats, before=lambda: shutil.rmtree(out, True))
        dry = run_process(self._dipm_run(script, "--dry-run"))
        floor_out = self.work / "out" / f"floor_{recipe}"
        floor_cmd = python_cmd("-m", "benchmarks.io_floor", *map(str, inputs.values()), "--like", str(out),
                               "--out", str(floor_out))
        floor, floor_times = repeat_process(floor_cmd, repeats, before=lambda: shutil.rmtree(floor_out, True))
        inputs_mib = sum(AD.folder_bytes(p) for p in inputs.values()) / 2**20
        output_mib = AD.folder_bytes(out) / 2**20
        row = {"recipe": recipe, "inputs": len(inputs), "inputs_mib": inputs_mib, "output_mib": output_mib,
               "dipm_process_s": best.seconds, "dipm_process_runs": times, "dipm_peak_mib": best.peak_mb,
               "dipm_dry_run_peak_mib": dry.peak_mb, "dipm_dry_run_s": dry.seconds,
               "floor_process_s": floor.seconds, "floor_process_runs": floor_times, "floor_peak_mib": floor.peak_mb}
        row["ratio_to_floor"] = row["dipm_process_s"] / row["floor_process_s"]
        row["memory_excess_mib"] = best.peak_mb - dry.peak_mb - inputs_mib - output_mib
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(floor_out, ignore_errors=True)
        return row

    # -- 3. scaling (dipm only)

    def scaling(self) -> None:
        s = self.s
        rows = []
        measured = {r["layers"]: r for r in self.results["recipes"] if r["recipe"] == "transfer"}
        for layers in s.scaling_layers:
            row = measured.get(layers)  # the recipes section measured this point already
            if row is None:
                inputs = {"X0": self.adapter(0, layers), "X1": self.adapter(1, layers)}
                row = self._recipe_vs_floor("transfer", inputs, 1)
            rows.append({"layers": layers, "dipm_process_s": row["dipm_process_s"],
                         "floor_process_s": row["floor_process_s"], "dipm_peak_mib": row["dipm_peak_mib"]})
            s.log(f"  {rows[-1]}")
        self.results["scaling"]["layers"] = rows

        base_layers = s.peft_layers
        rows = []
        for rank in s.scaling_ranks:
            xs = [self._random_inputs(i, base_layers, rank) for i in range(2)]
            modules = len(xs[0])
            row = {"rank": rank, "modules": modules,
                   # what every dense method pays first: the product B·A of one input
                   "dense_product_ms_per_module": 1e3 * best_of(lambda: [x.B @ x.A for x in xs[0].values()],
                                                                s.inproc_repeats) / modules,
                   "transfer_ms_per_module": 1e3 * self._inproc(recipe_expr("transfer", ["X0", "X1"]),
                                                                {"X0": xs[0], "X1": xs[1]}) / modules,
                   "svd_ms_per_module": 1e3 * self._inproc(method_expr("svd", ["X0", "X1"], s, rank=rank),
                                                           {"X0": xs[0], "X1": xs[1]}) / modules}
            rows.append(row)
            s.log(f"  {row}")
        self.results["scaling"]["rank"] = rows

        rows = []
        for count in s.scaling_adapters:
            xs = {f"X{i}": self._random_inputs(i, base_layers, s.rank) for i in range(count)}
            modules = len(xs["X0"])
            row = {"adapters": count, "modules": modules,
                   "multitask_ms_per_module": 1e3 * self._inproc(recipe_expr("multitask", list(xs)), xs) / modules,
                   "svd_ms_per_module": 1e3 * self._inproc(method_expr("svd", list(xs), s), xs) / modules}
            rows.append(row)
            s.log(f"  {row}")
        self.results["scaling"]["adapters"] = rows

    def _random_inputs(self, index: int, layers: int, rank: int) -> dict:
        """An in-memory adapter (module → LowRank with the scale folded in), like `adapter(...)`."""
        from dipm_lang.backend.lowrank import LowRank

        out = {}
        for i, (name, m, n) in enumerate(self.s.shapes.modules(layers)):
            layer, proj = divmod(i, len(AD.PROJECTIONS))
            b, a = AD.module_factors(m, n, rank, set_seed=0, adapter=index, layer=layer, proj=proj)
            out[name] = LowRank(2.0 * b, a)
        return out
