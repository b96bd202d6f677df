"""`dipm explain` as a new user meets it: pictures that say what they show, JSON that is the plan,
and --dot/--png files written like every other output.

Labels are checked in the drawing data (the labelled view, the DOT text, the layout), never in
pixels; expected labels, groups and operand names are computed here from the program itself
(reachability from each save, the operators' declared parameters), not read back from the code
under test. Nothing here reads an adapter: explain only compiles.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dipm_lang.cli.main import main
from dipm_lang.compiler import compile, source_of
from dipm_lang.errors import AdapterError
from dipm_lang.io.atomic import write_file_atomically
from dipm_lang.ir.graph import print_program, to_dot
from dipm_lang.ir.layout import layout
from dipm_lang.ir.node import walk
from dipm_lang.ir.view import SHARED, plan_view
from dipm_lang.ops import OPERATORS

EIGHT = """\
# eight outputs from four adapters: DiPM recipes next to PEFT-style baselines
inputs:
  H: adapters/helpful
  O: adapters/other
  T: adapters/toxic
  C: adapters/code

outputs:
  out/detox: detox(H, T, t=0.3)
  out/transfer: transfer(O, H, t=0.4)
  out/multitask: multitask([H, O, C], [2, 1, 1])
  out/unlearn: unlearn(T, strength=0.5)
  out/arith: H + 0.5 * O - 0.25 * T
  out/ties: ties([H, O, C], [1, 1, 1], density=0.5)
  out/early_attention: replace(H, detox(H, T, t=0.5), "q_proj|v_proj", layers=[0, 1])
  out/svd_r8:
    expr: svd([H, O, C], [2, 1, 1], rank=8)
