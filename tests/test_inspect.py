"""`dipm inspect`: its numbers against PEFT's own deltas, the plot, and errors naming the path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import make_peft_adapter, peft_deltas
from dipm_lang.cli.main import main


def inspect_json(capsys, *paths: Path) -> dict:
    code = main(["inspect", *map(str, paths), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of ⟨a_i/‖a_i‖, b_i/‖b_i‖⟩ (a zero row has a zero direction)."""
    na, nb = a.norm(dim=1), b.norm(dim=1)
    dots = (a * b).sum(dim=1)
    cos = torch.where((na > 0) & (nb > 0), dots / (na * nb).clamp_min(1e-300), torch.zeros_like(dots))
    return float(cos.mean())


def test_json_numbers_equal_peft_deltas(capsys, peft_adapters):
    a, b = peft_adapters["patterns"], peft_adapters["wide"]
    report = inspect_json(capsys, a, b)
    ref_a = {k: (v[0].double(), v[1], v[2]) for k, v in peft_deltas(a).items()}
    ref_b = {k: (v[0].double(), v[1], v[2]) for k, v in peft_deltas(b).items()}

    mods = report["adapters"][0]["modules"]
    assert set(mods) == set(ref_a)
    for name, (delta, scaling, rank) in ref_a.items():
        got = mods[name]
        rows = delta.norm(dim=1)
        assert got["rank"] == rank
        assert got["scale"] == pytest.approx(scaling, rel=1e-12)
        assert got["shape"] == list(delta.shape)
        assert got["norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert got["row_norm"]["min"] == pytest.approx(float(rows.min()), rel=1e-5)
        assert got["row_norm"]["mean"] == pytest.approx(float(rows.mean()), rel=1e-5)
        assert got["row_norm"]["max"] == pytest.approx(float(rows.max()), rel=1e-5)
    # the patterns adapter really has per-module ranks and scales, so the checks above bite
    assert len({m["rank"] for m in mods.values()}) > 1 and len({m["scale"] for m in mods.values()}) > 1

    # per layer: the layer's modules as one update
    layer0 = next(row for row in report["adapters"][0]["layers"] if row["layer"] == 0)
    expected = math.sqrt(sum(float(d.norm()) ** 2 for n, (d, _, _) in ref_a.items() if ".layers.0." in n))
    assert layer0["norm"] == pytest.approx(expected, rel=1e-5)

    (pair,) = report["pairs"]
    shared = sorted(set(ref_a) & set(ref_b))
    assert sorted(pair["modules"]) == shared
    assert sorted(pair["only_b"]) == sorted(set(ref_b) - set(ref_a)) and pair["only_a"] == []
    for name in shared:
        da, db = ref_a[name][0], ref_b[name][0]
        got = pair["modules"][name]
        assert got["row_cosine"] == pytest.approx(row_cosine(da, db), abs=1e-5)
        matrix = float((da * db).sum() / (da.norm() * db.norm()))
        assert got["matrix_cosine"] == pytest.approx(matrix, abs=1e-5)
    # overall: mean over all shared rows; matrix cosine of everything shared as one vector
    total_rows = sum(ref_a[n][0].shape[0] for n in shared)
    assert total_rows == sum(pair["modules"][n]["units"] for n in shared)
    cos_sum = sum(row_cosine(ref_a[n][0], ref_b[n][0]) * ref_a[n][0].shape[0] for n in shared)
    assert pair["row_cosine"] == pytest.approx(cos_sum / total_rows, abs=1e-5)
    dot = sum(float((ref_a[n][0] * ref_b[n][0]).sum()) for n in shared)
    sq_a = sum(float(ref_a[n][0].norm()) ** 2 for n in shared)
    sq_b = sum(float(ref_b[n][0].norm()) ** 2 for n in shared)
    assert pair["matrix_cosine"] == pytest.approx(dot / math.sqrt(sq_a * sq_b), abs=1e-5)


def test_cosines_see_related_directions(capsys, tmp_path, peft_adapters):
    """Same adapter twice: cosine 1; an adapter and its negation: -1; unrelated ones: near 0."""
    base = peft_adapters["basic"]
    # same A basis and B = -B(base): exactly the negated update
    negated = make_peft_adapter(tmp_path / "neg", seed=1, init_A_seed=1 + 7919, r=4, alpha=-8)
    report = inspect_json(capsys, base, base, negated)
    by_pair = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert by_pair[(0, 1)]["row_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert by_pair[(0, 1)]["matrix_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert by_pair[(0, 2)]["row_cosine"] == pytest.approx(-1.0, abs=1e-6)
    assert by_pair[(0, 2)]["mean_angle_deg"] == pytest.approx(180.0, abs=0.1)
    unrelated = inspect_json(capsys, base, peft_adapters["wide"])["pairs"][0]
    assert abs(unrelated["row_cosine"]) < 0.3


def test_text_output_names_layers_and_verdict(capsys, peft_adapters):
    code = main(["inspect", str(peft_adapters["basic"]), str(peft_adapters["basic"])])
    out = capsys.readouterr().out
    assert code == 0
    assert "model.layers.1.self_attn.v_proj" in out and "q_proj" in out
    assert "nearly the same directions" in out
    assert "row cosine +1.0000" in out


def test_plot_writes_a_png_with_heat_maps(tmp_path, capsys, peft_adapters):
    from PIL import Image

    out = tmp_path / "inspect.png"
    code = main(["inspect", str(peft_adapters["basic"]), str(peft_adapters["wide"]), "--plot", str(out)])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 250
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 100  # not blank: heat-map cells, colour bars, text
    saturated = (pixels.max(axis=1) - pixels.min(axis=1)) > 60
    assert saturated.mean() > 0.03  # coloured cells cover a real part of the picture


def test_plot_and_json_together(tmp_path, capsys, peft_adapters):
    out = tmp_path / "one.png"
    code = main(["inspect", str(peft_adapters["basic"]), "--json", "--plot", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and out.stat().st_size > 1000
    assert json.loads(captured.out)["pairs"] == []


def test_missing_adapter_exits_1_naming_the_path(tmp_path, capsys, peft_adapters):
    missing = tmp_path / "nope"
    code = main(["inspect", str(peft_adapters["basic"]), str(missing)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{missing}: error: adapter folder not found" in captured.err
    assert captured.out == ""  # the bad second adapter fails before any output
    assert "Traceback" not in captured.err


def test_not_an_adapter_exits_1_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    code = main(["inspect", str(folder)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{folder / 'adapter_config.json'}: error: missing adapter_config.json" in err


def test_unwritable_plot_is_a_runtime_error(tmp_path, capsys, peft_adapters):
    (tmp_path / "afile").write_text("x")  # missing folders are made, as for adapters; a file in the way is not
    target = tmp_path / "afile" / "plot.png"
    code = main(["inspect", str(peft_adapters["basic"]), "--plot", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert str(target) in err and "afile is not a folder" in err
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
