"""Factor-level DiPM (SPEC §7.3): the decoupling operators on `x.A` / `x.B`, and `align`.

Every operator and every `by`, on B (keeping A) and on A (keeping B), is computed by dipm in each
backend (dense float64 reference, factored float64, factored float32 unoptimised and optimised) and
compared with a reference written here from SPEC §3's formulas applied to the units of the factor
matrices, which are read straight from the adapter files (safetensors + config: the scale folded into
B). A module one adapter lacks is a zero factor of its partner's shape there. PEFT loads an output.
`align` is checked by what it promises: each ΔW exact, one shared orthonormal factor, and factor-level
DiPM on aligned adapters by rows (by="out") equal to DiPM on the updates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters import peft_deltas
from backends import run
from clitools import run_main
from dipm_lang.compiler import ScriptText, lower, optimize
from dipm_lang.errors import DipmTypeError

F64 = torch.float64
EPS = 1e-12
PREFIX = "base_model.model."
LOADS = 'H = load("adapters/H")\nG = load("adapters/G")\nT = load("adapters/T")\n'


# ---- the adapters' factors, read without dipm ------------------------------------------------------

def factors(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module → (s·B, A) in float64, from the files (no rank_pattern in the adapters used here)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key[len(PREFIX):-len(".lora_A.weight")]
            out[name] = (scale * tensors[f"{PREFIX}{name}.lora_B.weight"].to(F64), A.to(F64))
    return out


# ---- SPEC §3 on the units of a matrix ---------------------------------------------------------------

def units(F: torch.Tensor, by: str) -> torch.Tensor:
    return {"out": F, "in": F.T, "matrix": F.reshape(1, -1)}[by]


def back(U: torch.Tensor, by: str, like: torch.Tensor) -> torch.Tensor:
    return {"out": U, "in": U.T, "matrix": U.reshape(like.shape)}[by]


def ref_mag(F, by):
    return torch.linalg.vector_norm(units(F, by), dim=1)


def ref_dir(F, by):
    U = units(F, by)
    norms = torch.linalg.vector_norm(U, dim=1, keepdim=True)
    return back(torch.where(norms > EPS, U / norms.clamp_min(EPS), torch.zeros_like(U)), by, F)


def ref_recombine(D, m, by):
    return back(units(D, by) * m[:, None], by, D)


def ref_mix(Ds, ws, by):
    return ref_dir(sum(w * D for w, D in zip(ws, Ds)), by)


def ref_shift(D, E, t, by):
    d, e = units(D, by), units(E, by)
    rows = []
    for du, eu in zip(d, e):
        theta = math.acos(max(-1.0, min(1.0, float(du @ eu))))
        if math.sin(theta) < 1e-6 or float(du.norm()) <= EPS or float(eu.norm()) <= EPS:
            v = (1 - t) * du + t * eu
            rows.append(v / v.norm() if float(v.norm()) > EPS else torch.zeros_like(v))
        else:
            rows.append(math.sin((1 - t) * theta) / math.sin(theta) * du + math.sin(t * theta) / math.sin(theta) * eu)
    return back(torch.stack(rows), by, D)


def ref_orth(D, E, by):
    d, e = units(D, by), units(E, by)
    return ref_dir(back(d - (d * e).sum(1, keepdim=True) * e, by, D), by)


# (expression on factors {X}, {Y} of one side, reference) — X is H's factor, Y is G's
CASES = {
    "dir": ("dir({X}, by={by})", lambda X, Y, by: ref_dir(X, by)),
    "normalize": ("normalize({X} + {Y}, by={by})", lambda X, Y, by: ref_dir(X + Y, by)),
    "reverse": ("reverse(dir({X}, by={by}))", lambda X, Y, by: -ref_dir(X, by)),
    "shift": ("shift(dir({X}, by={by}), dir({Y}, by={by}), 0.3)", lambda X, Y, by: ref_shift(ref_dir(X, by), ref_dir(Y, by), 0.3, by)),
    "shift-far": ("shift(dir({Y}, by={by}), reverse(dir({X}, by={by})), 1.5)",
                  lambda X, Y, by: ref_shift(ref_dir(Y, by), -ref_dir(X, by), 1.5, by)),
    "lerp": ("lerp(dir({X}, by={by}), dir({Y}, by={by}), 0.7)", lambda X, Y, by: ref_mix([ref_dir(X, by), ref_dir(Y, by)], [0.3, 0.7], by)),
    "mix": ("mix([dir({X}, by={by}), dir({Y}, by={by})], [1, 2])", lambda X, Y, by: ref_mix([ref_dir(X, by), ref_dir(Y, by)], [1, 2], by)),
    "orth": ("orth(dir({X}, by={by}), dir({Y}, by={by}))", lambda X, Y, by: ref_orth(ref_dir(X, by), ref_dir(Y, by), by)),
    "recombine": ("recombine(shift(dir({X}, by={by}), dir({Y}, by={by}), 0.4), mean([mag({X}, by={by}), mag({Y}, by={by})], [1, 3]) * 2)",
                  lambda X, Y, by: ref_recombine(ref_shift(ref_dir(X, by), ref_dir(Y, by), 0.4, by),
                                                 2 * (ref_mag(X, by) + 3 * ref_mag(Y, by)) / 4, by)),
    "arithmetic": ("dir({X}, by={by}) - 0.5 * {Y}", lambda X, Y, by: ref_dir(X, by) - 0.5 * Y),
}
BYS = ("out", "in", "matrix")


def script_and_references(root: Path) -> tuple[str, dict[str, dict[str, torch.Tensor]]]:
    """One script saving every case × by × side, and each save's reference ΔW per module."""
    H, G = factors(root / "adapters" / "H"), factors(root / "adapters" / "G")
    lines, refs = [LOADS], {}
    for case, (template, reference) in CASES.items():
        for by in BYS:
            for side in "BA":
                expr = template.format(X=f"H.{side}", Y=f"G.{side}", by=f'"{by}"')
                # B side keeps G's A, A side keeps G's B: defined in every module G has (H lacks down_proj)
                written = f"lora({expr}, G.A)" if side == "B" else f"lora(G.B, {expr})"
                path = f"out/{case}-{by}-{side}"
                lines.append(f'save({written}, "{path}")\n')
                per_module = {}
                for name, (gB, gA) in G.items():
                    hB, hA = H.get(name, (torch.zeros_like(gB), torch.zeros_like(gA)))  # SPEC §7.3
                    if side == "B":
                        per_module[name] = reference(hB, gB, by) @ gA
                    else:
                        per_module[name] = gB @ reference(hA, gA, by)
                refs[str(root / path)] = per_module
    return "".join(lines), refs