"""

SHIFT = ('a = load("adapters/a")\nb = load("adapters/b")\n'
         'save(recombine(shift(dir(b), dir(a), 0.25), mag(a)), "out/s")\n')


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eight.yaml").write_text(EIGHT)
    (tmp_path / "shift.dipm").write_text(SHIFT)
    return tmp_path


def explain(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


def compiled(path: Path, level: int = 2):
    return compile(source_of(path), level=level)[0]


def needed_by(program) -> dict[int, set[int]]:
    """For each node (by id()), the indices of the saves whose value needs it (walked from each save)."""
    out: dict[int, set[int]] = {}
    for k, save in enumerate(program.roots):
        for node in walk([save]):
            out.setdefault(id(node), set()).add(k)
    return out


def dot_nodes(dot: str) -> dict[int, str]:
    return {int(i): label for i, label in re.findall(r'^ +n(\d+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M)}


def dot_clusters(dot: str) -> dict[str, set[int]]:
    clusters, current = {}, None
    for line in dot.splitlines():
        if line.startswith("  subgraph cluster_"):
            current = line.split()[1].removeprefix("cluster_")
            clusters[current] = set()
        elif line == "  }":
            current = None
        elif current and (m := re.match(r" +n(\d+) \[", line)):
            clusters[current].add(int(m[1]))
    return clusters


# ---- labels -------------------------------------------------------------------------------

def test_every_node_is_labelled_with_its_operator_attributes_and_type(here):
    (here / "adapters").mkdir()  # adapters/NAME are then paths in it, not Hub ids (SPEC §7.5)
    program = compiled(here / "eight.yaml")
    dot = to_dot(program, relative_to=here, operators=OPERATORS)
    labels = dot_nodes(dot)
    nodes = list(walk(program.all_roots()))
    assert sorted(labels) == list(range(len(nodes))) and len(nodes) > 30
    for i, node in enumerate(nodes):
        label = labels[i].replace('\\"', '"')
        assert str(node.type) in label.split("\\n")[-1], (i, label)
        if node.op == "load":  # name ← folder, relative to the recipe's folder
            assert f'{node.attr("name")} ← adapters/' in label and label.startswith("load\\n")
        elif node.op == "save":
            assert "→ out/" + Path(node.attr("path")).name in label
            if node.attr("rank") is not None:
                assert f"rank={node.attr('rank')}" in label
        elif node.op != "const":
            assert label.startswith(node.op + "\\n"), label
            for key, value in node.attrs:
                if value is not None:
                    assert f"{key}=" in label, (key, label)
    # the attribute values a reader needs, in dipm's spelling
    for text in ('pattern="q_proj|v_proj"', "layers=[0, 1]", "density=0.5", "rank=8", "coeffs=[1, 0.5, -0.25]",
                 'H ← adapters/helpful', "→ out/early_attention"):
        assert text in dot.replace('\\"', '"'), text


def test_edges_carry_the_parameter_names_so_argument_order_is_visible(here):
    program = compiled(here / "shift.dipm", level=0)
    dot = to_dot(program, relative_to=here, operators=OPERATORS)
    nodes = list(walk(program.all_roots()))
    index = {id(n): i for i, n in enumerate(nodes)}
    edges = set(re.findall(r'^  n(\d+) -> n(\d+) \[label="([^"]*)"\]', dot, re.M))
    expected = set()
    for i, node in enumerate(nodes):
        params = [p.name for p in OPERATORS[node.op].params if not p.static]
        for pos, arg in enumerate(node.args):
            expected.add((str(index[id(arg)]), str(i), params[pos] if node.op != "list" else f"[{pos}]"))
    assert edges == expected
    shift = next(i for i, n in enumerate(nodes) if n.op == "shift")
    sources = {label: nodes[int(src)] for src, dst, label in edges if int(dst) == shift}
    assert sources["d"].args[0].attr("name") == "b" and sources["e"].args[0].attr("name") == "a"
    assert sources["t"].value == 0.25


def test_long_paths_and_strings_are_shortened_keeping_the_folder_name(here):
    deep = "very/deep/folder/structure/with/many/levels/to/the/adapter_named_helpful"
    (here / "long.dipm").write_text(f'H = load("{deep}")\nsave(select(H, pattern="{"x" * 80}"), "o")\n')
    view = plan_view(compiled(here / "long.dipm"), relative_to=here, operators=OPERATORS)
    load = next(n for n in view.nodes if n.kind == "load")
    select = next(n for n in view.nodes if n.node.op == "select")
    assert load.details[0].startswith("H ← …/") and load.details[0].endswith("/adapter_named_helpful")
    assert all(len(line) <= 40 for n in view.nodes for line in n.lines)
    assert any(line.startswith('pattern="xxx') and line.endswith('…"') for line in select.details)


# ---- clusters -----------------------------------------------------------------------------

def test_one_cluster_per_output_and_shared_work_outside_them(here):
    program = compiled(here / "eight.yaml")
    dot = to_dot(program, relative_to=here, operators=OPERATORS)
    clusters = dot_clusters(dot)
    assert set(clusters) == {"shared", *(f"output_{k}" for k in range(1, 9))}
    nodes = list(walk(program.all_roots()))
    needs = needed_by(program)
    for i, node in enumerate(nodes):
        users = needs[id(node)]
        where = [name for name, members in clusters.items() if i in members]
        assert where == (["shared"] if len(users) > 1 else [f"output_{min(users) + 1}"]), (i, node.op, users)
    for k, save in enumerate(program.roots):  # each save heads its own cluster, titled with its path
        assert nodes.index(save) in clusters[f"output_{k + 1}"]
        assert re.search(rf'label="output {k + 1}  → out/{Path(save.attr("path")).name}"', dot)
    assert len(clusters["shared"]) >= 4  # the four inputs at least
    view = plan_view(program, relative_to=here, operators=OPERATORS)
    assert {n.id for n in view.nodes if n.shared} == clusters["shared"]


def test_names_no_output_needs_are_shown_apart_at_O0(here):
    (here / "unused.dipm").write_text('H = load("a")\nx = dir(H)\nsave(H, "o")\n')
    program = compiled(here / "unused.dipm", level=0)
    clusters = dot_clusters(to_dot(program, relative_to=here, operators=OPERATORS))
    nodes = list(walk(program.all_roots()))
    assert {name: {nodes[i].op for i in members} for name, members in clusters.items()} == {
        "output_1": {"load", "save"}, "unused": {"dir"}}  # a name kept alive is no output
    plan = layout(plan_view(program, relative_to=here, operators=OPERATORS))
    assert [f.title for f in plan.frames] == ["output 1  → o", "needed by no output (kept at -O0)"]


def test_fused_nodes_are_highlighted(here):
    program = compiled(here / "eight.yaml")
    dot = to_dot(program, relative_to=here, operators=OPERATORS)
    fused = [line for line in dot.splitlines() if 'label="lincomb' in line or 'label="unit_scale' in line]
    assert fused and all("penwidth=2" in line and "#ffd27a" in line for line in fused)
    plain = [line for line in dot.splitlines() if 'label="shift' in line]
    assert plain and not any("penwidth" in line for line in plain)


def test_constants_are_written_on_the_edges_they_feed_in_pictures(here):
    view = plan_view(compiled(here / "eight.yaml"), relative_to=here, operators=OPERATORS)
    drawn = view.with_constants_inlined()
    assert not [n for n in drawn.nodes if n.kind == "const"]
    labels = {e.label for e in drawn.inlined}
    assert {"t=0.3", "t=0.4", "t=0.5", "a=0.5", "weights=[2, 1, 1]"} <= labels
    kept = {n.id for n in drawn.nodes}
    assert all(e.source in kept and e.target in kept for e in drawn.edges)


# ---- layout -------------------------------------------------------------------------------

def overlap(a, b) -> bool:
    return abs(a.x - b.x) * 2 < a.w + b.w and abs(a.y - b.y) * 2 < a.h + b.h


def test_layout_has_no_overlaps_and_keeps_each_output_in_its_frame(here):
    view = plan_view(compiled(here / "eight.yaml"), relative_to=here, operators=OPERATORS).with_constants_inlined()
    plan = layout(view)
    boxes = list(plan.boxes.values())
    assert len(boxes) == len(view.nodes)
    assert not [(a.node.id, b.node.id) for k, a in enumerate(boxes) for b in boxes[k + 1:] if overlap(a, b)]
    frames = {f.group: f for f in plan.frames}
    assert set(frames) == {SHARED, *range(8)}
    for box in boxes:
        f = frames[box.node.group]
        assert f.x0 <= box.x - box.w / 2 and box.x + box.w / 2 <= f.x1 and f.y0 <= box.top and box.bottom <= f.y1
    outputs = [frames[k] for k in range(8)]
    assert [f.x0 for f in outputs] == sorted(f.x0 for f in outputs)  # statement order, left to right
    assert all(a.x1 < b.x0 for a, b in zip(outputs, outputs[1:]))
    assert all(frames[SHARED].y1 < f.y0 for f in outputs)  # the shared band above every output
    for box in boxes:  # operands enter left to right in argument order
        ports = [x for e, x, y in sorted(plan.ports, key=lambda p: p[0].position) if e.target == box.node.id]
        assert ports == sorted(ports) and len(set(ports)) == len(ports)
    assert 0 < plan.width < 40 and 0 < plan.height < 15


def twenty_outputs() -> str:
    """Twenty outputs over six inputs, every recipe shape of EIGHT in turn."""
    names = ["H", "O", "T", "C", "M", "S"]
    shapes = [line.split(": ", 1)[1] for line in EIGHT.splitlines() if line.startswith("  out/") and ": " in line]
    lines = ["inputs:", *(f"  {n}: adapters/{n.lower()}" for n in names), "outputs:"]
    for k in range(20):
        a, b, c = names[k % 6], names[(k + 1) % 6], names[(k + 3) % 6]
        shape = shapes[k % len(shapes)].replace("H", "§").replace("O", a).replace("T", b).replace("C", c)
        lines.append(f"  out/o{k}: " + shape.replace("§", names[(k + 2) % 6]))
    return "\n".join(lines) + "\n"


def test_many_outputs_wrap_into_tiers_that_stay_apart(here):
    (here / "twenty.yaml").write_text(twenty_outputs())
    view = plan_view(compiled(here / "twenty.yaml"), relative_to=here, operators=OPERATORS).with_constants_inlined()
    plan = layout(view)
    assert plan.tiers >= 2 and plan.width / plan.height < 3, (plan.tiers, plan.width, plan.height)
    frames = [f for f in plan.frames if f.group != SHARED]
    assert len(frames) == 20
    disjoint = lambda a, b: a.x1 < b.x0 or b.x1 < a.x0 or a.y1 < b.y0 or b.y1 < a.y0  # noqa: E731
    assert all(disjoint(a, b) for k, a in enumerate(frames) for b in frames[k + 1:])
    boxes = list(plan.boxes.values())
    assert not [(a.node.id, b.node.id) for k, a in enumerate(boxes) for b in boxes[k + 1:] if overlap(a, b)]
    for route in plan.routes:  # an edge into a lower tier passes between the frames above, not through them
        for x, y in route.points[1:-1]:
            inside = [f.group for f in frames if f.x0 < x < f.x1 and f.y0 < y < f.y1]
            assert inside in ([], [plan.boxes[route.edge.target].node.group]), (route.edge, inside)


def test_ports_decide_the_order_of_operands_listed_the_other_way_round():
    """`f(y, x)` where the listing has x first: the layout still puts y on the left."""
    from dipm_lang.ir.node import const
    from dipm_lang.ir.types import NUM
    from dipm_lang.ir.view import Output, PlanView, ViewEdge, ViewNode

    def node(i: int, title: str) -> ViewNode:
        return ViewNode(i, const(float(i), NUM), title, (), "Delta", "op", (0,), 0, None)

    view = PlanView([node(0, "x"), node(1, "y"), node(2, "f")],
                    [ViewEdge(1, 2, 0, "first"), ViewEdge(0, 2, 1, "second")],
                    [Output(0, 2, "save", "/o", None, "→ o")])
    plan = layout(view)
    assert plan.boxes[1].x < plan.boxes[0].x and plan.crossings == 0


@pytest.mark.parametrize("script", ["shift.dipm", "transfer.dipm"])
def test_layout_orders_operands_to_avoid_crossings(here, script):
    """Operands that sit in one row stand left to right in argument order: `shift(d, e, t)` reads
    d, e from the left, so their edges do not cross on the way in."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    path = examples / script if script == "transfer.dipm" else here / script
    view = plan_view(compiled(path), relative_to=path.parent, operators=OPERATORS)
    plan = layout(view.with_constants_inlined())
    checked = 0
    for node in view.nodes:
        sources = [plan.boxes[e.source] for e in view.operands(node.id) if e.source in plan.boxes]
        same_row = [b for b in sources if b.y == sources[0].y]
        if node.node.op in ("shift", "unit_scale") and len(same_row) > 1:
            assert [b.x for b in same_row] == sorted(b.x for b in same_row), node.title
            checked += 1
    assert checked >= 1
    if script == "shift.dipm":
        assert plan.crossings == 0


