"""The Plan: the only thing passed from search to lowering.

A Plan names edits to the model's parameters by name:

- structured pruning: per channel group, the indices of the units kept;
- low-rank decomposition: per weighted layer (named by its weight), the
  method (SVD for Gemm/MatMul/1x1 Conv, Tucker-2 for kxk Conv) and ranks;
- unstructured pruning: per weighted layer, how many of its smallest-|w|
  weights are zeroed;
- precision: per weighted layer, float or int8 (for a decomposed layer,
  every factor it lowers to takes the layer's precision). Plans written
  before precision was searched have no record: every layer is float.

It is immutable, hashable and round-trips through JSON exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

FORMAT = "adans-plan/1"


@dataclass(frozen=True)
class GroupPruning:
    group: str
    size: int  # units in the group before pruning
    keep: tuple[int, ...]  # sorted unit indices that stay

    def __post_init__(self) -> None:
        if not self.keep:
            raise ValueError(f"group {self.group}: a plan must keep at least one unit")
        if list(self.keep) != sorted(set(self.keep)) or self.keep[0] < 0 or self.keep[-1] >= self.size:
            raise ValueError(f"group {self.group}: keep indices must be sorted, unique and below {self.size}")

    @property
    def removed(self) -> tuple[int, ...]:
        kept = set(self.keep)
        return tuple(i for i in range(self.size) if i not in kept)


@dataclass(frozen=True)
class LayerDecomposition:
    """Low-rank factorisation of one weighted layer.

    svd:    ranks = (r,)        full = (min(c_in, c_out),)
    tucker: ranks = (r1, r2)    full = (c_in, c_out); a rank equal to its
            full size means that mode is not factorised (Tucker-1).
    """

    layer: str  # the weight initializer's name
    method: str  # "svd" or "tucker"
    ranks: tuple[int, ...]
    full: tuple[int, ...]

    def __post_init__(self) -> None:
        expected = {"svd": 1, "tucker": 2}.get(self.method)
        if expected is None:
            raise ValueError(f"layer {self.layer}: unknown decomposition '{self.method}'")
        if len(self.ranks) != expected or len(self.full) != expected:
            raise ValueError(f"layer {self.layer}: {self.method} takes {expected} rank(s)")
        if any(not 1 <= r <= f for r, f in zip(self.ranks, self.full)):
            raise ValueError(f"layer {self.layer}: ranks {self.ranks} outside 1..{self.full}")

    @property
    def is_identity(self) -> bool:
        return self.ranks == self.full


@dataclass(frozen=True)
class LayerSparsity:
    """Unstructured magnitude pruning: the `removed` smallest-|w| weights of `layer` are zero."""

    layer: str
    size: int  # weights in the layer
    removed: int

    def __post_init__(self) -> None:
        if not 0 <= self.removed < self.size:
            raise ValueError(f"layer {self.layer}: cannot remove {self.removed} of {self.size} weights")


PRECISIONS = ("float", "int8")


@dataclass(frozen=True)
class LayerPrecision:
    """The arithmetic one weighted layer (named by its weight) runs in: "float", or "int8" (quantization.INT8_SCHEME)."""

    layer: str
    precision: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"layer {self.layer}: precision must be one of {PRECISIONS}, not {self.precision!r}")


@dataclass(frozen=True)
class Plan:
    pruning: tuple[GroupPruning, ...] = ()
    model_fingerprint: str = ""  # the analysed graph this plan indexes into
    decompositions: tuple[LayerDecomposition, ...] = ()
    sparsity: tuple[LayerSparsity, ...] = ()
    meta: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    precision: tuple[LayerPrecision, ...] = ()  # after meta: positional constructions of older code keep their meaning

    def pruning_for(self, group: str) -> GroupPruning | None:
        return next((p for p in self.pruning if p.group == group), None)

    def decomposition_for(self, layer: str) -> LayerDecomposition | None:
        return next((d for d in self.decompositions if d.layer == layer), None)

    def sparsity_for(self, layer: str) -> LayerSparsity | None:
        return next((s for s in self.sparsity if s.layer == layer), None)

    def precision_for(self, layer: str) -> str:
        """"int8" or "float" (a layer the plan does not name stays float)."""
        record = next((p for p in self.precision if p.layer == layer), None)
        return "float" if record is None else record.precision

    @property
    def int8_layers(self) -> tuple[str, ...]:
        """Weights (layer names) the plan runs in int8, in plan order."""
        return tuple(p.layer for p in self.precision if p.precision == "int8")

    @property
    def float_part(self) -> "Plan":
        """The plan with every layer float: what pruning and decomposition alone make of the model."""
        return replace(self, precision=()) if self.precision else self

    @property
    def active_decompositions(self) -> tuple[LayerDecomposition, ...]:
        return tuple(d for d in self.decompositions if not d.is_identity)

    @property
    def active_sparsity(self) -> tuple[LayerSparsity, ...]:
        return tuple(s for s in self.sparsity if s.removed)

    @property
    def is_identity(self) -> bool:
        """True when the plan changes nothing (the baseline)."""
        return self.keeps_float_weights and not self.int8_layers

    @property
    def keeps_float_weights(self) -> bool:
        """True when the plan changes no float weight (it may still run layers in int8)."""
        return (
            all(len(p.keep) == p.size for p in self.pruning)
            and not self.active_decompositions
            and not self.active_sparsity
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model_fingerprint": self.model_fingerprint,
            "pruning": [{"group": p.group, "size": p.size, "keep": list(p.keep)} for p in self.pruning],
            "decompositions": [
                {"layer": d.layer, "method": d.method, "ranks": list(d.ranks), "full": list(d.full)} for d in self.decompositions
            ],
            "sparsity": [{"layer": s.layer, "size": s.size, "removed": s.removed} for s in self.sparsity],
            "precision": [{"layer": p.layer, "precision": p.precision} for p in self.precision],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("format") != FORMAT:
            raise ValueError(f"not an adans plan (format {data.get('format')!r})")
        pruning = tuple(GroupPruning(p["group"], int(p["size"]), tuple(int(i) for i in p["keep"])) for p in data["pruning"])
        decompositions = tuple(
            LayerDecomposition(d["layer"], d["method"], tuple(int(r) for r in d["ranks"]), tuple(int(f) for f in d["full"]))
            for d in data.get("decompositions", [])
        )
        sparsity = tuple(LayerSparsity(s["layer"], int(s["size"]), int(s["removed"])) for s in data.get("sparsity", []))
        # Plans from before precision was searched have no "precision": every layer float.
        precision = tuple(LayerPrecision(p["layer"], p["precision"]) for p in data.get("precision", []))
        return cls(pruning, data.get("model_fingerprint", ""), decompositions, sparsity, tuple(sorted(data.get("meta", {}).items())),
                   precision)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))