@pytest.fixture(scope="module")
def all_cases(quartet):
    text, refs = script_and_references(quartet)
    return lower(ScriptText(text, str(quartet / "prog.dipm"))), refs


@pytest.mark.parametrize("backend", ["dense", "float64", "float32-O0", "float32-O2"])
def test_every_operator_and_by_on_both_factors_matches_the_spec(all_cases, backend):
    program, refs = all_cases
    level = 0 if backend.endswith("O0") or backend == "dense" else 2
    optimized, _ = optimize(program, level=level, verify=True)
    got = run(optimized, dense=backend == "dense", dtype="float32" if backend.startswith("float32") else "float64")
    tolerance = 1e-5 if backend.startswith("float32") else 1e-10
    assert got.keys() == refs.keys()
    for path, modules in refs.items():
        assert got[path].keys() == modules.keys(), path
        for name, want in modules.items():
            scale = float(want.norm()) or 1.0  # a zero reference (H lacks down_proj, dir(0) = 0): absolute
            error = float((got[path][name] - want).norm()) / scale
            assert error <= tolerance, (backend, path, name, error)


def test_a_module_one_adapter_lacks_is_a_zero_factor_in_shift(quartet):
    # down_proj: H lacks it, so dir(H.B) is a zero direction there and shift falls back to the
    # normalised linear path: (1 - t)·dir(G.B) renormalised is dir(G.B)
    G = factors(quartet / "adapters" / "G")
    text = LOADS + 'save(lora(shift(dir(G.B), dir(H.B), 0.3), G.A), "out/s")\n'
    for dense in (True, False):
        (values,) = run(lower(ScriptText(text, str(quartet / "prog.dipm"))), dense=dense, dtype="float64").values()
        down = "model.layers.0.mlp.down_proj"
        B, A = G[down]
        torch.testing.assert_close(values[down], ref_dir(B, "out") @ A, rtol=1e-10, atol=0)


