"""CompressionSpace: x in [0,1]^d  <->  Plan.

Convention (the paper uses both; we pick one): x[i] is the *fraction of units
removed* from group i, so larger x means more compression. For a group of c
units, floor(x*c) units with the lowest priority are removed, but never all
of them (at least one unit stays).

With `round_to=N` the number of units kept is rounded *up* to a multiple of
N (groups smaller than N are left whole): runtimes vectorise channels in
blocks of 8 or 16, and a count between two multiples costs as much as the
next one up while losing accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .analysis.channels import ChannelGroup
from .plan import GroupPruning, Plan


@dataclass(frozen=True)
class PruningSite:
    group: ChannelGroup
    order: np.ndarray  # unit indices, least important first

    @property
    def size(self) -> int:
        return self.group.size


class CompressionSpace:
    def __init__(self, sites: Sequence[PruningSite], fingerprint: str = "", *, round_to: int | None = None) -> None:
        if round_to is not None and round_to < 1:
            raise ValueError("round_to must be a positive number of units")
        self.sites = list(sites)
        self.fingerprint = fingerprint
        self.round_to = round_to

    @classmethod
    def from_priorities(
        cls,
        groups: Sequence[ChannelGroup],
        priorities: dict[str, np.ndarray],
        fingerprint: str = "",
        *,
        round_to: int | None = None,
    ) -> "CompressionSpace":
        sites = []
        for g in groups:
            score = np.asarray(priorities[g.id], dtype=np.float64)
            if score.shape != (g.size,):
                raise ValueError(f"priority of group {g.id} has shape {score.shape}, expected ({g.size},)")
            # Stable sort: ties keep unit order, so decode is deterministic.
            sites.append(PruningSite(g, np.argsort(score, kind="stable")))
        return cls(sites, fingerprint, round_to=round_to)

    @property
    def dim(self) -> int:
        return len(self.sites)

    @property
    def names(self) -> list[str]:
        return [s.group.id for s in self.sites]

    def removed_count(self, i: int, x: float) -> int:
        """Units removed from site i at coordinate x (after rounding the kept count)."""
        size = self.sites[i].size
        removed = min(int(math.floor(float(x) * size + 1e-9)), size - 1)
        n = self.round_to
        if n and size >= n:
            kept = min(size, -(-(size - removed) // n) * n)
            removed = size - kept
        return removed

    def decode(self, x: Sequence[float]) -> Plan:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"x has shape {x.shape}, expected ({self.dim},)")
        pruning = []
        for i, site in enumerate(self.sites):
            n_removed = self.removed_count(i, np.clip(x[i], 0.0, 1.0))
            keep = tuple(sorted(int(u) for u in site.order[n_removed:]))
            pruning.append(GroupPruning(site.group.id, site.size, keep))
        return Plan(tuple(pruning), self.fingerprint)

    def decode_batch(self, xs: np.ndarray) -> list[Plan]:
        return [self.decode(x) for x in np.atleast_2d(xs)]

    def encode(self, plan: Plan) -> np.ndarray:
        x = np.zeros(self.dim)
        for i, site in enumerate(self.sites):
            p = plan.pruning_for(site.group.id)
            if p is None:
                continue
            n_removed = site.size - len(p.keep)
            expected = tuple(sorted(int(u) for u in site.order[n_removed:]))
            if p.keep != expected or self.removed_count(i, (n_removed + 0.5) / site.size) != n_removed:
                raise ValueError(f"group {site.group.id}: the plan keeps units that are not the most important ones")
            # Middle of the bin that decodes to n_removed: immune to rounding.
            x[i] = (n_removed + 0.5) / site.size if n_removed else 0.0
        return x