# ---- the PNG ------------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_of_eight_outputs_is_written_with_sane_dimensions(here, capsys):
    code, out, err = explain(capsys, "eight.yaml", "--png", "plan.png")
    assert code == 0 and out.startswith("pipeline: ")
    width, height = png_size(here / "plan.png")
    assert f"wrote plan.png ({width}×{height} px)" in err
    assert 1200 <= width <= 4000 and 500 <= height <= 2000, (width, height)
    assert not list(here.glob(".plan.png.dipm-tmp-*"))


def test_png_of_a_small_script_is_small(here, capsys):
    code, _, _ = explain(capsys, "shift.dipm", "--png", "small.png")
    width, height = png_size(here / "small.png")
    assert code == 0 and 400 <= width <= 1200 and 300 <= height <= 1200, (width, height)


def test_too_large_a_plan_is_refused_with_a_clear_message(here, capsys, monkeypatch):
    import dipm_lang.ir.draw as draw

    monkeypatch.setattr(draw, "MAX_NODES", 10)
    code, _, err = explain(capsys, "eight.yaml", "--png", "plan.png")
    assert code == 1 and "draws at most 10 readably" in err and "--dot" in err
    assert not (here / "plan.png").exists() and not list(here.glob(".plan.png*"))
    monkeypatch.setattr(draw, "MAX_NODES", 1000)
    monkeypatch.setattr(draw, "MAX_INCHES", 5.0)
    code, _, err = explain(capsys, "eight.yaml", "--png", "plan.png")
    assert code == 1 and "at most 5 inches a side" in err and not (here / "plan.png").exists()


