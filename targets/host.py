"""The `host` target: the machine adans runs on, described from what it reports.

Everything here is read at call time from /proc and /sys (Linux) or the
platform module; nothing is guessed. A number the machine does not tell
(memory bandwidth, kernel launch overhead) stays None, and the peak FLOP/s
estimate is only made when every input to it is known.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from .target import Target

# SIMD register width implied by /proc/cpuinfo feature flags, widest first.
# x86 lists "flags", ARM lists "Features" (asimd = AArch64 NEON, neon = ARMv7).
_SIMD_FLAGS = (("avx512f", 512), ("avx2", 256), ("avx", 256), ("asimd", 128), ("neon", 128), ("sse2", 128))

# ARM "CPU part" numbers (implementer 0x41, ARM Ltd.) of common cores: used only
# to name the CPU, since AArch64 kernels print no "model name" line.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd40": "Neoverse-V1",
    "0xd4f": "Neoverse-V2", "0xd49": "Neoverse-N2",
}


@dataclass(frozen=True)
class CpuInfo:
    model_name: str | None
    flags: frozenset[str]
    mhz: float | None
    arm_parts: tuple[str, ...]  # distinct "CPU part" values, in order of appearance


def parse_cpuinfo(text: str) -> CpuInfo:
    """The fields of /proc/cpuinfo adans uses (first processor's, plus every ARM part)."""
    model = None
    flags: frozenset[str] = frozenset()
    mhz = None
    parts: list[str] = []
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        key = key.lower()
        if key in ("model name", "hardware", "cpu model") and model is None and value:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "cpu mhz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif key == "cpu part" and value not in parts:
            parts.append(value)
    return CpuInfo(model, flags, mhz, tuple(parts))


def simd_width_bits(flags: frozenset[str]) -> int | None:
    for flag, bits in _SIMD_FLAGS:
        if flag in flags:
            return bits
    return None


def has_fma(flags: frozenset[str]) -> bool | None:
    """Whether the SIMD unit fuses multiply and add (2 FLOP per lane per instruction)."""
    if "fma" in flags or "avx512f" in flags:
        return True
    if "asimd" in flags:  # AArch64 NEON always has FMLA
        return True
    return None  # unknown: do not guess


def peak_gflops(cores: int | None, ghz: float | None, simd_bits: int | None, fma: bool | None) -> float | None:
    """cores x clock x fp32 lanes x 2 (FMA), only when every input is known.

    One FMA instruction per cycle per core is assumed: cores with two FMA
    pipes reach twice this, which the profiled table (not this estimate) shows.
    """
    if not (cores and ghz and simd_bits and fma):
        return None
    return cores * ghz * (simd_bits // 32) * 2.0


def cpu_name(info: CpuInfo) -> str:
    if info.model_name:
        return info.model_name
    if info.arm_parts:
        names = [_ARM_PARTS.get(p.lower(), f"ARM CPU part {p}") for p in info.arm_parts]
        return " + ".join(dict.fromkeys(names))
    return platform.processor() or platform.machine() or "unknown CPU"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _max_frequency_ghz(info: CpuInfo) -> float | None:
    # cpufreq's maximum is the clock the cores run at under load; /proc's "cpu
    # MHz" is the current clock (under a hypervisor, usually the nominal one).
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if khz and khz.strip().isdigit():
        return int(khz.strip()) / 1e6
    return info.mhz / 1e3 if info.mhz else None


def _board_name() -> str | None:
    text = _read("/proc/device-tree/model")  # e.g. Jetson boards name themselves here
    return text.strip("\x00\n ") or None if text else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detect_host() -> Target:
    """The machine adans runs on (no lookup table until `adans-profile --target host`)."""
    info = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    cores = usable_cores()
    name = cpu_name(info)
    board = _board_name()
    ghz = _max_frequency_ghz(info)
    simd = simd_width_bits(info.flags)
    fma = has_fma(info.flags)
    peak = peak_gflops(cores, ghz, simd, fma)
    sources = ["detected at run time from /proc/cpuinfo and /sys (frequency: cpufreq maximum, else 'cpu MHz')"]
    if peak is not None:
        sources.append("peak_gflops derived: cores x GHz x (SIMD bits / 32) x 2 (one FMA per cycle per core)")
    return Target(
        id="host",
        description=f"this machine ({name}{', ' + board if board else ''}, {cores} usable cores)",
        kind="cpu",
        isa=platform.machine() or None,
        cpu_model=name,
        cores=cores,
        frequency_ghz=round(ghz, 3) if ghz else None,
        simd_width_bits=simd,
        peak_gflops=round(peak, 1) if peak else None,
        threads=cores,
        batch_size=1,
        sources=tuple(sources),
    )


def device_name() -> str:
    """How this machine names itself in a lookup table's header (CPU, board, usable cores).

    A table profiled for `host` is only used on a machine with the same name.
    """
    name = cpu_name(parse_cpuinfo(_read("/proc/cpuinfo") or ""))
    board = _board_name()
    return f"{name}{f' ({board})' if board else ''}, {usable_cores()} cores"
