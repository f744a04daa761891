"""The centre line of one worm mask: the longest trail along its skeleton.

A worm's skeleton (``skimage.morphology.skeletonize``) is read as a graph of pixels (8-connected,
steps of 1 or sqrt(2)). Two kinds of cycle appear in it:

- *staircase corners*: three or four skeleton pixels all touching one another. They are
  artefacts of the pixel grid, and a maximum spanning forest removes them (the diagonal step
  is kept, so a corner is crossed on its short side);
- *real loops*: a worm touching or crossing itself ("6", "alpha", a coil). Their cycle is longer
  than four pixels, and they are kept.

Small holes in the mask (background inside a worm, under the square of its body width) are
filled first: they are gaps in the mask, not loops of the worm, and each would
otherwise add a loop around itself.

The centre line is then the longest *trail* of that graph: a walk that uses each branch (the
chain of pixels between two junctions or ends) at most once but may pass a junction twice. In a
tree this is the longest path between two ends (spurs shorter than the body stay off it); a
"6" is walked from its tail round the loop back to the junction, an "alpha" from one tail round
the loop and out along the other. (Cutting each loop at an arbitrary edge instead measured the
same worm 91-127 px depending on whether the mask was flipped.) The trail is found by trying
every trail of the graph of branches, which has a handful of branches for a worm; a skeleton
with more than :data:`MAX_BRANCHES` branches (a blob, not a worm) falls back to the longest path
of its spanning forest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree
from skimage.morphology import skeletonize

__all__ = ["MAX_BRANCHES", "CentreLine", "centre_line", "fill_small_holes"]

#: Above this many branches the skeleton is not a worm's; its spanning forest's longest path is
#: taken instead of searching every trail (whose number grows exponentially with the branches).
MAX_BRANCHES = 24
#: A cycle through at most this many skeleton pixels is a staircase corner, not a loop.
_CORNER_PIXELS = 4

# The four "forward" neighbour offsets of the 8-neighbourhood; the other four are their mirrors,
# so each undirected skeleton edge is found exactly once.
_FORWARD_OFFSETS = ((0, 1, 1.0), (1, -1, math.sqrt(2.0)), (1, 0, 1.0), (1, 1, math.sqrt(2.0)))


@dataclass(frozen=True)
class CentreLine:
    """The centre line through a mask's skeleton.

    Attributes:
        points: (K, 2) float64 pixel coordinates (row, column) along the line, K >= 1.
        tips: whether each end (first point, last point) is a skeleton end, i.e. a worm tip
            half a body width short of the mask's end; an end at a junction (a "6" walked
            round its loop) or on a closed ring is not.
    """

    points: np.ndarray
    tips: tuple[bool, bool]


def fill_small_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every hole (background enclosed by it) smaller than its body width squared
    filled; body width = twice the median distance from a skeleton pixel to the background (the
    median, so that two bodies lying side by side do not count as one thick worm)."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    distance = ndimage.distance_transform_edt(mask)
    thickness = 2.0 * float(np.median(distance[skeletonize(mask)]))
    labelled, n = ndimage.label(holes)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    small = sizes < thickness**2
    small[0] = False
    return mask | small[labelled]


def _skeleton_graph(skeleton: np.ndarray):
    """Sparse symmetric graph of an 8-connected skeleton; returns (graph, coords (P, 2))."""
    coords = np.argwhere(skeleton)
    index = np.full(skeleton.shape, -1, dtype=np.int64)
    index[coords[:, 0], coords[:, 1]] = np.arange(len(coords))
    height, width = skeleton.shape
    src, dst, weight = [], [], []
    for dy, dx, step in _FORWARD_OFFSETS:
        ys, xs = coords[:, 0] + dy, coords[:, 1] + dx
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        neighbour = np.full(len(coords), -1, dtype=np.int64)
        neighbour[inside] = index[ys[inside], xs[inside]]
        has = neighbour >= 0
        src.append(np.flatnonzero(has))
        dst.append(neighbour[has])
        weight.append(np.full(int(has.sum()), step))
    s, d, w = np.concatenate(src), np.concatenate(dst), np.concatenate(weight)
    n = len(coords)
    graph = coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([s, d]), np.concatenate([d, s]))), shape=(n, n)
    ).tocsr()
    return graph, coords


def _spine(graph):
    """The skeleton graph without its staircase corners: a maximum spanning forest (diagonal
    steps kept) plus every edge it dropped that closes a cycle of more than four pixels."""
    flipped = graph.copy()
    flipped.data = 3.0 - flipped.data  # maximum spanning forest = minimum of (3 - w) > 0
    tree = minimum_spanning_tree(flipped)
    tree.data = 3.0 - tree.data
    tree = (tree + tree.T).tocsr()
    hops = tree.copy()
    hops.data[:] = 1.0
    upper = coo_matrix(graph)
    in_tree = set(zip(*tree.nonzero(), strict=True))
    keep = []
    for u, v, w in zip(upper.row, upper.col, upper.data, strict=True):
        if u < v and (u, v) not in in_tree:
            reach = dijkstra(hops, directed=False, indices=int(u), limit=_CORNER_PIXELS - 1)
            if not np.isfinite(reach[v]):
                keep.append((u, v, w))
    if not keep:
        return tree
    u, v, w = (np.array(x) for x in zip(*keep, strict=True))
    n = graph.shape[0]
    loops = coo_matrix((np.concatenate([w, w]), (np.concatenate([u, v]), np.concatenate([v, u]))),
                       shape=(n, n))  # fmt: skip
    return (tree + loops).tocsr()


def _neighbours(spine, node: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour nodes, step lengths) of a node of a CSR graph."""
    lo, hi = spine.indptr[node], spine.indptr[node + 1]
    return spine.indices[lo:hi], spine.data[lo:hi]