# ---- --json -------------------------------------------------------------------------------

LISTING = re.compile(r"^%(\d+) = (\w+)(?: ((?:%\d+(?:, )?)+))?(?: \[.*\])? : (.+)$")


@pytest.mark.parametrize("name", ["eight.yaml", "shift.dipm"])
def test_json_round_trips_the_listing(here, capsys, name):
    (here / "adapters").mkdir()  # adapters/NAME are then paths in it, not Hub ids (SPEC §7.5)
    code, out, _ = explain(capsys, name, "--json")
    plan = json.loads(out)
    program = compiled(here / name)
    listing = print_program(program).splitlines()
    assert len(plan["nodes"]) == len(listing) == plan["nodes_after"]
    for line, node in zip(listing, plan["nodes"]):
        if " = const " in line:
            i, rest = line.split(" = const ")
            assert (f"%{node['id']}", node["op"], node["operands"]) == (i, "const", [])
            assert rest.endswith(f" : {node['type']}")
            continue
        i, op, operands, type_ = LISTING.match(line).groups()
        assert (node["id"], node["op"], node["type"]) == (int(i), op, type_)
        assert node["operands"] == [int(x) for x in re.findall(r"%(\d+)", operands or "")]
    nodes = list(walk(program.all_roots()))
    needs = needed_by(program)
    saves = [s.attr("path") for s in program.roots]
    for node, data in zip(nodes, plan["nodes"]):
        assert data["attrs"] == {k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs}
        assert data["outputs"] == [saves[k] for k in sorted(needs[id(node)])]
        assert data["shared"] == (len(needs[id(node)]) > 1)
    assert plan["outputs"] == [{"path": s.attr("path"), "rank": s.attr("rank"), "node": nodes.index(s)}
                               for s in program.roots]
    assert plan["inputs"] == {k: v.attr("path") for k, v in program.inputs.items()}
    assert all(Path(p).is_absolute() for p in plan["inputs"].values())


