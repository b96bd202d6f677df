"""`dipm inspect`: what is inside adapters, and how their directions relate.

Per module: rank, scale, Frobenius norm and row-norm statistics (the `mag(x, by="out")`
magnitudes). With two or more adapters, per shared module the mean over units of
⟨dir(a)_u, dir(b)_u⟩ (by="out") and the matrix-level cosine ⟨ΔWa, ΔWb⟩_F / (‖ΔWa‖‖ΔWb‖):
near 1 means `shift`/`mix` between them change little, near 0 means they rotate each row by
about 90°·t. Everything comes from the factors (r×r Gram matrices), one module at a time;
no m×n matrix is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.backend import lowrank as L
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import RuntimeDipmError, UsageError
from dipm_lang.io.atomic import staged_file
from dipm_lang.io.lora_files import is_lora_path, open_lora_source
from dipm_lang.io.reader import read_module
from dipm_lang.io.sources import open_input
from dipm_lang.ir.blocks import FAMILY_TITLES
from dipm_lang.ir.modules import layer_order, natural_key, split_module
from dipm_lang.report.summary import fmt, layer_table, ordered_kinds

WORK_DTYPE = torch.float64  # inspection is cheap; report numbers at full precision
FORMAT_TITLES = {"kohya": "kohya", "diffusers": "diffusers", "diffusers-old": "diffusers (old keys)",
                 "peft": "PEFT", "loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr", "lycoris": "LyCORIS (mixed)"}


# ---- results -----------------------------------------------------------------------------

@dataclass
class ModuleStats:
    name: str
    shape: tuple[int, int]
    rank: int
    scale: float | None  # None for computed values (the scale is folded into B)
    norm: float          # ‖ΔW‖_F
    row_min: float       # min / mean / max of ‖ΔW[i, :]‖ (mag by="out")
    row_mean: float
    row_max: float

    @property
    def layer(self) -> int | None:
        return split_module(self.name)[0]

    @property
    def type(self) -> str:
        return split_module(self.name)[1]

    def as_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "type": self.type, "shape": list(self.shape), "rank": self.rank,
                "scale": self.scale, "norm": self.norm,
                "row_norm": {"min": self.row_min, "mean": self.row_mean, "max": self.row_max}}


@dataclass
class AdapterStats:
    label: str
    path: str | None
    meta: dict[str, Any]
    modules: list[ModuleStats] = field(default_factory=list)

    @property
    def norm(self) -> float:
        return math.sqrt(sum(m.norm ** 2 for m in self.modules))

    def cells(self) -> dict[tuple[int | None, str], float]:
        """‖ΔW‖_F per (layer, module type); modules sharing a cell combine as one update."""
        out: dict[tuple[int | None, str], float] = {}
        for m in self.modules:
            key = (m.layer, m.type)
            out[key] = math.sqrt(out.get(key, 0.0) ** 2 + m.norm ** 2)
        return out

    def layers(self) -> list[dict[str, Any]]:
        by_layer: dict[int | None, dict[str, float]] = {}
        for (layer, kind), value in self.cells().items():
            by_layer.setdefault(layer, {})[kind] = value
        return [{"layer": layer, "norm": math.sqrt(sum(v * v for v in cells.values())), "modules": cells}
                for layer, cells in sorted(by_layer.items(), key=lambda kv: layer_order(kv[0]))]

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "path": self.path, **self.meta, "norm": self.norm,
                "modules": {m.name: m.as_json() for m in self.modules}, "layers": self.layers()}


@dataclass
class PairModule:
    name: str
    units: int          # rows (by="out")
    cos_sum: float      # Σ_u ⟨dir(a)_u, dir(b)_u⟩
    angle_sum: float    # Σ_u arccos(⟨dir(a)_u, dir(b)_u⟩) over units nonzero in both, degrees
    angle_units: int
    dot: float          # ⟨ΔWa, ΔWb⟩_F
    norm_a: float
    norm_b: float

    @property
    def row_cosine(self) -> float:
        return self.cos_sum / self.units if self.units else 0.0

    @property
    def matrix_cosine(self) -> float:
        return _cosine(self.dot, self.norm_a ** 2, self.norm_b ** 2)

    def as_json(self) -> dict[str, Any]:
        layer, kind = split_module(self.name)
        return {"layer": layer, "type": kind, "row_cosine": self.row_cosine, "matrix_cosine": self.matrix_cosine,
                "mean_angle_deg": _mean_angle(self.angle_sum, self.angle_units), "units": self.units}


@dataclass
class PairStats:
    a: int
    b: int
    modules: list[PairModule] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    shape_differs: list[str] = field(default_factory=list)

    def aggregate(self, modules: Sequence[PairModule]) -> dict[str, float]:
        """Cosines of a group of modules: row cosine averaged over all their units, matrix cosine
        of the group as one concatenated update."""
        units = sum(m.units for m in modules)
        angle_units = sum(m.angle_units for m in modules)
        return {
            "row_cosine": sum(m.cos_sum for m in modules) / units if units else 0.0,
            "matrix_cosine": _cosine(sum(m.dot for m in modules), sum(m.norm_a ** 2 for m in modules),
                                     sum(m.norm_b ** 2 for m in modules)),
            "mean_angle_deg": _mean_angle(sum(m.angle_sum for m in modules), angle_units),
        }

    def cells(self) -> dict[tuple[int | None, str], float]:
        groups: dict[tuple[int | None, str], list[PairModule]] = {}
        for m in self.modules:
            groups.setdefault(split_module(m.name), []).append(m)
        return {key: self.aggregate(ms)["row_cosine"] for key, ms in groups.items()}

    def layers(self) -> list[dict[str, Any]]:
        groups: dict[int | None, list[PairModule]] = {}
        for m in self.modules:
            groups.setdefault(split_module(m.name)[0], []).append(m)
        return [{"layer": layer, **self.aggregate(ms),
                 "modules": {split_module(m.name)[1]: m.row_cosine for m in ms}}
                for layer, ms in sorted(groups.items(), key=lambda kv: layer_order(kv[0]))]

    def as_json(self, adapters: Sequence[AdapterStats]) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_label": adapters[self.a].label, "b_label": adapters[self.b].label,
                "shared": len(self.modules), **self.aggregate(self.modules),
                "modules": {m.name: m.as_json() for m in self.modules}, "layers": self.layers(),
                "only_a": self.only_a, "only_b": self.only_b, "shape_differs": self.shape_differs}


@dataclass
class Report:
    adapters: list[AdapterStats]
    pairs: list[PairStats]

    def as_json(self) -> dict[str, Any]:
        return {"adapters": [a.as_json() for a in self.adapters],
                "pairs": [p.as_json(self.adapters) for p in self.pairs]}

    def text(self) -> str:
        return format_text(self)


def _cosine(dot: float, sq_a: float, sq_b: float) -> float:
    denominator = math.sqrt(sq_a * sq_b)
    return dot / denominator if denominator > 0 else 0.0


def _mean_angle(total: float, count: int) -> float | None:
    return total / count if count else None


# ---- computing ---------------------------------------------------------------------------

@dataclass
class Source:
    """One thing to inspect: its modules (name → shape, rank, scale) and a reader of one module's factors."""

    label: str
    path: str | None
    meta: dict[str, Any]
    modules: dict[str, tuple[tuple[int, int], int, float | None]]
    read: Callable[[str], LowRank]


