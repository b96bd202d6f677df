"""Draw a Program's DAG to PNG with matplotlib (no Graphviz binary needed)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from dipm_lang.errors import RuntimeDipmError
from dipm_lang.ir.graph import to_networkx
from dipm_lang.ir.node import Program


def draw_png(program: Program, path: str | Path, *, relative_to: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graph = to_networkx(program)
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for n in nodes:
            graph.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")
    pos = {n: (x, -y) for n, (x, y) in pos.items()}
    width = max(6.0, 1.6 * max((len(g) for g in nx.topological_generations(graph)), default=1))
    height = max(4.0, 1.1 * (1 + max((d["layer"] for _, d in graph.nodes(data=True)), default=0)))
    fig, ax = plt.subplots(figsize=(width, height))
    colors = ["#cfe2ff" if d["op"] in ("load", "save") else "#ffe8b0" if d["op"] in ("lincomb", "unit_scale")
              else "#eeeeee" for _, d in graph.nodes(data=True)]
    labels = {n: d["label"].split(" ")[0] + "\n" + d["type"] for n, d in graph.nodes(data=True)}
    nx.draw_networkx(graph, pos, ax=ax, labels=labels, node_color=colors, node_size=1800, font_size=7,
                     node_shape="s", arrows=True)
    ax.axis("off")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise RuntimeDipmError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
