"""The `Target` record and its loader (TOML descriptors plus the detected host)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

_DESCRIPTOR_DIR = Path(__file__).resolve().parent


class UnknownTargetError(ValueError):
    """Raised for a target id with no descriptor; the message lists the known ids."""


class TargetDescriptorError(ValueError):
    """A TOML descriptor names a field `Target` does not have, or lacks a required one."""


@dataclass(frozen=True)
class Target:
    """Frozen facts about one device. `id` keys every cache (lookup tables, profiles).

    Numbers that are not known for a device stay None rather than guessed; a
    cost model that needs one says so. Where a number is derived rather than
    read from a data sheet, the descriptor says how in a comment.
    """

    id: str
    description: str
    kind: str  # "cpu" or "gpu"
    isa: str | None = None
    cpu_model: str | None = None
    gpu_model: str | None = None
    cores: int | None = None  # CPU cores, or CUDA cores for a GPU
    frequency_ghz: float | None = None
    simd_width_bits: int | None = None
    peak_gflops: float | None = None  # fp32
    # int8 multiply-accumulate throughput, in GOP/s (2 ops per MAC, as FLOP/s
    # count them). Used only by the roofline estimate; None: not known, and the
    # roofline prices int8 compute at the fp32 peak (and says so).
    peak_int8_gops: float | None = None
    memory_bandwidth_gbs: float | None = None
    # Fixed cost of launching one kernel (runtime dispatch, CUDA launch), used
    # only by the roofline estimate; a measured table supersedes it.
    kernel_overhead_us: float | None = None
    onnxruntime_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    batch_size: int = 1
    # The ONNX Runtime the compiled model will be deployed with. When set, a
    # lookup table profiled with another version is refused; when None, the
    # table's own version is accepted and reported (host: the installed one).
    onnxruntime_version: str | None = None
    # Substrings (any one, case-insensitive) that the device name in a lookup
    # table's header must contain for the table to be accepted for this target.
    device_match: tuple[str, ...] = ()
    lut_path: str | None = None  # None: the default cache location, see `lut_location`
    sources: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def lut_location(self) -> Path:
        """Where this target's latency lookup table lives unless `--lut` says otherwise.

        An explicit `lut_path` wins; otherwise `$ADANS_LUT_DIR/<id>.json`, else
        `$XDG_CACHE_HOME/adans/lut/<id>.json`, else `~/.cache/adans/lut/<id>.json`.
        Resolved at call time (environment read here, never at import).
        """
        if self.lut_path:
            return Path(self.lut_path).expanduser()
        if os.environ.get("ADANS_LUT_DIR"):
            return Path(os.environ["ADANS_LUT_DIR"]).expanduser() / f"{self.id}.json"
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "adans" / "lut" / f"{self.id}.json"

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first listed)."""
        return self.onnxruntime_providers[0]


def _descriptor_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_DESCRIPTOR_DIR.glob("*.toml"))}


def known_target_ids() -> list[str]:
    return sorted({"host", *_descriptor_paths()})


_TUPLE_FIELDS = frozenset({"onnxruntime_providers", "sources", "device_match"})


def target_from_dict(data: dict, *, default_id: str | None = None) -> Target:
    known = {f.name for f in fields(Target)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TargetDescriptorError(f"target descriptor has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in data.items()}
    if default_id is not None:
        kwargs.setdefault("id", default_id)
    missing = [k for k in ("id", "description", "kind") if k not in kwargs]
    if missing:
        raise TargetDescriptorError(f"target descriptor lacks {', '.join(missing)}")
    return Target(**kwargs)


def _load_descriptor(path: Path) -> Target:
    try:
        return target_from_dict(tomllib.loads(path.read_text()), default_id=path.stem)
    except TargetDescriptorError as e:
        raise TargetDescriptorError(f"{path.name}: {e}") from e


def load_target(target_id: str) -> Target:
    if target_id == "host":
        from .host import detect_host

        return detect_host()
    path = _descriptor_paths().get(target_id)
    if path is None:
        raise UnknownTargetError(
            f"unknown target '{target_id}'; known targets: {', '.join(known_target_ids())}"
        )
    return _load_descriptor(path)
