"""`lerp(d, e, t)` (SPEC §7.1), declared once in `ops/directions.py`, end to end: the kernels against
SPEC's formula in float64, and every way in — check, explain, run, the REPL, a YAML recipe."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from dipm_lang.backend import lowrank as L
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.cli.main import main
from dipm_lang.repl.session import Session
from dipm_lang.run import RunOptions
from test_run import assert_same, peft_deltas, trio, values  # noqa: F401 - `trio` is a fixture


def spec_lerp(D: torch.Tensor, E: torch.Tensor, t: float, by: str) -> torch.Tensor:
    """normalize((1-t)*d + t*e) per unit, written from SPEC §7.1 (a zero result stays zero)."""
    units = {"out": lambda W: W, "in": lambda W: W.T, "matrix": lambda W: W.reshape(1, -1)}[by]
    mixed = units((1 - t) * D + t * E)
    norms = mixed.norm(dim=1, keepdim=True)
    out = torch.where(norms > 1e-12, mixed / norms.clamp_min(1e-300), torch.zeros_like(mixed))
    return out.T if by == "in" else out.reshape(D.shape)


def unit_directions(x: torch.Tensor, by: str) -> torch.Tensor:
    return spec_lerp(x, x, 0.0, by)


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
@pytest.mark.parametrize("t", [0.3, 1.5, -0.5])
def test_factored_lerp_is_specs_formula(by, t):
    g = torch.Generator().manual_seed(3)
    x = LowRank(torch.randn(2, 9, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, 7, generator=g,
                                                                                    dtype=torch.float64))
    y = LowRank(torch.randn(2, 9, 2, generator=g, dtype=torch.float64), torch.randn(2, 2, 7, generator=g,
                                                                                    dtype=torch.float64))
    d, e = L.dir(x, by), L.dir(y, by)
    got = L.mix([d, e], [1 - t, t], by).dense()  # the kernel `lerp` declares
    for i in range(2):
        want = spec_lerp(unit_directions(x.dense()[i], by), unit_directions(y.dense()[i], by), t, by)
        torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)


def test_lerp_edge_cases_follow_the_spec(trio):  # noqa: F811
    # antiparallel at t = 1/2: the path crosses zero, the unit stays zero; a zero e with t > 1 gives -d
    text = ('save(recombine(lerp(dir(H), reverse(dir(H)), 0.5), mag(H)), "zero")\n'
            'save(recombine(lerp(dir(H), dir(select(T, "nothing")), 2), mag(H)), "flip")\n')
    for dense in (False, True):
        got = {Path(path).name: modules for path, modules in values(text, trio, dense=dense).items()}
        for module, delta in got["zero"].items():
            assert float(delta.abs().max()) == 0.0, module
        h = peft_deltas(trio["H"])
        for module, delta in got["flip"].items():  # (T's down_proj, which H lacks: zero there)
            torch.testing.assert_close(delta, -h.get(module, torch.zeros_like(delta)), rtol=1e-5, atol=1e-7)  # PEFT: float32


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
def test_lerp_programs_factored_equal_dense_equal_unoptimized(trio, by):  # noqa: F811
    text = f'save(recombine(lerp(dir(H, by="{by}"), dir(T, by="{by}"), 0.7), mag(C, by="{by}")), "o")\n'
    reference = values(text, trio, level=0, dense=True)
    assert_same(values(text, trio, level=2), reference)
    assert_same(values(text, trio, level=0), reference)


def test_lerp_through_every_front_door(trio, tmp_path, capsys):  # noqa: F811
    script = tmp_path / "lerp.dipm"
    script.write_text(f'H = load("{trio["H"]}")\nT = load("{trio["T"]}")\n'
                      'save(recombine(lerp(dir(H), dir(T), 0.4), mag(H)), "out")\n')
    assert main(["check", str(script)]) == 0
    assert main(["explain", str(script)]) == 0
    assert "= lerp %" in capsys.readouterr().out
    assert main(["run", str(script), "-q"]) == 0
    written = peft_deltas(tmp_path / "out")
    (want,) = values(script.read_text(), trio, dense=True).values()
    for module, delta in want.items():  # modules where H has no magnitude are zero and left out
        torch.testing.assert_close(written.get(module, torch.zeros_like(delta)), delta, rtol=1e-5, atol=1e-7)
    assert set(written) == set(peft_deltas(trio["H"]))

    recipe = tmp_path / "lerp.yaml"
    recipe.write_text(f"inputs: {{H: {trio['H']}, T: {trio['T']}}}\n"
                      "outputs:\n  from_yaml: recombine(lerp(dir(H), dir(T), 0.4), mag(H))\n")
    assert main(["run", str(recipe), "-q"]) == 0
    from_yaml = peft_deltas(tmp_path / "from_yaml")
    assert all(torch.equal(from_yaml[m], written[m]) for m in written)

    session = Session(RunOptions(device="cpu"), out=io.StringIO(), err=io.StringIO())
    for line in (f'h = load("{trio["H"]}")', f'g = load("{trio["T"]}")', ":type lerp(dir(h), dir(g), 0.5)",
                 ":doc lerp", "lerp(dir(h), dir(g, by=\"in\"), 0.5)"):
        session.handle(line)
    out, err = session.out.getvalue(), session.err.getvalue()
    assert "Dir[out]" in out and "lerp(d: Dir[by], e: Dir[by], t: Num) -> Dir[by]" in out
    assert "lerp: 'd' is Dir[out] but 'e' is Dir[in]; both must have the same `by`" in err
