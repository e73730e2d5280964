"""River's Half-Space Trees, with the same trees, masses and scores, computed faster.

``river.anomaly.HalfSpaceTrees`` walks every tree node by node for each score
and each learn. This class builds the very same trees (River's own
``make_padded_tree`` with the same ``random.Random(seed)``), keeps the same
masses and returns bit-identical scores, but finds the leaf of an
observation in every tree at once and reads its score from a table:

- Within a window the reference masses (``r_mass``) are fixed, so the score a
  tree gives is a function of the leaf the observation falls into (the walk
  down to it, including River's early stop under ``0.1 * window_size``,
  depends only on that path). The per-leaf scores are recomputed once per
  window, when the masses pivot.
- A node's ``l_mass`` is the number of observations of the window whose leaf
  lies below it (every learn walks root to leaf), so only the leaves learned
  are recorded; node masses are sums over leaves.
- Which leaf a value falls into is found from its position among the sorted
  split thresholds of each feature (one ``bisect`` per feature for all
  trees): per position, a bit mask of the leaves whose cell contains it, one
  int per tree; AND-ing the masks of the features leaves one bit per tree.

An observation without one of the split features follows River's walk
(down the child with the larger ``l_mass``), as does a forest whose mask
tables would be too large (``MAX_MASK_ENTRIES``); both read the same flat
node arrays and give the same results.

>>> from river import anomaly
>>> X = [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0]
>>> fast = HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
>>> river = anomaly.HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
>>> scores = []
>>> for x in X * 3:
...     for model in (fast, river):
...         model.learn_one({"x": x})
...     scores.append((fast.score_one({"x": x}), river.score_one({"x": x})))
>>> all(mine == theirs for mine, theirs in scores)
True
>>> round(scores[-1][0], 3)
0.569
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import random
from array import array
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Mapping, Sequence
from operator import add, and_, getitem
from typing import Any

import numpy as np
from river import anomaly
from river.tree.padded import PaddedBranch, PaddedLeaf, make_padded_tree

#: Largest mask table (positions of all features x trees) built; beyond it a
#: forest is walked node by node (e.g. 100 trees of height 12).
MAX_MASK_ENTRIES = 1 << 20

#: Cells whose leaves are remembered (about 200 bytes each); telemetry revisits
#: the same cells, so most lookups skip the masks.
MAX_CACHED_CELLS = 4096

Feature = Hashable

#: Forests kept for sharing (distinct model declarations x first feature sets).
MAX_SHARED_FORESTS = 256


class _Forest:
    """What a seeded forest's instances share: the trees (split features and
    thresholds), the random state after planting them, and, once built, the
    lookup tables that depend on the trees alone. A model per device keeps
    one copy of these for the whole fleet, and a restored instance does not
    plant its trees again."""

    __slots__ = ("features", "rng_state", "tables", "thresholds")

    def __init__(self, features: list[Feature], thresholds: list[float], rng_state: Any) -> None:
        self.features = features
        self.thresholds = thresholds
        self.rng_state = rng_state
        self.tables: _Derived | None = None


#: (n_trees, height, seed, ((feature, limits), ...)) -> its forest
_FORESTS: dict[tuple[Any, ...], _Forest] = {}


@functools.lru_cache(maxsize=64)
def _fresh_rng_state(seed: int) -> Any:
    return random.Random(seed).getstate()


def _count(leaves: list[int], n: int) -> np.ndarray:
    """How often each of ``n`` leaf ids occurs in ``leaves``."""
    # array() packs the ints in C, and numpy reads its buffer without a copy:
    # half the time of fromiter(), which a checkpoint pays per device model
    # (asarray() would first discover the dtype of every element, slower still).
    return np.bincount(np.frombuffer(array("q", leaves), dtype=np.int64), minlength=n)


class _Derived:
    """Lookup tables computed from the trees and masses; never pickled."""

    __slots__ = (
        "cells",
        "features",
        "grid",
        "last_leaves",
        "last_values",
        "leaf_scores",
        "max_score",
        "offsets",
        "rows",
    )

    def __init__(self) -> None:
        self.features: tuple[Feature, ...] = ()
        # per feature, its sorted distinct thresholds; None: walk instead
        self.grid: tuple[list[float], ...] | None = None
        # per feature and position among its thresholds: one leaf mask per tree
        self.rows: tuple[list[tuple[int, ...]], ...] = ()
        # per tree, the global id of its leaf 0 minus 1 (mask bit_length is leaf + 1)
        self.offsets: tuple[int, ...] = ()
        # per global leaf id, the score River's walk to it gives this window
        self.leaf_scores: list[int] = []
        self.max_score = 0
        # cell (positions among the thresholds) -> its leaves: readings repeat
        self.cells: dict[tuple[int, ...], tuple[int, ...]] = {}
        # score_one and the learn_one after it usually see the same values
        self.last_values: tuple[Any, ...] | None = None
        self.last_leaves: Sequence[int] = ()


def _flatten(trees: list[Any], height: int) -> tuple[list[Any], list[float], list[int], list[int]]:
    """River's object trees as (split features, thresholds) in heap order,
    tree-major, the leaves' r_mass, and a leaf id per observation learned."""
    features: list[Feature] = []
    thresholds: list[float] = []
    r_leaves: list[int] = []
    learned: list[int] = []
    n_leaves = 1 << height
    for t, root in enumerate(trees):
        level = [root]
        for _ in range(height):
            features += [node.feature for node in level]
            thresholds += [node.threshold for node in level]
            level = [child for node in level for child in node.children]
        for j, leaf in enumerate(level):
            r_leaves.append(leaf.r_mass)
            learned += [t * n_leaves + j] * leaf.l_mass
    return features, thresholds, r_leaves, learned


