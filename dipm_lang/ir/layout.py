"""A layered layout of a `PlanView` for `dipm explain --png`: boxes, edge routes and cluster frames, in inches.

Graphviz's `dot` would do this, but no Graphviz binary can be relied on (none on CI, none on many
users' machines), and the pure-Python Sugiyama packages are unmaintained, so this module is a
small Sugiyama-style layout of our own, shaped by what a plan looks like:

1. rows: the shared work forms a band at the top, laid out by longest path from the inputs; each
   output's own nodes form a column below it (a cluster), in statement order, so an output reads
   top to bottom from its inputs to its `save`. Constants sit just above their first user.
2. edges spanning several rows get a bend point in each row between (a "dummy" node), so they
   route around boxes instead of through them;
3. crossings are reduced by barycenter sweeps (each row ordered by the mean position of its
   neighbours above, then below), keeping the ordering with the fewest crossings;
4. x positions: each node moves toward the mean x of its neighbours, rows keep their order and
   spacing (isotonic regression, "pool adjacent violators"), clusters stay in their own columns.

Edges enter a box at ports spread along its top edge in operand order, so argument order is
visible even without the labels. Coordinates run right and *down* (row 0 at the top).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dipm_lang.ir.view import SHARED, Group, PlanView, ViewEdge, ViewNode

CHAR_W = 0.07       # inches per character of an 8-pt monospaced font (0.6 em, whole pixels at 100 dpi)
LINE_H = 0.15       # inches per line of text
PAD_X, PAD_Y = 0.12, 0.07   # inside a box, around its text
NODE_GAP = 0.35     # between boxes in a row
DUMMY_W = 0.12      # an edge passing through a row
ROW_GAP = 0.42      # between rows: room for the curves and the operand labels
CLUSTER_GAP = 0.45  # between two outputs' columns
FRAME_PAD = 0.14    # between a frame and the boxes it holds
TITLE_H = 0.30      # a frame's title line
LABEL_CHAR_W = 0.06    # inches per character of the operand labels (7 pt)
SLOT_PORTS = 0.8       # while ordering rows every item is one slot wide; ports spread over 0.8 of it


@dataclass
class Box:
    node: ViewNode
    x: float   # centre
    y: float   # centre
    w: float
    h: float

    @property
    def top(self) -> float:
        return self.y - self.h / 2

    @property
    def bottom(self) -> float:
        return self.y + self.h / 2

    ports: dict[int, float] = field(default_factory=dict)  # operand position -> fraction of w from the centre

    def port(self, position: int) -> float:
        """x where operand `position` enters its top edge."""
        return self.x + self.ports.get(position, 0.0) * self.w


@dataclass
class Route:
    edge: ViewEdge
    points: list[tuple[float, float]]  # from the operand's bottom to the user's top, via bend points


@dataclass
class Frame:
    group: Group
    title: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class Layout:
    boxes: dict[int, Box]
    routes: list[Route]
    frames: list[Frame]
    ports: list[tuple[ViewEdge, float, float]]  # every operand's entry point (x, y), with or without a route
    width: float
    height: float
    crossings: int = 0


@dataclass
class _Item:
    """A box or a bend point in a row."""

    key: object                       # a node id, or (edge index, row) for a bend point
    group: Group
    row: int
    width: float
    # neighbours in the row above and below, each with the port of the link: where along the lower
    # item's top edge it enters, as a fraction of that item's width from its centre (-0.5 … 0.5)
    above: list[tuple["_Item", float]] = field(default_factory=list)
    below: list[tuple["_Item", float]] = field(default_factory=list)
    x: float = 0.0

    def entry(self, port: float, width: float | None = None) -> float:
        """x of an edge entering at `port` (a fraction of the width; `width` for slot layouts)."""
        return self.x + port * (self.width if width is None else width)


def box_size(node: ViewNode, labels: dict[int, str]) -> tuple[float, float, dict[int, float]]:
    """(width, height, ports): a box big enough for its lines and for its operands' labels side by
    side along its top edge; each operand's port (a fraction of the width from the centre, left to
    right in operand order) sits in the middle of a slot as wide as its label."""
    slots = {pos: len(label) * LABEL_CHAR_W + 0.16 for pos, label in sorted(labels.items())}
    w = max(max(len(line) for line in node.lines) * CHAR_W + 2 * PAD_X, sum(slots.values()) + 0.1)
    ports, x = {}, -sum(slots.values()) / 2
    for pos, slot in slots.items():
        ports[pos] = (x + slot / 2) / w
        x += slot
    return w, len(node.lines) * LINE_H + 2 * PAD_Y, ports


def layout(view: PlanView, *, sweeps: int = 8) -> Layout:
    """Boxes, routes and frames for `view` (see the module docstring for the steps)."""
    labels: dict[int, dict[int, str]] = {n.id: {} for n in view.nodes}
    for e in view.edges + view.inlined:
        labels[e.target][e.position] = e.label
    sizes = {n.id: box_size(n, labels[n.id]) for n in view.nodes}
    rows, band = _rows(view)
    groups = view.groups()
    columns = [g for g in groups if g != SHARED]

    # items per row: boxes, then a bend point for every row an edge passes through
    items: dict[object, _Item] = {}
    by_row: dict[int, list[_Item]] = {}
    for n in view.nodes:
        item = _Item(n.id, n.group, rows[n.id], sizes[n.id][0])
        items[n.id] = item
        by_row.setdefault(item.row, []).append(item)
    chains: list[list[_Item]] = []
    for k, e in enumerate(view.edges):
        source, target = items[e.source], items[e.target]
        chain = [source]
        for row in range(source.row + 1, target.row):
            bend = _Item((k, row), SHARED if row < band else target.group, row, DUMMY_W)
            items[bend.key] = bend
            by_row.setdefault(row, []).append(bend)
            chain.append(bend)
        chain.append(target)
        port = sizes[e.target][2][e.position]
        for upper, lower in zip(chain, chain[1:]):
            entry = port if lower is target else 0.0
            upper.below.append((lower, entry))
            lower.above.append((upper, entry))
        chains.append(chain)
    depth = max(by_row) + 1 if by_row else 0
    segments = _segments(by_row, depth, columns)

    # provisional columns (in slots) for the crossing reduction
    def slots() -> None:
        _place(segments, depth, band, columns, widths=lambda item: 1.0, gap=0.0, cluster_gap=1.0)

    slots()
    best = [list(seg) for seg in segments.values()]
    fewest = _crossings(by_row, depth, segments)
    for sweep in range(sweeps):
        downward = sweep % 2 == 0
        row_order = range(1, depth) if downward else range(depth - 2, -1, -1)
        for row in row_order:
            for key in [k for k in segments if k[0] == row]:
                seg = segments[key]
                keyed = [(_mean([n.x for n, _ in i.above] if downward else
                                [n.entry(port, SLOT_PORTS) for n, port in i.below], i.x), pos, i)
                         for pos, i in enumerate(seg)]
                segments[key] = [i for _, _, i in sorted(keyed, key=lambda t: (t[0], t[1]))]
            slots()
        count = _crossings(by_row, depth, segments)
        if count < fewest:
            fewest, best = count, [list(seg) for seg in segments.values()]
    for key, seg in zip(list(segments), best):
        segments[key] = seg

    # real widths; then straighten edges
    titles = {g: view.title(g) for g in view.groups()}
    regions = _place(segments, depth, band, columns, widths=lambda item: item.width, gap=NODE_GAP,
                     cluster_gap=CLUSTER_GAP + 2 * FRAME_PAD,
                     least={g: len(titles[g]) * CHAR_W + 0.2 - 2 * FRAME_PAD for g in columns})
    column_at = {key[1]: span for key, span in regions.items() if key[0] == "column"}
    for sweep in range(7):
        downward, both = sweep % 2 == 0, sweep == 6  # a last pass toward both sides balances fans
        for row in (range(depth) if downward else range(depth - 1, -1, -1)):
            for key in [k for k in segments if k[0] == row]:
                lo, hi = regions[key]
                _straighten(segments[key], lo, hi, up=downward or both, down=not downward or both)

    # rows' heights and y positions
    heights = [max((sizes[i.key][1] for i in by_row.get(r, []) if i.key in sizes), default=LINE_H)
               for r in range(depth)]
    # between the band and the outputs' columns, room for the edges that fan out to them to bend
    fan_out = sum(1 for e in view.edges if items[e.source].group == SHARED and items[e.target].group != SHARED)
    routing = min(1.2, 0.1 + 0.04 * fan_out)
    tops, y = [], TITLE_H + FRAME_PAD
    for r in range(depth):
        if r == band and band > 0:
            y += FRAME_PAD + routing + TITLE_H + FRAME_PAD  # the band's bottom edge, the fan, the titles
        tops.append(y)
        y += heights[r] + ROW_GAP
    height = y - ROW_GAP + FRAME_PAD + 0.1
    boxes = {}
    for n in view.nodes:
        item = items[n.id]
        w, h, ports_of = sizes[n.id]
        boxes[n.id] = Box(n, item.x, tops[item.row] + heights[item.row] / 2, w, h, ports_of)

    routes = []
    for e, chain in zip(view.edges, chains):
        source, target = boxes[e.source], boxes[e.target]
        points = [(source.x, source.bottom)]
        for bend in chain[1:-1]:
            points += [(bend.x, tops[bend.row]), (bend.x, tops[bend.row] + heights[bend.row])]
        points.append((target.port(e.position), target.top))
        routes.append(Route(e, points))
    ports = [(e, boxes[e.target].port(e.position), boxes[e.target].top)
             for e in view.edges + view.inlined]

    all_x = [i.x - i.width / 2 for i in items.values()] + [i.x + i.width / 2 for i in items.values()]
    all_x += [x for span in column_at.values() for x in span]
    left = min(all_x, default=0.0) - FRAME_PAD - 0.1
    width = max(all_x, default=1.0) - left + FRAME_PAD + 0.1
    _shift(boxes, routes, -left)
    ports = [(e, x - left, y) for e, x, y in ports]
    columns_x = {g: (lo - left, hi - left) for g, (lo, hi) in column_at.items()}
    frames = _frames(view, boxes, rows, columns_x, titles, band, tops, heights, width)
    return Layout(boxes, routes, frames, ports, width, height, fewest)


def _rows(view: PlanView) -> tuple[dict[int, int], int]:
    """Each node's row, and the number of rows of the shared band (the clusters start below it)."""
    operands: dict[int, list[int]] = {n.id: [] for n in view.nodes}
    users: dict[int, list[int]] = {n.id: [] for n in view.nodes}
    for e in view.edges:
        operands[e.target].append(e.source)
        users[e.source].append(e.target)
    shared = [n for n in view.nodes if n.group == SHARED]
    own = [n for n in view.nodes if n.group != SHARED]
    rows: dict[int, int] = {}
    for n in shared:  # listing order is topological
        rows[n.id] = max((rows[a] + 1 for a in operands[n.id]), default=0)
    band = max((rows[n.id] for n in shared), default=-1) + 1
    for n in own:
        rows[n.id] = max([band] + [rows[a] + 1 for a in operands[n.id]])
    # constants (and lists of them) move down to just above their first user
    constant = {n.id for n in view.nodes if n.kind == "const"}
    for n in view.nodes:
        if n.kind == "list" and all(a in constant for a in operands[n.id]):
            constant.add(n.id)
    for n in reversed(view.nodes):
        if n.id in constant and users[n.id]:
            floor = band - 1 if n.group == SHARED else max(rows.values())
            below = [rows[u] - 1 for u in users[n.id]]
            if n.group == SHARED and any(view.nodes[u].group != SHARED for u in users[n.id]):
                below.append(band - 1)
            rows[n.id] = max(rows[n.id], min(below + [floor]))
    return rows, band