def test_peft_loads_a_factor_level_recipe(quartet, tmp_path):
    H, G = factors(quartet / "adapters" / "H"), factors(quartet / "adapters" / "G")
    script = tmp_path / "b.dipm"
    script.write_text(f'H = load("{quartet}/adapters/H")\nG = load("{quartet}/adapters/G")\n'
                      'save(detox_b(H, G, t=0.3), "out")\n')
    assert run_main("run", str(script), cwd=tmp_path).code == 0
    loaded = peft_deltas(tmp_path / "out")
    assert set(loaded) == set(H)
    for name, (hB, hA) in H.items():
        gB = G.get(name, (torch.zeros_like(hB), None))[0]
        want = ref_recombine(ref_shift(ref_dir(hB, "out"), -ref_dir(gB, "out"), 0.3, "out"), ref_mag(hB, "out"), "out") @ hA
        delta = loaded[name][0].to(F64)
        assert float((delta - want).norm() / want.norm()) < 1e-5, name


# ---- types -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,message", [
    ("lora(recombine(dir(H.A), mag(H.A)), H.B)", "look swapped"),
    ("lora(H.B, recombine(dir(H.B), mag(H.B)))", "'A' must be a Factor[A] (x.A), got Factor[B]"),
    ("lora(dir(H.A), H.A)", "'B' must be a Factor[B] (x.B), got Dir[out] of Factor[A]"),
    ("lora(recombine(dir(H.B), mag(H)), H.A)", "'m' is Mag[out]"),
    ("lora(shift(dir(H.B), dir(G.A), 0.3), H.A)", "'e' is Dir[out] of Factor[A]"),
    ("lora(mix([dir(H.B), dir(G)]), H.A)", "directions of different kinds of value"),
    ("lora(H.B * mag(H.B), H.A)", "cannot multiply"),
    ("dir(H.B)", "must be a Delta (an adapter update), got Dir[out] of Factor[B]"),
    ("H + dir(H.B)", "cannot add Delta and Dir[out] of Factor[B]"),
    ("lora(recombine(dir(H.B, by=\"in\"), mag(G.A, by=\"out\")), H.A)", "both must have the same `by`"),
    ("lora(H.B, H.A + mag(H.A, by=\"in\"))", "cannot add"),
])
def test_factor_spaces_are_kept_apart_by_the_types(quartet, body, message):
    with pytest.raises(DipmTypeError) as error:
        lower(ScriptText(LOADS + f'save({body}, "o")\n', str(quartet / "prog.dipm")))
    assert message in str(error.value), str(error.value)


def test_types_of_factor_directions_and_magnitudes(quartet):
    text = LOADS + ('d = dir(H.B, by="in")\nm = mag(H.A, by="out")\nf = recombine(d, mag(G.B, by="in"))\n'
                    'save(lora(f, H.A) + lora(H.B, recombine(dir(G.A), m)), "o")\n')
    program = lower(ScriptText(text, str(quartet / "prog.dipm")))
    types = {str(n.type) for n in program.nodes()}
    assert {"Dir[in] of Factor[B]", "Mag[in] of Factor[B]", "Factor[B]", "Mag[out] of Factor[A]",
            "Dir[out] of Factor[A]", "Factor[A]"} <= types, types


# ---- align --------------------------------------------------------------------------------------------

ALIGNED = 'Ha = align(H, [H, T])\nTa = align(T, [H, T])\n'


def aligned_run(quartet, body: str, **options) -> dict[str, torch.Tensor]:
    text = LOADS + ALIGNED + f'save({body}, "out")\n'
    program, _ = optimize(lower(ScriptText(text, str(quartet / "prog.dipm"))), level=options.pop("level", 2),
                          verify=True)
    (values,) = run(program, **options).values()
    return values


def dense_of(quartet, name: str) -> dict[str, torch.Tensor]:
    return {module: B @ A for module, (B, A) in factors(quartet / "adapters" / name).items()}


