"""A layered layout of a `PlanView` for `dipm explain --png`: boxes, edge routes and frames, in inches.

Graphviz's `dot` would do this, but no Graphviz binary can be relied on (none on CI, none on many
users' machines), and the pure-Python Sugiyama packages are unmaintained, so this module is a
small Sugiyama-style layout of our own, shaped by what a plan looks like:

1. rows: the shared work forms a band at the top, laid out by longest path from the inputs; each
   output's own nodes form a column below it (a cluster), in statement order, so an output reads
   top to bottom from its inputs to its `save`. Constants sit just above their first user (the
   PNG writes them on their edges instead: `PlanView.with_constants_inlined`). Columns wider in
   all than `TIER_WIDTH` wrap into tiers stacked below one another; edges on their way to a lower
   tier run down "passages" between the frames of the tiers above, never through them.
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
DUMMY_W = 0.08      # an edge passing through a row
ROW_GAP = 0.42      # between rows: room for the curves and the operand labels
CLUSTER_GAP = 0.45  # between two outputs' columns
TIER_WIDTH = 24.0   # wider than this, the outputs' columns wrap into tiers

Region = Group | tuple  # where a row's items go: an output's column, the band, or ("pass", tier, j)
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
    tiers: int = 1


@dataclass
class _Item:
    """A box or a bend point in a row."""

    key: object                       # a node id, or (edge index, row) for a bend point
    group: Region
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


def layout(view: PlanView, *, sweeps: int = 8, tier_width: float = TIER_WIDTH) -> Layout:
    """Boxes, routes and frames for `view` (see the module docstring for the steps)."""
    labels: dict[int, dict[int, str]] = {n.id: {} for n in view.nodes}
    for e in view.edges + view.inlined:
        labels[e.target][e.position] = e.label
    sizes = {n.id: box_size(n, labels[n.id]) for n in view.nodes}
    titles = {g: view.title(g) for g in view.groups()}
    least = {g: len(titles[g]) * CHAR_W + 0.2 - 2 * FRAME_PAD for g in titles}  # room for the frame's title
    rows, band = _rows(view)
    tiers = _tiers(view, rows, band, sizes, least, tier_width)
    rows, tier_starts = _stack(view, rows, band, tiers)
    tier_of = {g: t for t, columns in enumerate(tiers) for g in columns}
    depth = max(rows.values(), default=-1) + 1
    row_tier = [-1 if r < band else max(t for t, start in enumerate(tier_starts) if start <= r) for r in range(depth)]
    # the regions of each stratum (the band: -1; a tier: t), left to right: in a tier, passages for
    # edges on their way to a lower tier flank each output's column
    strata: dict[int, list[Region]] = {-1: [SHARED]}
    for t, columns in enumerate(tiers):
        strata[t] = [("pass", t, 0)]
        for j, g in enumerate(columns):
            strata[t] += [g, ("pass", t, j + 1)]

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
            t = row_tier[row]
            if t < 0:
                group: Region = SHARED
            elif t == tier_of[target.group]:
                group = target.group
            else:  # through the passage of this tier nearest to where the target's column lies
                home = tiers[tier_of[target.group]]
                where = (home.index(target.group) + 0.5) / len(home)
                group = ("pass", t, round(where * len(tiers[t])))
            bend = _Item((k, row), group, row, DUMMY_W)
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
    segments = _segments(by_row, depth, strata, row_tier)

    # crossing reduction, every item one slot wide
    def slots() -> None:
        _place(segments, strata, row_tier, widths=lambda item: 1.0, gap=0.0, region_gap=1.0)

    slots()
    best = [list(seg) for seg in segments.values()]
    fewest = _crossings(by_row, depth)
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
        count = _crossings(by_row, depth)
        if count < fewest:
            fewest, best = count, [list(seg) for seg in segments.values()]
    for key, seg in zip(list(segments), best):
        segments[key] = seg

    # real widths; then straighten edges
    regions = _place(segments, strata, row_tier, widths=lambda item: item.width, gap=NODE_GAP,
                     region_gap=CLUSTER_GAP + 2 * FRAME_PAD, least=least)
    for sweep in range(7):
        downward, both = sweep % 2 == 0, sweep == 6  # a last pass toward both sides balances fans
        for row in (range(depth) if downward else range(depth - 1, -1, -1)):
            for key in [k for k in segments if k[0] == row]:
                lo, hi = regions[key]
                _straighten(segments[key], lo, hi, up=downward or both, down=not downward or both)

    # rows' heights and y positions; above each tier, room for the edges that fan into it to bend
    heights = [max((sizes[i.key][1] for i in by_row.get(r, []) if i.key in sizes), default=LINE_H)
               for r in range(depth)]
    entering = [0] * len(tiers)
    for k, e in enumerate(view.edges):
        if items[e.target].group != SHARED and chains[k][-2].group != items[e.target].group:
            entering[tier_of[items[e.target].group]] += 1
    tops, y = [], TITLE_H + FRAME_PAD
    for r in range(depth):
        t = row_tier[r]
        if t >= 0 and r == tier_starts[t] and (band > 0 or t > 0):
            routing = min(1.2, 0.1 + 0.04 * entering[t])
            y += FRAME_PAD + routing + TITLE_H + FRAME_PAD  # the frames above, the fan, the titles
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

    columns_at = {g: regions[("region", g)] for columns in tiers for g in columns}
    all_x = [i.x - i.width / 2 for i in items.values()] + [i.x + i.width / 2 for i in items.values()]
    all_x += [x for span in columns_at.values() for x in span]
    left = min(all_x, default=0.0) - FRAME_PAD - 0.1
    width = max(all_x, default=1.0) - left + FRAME_PAD + 0.1
    _shift(boxes, routes, -left)
    ports = [(e, x - left, y) for e, x, y in ports]
    columns_x = {g: (lo - left, hi - left) for g, (lo, hi) in columns_at.items()}
    frames = _frames(view, boxes, rows, columns_x, titles, band, tops, heights, width)
    return Layout(boxes, routes, frames, ports, width, height, fewest, len(tiers))


def _tiers(view: PlanView, rows: dict[int, int], band: int, sizes: dict[int, tuple], least: dict[Group, float],
           tier_width: float) -> list[list[Group]]:
    """The outputs' columns in statement order, cut into tiers (stacked one under the other) when
    side by side they would be wider than `tier_width`: a wall of twenty outputs becomes three
    rows of seven, about as wide as it is tall."""
    columns = [g for g in view.groups() if g != SHARED]
    widths = []
    for g in columns:
        per_row: dict[int, float] = {}
        for n in view.members(g):
            per_row[rows[n.id]] = per_row.get(rows[n.id], -NODE_GAP) + sizes[n.id][0] + NODE_GAP
        widths.append(max([least.get(g, 0.0), *per_row.values()]) + CLUSTER_GAP + 2 * FRAME_PAD)
    total = sum(widths)
    if total <= tier_width or len(columns) < 2:
        return [columns] if columns else []
    count = min(len(columns), -(-int(total) // int(tier_width)))
    target = total / count
    tiers: list[list[Group]] = [[]]
    filled = 0.0
    for g, w in zip(columns, widths):
        if tiers[-1] and filled + w / 2 > target * len(tiers) and len(tiers) < count:
            tiers.append([])
        tiers[-1].append(g)
        filled += w
    return tiers


def _stack(view: PlanView, rows: dict[int, int], band: int,
           tiers: list[list[Group]]) -> tuple[dict[int, int], list[int]]:
    """Rows with each tier's columns starting below the previous tier; the first row of each tier."""
    tier_of = {g: t for t, columns in enumerate(tiers) for g in columns}
    depth = [0] * len(tiers)
    for n in view.nodes:
        if n.group != SHARED:
            depth[tier_of[n.group]] = max(depth[tier_of[n.group]], rows[n.id] - band + 1)
    starts = [band]
    for d in depth[:-1]:
        starts.append(starts[-1] + d)
    out = {n.id: rows[n.id] if n.group == SHARED else starts[tier_of[n.group]] + rows[n.id] - band
           for n in view.nodes}
    return out, starts


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
    group_of = {n.id: n.group for n in view.nodes}
    constant = {n.id for n in view.nodes if n.kind == "const"}
    for n in view.nodes:
        if n.kind == "list" and all(a in constant for a in operands[n.id]):
            constant.add(n.id)
    for n in reversed(view.nodes):
        if n.id in constant and users[n.id]:
            floor = band - 1 if n.group == SHARED else max(rows.values())
            below = [rows[u] - 1 for u in users[n.id]]
            if n.group == SHARED and any(group_of[u] != SHARED for u in users[n.id]):
                below.append(band - 1)
            rows[n.id] = max(rows[n.id], min(below + [floor]))
    return rows, band