class HalfSpaceTrees(anomaly.HalfSpaceTrees):
    """Half-Space Trees, exactly as ``river.anomaly.HalfSpaceTrees`` (same
    parameters, same seed, same scores), with flat trees and per-window tables.

    The state is the trees' split features and thresholds in heap order
    (node ``i`` has children ``2i + 1`` and ``2i + 2``; tree-major), the leaf
    masses of the last full window (``r_mass``) and the leaves learned in the
    current window; node masses are sums over their leaves.
    :meth:`from_river` and :meth:`to_river` convert from and to River's
    object trees.

    Parameters
    ----------
    n_trees
        Number of trees to use.
    height
        Height of each tree (``2 ** (height + 1) - 1`` nodes each).
    window_size
        Number of observations per window of masses.
    limits
        Range of each feature; ``[0, 1]`` by default.
    seed
        Random number seed.

    Examples
    --------
    >>> hst = HalfSpaceTrees(n_trees=2, height=2, window_size=2, seed=1)
    >>> hst.score_one({"x": 0.2})  # no full window yet
    0
    >>> for x in (0.2, 0.3, 0.25):
    ...     hst.learn_one({"x": x})
    >>> round(hst.score_one({"x": 0.9}), 4), round(hst.score_one({"x": 0.25}), 4)
    (0.8571, 0.1429)
    >>> type(hst.to_river()).__name__, len(hst.trees)
    ('HalfSpaceTrees', 2)
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: dict[Feature, tuple[float, float]] | None = None,
        seed: int | None = None,
    ) -> None:
        # River's own attributes, under River's names, so that parameters,
        # clone() and repr behave as River's; its trees live in the flat arrays.
        self.n_trees = n_trees
        self.window_size = window_size
        self.height = height
        self.limits: collections.defaultdict = collections.defaultdict(
            functools.partial(tuple, (0.0, 1.0))
        )
        if limits is not None:
            self.limits.update(limits)
        self.seed = seed
        self.rng = random.Random(seed)
        self.counter = 0
        self._first_window = True
        # split feature and threshold of every internal node, tree-major heap order
        self._split_features: list[Feature] = []
        self._thresholds: list[float] = []
        # r_mass of every leaf (tree-major), from the last full window
        self._r_leaves: list[int] = []
        # global leaf id of every (observation, tree) learned in this window
        self._learned: list[int] = []
        self._derived: _Derived | None = None
        # the key of the shared forest these trees are (None: trees of its own)
        self._forest_key: tuple[Any, ...] | None = None

    # River's interface -----------------------------------------------------------

    def learn_one(self, x: Mapping[Feature, Any]) -> None:
        if not self._split_features:
            self._plant(x)
        derived = self._derived or self._derive()
        values = self._values(derived, x)
        leaves: Sequence[int]
        if values is None:
            leaves = self._walk(x)
        elif values == derived.last_values:
            leaves = derived.last_leaves
        else:
            leaves = self._leaves(derived, values)
        self._learned += leaves
        self.counter += 1
        if self.counter == self.window_size:
            self._pivot(derived)

    def score_one(self, x: Mapping[Feature, Any]) -> float:
        if self._first_window:
            return 0
        derived = self._derived or self._derive()
        values = self._values(derived, x)
        leaves: Sequence[int]
        if values is None:
            leaves = self._walk(x)
        else:
            leaves = self._leaves(derived, values)
            derived.last_values, derived.last_leaves = values, leaves
        score = float(sum(map(derived.leaf_scores.__getitem__, leaves)))
        # River divides the same integer-valued float by the same int: equal bits.
        return 1 - score / derived.max_score

    # the trees -----------------------------------------------------------------

    def _plant(self, x: Mapping[Feature, Any]) -> None:
        """River's trees for the first observation, flattened. A seeded
        forest is shared by every instance of the same parameters, seed and
        features: they would all grow the same trees."""
        # River sorts them too: Feature is River's Hashable, but names are str
        limits = {i: self.limits[i] for i in sorted(x)}  # type: ignore[type-var]
        if self.seed is not None and self.rng.getstate() == _fresh_rng_state(self.seed):
            bounds = tuple((feature, tuple(limit)) for feature, limit in limits.items())
            key = (self.n_trees, self.height, self.seed, bounds)
            self._join(key)
            self._r_leaves = [0] * (self.n_trees << self.height)
            self._learned = []
            return
        self._adopt([self._grow(limits, self.rng) for _ in range(self.n_trees)])

    def _grow(self, limits: dict[Feature, Any], rng: random.Random) -> Any:
        return make_padded_tree(
            limits=limits, height=self.height, padding=0.15, rng=rng, r_mass=0, l_mass=0
        )

    def _join(self, key: tuple[Any, ...]) -> None:
        """Take the trees and the post-planting random state of forest ``key``,
        growing it first if this process has not yet."""
        forest = _FORESTS.get(key)
        if forest is None:
            rng = random.Random(self.seed)
            trees = [self._grow(dict(key[3]), rng) for _ in range(self.n_trees)]
            features, thresholds, _, _ = _flatten(trees, self.height)
            if len(_FORESTS) >= MAX_SHARED_FORESTS:
                _FORESTS.clear()
            forest = _FORESTS[key] = _Forest(features, thresholds, rng.getstate())
        self._split_features, self._thresholds = forest.features, forest.thresholds
        self.rng.setstate(forest.rng_state)
        self._forest_key = key
        self._derived = None

    def _adopt(self, trees: list[Any]) -> None:
        features, thresholds, r_leaves, learned = _flatten(trees, self.height)
        self._split_features, self._thresholds = features, thresholds
        self._r_leaves, self._learned = r_leaves, learned
        self._derived = None
        self._forest_key = None

    def _pivot(self, derived: _Derived) -> None:
        """End of a window: this window's masses become the reference."""
        counts = _count(self._learned, self.n_trees << self.height)
        self._r_leaves = counts.tolist()
        self._learned = []
        self._first_window = False
        self.counter = 0
        derived.leaf_scores = self._leaf_scores(counts)

    def _leaf_scores(self, r_leaves: np.ndarray | None = None) -> list[int]:
        """Per leaf, what River's ``_walk_score`` sums down to it (integers)."""
        height, n_trees = self.height, self.n_trees
        if r_leaves is None:
            r_leaves = np.array(self._r_leaves, dtype=np.int64)
        masses = [r_leaves.astype(np.int64, copy=False).reshape(n_trees, 1 << height)]
        for _ in range(height):
            masses.append(masses[-1].reshape(n_trees, -1, 2).sum(axis=2))
        masses.reverse()  # masses[d]: the r_mass of the nodes at depth d, per tree
        limit = 0.1 * self.window_size
        score = np.zeros((n_trees, 1), dtype=np.int64)
        going = np.ones((n_trees, 1), dtype=bool)
        for depth in range(height):
            r = masses[depth]
            score = score + np.where(going, r << depth, 0)
            going = going & (r >= limit)  # River stops below a node under the limit
            score, going = score.repeat(2, axis=1), going.repeat(2, axis=1)
        score = score + np.where(going, masses[height] << height, 0)
        return score.ravel().tolist()

    def _derive(self) -> _Derived:
        """The lookup tables of the current trees and masses."""
        derived = _Derived()
        derived.max_score = self._max_score
        derived.leaf_scores = self._leaf_scores()
        self._derived = derived
        forest = None if self._forest_key is None else _FORESTS.get(self._forest_key)
        if forest is not None and forest.tables is not None:
            shared = forest.tables
        else:
            shared = self._tables()
            if forest is not None:
                forest.tables = shared
        # shared by the forest's instances: the cell cache too (a function of the trees)
        derived.offsets, derived.features = shared.offsets, shared.features
        derived.grid, derived.rows, derived.cells = shared.grid, shared.rows, shared.cells
        return derived

    def _tables(self) -> _Derived:
        """The lookup tables that depend on the trees alone."""
        derived = _Derived()
        height, n_trees = self.height, self.n_trees
        n_leaves, n_inner = 1 << height, (1 << height) - 1
        derived.offsets = tuple(t * n_leaves - 1 for t in range(n_trees))
        features = tuple(dict.fromkeys(self._split_features))
        derived.features = features
        thresholds = self._thresholds
        if not features or not all(isinstance(t, float) and not math.isnan(t) for t in thresholds):
            return derived  # a single leaf, or no total order to bisect: walk
        grid: dict[Feature, set[float]] = {f: set() for f in features}
        for feature, threshold in zip(self._split_features, thresholds, strict=True):
            grid[feature].add(threshold)
        sorted_grid = tuple(sorted(grid[f]) for f in features)
        if sum(len(g) + 1 for g in sorted_grid) * n_trees > MAX_MASK_ENTRIES:
            return derived
        full = (1 << n_leaves) - 1
        rows: list[list[tuple[int, ...]]] = []
        for f, positions in zip(features, sorted_grid, strict=True):
            per_tree: list[list[int]] = []
            for t in range(n_trees):
                nodes = range(t * n_inner, (t + 1) * n_inner)
                local = sorted({thresholds[k] for k in nodes if self._split_features[k] == f})
                if not local:
                    per_tree.append([full] * (len(positions) + 1))
                    continue
                masks = self._cell_masks(t, f, local)
                # position among all thresholds -> position among this tree's
                expanded, k = [masks[0]], 0
                for threshold in positions:
                    if k < len(local) and local[k] == threshold:
                        k += 1
                    expanded.append(masks[k])
                per_tree.append(expanded)
            rows.append(list(zip(*per_tree, strict=True)))
        derived.grid, derived.rows = sorted_grid, tuple(rows)
        return derived

    def _cell_masks(self, t: int, feature: Feature, local: list[float]) -> list[int]:
        """For each position of a value among ``local`` (tree ``t``'s sorted
        thresholds of ``feature``), the mask of the leaves it can reach."""
        height = self.height
        n_inner = (1 << height) - 1
        index = {threshold: q for q, threshold in enumerate(local)}
        masks = [0] * (len(local) + 1)
        # (node, lowest and highest position that reaches it), root first
        stack = [(0, 0, len(local))]
        while stack:
            node, low, high = stack.pop()
            if node >= n_inner:
                bit = 1 << (node - n_inner)
                for position in range(low, high + 1):
                    masks[position] |= bit
                continue
            k = t * n_inner + node
            if self._split_features[k] == feature:
                q = index[self._thresholds[k]]
                # left: value < threshold, i.e. position <= q; right: position > q
                if low <= min(high, q):
                    stack.append((2 * node + 1, low, min(high, q)))
                if max(low, q + 1) <= high:
                    stack.append((2 * node + 2, max(low, q + 1), high))
            else:
                stack.append((2 * node + 1, low, high))
                stack.append((2 * node + 2, low, high))
        return masks

    # finding leaves ------------------------------------------------------------

    @staticmethod
    def _values(derived: _Derived, x: Mapping[Feature, Any]) -> tuple[Any, ...] | None:
        """The split features' values, or None to walk (one is missing, or no masks)."""
        if derived.grid is None:
            return None
        try:
            return tuple(map(x.__getitem__, derived.features))
        except KeyError:
            return None

    @staticmethod
    def _leaves(derived: _Derived, values: tuple[Any, ...]) -> tuple[int, ...]:
        """Global leaf id per tree, from the values' positions among each
        feature's thresholds: the one bit left in each tree's mask is its leaf."""
        key = tuple(map(bisect_right, derived.grid, values))  # type: ignore[arg-type]
        leaves = derived.cells.get(key)
        if leaves is not None:
            return leaves
        masks = map(getitem, derived.rows, key)
        common: Iterable[int] = next(masks)
        for more in masks:
            common = map(and_, common, more)
        # a tuple: the garbage collector stops tracking it (the cache is long-lived)
        leaves = tuple(map(add, map(int.bit_length, common), derived.offsets))
        if len(derived.cells) >= MAX_CACHED_CELLS:
            derived.cells.clear()
        derived.cells[key] = leaves
        return leaves

    def _walk(self, x: Mapping[Feature, Any]) -> list[int]:
        """River's walk, for an observation without some split feature (or a
        forest without masks): a missing feature goes down the child that
        learned more this window."""
        height = self.height
        n_leaves, n_inner = 1 << height, (1 << height) - 1
        features, thresholds = self._split_features, self._thresholds
        counts: list[int] | None = None
        leaves = []
        for t in range(self.n_trees):
            base = t * n_inner
            node = 0
            for depth in range(height):
                try:
                    value = x[features[base + node]]
                except KeyError:
                    if counts is None:
                        counts = _count(self._learned, self.n_trees * n_leaves).tolist()
                    # the children's leaves: consecutive at the bottom level
                    span = 1 << (height - depth - 1)
                    first = t * n_leaves + (2 * node + 1 - ((2 << depth) - 1)) * span
                    left = sum(counts[first : first + span])
                    right = sum(counts[first + span : first + 2 * span])
                    node = 2 * node + 2 if left < right else 2 * node + 1
                else:
                    node = 2 * node + 1 if value < thresholds[base + node] else 2 * node + 2
            leaves.append(t * n_leaves + node - n_inner)
        return leaves

    # conversions and pickling ----------------------------------------------------

    @classmethod
    def from_river(cls, model: anomaly.HalfSpaceTrees) -> HalfSpaceTrees:
        """The same detector (parameters, trees, masses, random state) as a River one."""
        fast = cls(
            n_trees=model.n_trees,
            height=model.height,
            window_size=model.window_size,
            seed=model.seed,
        )
        fast.limits = copy.deepcopy(model.limits)
        fast.rng = copy.deepcopy(model.rng)
        fast.counter = model.counter
        fast._first_window = model._first_window
        if model.trees:
            fast._adopt(model.trees)
        return fast

    def to_river(self) -> anomaly.HalfSpaceTrees:
        """An equivalent ``river.anomaly.HalfSpaceTrees`` (a copy)."""
        model = anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.window_size,
            seed=self.seed,
        )
        model.limits = copy.deepcopy(self.limits)
        model.rng = copy.deepcopy(self.rng)
        model.counter = self.counter
        model._first_window = self._first_window
        model.trees = self.trees
        model._tree_nodes = [list(tree.iter_dfs()) for tree in model.trees]
        return model

    @property
    def trees(self) -> list[Any]:  # type: ignore[override]
        """River's object trees with their masses (a copy; ``[]`` before the
        first observation)."""
        if not self._split_features:
            return []
        height = self.height
        n_leaves, n_inner = 1 << height, (1 << height) - 1
        l_leaves = [0] * (self.n_trees * n_leaves)
        for leaf in self._learned:
            l_leaves[leaf] += 1
        trees = []
        for t in range(self.n_trees):
            level: list[Any] = [
                PaddedLeaf(r_mass=r_mass, l_mass=l_mass)
                for r_mass, l_mass in zip(
                    self._r_leaves[t * n_leaves : (t + 1) * n_leaves],
                    l_leaves[t * n_leaves : (t + 1) * n_leaves],
                    strict=True,
                )
            ]
            first = n_inner
            for _ in range(height):
                first = (first - 1) // 2
                level = [
                    PaddedBranch(
                        left=left,
                        right=right,
                        feature=self._split_features[t * n_inner + first + p],
                        threshold=self._thresholds[t * n_inner + first + p],
                        l_mass=left.l_mass + right.l_mass,
                        r_mass=left.r_mass + right.r_mass,
                    )
                    for p, (left, right) in enumerate(zip(level[::2], level[1::2], strict=True))
                ]
            trees.append(level[0])
        return trees

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_derived"] = None  # rebuilt on first use
        if self._forest_key is not None:
            # a shared forest is named by its key: a model per device would
            # otherwise store the fleet's one set of trees once per device
            del state["_split_features"], state["_thresholds"], state["rng"]
        # the window's leaves as a count per leaf (their order means nothing):
        # a few bytes per leaf instead of a few per observation and tree
        del state["_learned"]
        state["_learned_counts"] = _count(self._learned, self.n_trees << self.height).tolist()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        counts = state.pop("_learned_counts", None)
        self._forest_key = None  # earlier snapshots have neither key nor counts
        self.__dict__.update(state)
        self._derived = None
        if counts is not None:
            self._learned = np.repeat(np.arange(len(counts)), counts).tolist()
        if "_split_features" not in state:
            self.rng = random.Random()
            self._join(state["_forest_key"])