def adapter_source(path: str | Path, label: str | None = None) -> Source:
    """An adapter folder or Hub id (SPEC §7.5), or a LoRA file of an image model (SPEC §7.10), validated
    up front; modules are read one at a time."""
    if is_lora_path(path):
        lora = open_lora_source(path)
        meta = {"format": lora.format, "family": lora.family, "dtype": str(lora.dtype).removeprefix("torch.")}
        modules = {name: (m.shape, m.rank, m.scale) for name, m in lora.modules.items()}
        return Source(label or str(path), str(lora.path), meta, modules,
                      lambda name: lora.read([name], dtype=WORK_DTYPE)[0])
    info = open_input(str(path))
    config = info.config
    meta = {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "use_rslora": bool(config.get("use_rslora", False)), "base_model": info.base_model,
            "dtype": str(info.dtype).removeprefix("torch.")}
    if getattr(info, "commit", None):  # from the Hub: the commit its revision resolved to
        meta["commit"] = info.commit
    modules = {name: (m.shape, m.rank, m.scale) for name, m in info.modules.items()}
    if info.full:
        meta["full_weights"] = full_weight_stats(info)
        meta["bias"] = config.get("bias", "none")
    return Source(label or str(path), str(info.path), meta, modules,
                  lambda name: read_module(info, name, dtype=WORK_DTYPE))