def _segments(by_row: dict[int, list[_Item]], depth: int, columns: list[Group]) -> dict[tuple, list[_Item]]:
    """(row, group) -> the row's items of that group, ordered by node id (listing order) first."""
    segments: dict[tuple, list[_Item]] = {}
    rank = {g: i for i, g in enumerate([SHARED, *columns])}
    for row in range(depth):
        for item in sorted(by_row.get(row, []), key=lambda i: (rank[i.group], _order_key(i.key))):
            segments.setdefault((row, item.group), []).append(item)
    return segments


def _order_key(key: object) -> tuple:
    return (key, 0) if isinstance(key, int) else (key[0], 1)  # type: ignore[index]


def _place(segments: dict[tuple, list[_Item]], depth: int, band: int, columns: list[Group], *,
           widths: Callable[[_Item], float], gap: float, cluster_gap: float,
           least: dict[Group, float] | None = None) -> dict[tuple, tuple[float, float]]:
    """Pack each segment in its region: each output's column as wide as its widest row, side by
    side; the shared band's rows centred over all of them. Returns each segment's (lo, hi)."""
    def span(seg: list[_Item]) -> float:
        return sum(widths(i) for i in seg) + gap * max(0, len(seg) - 1)

    column_width = {g: max([span(seg) for (row, group), seg in segments.items() if group == g]
                           + [(least or {}).get(g, 0.0)]) for g in columns}
    total = sum(column_width.values()) + cluster_gap * max(0, len(columns) - 1)
    band_width = max((span(seg) for (row, group), seg in segments.items() if group == SHARED), default=0.0)
    full = max(total, band_width)
    start = (full - total) / 2
    column_at = {}
    for g in columns:
        column_at[g] = (start, start + column_width[g])
        start += column_width[g] + cluster_gap
    regions = {}
    for g, (lo, hi) in column_at.items():
        regions[("column", g)] = (lo, hi)
    for key, seg in segments.items():
        lo, hi = column_at[key[1]] if key[1] != SHARED else (0.0, full)
        x = lo + (hi - lo - span(seg)) / 2
        for item in seg:
            item.x = x + widths(item) / 2
            x += widths(item) + gap
        regions[key] = (lo, hi)
    return regions


