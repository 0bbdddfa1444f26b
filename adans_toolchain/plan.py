"""The Plan: the only thing passed from search to lowering.

A Plan names edits to the model's parameters by name. For structured
pruning it lists, per channel group, the indices of the units to keep. It is
immutable, hashable and round-trips through JSON exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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
class Plan:
    pruning: tuple[GroupPruning, ...] = ()
    model_fingerprint: str = ""  # the analysed graph this plan indexes into
    meta: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def pruning_for(self, group: str) -> GroupPruning | None:
        for p in self.pruning:
            if p.group == group:
                return p
        return None

    @property
    def is_identity(self) -> bool:
        """True when the plan changes nothing (the baseline)."""
        return all(len(p.keep) == p.size for p in self.pruning)

    def to_dict(self) -> dict:
        return {
            "format": "adans-plan/1",
            "model_fingerprint": self.model_fingerprint,
            "pruning": [{"group": p.group, "size": p.size, "keep": list(p.keep)} for p in self.pruning],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("format") != "adans-plan/1":
            raise ValueError(f"not an adans plan (format {data.get('format')!r})")
        pruning = tuple(GroupPruning(p["group"], int(p["size"]), tuple(int(i) for i in p["keep"])) for p in data["pruning"])
        return cls(pruning, data.get("model_fingerprint", ""), tuple(sorted(data.get("meta", {}).items())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))