def full_weight_stats(info: Any) -> dict[str, dict[str, Any]]:
    """Per full-weight tensor (modules_to_save, trained biases; SPEC §7.4): what it is and its norm."""
    out = {}
    for name, tensor in info.full.items():
        value = info.read_full(name).to(WORK_DTYPE)
        out[name] = {"module": tensor.module, "kind": tensor.kind, "shape": list(tensor.shape),
                     "dtype": str(tensor.dtype).removeprefix("torch."), "norm": float(torch.linalg.vector_norm(value))}
    return out


def value_source(label: str, values: Mapping[str, Any]) -> Source:
    """A computed update held in memory (module → LowRank), e.g. a REPL binding."""
    factors: dict[str, LowRank] = {}
    for name, value in values.items():
        if not isinstance(value, LowRank):
            raise UsageError(f"{label}: only updates (Delta or Dir) can be inspected")
        factors[name] = value
    modules = {name: ((x.m, x.n), x.rank, None) for name, x in factors.items()}
    dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in factors.values()})
    return Source(label, None, {"dtype": "/".join(dtypes)}, modules, lambda name: factors[name].to(WORK_DTYPE))


def inspect_adapters(paths: Sequence[str | Path]) -> Report:
    """Open every adapter first (so a bad second one fails before any work), then inspect."""
    return inspect_sources([adapter_source(p) for p in paths])


def inspect_sources(sources: Sequence[Source]) -> Report:
    adapters = [AdapterStats(s.label, s.path, s.meta) for s in sources]
    pairs = [PairStats(i, j) for i in range(len(sources)) for j in range(i + 1, len(sources))]
    names = sorted({name for s in sources for name in s.modules}, key=natural_key)
    with torch.inference_mode():
        for name in names:
            present = {i: s for i, s in enumerate(sources) if name in s.modules}
            factors = {i: s.read(name).to("cpu") for i, s in present.items()}
            dirs: dict[int, LowRank] = {}
            norms: dict[int, float] = {}
            for i, x in factors.items():
                shape, rank, scale = sources[i].modules[name]
                rows = L.unit_norms(x, "out")
                norms[i] = float(L.unit_norms(x, "matrix"))
                adapters[i].modules.append(ModuleStats(name, shape, rank, scale, norms[i], *_stats(rows)))
                if len(sources) > 1:
                    dirs[i] = L.dir(x, "out")
            for pair in pairs:
                a, b = pair.a, pair.b
                if a in factors and b in factors:
                    if (factors[a].m, factors[a].n) != (factors[b].m, factors[b].n):
                        pair.shape_differs.append(name)
                    else:
                        pair.modules.append(_compare(name, factors[a], factors[b], dirs[a], dirs[b],
                                                     norms[a], norms[b]))
                elif a in factors:
                    pair.only_a.append(name)
                elif b in factors:
                    pair.only_b.append(name)
    return Report(adapters, pairs)


def _stats(values: torch.Tensor) -> tuple[float, float, float]:
    if values.numel() == 0:
        return (0.0, 0.0, 0.0)
    return float(values.min()), float(values.mean()), float(values.max())


def _compare(name: str, a: LowRank, b: LowRank, da: LowRank, db: LowRank, norm_a: float, norm_b: float) -> PairModule:
    cos = L.unit_dots(da, db, "out").clamp(-1.0, 1.0)
    both = (L.unit_norms(da, "out") > 0.5) & (L.unit_norms(db, "out") > 0.5)  # units nonzero in both
    angles = torch.rad2deg(torch.arccos(cos[both]))
    return PairModule(name, units=cos.numel(), cos_sum=float(cos.sum()), angle_sum=float(angles.sum()),
                      angle_units=int(both.sum()), dot=float(L.unit_dots(a, b, "matrix")),
                      norm_a=norm_a, norm_b=norm_b)


# ---- text --------------------------------------------------------------------------------

def format_text(report: Report) -> str:
    blocks = [_adapter_text(i, a) for i, a in enumerate(report.adapters)]
    blocks += [_pair_text(p, report.adapters) for p in report.pairs]
    return "\n\n".join(blocks)