def test_json_has_the_pipeline_passes_notes_and_source_positions(here, capsys):
    code, out, _ = explain(capsys, "shift.dipm", "--json", "-O1")
    plan = json.loads(out)
    from dipm_lang.compiler import PIPELINE

    assert [(s["name"], s["ran"]) for s in plan["pipeline"]] == [
        (s.name, s.name in ("parse", "lower", "cse", "dce")) for s in PIPELINE]
    assert (plan["level"], plan["file"], plan["format"]) == (1, "shift.dipm", 1)
    assert [p["name"] for p in plan["passes"]] == ["cse", "dce"]
    loads = {n["attrs"]["name"]: n for n in plan["nodes"] if n["op"] == "load"}
    assert loads["a"]["source"] == "shift.dipm:1:5" and loads["b"]["source"] == "shift.dipm:2:5"
    code, out, _ = explain(capsys, "eight.yaml", "--json")
    fused = json.loads(out)
    assert fused["passes"][-1]["name"] == "fuse"
    assert fused["notes"] and all(note.split(": ", 1)[1] in next(p["notes"] for p in fused["passes"]
                                                                  if p["name"] == note.split(": ")[0])
                                  for note in fused["notes"])


def test_every_json_key_is_documented_in_the_help(here, capsys):
    code, out, _ = explain(capsys, "eight.yaml", "--json")
    plan = json.loads(out)
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    help_text = capsys.readouterr().out
    keys = set(plan) | set(plan["nodes"][0]) | set(plan["passes"][0]) | set(plan["pipeline"][0])
    keys |= set(plan["outputs"][0])
    assert [k for k in sorted(keys) if not re.search(rf"\b{k}\b", help_text)] == []