def _branches(spine, nodes: np.ndarray) -> list[tuple[int, int, list[int], float]]:
    """The chains of pixels between junctions and ends, as (start, end, nodes, length).

    ``nodes`` are those of one connected component. A component without junctions or ends (a
    closed ring) gives one branch from a node back to itself.
    """
    degree = np.diff(spine.indptr)
    key = [int(k) for k in nodes if degree[k] != 2]
    if not key:
        key = [int(nodes[0])]  # a ring: walk it from any pixel back to that pixel
    key_set = set(key)
    seen: set[tuple[int, int]] = set()
    branches = []
    for start in key:
        for first, step in zip(*_neighbours(spine, start), strict=True):
            if (start, int(first)) in seen:
                continue
            chain, length = [start, int(first)], float(step)
            while chain[-1] not in key_set:
                nbrs, steps = _neighbours(spine, chain[-1])
                j = 0 if int(nbrs[0]) != chain[-2] else 1
                length += float(steps[j])
                chain.append(int(nbrs[j]))
            seen.add((start, chain[1]))
            seen.add((chain[-1], chain[-2]))
            branches.append((start, chain[-1], chain, length))
    return branches


def _longest_trail(branches) -> tuple[float, list[tuple[int, bool]]]:
    """(length, [(branch index, reversed?) ...]) of the longest trail over the branches."""
    adjacency: dict[int, list[tuple[int, int, bool]]] = {}
    for i, (a, b, _, _) in enumerate(branches):
        adjacency.setdefault(a, []).append((i, b, False))
        adjacency.setdefault(b, []).append((i, a, True))
    best: tuple[float, list[tuple[int, bool]]] = (-1.0, [])
    used = [False] * len(branches)
    walk: list[tuple[int, bool]] = []

    def extend(node: int, length: float) -> None:
        nonlocal best
        if length > best[0]:
            best = (length, list(walk))
        for i, other, rev in adjacency[node]:
            if not used[i]:
                used[i] = True
                walk.append((i, rev))
                extend(other, length + branches[i][3])
                walk.pop()
                used[i] = False

    for node in adjacency:
        extend(node, 0.0)
    return best


def _tree_diameter(spine, nodes: np.ndarray) -> list[int]:
    """The longest path of the spanning tree of one component, as its nodes (the fallback)."""
    flipped = spine.copy()
    flipped.data = 3.0 - flipped.data
    tree = minimum_spanning_tree(flipped)
    tree.data = 3.0 - tree.data
    d0 = dijkstra(tree, directed=False, indices=int(nodes[0]))
    d0[~np.isfinite(d0)] = -1.0
    a = int(np.argmax(d0))
    d1, pred = dijkstra(tree, directed=False, indices=a, return_predecessors=True)
    d1[~np.isfinite(d1)] = -1.0
    path = [int(np.argmax(d1))]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    return path[::-1]


def _component_line(spine, nodes: np.ndarray) -> tuple[float, list[int]]:
    """(geodesic length, nodes along the line) of one skeleton component."""
    if len(nodes) == 1:
        return 0.0, [int(nodes[0])]
    branches = _branches(spine, nodes)
    if len(branches) > MAX_BRANCHES:
        path = _tree_diameter(spine, nodes)
        steps = [float(spine[p, q]) for p, q in zip(path[:-1], path[1:], strict=True)]
        return float(sum(steps)), path
    length, trail = _longest_trail(branches)
    line: list[int] = []
    for i, rev in trail:
        chain = branches[i][2][::-1] if rev else branches[i][2]
        line.extend(chain if not line else chain[1:])
    return length, line


def centre_line(mask: np.ndarray) -> CentreLine:
    """The centre line of a 2-D boolean mask with at least one pixel and a background border
    (pad it first, and give a worm's mask through :func:`fill_small_holes`); see the module
    docstring. Of several pieces, the longest line counts."""
    skeleton = skeletonize(mask)
    if not skeleton.any():  # defensive: skeletonize keeps at least one pixel of any object
        ys, xs = np.nonzero(mask)
        skeleton = np.zeros_like(mask)
        skeleton[ys[len(ys) // 2], xs[len(xs) // 2]] = True
    graph, coords = _skeleton_graph(skeleton)
    spine = _spine(graph) if graph.nnz else graph
    n_comp, comp = connected_components(spine, directed=False)
    best: tuple[float, list[int]] = (-1.0, [])
    for c in range(n_comp):
        found = _component_line(spine, np.flatnonzero(comp == c))
        if found[0] > best[0]:
            best = found
    line = best[1]
    degree = np.diff(spine.indptr)
    closed = len(line) > 1 and line[0] == line[-1]
    tips = (not closed and degree[line[0]] <= 1, not closed and degree[line[-1]] <= 1)
    return CentreLine(coords[line].astype(np.float64), tips)
