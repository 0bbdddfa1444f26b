"""Sampling subroutines of AdaNS, one per module, and a registry by name.

`adans` (samplers.surrogate) screens a pool of AdaNS-Gaussian proposals with
a surrogate fitted on the history and evaluates the most promising.

`tpe` and `cmaes` (samplers.optuna) need the optional extra `optuna`; they
import it only when they propose, so importing this package stays light.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adans_toolchain.search.samplers.base import Sampler, ScoreParts, SearchContext, apportion
from adans_toolchain.search.samplers.gaussian import GaussianSampler
from adans_toolchain.search.samplers.genetic import GeneticSampler
from adans_toolchain.search.samplers.optuna import CmaEsSampler, TPESampler
from adans_toolchain.search.samplers.surrogate import SurrogateSampler
from adans_toolchain.search.samplers.uniform import UniformSampler
from adans_toolchain.search.samplers.zoom import ZoomSampler

_REGISTRY: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        GaussianSampler, UniformSampler, ZoomSampler, GeneticSampler, TPESampler, CmaEsSampler, SurrogateSampler
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_sampler(name: str, **options: Any) -> Sampler:
    """Build the sampler called `name` with keyword `options`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    cls = _REGISTRY[name]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(known) or '(none)'}"
        )
    return cls(**options)


__all__ = [
    "SAMPLER_NAMES",
    "CmaEsSampler",
    "GaussianSampler",
    "GeneticSampler",
    "Sampler",
    "ScoreParts",
    "SearchContext",
    "SurrogateSampler",
    "TPESampler",
    "UniformSampler",
    "ZoomSampler",
    "apportion",
    "make_sampler",
]
