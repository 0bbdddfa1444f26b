"""CompressionSpace: x in [0,1]^d  <->  Plan.

Every coordinate means *amount of compression*, so larger x always costs
accuracy and saves cost, and one boundary bisection serves every method:

- channel group (structured pruning): x is the fraction of units removed;
  floor(x*c) of the c units, lowest priority first, never all of them.
  With `round_to=N`, the units kept are rounded *up* to a multiple of N
  (groups smaller than N stay whole): runtimes vectorise channels in blocks
  of 8 or 16, and a count between two multiples costs as much as the next
  one up while losing accuracy.
- decomposition mode (SVD rank, or one of Tucker-2's two ranks): the mode
  has m usable ranks (those that keep the layer cheaper than the original);
  states 0..m, where 0 leaves the mode unfactorised and state k gives rank
  m - k + 1. x picks state floor(x*(m+1)).
- unstructured pruning: x is the fraction of a layer's weights zeroed,
  smallest magnitude first.
- precision (int8): two states, float below INT8_FROM (1/8) and int8 from
  it; a decomposed layer's factors all take the layer's precision. The bin
  is not the even split the other sites use: int8 costs an accuracy point
  or less where pruning a quarter of the channels costs several, so the
  one-rate start (one rate on every coordinate) would otherwise never
  reach int8 before pruning makes the model infeasible; encode's int8
  point (3/4) lies inside the int8 bin all the same.

Each coordinate is discrete underneath: `levels[j]` states, x decoding to
state min(floor(x*levels), levels-1); `encode` returns the middle of the
state's bin, so rounding can never move it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from adans_toolchain.analysis.channels import ChannelGroup
from adans_toolchain.analysis.layers import WeightedLayer
from adans_toolchain.plan.plan import GroupPruning, LayerDecomposition, LayerPrecision, LayerSparsity, Plan


def _state(x: float, levels: int) -> int:
    return min(int(math.floor(float(np.clip(x, 0.0, 1.0)) * levels + 1e-9)), levels - 1)


class Site(ABC):
    """One searchable edit: one or two coordinates of x."""

    name: str
    kind: str

    @property
    @abstractmethod
    def levels(self) -> tuple[int, ...]: ...

    @abstractmethod
    def states(self, xs: np.ndarray) -> tuple[int, ...]:
        """The discrete state of each of this site's coordinates."""

    @abstractmethod
    def edit(self, states: tuple[int, ...]):
        """The Plan fragment for these states."""

    @abstractmethod
    def states_of(self, plan: Plan) -> tuple[int, ...]:
        """Inverse of `edit`; ValueError if the plan's edit is not in this site's range."""

    @property
    def dims(self) -> int:
        return len(self.levels)

    @property
    def dim_names(self) -> list[str]:
        return [self.name] if self.dims == 1 else [f"{self.name}[{i}]" for i in range(self.dims)]


