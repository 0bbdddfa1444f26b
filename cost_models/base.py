"""The cost-model protocol and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import numpy as np

from targets import Target

from .workload import Workload


class UnsupportedOperatorError(ValueError):
    """A cost model met an operator it cannot price and has no declared fallback for."""


class CostModel(ABC):
    """Prices whole-model workloads on a target, in a named unit.

    `estimate` is batched: the search prices a whole batch of candidates at
    once. Lower is cheaper. A cost model never prices an operator it does
    not understand at zero: it raises `UnsupportedOperatorError`, or uses an
    explicit fallback that it reports in `notes`.
    """

    name: ClassVar[str]
    unit: ClassVar[str]

    def __init__(self, target: Target) -> None:
        self.target = target
        self.notes: list[str] = []

    @abstractmethod
    def estimate(self, workloads: Sequence[Workload]) -> np.ndarray:
        """Cost of each workload, shape (len(workloads),), in `self.unit`."""

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "target": self.target.id, "notes": list(self.notes)}


_REGISTRY: dict[str, Callable[..., CostModel]] = {}


def register(name: str) -> Callable[[type[CostModel]], type[CostModel]]:
    def wrap(cls: type[CostModel]) -> type[CostModel]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def cost_model_names() -> list[str]:
    return sorted(_REGISTRY)


def make_cost_model(name: str, target: Target, **options) -> CostModel:
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown cost model '{name}'; known: {', '.join(cost_model_names())}")
    return factory(target, **options)