def _adapter_text(index: int, adapter: AdapterStats) -> str:
    meta = adapter.meta
    head = [f"[{index + 1}] {adapter.label}"]
    facts = []
    if meta.get("format"):  # a LoRA file of an image model (SPEC §7.10): what was detected
        facts.append(f"{FORMAT_TITLES.get(meta['format'], meta['format'])} LoRA of "
                     f"{FAMILY_TITLES.get(meta.get('family'), meta.get('family') or 'an unknown model')}")
    if meta.get("r") is not None:
        facts.append(f"LoRA r={meta['r']} alpha={fmt(float(meta['lora_alpha'] or 0))}"
                     + (" rsLoRA" if meta.get("use_rslora") else ""))
    layers = {m.layer for m in adapter.modules if m.layer is not None}
    facts.append(f"{len(adapter.modules)} modules in {len(layers)} layers")
    facts.append(str(meta.get("dtype", "")))
    if meta.get("base_model"):
        facts.append(f"base {meta['base_model']}")
    if meta.get("commit"):
        facts.append(f"commit {meta['commit'][:12]}")
    facts.append(f"‖ΔW‖_F {fmt(adapter.norm)}")
    head.append("    " + " · ".join(f for f in facts if f))
    rows = [["module", "shape", "rank", "scale", "‖ΔW‖_F", "row norm min", "mean", "max"]]
    for m in adapter.modules:
        rows.append([m.name, f"{m.shape[0]}×{m.shape[1]}", str(m.rank), "-" if m.scale is None else fmt(m.scale),
                     fmt(m.norm), fmt(m.row_min), fmt(m.row_mean), fmt(m.row_max)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:], widths[1:]))]
        head.append("    " + "  ".join(cells).rstrip())
    head.append("  ‖ΔW‖_F per layer × module (all: the layer as one update):")
    layer_totals = {row["layer"]: {"all": row["norm"]} for row in adapter.layers()}
    head += layer_table(adapter.cells(), extra=layer_totals)
    head += _full_text(meta.get("full_weights") or {}, meta.get("bias"))
    return "\n".join(head)


def _full_text(full: Mapping[str, Mapping[str, Any]], bias: Any) -> list[str]:
    """Full-weight modules as a table, trained biases as one summary line (there can be hundreds)."""
    lines = []
    modules = {name: t for name, t in full.items() if t["kind"] == "module"}
    if modules:
        lines.append("  full-weight modules (modules_to_save: whole tensors beside the LoRA update):")
        rows = [["tensor", "shape", "dtype", "‖W‖_F"]]
        rows += [[name, "×".join(map(str, t["shape"])), t["dtype"], fmt(t["norm"])] for name, t in modules.items()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["    " + "  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]),
                                      r[3].rjust(widths[3])]).rstrip() for r in rows]
    biases = [t for t in full.values() if t["kind"] == "bias"]
    if biases:
        kinds = ordered_kinds(split_module(t["module"])[1] for t in biases)
        layers = {split_module(t["module"])[0] for t in biases} - {None}
        dtypes = "/".join(sorted({t["dtype"] for t in biases}))
        total = math.sqrt(sum(t["norm"] ** 2 for t in biases))
        lines.append(f"  trained biases (bias=\"{bias}\"): {len(biases)} modules ({', '.join(kinds)}"
                     f"{f' in {len(layers)} layers' if layers else ''}), {dtypes}, ‖b‖ together {fmt(total)}")
    return lines