@dataclass(frozen=True)
class PruningSite(Site):
    group: ChannelGroup
    order: np.ndarray  # unit indices, least important first
    round_to: int | None = None
    kind = "ps"

    @property
    def name(self) -> str:
        return self.group.id

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def levels(self) -> tuple[int, ...]:
        return (self.size,)

    def removed(self, state: int) -> int:
        n = self.round_to
        if n and self.size >= n:
            kept = min(self.size, -(-(self.size - state) // n) * n)
            return self.size - kept
        return state

    def states(self, xs):
        return (self.removed(_state(xs[0], self.size)),)

    def edit(self, states):
        keep = tuple(sorted(int(u) for u in self.order[states[0] :]))
        return GroupPruning(self.group.id, self.size, keep)

    def states_of(self, plan):
        p = plan.pruning_for(self.group.id)
        if p is None:
            return (0,)
        removed = self.size - len(p.keep)
        if p.keep != self.edit((removed,)).keep or self.removed(removed) != removed:
            raise ValueError(f"group {self.group.id}: the plan keeps units this space would not keep")
        return (removed,)


@dataclass(frozen=True)
class DecompositionSite(Site):
    layer: WeightedLayer
    method: str  # "svd" or "tucker"
    limits: tuple[int, ...]  # usable ranks per mode (svd: (m,), tucker: (m_in, m_out)); 0 = mode not searched
    kind = "d"

    @property
    def name(self) -> str:
        return self.layer.weight

    @property
    def full(self) -> tuple[int, ...]:
        return (min(self.layer.c_in, self.layer.c_out),) if self.method == "svd" else (self.layer.c_in, self.layer.c_out)

    @property
    def searched_modes(self) -> list[int]:
        return [i for i, m in enumerate(self.limits) if m >= 1]

    @property
    def levels(self):
        return tuple(self.limits[i] + 1 for i in self.searched_modes)

    def states(self, xs):
        return tuple(_state(x, n) for x, n in zip(xs, self.levels))

    def edit(self, states):
        ranks = list(self.full)
        for mode, state in zip(self.searched_modes, states):
            if state:
                ranks[mode] = self.limits[mode] - state + 1
        return LayerDecomposition(self.layer.weight, self.method, tuple(ranks), self.full)

    def states_of(self, plan):
        d = plan.decomposition_for(self.layer.weight)
        if d is None:
            return tuple(0 for _ in self.searched_modes)
        states = []
        for mode in range(len(self.full)):
            rank, limit = d.ranks[mode], self.limits[mode]
            if rank == self.full[mode]:
                state = 0
            elif 1 <= rank <= limit:
                state = limit - rank + 1
            else:
                raise ValueError(f"layer {self.layer.weight}: rank {rank} is outside the searched range 1..{limit}")
            if mode in self.searched_modes:
                states.append(state)
            elif state:
                raise ValueError(f"layer {self.layer.weight}: mode {mode} is not searched")
        return tuple(states)


@dataclass(frozen=True)
class SparsitySite(Site):
    layer: WeightedLayer
    kind = "pn"

    @property
    def name(self) -> str:
        return self.layer.weight

    @property
    def levels(self):
        return (self.layer.size,)

    def states(self, xs):
        return (_state(xs[0], self.layer.size),)

    def edit(self, states):
        return LayerSparsity(self.layer.weight, self.layer.size, states[0])

    def states_of(self, plan):
        s = plan.sparsity_for(self.layer.weight)
        return (0,) if s is None else (s.removed,)


@dataclass(frozen=True)
class PrecisionSite(Site):
    """One weighted layer's precision: state 0 float, state 1 int8 (more compression: a quarter of the weight bytes)."""

    layer: WeightedLayer
    kind = "int8"
    STATES = ("float", "int8")
    INT8_FROM = 0.125  # x at and above which the layer is int8 (see the module docstring)

    @property
    def name(self) -> str:
        return f"{self.layer.weight}:int8"  # a layer can also carry decomposition and sparsity coordinates

    @property
    def levels(self):
        return (len(self.STATES),)

    def states(self, xs):
        return (int(float(np.clip(xs[0], 0.0, 1.0)) >= self.INT8_FROM),)

    def edit(self, states):
        return LayerPrecision(self.layer.weight, self.STATES[states[0]])

    def states_of(self, plan):
        return (self.STATES.index(plan.precision_for(self.layer.weight)),)


class CompressionSpace:
    def __init__(self, sites: Sequence[Site], fingerprint: str = "") -> None:
        self.sites = list(sites)
        self.fingerprint = fingerprint
        self._slices = []
        start = 0
        for site in self.sites:
            self._slices.append(slice(start, start + site.dims))
            start += site.dims
        self.dim = start

    @classmethod
    def from_priorities(
        cls,
        groups: Sequence[ChannelGroup],
        priorities: dict[str, np.ndarray],
        fingerprint: str = "",
        *,
        round_to: int | None = None,
        extra_sites: Sequence[Site] = (),
    ) -> "CompressionSpace":
        if round_to is not None and round_to < 1:
            raise ValueError("round_to must be a positive number of units")
        sites: list[Site] = []
        for g in groups:
            score = np.asarray(priorities[g.id], dtype=np.float64)
            if score.shape != (g.size,):
                raise ValueError(f"priority of group {g.id} has shape {score.shape}, expected ({g.size},)")
            # Stable sort: ties keep unit order, so decode is deterministic.
            sites.append(PruningSite(g, np.argsort(score, kind="stable"), round_to))
        return cls([*sites, *extra_sites], fingerprint)

    @property
    def names(self) -> list[str]:
        return [n for s in self.sites for n in s.dim_names]

    @property
    def levels(self) -> np.ndarray:
        return np.array([n for s in self.sites for n in s.levels], dtype=np.int64)

    def states(self, x: Sequence[float]) -> tuple[int, ...]:
        """The discrete state of every coordinate: equal states, equal plans."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"x has shape {x.shape}, expected ({self.dim},)")
        return tuple(s for site, sl in zip(self.sites, self._slices) for s in site.states(x[sl]))

    def removed_count(self, i: int, x: float) -> int:
        """State of coordinate i at x alone (for a channel group: the units removed)."""
        for site, sl in zip(self.sites, self._slices):
            if sl.start <= i < sl.stop:
                xs = np.zeros(site.dims)
                xs[i - sl.start] = x
                return site.states(xs)[i - sl.start]
        raise IndexError(i)

    def decode(self, x: Sequence[float]) -> Plan:
        states = self.states(x)
        pruning, decompositions, sparsity, precision = [], [], [], []
        for site, sl in zip(self.sites, self._slices):
            fragment = site.edit(states[sl])
            {"ps": pruning, "d": decompositions, "pn": sparsity, "int8": precision}[site.kind].append(fragment)
        return Plan(tuple(pruning), self.fingerprint, tuple(decompositions), tuple(sparsity), precision=tuple(precision))

    def decode_batch(self, xs: np.ndarray) -> list[Plan]:
        return [self.decode(x) for x in np.atleast_2d(xs)]

    def encode(self, plan: Plan) -> np.ndarray:
        x = np.zeros(self.dim)
        levels = self.levels
        for site, sl in zip(self.sites, self._slices):
            states = np.array(site.states_of(plan), dtype=np.float64)
            # Middle of the state's bin: immune to rounding. State 0 is x = 0.
            x[sl] = np.where(states > 0, (states + 0.5) / levels[sl], 0.0)
        return x
