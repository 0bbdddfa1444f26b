"""AdaNS-Zoom (digest §6): adaptive refinement of a hierarchy of boxes.

The hierarchy is a binary tree of axis-aligned regions, the root being the
whole box. The quality of a region is w = (#good samples in it)/(#samples in
it), counted over the whole history, "good" meaning in S_g. Before proposing
iteration t ≥ 1 the leaf of maximum quality is split in half along its
longest side (measured relative to the box width, so the units of each
coordinate do not matter); then each new sample picks a region — any node of
the tree, root included — with probability ∝ w and is drawn uniformly inside
it. The root keeps a non-zero w as long as S_g is non-empty, so Zoom never
stops exploring entirely, while deeper, better regions get most of the mass.
Iteration 0 is uniform over the box (handled by the base class).

No state is carried between iterations: `build_tree` replays the splits of
iterations 1..t from the history, using at step s the history and S_g as
they were when iteration s was proposed (`SearchContext.at(s)`). The split
decisions only depend on that data, so the replayed tree is the tree an
incremental implementation would carry (a test checks this).

Membership: a sample lies in the lower child when x[k] < mid, else in the
upper one, so every sample is in exactly one leaf and in all its ancestors.
Split ties: more samples first, then the earlier-created leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adans_toolchain.search.samplers.base import Sampler, SearchContext


@dataclass(frozen=True)
class RegionTree:
    """Nodes in creation order (a parent always precedes its children).

    lower, upper  (m, dim) corners of each region.
    parent        (m,) index of the parent, -1 for the root.
    leaf_of       (N,) leaf holding each history sample.
    """

    lower: np.ndarray
    upper: np.ndarray
    parent: np.ndarray
    leaf_of: np.ndarray

    @property
    def size(self) -> int:
        return int(self.parent.size)

    def is_leaf(self) -> np.ndarray:
        leaf = np.ones(self.size, dtype=bool)
        leaf[self.parent[self.parent >= 0]] = False
        return leaf

    def counts(self, members: np.ndarray) -> np.ndarray:
        """Number of the given history samples inside each node (leaf and ancestors)."""
        counts = np.bincount(self.leaf_of[members], minlength=self.size).astype(np.float64)
        # Children come after parents, so one reverse pass sums subtrees.
        for node in range(self.size - 1, 0, -1):
            counts[self.parent[node]] += counts[node]
        return counts

    def locate(self, points: np.ndarray) -> np.ndarray:
        """Leaf holding each point, by descending from the root.

        What an implementation that carries the tree between iterations would
        do with each new batch; `build_tree` never needs it.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, self.lower.shape[1])
        leaves = np.zeros(points.shape[0], dtype=np.int64)
        for node in range(1, self.size, 2):  # children come in (low, high) pairs
            parent = self.parent[node]
            axis = int(np.argmax(self.upper[node] != self.upper[parent]))
            here = leaves == parent
            low = points[:, axis] < self.upper[node, axis]
            leaves[here & low] = node
            leaves[here & ~low] = node + 1
        return leaves

    def split(self, node: int, xs: np.ndarray, box_width: np.ndarray) -> "RegionTree":
        """A new tree with `node` halved along its longest (relative) side."""
        lo, hi = self.lower[node], self.upper[node]
        axis = int(np.argmax((hi - lo) / box_width))  # first axis on ties
        mid = (lo[axis] + hi[axis]) / 2
        low_hi, high_lo = hi.copy(), lo.copy()
        low_hi[axis] = mid
        high_lo[axis] = mid
        low_child, high_child = self.size, self.size + 1
        inside = self.leaf_of == node
        leaf_of = self.leaf_of.copy()
        leaf_of[inside] = np.where(xs[inside, axis] < mid, low_child, high_child)
        return RegionTree(
            lower=np.vstack([self.lower, lo, high_lo]),
            upper=np.vstack([self.upper, low_hi, hi]),
            parent=np.concatenate([self.parent, [node, node]]),
            leaf_of=leaf_of,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegionTree):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("lower", "upper", "parent", "leaf_of")
        )

    __hash__ = None  # type: ignore[assignment]


def root_tree(context: SearchContext) -> RegionTree:
    return RegionTree(
        lower=context.lower[None, :].copy(),
        upper=context.upper[None, :].copy(),
        parent=np.array([-1], dtype=np.int64),
        leaf_of=np.zeros(context.n_history, dtype=np.int64),
    )


def quality(tree: RegionTree, context: SearchContext) -> np.ndarray:
    """w per node over the samples of `context` (a prefix of the tree's history)."""
    members = np.arange(context.n_history)
    total = tree.counts(members)
    good = tree.counts(context.good)
    return np.divide(good, total, out=np.zeros_like(good), where=total > 0)


def best_leaf(tree: RegionTree, context: SearchContext) -> int:
    """Leaf to split: max quality, then more samples, then created first."""
    w = quality(tree, context)
    total = tree.counts(np.arange(context.n_history))
    leaves = np.flatnonzero(tree.is_leaf())
    # lexsort: last key is primary; -node makes the earliest leaf win the last tie.
    order = np.lexsort((-leaves, total[leaves], w[leaves]))
    return int(leaves[order[-1]])


def split_step(tree: RegionTree, context: SearchContext, step: int) -> RegionTree:
    """Apply the split made before proposing iteration `step` (needs step ≥ 1)."""
    past = context.at(step)
    # The tree holds the full history; quality at step s counts only the
    # samples evaluated before s, which are a prefix of the history.
    prefix_tree = RegionTree(tree.lower, tree.upper, tree.parent, tree.leaf_of[: past.n_history])
    return tree.split(best_leaf(prefix_tree, past), context.xs, context.scale)


def build_tree(context: SearchContext) -> RegionTree:
    """The hierarchy for proposing `context.iteration`, replayed from the history."""
    tree = root_tree(context)
    for step in range(1, context.iteration + 1):
        tree = split_step(tree, context, step)
    return tree


@dataclass(frozen=True, kw_only=True)
class ZoomSampler(Sampler):
    name: ClassVar[str] = "zoom"

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        tree = build_tree(context)
        w = quality(tree, context)
        regions = rng.choice(tree.size, size=n, p=w / w.sum())
        return rng.uniform(tree.lower[regions], tree.upper[regions])