def _pair_text(pair: PairStats, adapters: Sequence[AdapterStats]) -> str:
    a, b = adapters[pair.a], adapters[pair.b]
    total = pair.aggregate(pair.modules)
    lines = [f"[{pair.a + 1}] vs [{pair.b + 1}]: directions of {a.label} and {b.label}",
             f"    {len(pair.modules)} shared modules, {sum(m.units for m in pair.modules)} rows (by=\"out\")"]
    if pair.modules:
        lines.append("  mean over rows of ⟨dir(a)_u, dir(b)_u⟩ per layer × module (rows: the layer's mean, "
                     "matrix: cosine of the layer as one update):")
        extra = {row["layer"]: {"rows": row["row_cosine"], "matrix": row["matrix_cosine"]} for row in pair.layers()}
        lines += layer_table(pair.cells(), signed=True, extra=extra)
        angle = total["mean_angle_deg"]
        lines.append(f"  overall: row cosine {total['row_cosine']:+.4f}, matrix cosine {total['matrix_cosine']:+.4f}"
                     + (f", mean angle {angle:.1f}°" if angle is not None else ""))
        lines.append("  " + _verdict(total["row_cosine"], angle))
    if pair.only_a:
        lines.append(f"  only in [{pair.a + 1}]: {_names(pair.only_a)} (zero in the other)")
    if pair.only_b:
        lines.append(f"  only in [{pair.b + 1}]: {_names(pair.only_b)} (zero in the other)")
    if pair.shape_differs:
        lines.append(f"  different shapes, not compared: {_names(pair.shape_differs)}")
    if a.meta.get("base_model") and b.meta.get("base_model") and a.meta["base_model"] != b.meta["base_model"]:
        lines.append(f"  note: different base models ({a.meta['base_model']} and {b.meta['base_model']})")
    return "\n".join(lines)


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _verdict(cos: float, angle: float | None) -> str:
    """What the number means for the direction modulators."""
    turn = f"about t × {angle:.0f}°" if angle is not None else "by t of the angle between them"
    if cos > 0.9:
        return "→ nearly the same directions: shift and mix between them will change little"
    if cos < -0.9:
        return "→ nearly opposite directions: mix cancels them; shift toward the other reverses them"
    if abs(cos) < 0.1:
        return f"→ nearly orthogonal: shift(d, e, t) turns each row {turn}; mix blends unrelated directions"
    return f"→ partly aligned: shift(d, e, t) turns each row {turn}"


# ---- plot --------------------------------------------------------------------------------

def plot_report(report: Report, path: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Heat maps (layer × module type): ‖ΔW‖_F per adapter, and the row cosine per pair; written like
    every output (`io/atomic.py`: never over a file without `force`, never over an input, staged)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    import numpy as np

    panels: list[tuple[str, dict[tuple[int | None, str], float], bool]] = []
    for i, a in enumerate(report.adapters):
        panels.append((f"[{i + 1}] {_short(a.label)}: ‖ΔW‖_F", a.cells(), False))
    for p in report.pairs:
        if p.modules:
            panels.append((f"[{p.a + 1}] vs [{p.b + 1}]: mean cos of dir (by=out)", p.cells(), True))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    layers_n = max(len({k[0] for k in cells}) for _, cells, _ in panels)
    kinds_n = max(len({k[1] for k in cells}) for _, cells, _ in panels)
    width = max(4.5, 1.0 + 0.8 * kinds_n)
    height = max(3.0, 1.2 + 0.3 * layers_n)
    figure = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    for index, (title, cells, signed) in enumerate(panels):
        ax = figure.add_subplot(rows, cols, index + 1)
        layers = sorted({k[0] for k in cells}, key=layer_order)
        kinds = _kinds(cells)
        grid = np.full((len(layers), len(kinds)), np.nan)
        for (layer, kind), value in cells.items():
            grid[layers.index(layer), kinds.index(kind)] = value
        masked = np.ma.masked_invalid(grid)
        if signed:
            image = ax.imshow(masked, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
        else:
            image = ax.imshow(masked, cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_facecolor("#dddddd")  # cells a module type lacks
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), ["-" if layer is None else str(layer) for layer in layers], fontsize=8)
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        figure.colorbar(image, ax=ax, shrink=0.85)
        if grid.size <= 160:
            for (r, c), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    dark = abs(value) > 0.6 if signed else value < np.nanmax(grid) * 0.6
                    ax.text(c, r, f"{value:+.2f}" if signed else fmt(value, 3), ha="center", va="center",
                            fontsize=7, color="white" if dark else "black")
    out = Path(path)
    try:
        with staged_file(out, inputs=inputs, force=force) as temp:
            figure.savefig(temp, format="png", bbox_inches="tight", pad_inches=0.15)
    except OSError as e:
        raise RuntimeDipmError(f"{out}: cannot write the plot: {e.strerror or e}") from None
    return out


def _kinds(cells: Mapping[tuple[int | None, str], float]) -> list[str]:
    return ordered_kinds(kind for _, kind in cells)


def _short(label: str, limit: int = 40) -> str:
    return label if len(label) <= limit else "…" + label[-(limit - 1):]