@pytest.mark.parametrize("options", [dict(dense=True), dict(dtype="float64"), dict(dtype="float32", level=0)])
def test_align_leaves_every_update_exact_and_shares_one_factor(quartet, options):
    tolerance = 1e-5 if options.get("dtype") == "float32" else 1e-10
    H, T = dense_of(quartet, "H"), dense_of(quartet, "T")  # ranks 4 and 8, T has down_proj, H not
    for body, want in [("Ha", H), ("Ta", T), ("lora(Ta.B, Ha.A)", T), ("lora(Ha.B, Ta.A)", H),
                       ("lora(align(T, [H, T], side=\"B\").B, align(H, [H, T], side=\"B\").A)", H)]:
        got = aligned_run(quartet, body, **options)
        for module in want.keys() | got.keys():
            w = want.get(module, torch.zeros_like(got[module]))
            assert float((got[module] - w).norm()) <= tolerance * float(w.norm() + 1), (body, module)


def test_aligned_factors_are_orthonormal_and_shared(quartet):
    import dipm_lang

    paths = {n: str(quartet / "adapters" / n) for n in "HT"}
    A_h = dipm_lang.evaluate("align(H, [H, T]).A", dtype="float64", **paths)
    A_t = dipm_lang.evaluate("align(T, [H, T]).A", dtype="float64", **paths)
    for module, A in A_h.items():
        assert torch.equal(A, A_t[module])
        rows = A[torch.linalg.vector_norm(A, dim=1) > 0]  # a batch pads its smaller ranks with zero rows
        assert rows.shape[0] == 12 if module.endswith(("q_proj", "v_proj")) else rows.shape[0] == 8, module
        torch.testing.assert_close(rows @ rows.T, torch.eye(rows.shape[0], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("by", ["out", "matrix"])
def test_dipm_on_aligned_B_rows_is_dipm_on_the_updates(quartet, by):
    # with a shared orthonormal A, the rows (and the whole) of B' are those of ΔW, isometrically: the
    # B-side reading of transfer equals the update-level one (by="in" on B' is a different reading)
    for options, tolerance in [(dict(dense=True), 1e-10), (dict(dtype="float32"), 1e-5)]:
        factor_level = aligned_run(quartet, f'transfer_aligned(H, T, t=0.3, by="{by}")', **options)
        updates = aligned_run(quartet, f'transfer(H, T, t=0.3, by="{by}")', **options)
        for module, want in updates.items():
            assert float((factor_level[module] - want).norm()) <= tolerance * float(want.norm()), (by, module)
    columns = aligned_run(quartet, 'transfer_aligned(H, T, t=0.3, by="in")', dtype="float64")
    updates = aligned_run(quartet, 'transfer(H, T, t=0.3, by="in")', dtype="float64")
    assert any(float((columns[m] - updates[m]).norm()) > 1e-3 * float(updates[m].norm()) for m in updates)


@pytest.mark.parametrize("body,message", [
    ("align(2 * H, [H])", "'x' must be an adapter"),
    ("align(H, [T])", "'x' must be one of 'xs'"),
    ("align(H, [H, 2 * T])", "is a computed Delta, not an adapter"),
    ("align(H, [H, T], side=\"C\")", "side must be"),
    ("lora((H + T).B, H.A)", "needs an adapter (load(...)), lora(B, A) or align(x, xs)"),
])
def test_align_errors(quartet, body, message):
    with pytest.raises(DipmTypeError) as error:
        lower(ScriptText(LOADS + f'save({body}, "o")\n', str(quartet / "prog.dipm")))
    assert message in str(error.value), str(error.value)


def test_stdlib_b_side_recipes_are_their_definitions(quartet):
    H, T = factors(quartet / "adapters" / "H"), factors(quartet / "adapters" / "G")
    for call, reference in [
        ("transfer_b(H, G, t=0.6)", lambda hB, gB: ref_recombine(ref_shift(ref_dir(hB, "out"), ref_dir(gB, "out"), 0.6,
                                                                           "out"), ref_mag(hB, "out"), "out")),
        ("detox_b(H, G, t=0.2, by=\"in\")", lambda hB, gB: ref_recombine(ref_shift(ref_dir(hB, "in"), -ref_dir(gB, "in"),
                                                                                  0.2, "in"), ref_mag(hB, "in"), "in")),
    ]:
        got = aligned_run(quartet, call, dtype="float64")
        for name, (hB, hA) in H.items():
            want = reference(hB, T.get(name, (torch.zeros_like(hB), None))[0]) @ hA
            assert float((got[name] - want).norm()) <= 1e-10 * float(want.norm()), (call, name)