def _wanted(item: _Item, up: bool, down: bool) -> float:
    """Where `item` would like its centre: its ports under the operands above, its centre over the
    ports it feeds below (either side alone when the other has no neighbours)."""
    above = [n.x - port * item.width for n, port in item.above]
    below = [n.entry(port) for n, port in item.below]
    chosen = (above if up else []) + (below if down else [])
    return _mean(chosen or above + below, item.x)


def _straighten(seg: list[_Item], lo: float, hi: float, *, up: bool, down: bool) -> None:
    """Move each item toward where its neighbours want it, keeping the order, the gaps and [lo, hi]."""
    gaps = [(a.width + b.width) / 2 + (NODE_GAP if a.width > DUMMY_W or b.width > DUMMY_W else NODE_GAP / 3)
            for a, b in zip(seg, seg[1:])]
    offsets = [0.0]
    for g in gaps:
        offsets.append(offsets[-1] + g)
    targets = [_wanted(i, up, down) - off for i, off in zip(seg, offsets)]
    solved = _isotonic(targets, [2.0 if isinstance(i.key, tuple) else 1.0 for i in seg])
    first_lo = lo + seg[0].width / 2
    last_hi = hi - seg[-1].width / 2 - offsets[-1]
    for item, y, off in zip(seg, solved, offsets):
        y = min(max(y, first_lo), max(first_lo, last_hi))
        item.x = y + off