def _segments(by_row: dict[int, list[_Item]], depth: int, strata: dict[int, list[Region]],
              row_tier: list[int]) -> dict[tuple, list[_Item]]:
    """(row, region) -> the row's items in that region, in listing order to begin with."""
    segments: dict[tuple, list[_Item]] = {}
    for row in range(depth):
        rank = {g: i for i, g in enumerate(strata[row_tier[row]])}
        for item in sorted(by_row.get(row, []), key=lambda i: (rank[i.group], _order_key(i.key))):
            segments.setdefault((row, item.group), []).append(item)
    return segments


def _order_key(key: object) -> tuple:
    return (key, 0) if isinstance(key, int) else (key[0], 1)  # type: ignore[index]


def _place(segments: dict[tuple, list[_Item]], strata: dict[int, list[Region]], row_tier: list[int], *,
           widths: Callable[[_Item], float], gap: float, region_gap: float,
           least: dict[Group, float] | None = None) -> dict[tuple, tuple[float, float]]:
    """Pack each segment in its region: a region as wide as its widest row, the regions of a
    stratum side by side, each stratum centred on the widest. Returns (lo, hi) of every segment
    and, under ("region", group), of every region."""
    def span(seg: list[_Item]) -> float:
        return sum(widths(i) for i in seg) + gap * max(0, len(seg) - 1)

    width: dict[Region, float] = {g: (least or {}).get(g, 0.0) if not isinstance(g, tuple) else 0.0
                                 for regions in strata.values() for g in regions}
    for (row, group), seg in segments.items():
        width[group] = max(width[group], span(seg))
    totals = {}
    for s, regions in strata.items():
        present = [width[g] for g in regions if width[g] > 0]
        totals[s] = sum(present) + region_gap * max(0, len(present) - 1)
    full = max(totals.values(), default=0.0)
    out: dict[tuple, tuple[float, float]] = {}
    for s, regions in strata.items():
        x = (full - totals[s]) / 2
        for g in regions:
            out[("region", g)] = (x, x + width[g]) if g != SHARED else (0.0, full)
            if width[g] > 0:
                x += width[g] + region_gap
    for key, seg in segments.items():
        lo, hi = out[key] = out[("region", key[1])]
        x = lo + (hi - lo - span(seg)) / 2
        for item in seg:
            item.x = x + widths(item) / 2
            x += widths(item) + gap
    return out


def _wanted(item: _Item, up: bool, down: bool) -> float:
    """Where `item` would like its centre: its ports under the operands above, its centre over the
    ports it feeds below (either side alone when the other has no neighbours)."""
    above = [n.x - port * item.width for n, port in item.above]
    below = [n.entry(port) for n, port in item.below]
    chosen = (above if up else []) + (below if down else [])
    return _mean(chosen or above + below, item.x)


def _straighten(seg: list[_Item], lo: float, hi: float, *, up: bool, down: bool) -> None:
    """Move each item toward where its neighbours want it, keeping the order, the gaps and [lo, hi]."""
    gaps = [(a.width + b.width) / 2 + (NODE_GAP if a.width > DUMMY_W or b.width > DUMMY_W else NODE_GAP / 5)
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


def _crossings(by_row: dict[int, list[_Item]], depth: int) -> int:
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
