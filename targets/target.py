"""The `Target` record and its loader (TOML descriptors plus the detected host)."""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_DESCRIPTOR_DIR = Path(__file__).resolve().parent


class UnknownTargetError(ValueError):
    """Raised for a target id with no descriptor; the message lists the known ids."""


@dataclass(frozen=True)
class Target:
    """Frozen facts about one device. `id` keys every cache (lookup tables, profiles).

    Numbers that are not known for a device stay None rather than guessed; a
    cost model that needs one says so.
    """

    id: str
    description: str
    kind: str  # "cpu" or "gpu"
    cpu_model: str | None = None
    cores: int | None = None
    frequency_ghz: float | None = None
    simd_width_bits: int | None = None
    peak_gflops: float | None = None
    memory_bandwidth_gbs: float | None = None
    onnxruntime_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    batch_size: int = 1
    lut_path: str | None = None
    sources: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _cpu_model_name() -> str:
    # /proc/cpuinfo names the CPU precisely on Linux; platform.processor() is
    # often empty there, so it is only the fallback.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detect_host() -> Target:
    """The machine adans runs on, measured directly (no lookup table until profiled)."""
    cores = _usable_cores()
    return Target(
        id="host",
        description=f"this machine ({_cpu_model_name()}, {cores} usable cores)",
        kind="cpu",
        cpu_model=_cpu_model_name(),
        cores=cores,
        threads=cores,
        batch_size=1,
        sources=("detected at run time",),
    )


def _descriptor_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_DESCRIPTOR_DIR.glob("*.toml"))}


def known_target_ids() -> list[str]:
    return sorted({"host", *_descriptor_paths()})


def _load_descriptor(path: Path) -> Target:
    data = tomllib.loads(path.read_text())
    tuple_fields = {"onnxruntime_providers", "sources"}
    kwargs = {k: tuple(v) if k in tuple_fields else v for k, v in data.items()}
    kwargs.setdefault("id", path.stem)
    return Target(**kwargs)


def load_target(target_id: str) -> Target:
    if target_id == "host":
        return detect_host()
    path = _descriptor_paths().get(target_id)
    if path is None:
        raise UnknownTargetError(
            f"unknown target '{target_id}'; known targets: {', '.join(known_target_ids())}"
        )
    return _load_descriptor(path)