def _isotonic(targets: list[float], weights: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `targets` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for t, w in zip(targets, weights):
        blocks.append([t, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for mean, _, count in blocks:
        out += [mean] * int(count)
    return out


def _crossings(by_row: dict[int, list[_Item]], depth: int, segments: dict[tuple, list[_Item]]) -> int:
    """Edge crossings between consecutive rows, by the items' current x."""
    total = 0
    for row in range(depth - 1):
        pairs = sorted((i.x, j.entry(port, SLOT_PORTS)) for i in by_row.get(row, []) for j, port in i.below)
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                if pairs[a][0] < pairs[b][0] and pairs[a][1] > pairs[b][1]:
                    total += 1
    return total


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _shift(boxes: dict[int, Box], routes: list[Route], dx: float) -> None:
    for box in boxes.values():
        box.x += dx
    for route in routes:
        route.points = [(x + dx, y) for x, y in route.points]


def _frames(view: PlanView, boxes: dict[int, Box], rows: dict[int, int], columns: dict[Group, tuple[float, float]],
            titles: dict[Group, str], band: int, tops: list[float], heights: list[float],
            width: float) -> list[Frame]:
    frames = []
    if band > 0:
        frames.append(Frame(SHARED, titles[SHARED], 0.05, 0.05, width - 0.05,
                            tops[band - 1] + heights[band - 1] + FRAME_PAD))
    for group in view.groups():
        if group == SHARED:
            continue
        members = [boxes[n.id] for n in view.members(group)]
        lo, hi = columns[group]
        x0 = min([lo] + [b.x - b.w / 2 for b in members]) - FRAME_PAD
        x1 = max([hi] + [b.x + b.w / 2 for b in members]) + FRAME_PAD
        y0 = tops[min(rows[b.node.id] for b in members)] - FRAME_PAD - TITLE_H  # titles of a row align
        y1 = max(b.bottom for b in members) + FRAME_PAD
        frames.append(Frame(group, titles[group], x0, y0, x1, y1))
    return frames