# ---- writing the files --------------------------------------------------------------------

def test_existing_files_are_kept_without_force(here, capsys):
    (here / "plan.dot").write_text("mine")
    code, _, err = explain(capsys, "shift.dipm", "--dot", "plan.dot")
    assert code == 1 and "already exists (use --force to replace it)" in err
    assert (here / "plan.dot").read_text() == "mine"
    code, _, _ = explain(capsys, "shift.dipm", "--dot", "plan.dot", "--force")
    assert code == 0 and (here / "plan.dot").read_text().startswith("digraph dipm {")


def test_inputs_and_the_script_are_never_written_over(here, capsys):
    script = (here / "shift.dipm").read_text()
    code, _, err = explain(capsys, "shift.dipm", "--dot", "shift.dipm", "--force")
    assert code == 1 and "refusing to write over an input" in err
    assert (here / "shift.dipm").read_text() == script
    (here / "adapters" / "a").mkdir(parents=True)
    code, _, err = explain(capsys, "shift.dipm", "--png", "adapters/a/plan.png", "--force")
    assert code == 1 and "refusing to write inside the input" in err
    assert list((here / "adapters" / "a").iterdir()) == []


def test_unwritable_destinations_fail_cleanly(here, capsys):
    (here / "a_file").write_text("x")
    code, _, err = explain(capsys, "shift.dipm", "--dot", "a_file/plan.dot")
    assert code == 1 and "a_file is not a folder" in err
    (here / "folder").mkdir()
    code, _, err = explain(capsys, "shift.dipm", "--png", "folder", "--force")
    assert code == 1 and "the output is a folder" in err
    code, _, err = explain(capsys, "shift.dipm", "--dot", "x.dot", "--png", "./x.dot")
    assert code == 2 and "same file" in err
    assert sorted(p.name for p in here.iterdir()) == ["a_file", "eight.yaml", "folder", "shift.dipm"]


def test_a_failed_drawing_leaves_the_old_file_and_no_temporary(here, capsys, monkeypatch):
    import dipm_lang.ir.draw as draw

    (here / "plan.png").write_bytes(b"old picture")

    def broken(view, path, title=""):
        Path(path).write_bytes(b"half a pic")
        raise AdapterError("the disk is full", path)

    monkeypatch.setattr(draw, "draw_png", broken)
    code, _, err = explain(capsys, "shift.dipm", "--png", "plan.png", "--force")
    assert code == 1 and "the disk is full" in err
    assert (here / "plan.png").read_bytes() == b"old picture"
    assert sorted(p.name for p in here.iterdir()) == ["eight.yaml", "plan.png", "shift.dipm"]


def test_missing_folders_are_created(here, capsys):
    code, _, _ = explain(capsys, "shift.dipm", "--dot", "new/sub/plan.dot")
    assert code == 0 and (here / "new/sub/plan.dot").read_text().startswith("digraph")


def test_write_file_atomically(tmp_path):
    target = tmp_path / "f.txt"
    assert write_file_atomically(target, "one") == target.resolve()
    with pytest.raises(AdapterError, match="already exists"):
        write_file_atomically(target, "two")
    write_file_atomically(target, b"two", force=True)
    assert target.read_bytes() == b"two" and oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(AdapterError, match="over an input"):
        write_file_atomically(target, "three", inputs=[target], force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "x.txt")
    with pytest.raises(AdapterError, match="dangling symbolic link"):
        write_file_atomically(tmp_path / "link", "four", force=True)
    assert not (tmp_path / "nowhere").exists()


def test_dot_and_json_import_neither_torch_nor_matplotlib(here):
    from clitools import cli_env

    probe = ("import sys\nfrom dipm_lang.cli.main import main\nmain(sys.argv[1:])\n"
             "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, "explain", "eight.yaml", "--dot", "p.dot", "--json"],
                          capture_output=True, text=True, env=cli_env(), cwd=here)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().endswith("[]"), done.stdout[-200:]
