"""CompressionSpace: x in [0,1]^d  <->  Plan.

Convention (the paper uses both; we pick one): x[i] is the *fraction of units
removed* from group i, so larger x means more compression. For a group of c
units, floor(x*c) units with the lowest priority are removed, but never all
of them (at least one unit stays).
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
    def __init__(self, sites: Sequence[PruningSite], fingerprint: str = "") -> None:
        self.sites = list(sites)
        self.fingerprint = fingerprint

    @classmethod
    def from_priorities(
        cls, groups: Sequence[ChannelGroup], priorities: dict[str, np.ndarray], fingerprint: str = ""
    ) -> "CompressionSpace":
        sites = []
        for g in groups:
            score = np.asarray(priorities[g.id], dtype=np.float64)
            if score.shape != (g.size,):
                raise ValueError(f"priority of group {g.id} has shape {score.shape}, expected ({g.size},)")
            # Stable sort: ties keep unit order, so decode is deterministic.
            sites.append(PruningSite(g, np.argsort(score, kind="stable")))
        return cls(sites, fingerprint)

    @property
    def dim(self) -> int:
        return len(self.sites)

    @property
    def names(self) -> list[str]:
        return [s.group.id for s in self.sites]

    def removed_count(self, i: int, x: float) -> int:
        size = self.sites[i].size
        return min(int(math.floor(float(x) * size + 1e-9)), size - 1)

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
            if p.keep != expected:
                raise ValueError(f"group {site.group.id}: the plan keeps units that are not the most important ones")
            # Middle of the bin that decodes to n_removed: immune to rounding.
            x[i] = (n_removed + 0.5) / site.size if n_removed else 0.0
        return x
