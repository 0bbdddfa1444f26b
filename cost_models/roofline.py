"""Roofline estimates of kernel time, for targets (or kernels) no table has measured.

time = max(FLOPs / peak, bytes / bandwidth) + a fixed per-kernel overhead,
with FLOPs = 2 x MACs and bytes = activations read and written plus the
weights at their bit width. An int8 kernel moves uint8 activations and
one-byte weights (biases stay 32-bit), and computes at the target's
`peak_int8_gops` when its descriptor gives one; otherwise at the fp32 peak,
an assumption `describe` states (int8 then gains only from moving fewer
bytes, which is what cores without int8 dot-product instructions see). The numbers come from the target descriptor, or
are fitted to a measured table (`TableFit`) when a table exists but lacks a
family. Every use is reported by the latency model as "estimated".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets import Target

from .kernels import Kernel
from .macs import op_macs


class RooflineUnavailableError(ValueError):
    """The target descriptor lacks the numbers a roofline estimate needs."""


def kernel_flops(kernel: Kernel) -> int:
    """2 x MACs of the kernel's operators; raises UnsupportedOperatorError for an unknown one."""
    return 2 * sum(op_macs(op) for op in kernel.ops)


def kernel_bytes(kernel: Kernel) -> int:
    weights, bias = kernel.weight_elements()
    a = kernel.anchor
    weight_bytes = weights * a.weight_bits // 8 + bias * 4  # biases stay 32-bit (int32 beside int8 weights)
    return kernel.activation_bytes() + weight_bytes  # activations at the kernel's precision (uint8 for int8)


@dataclass(frozen=True)
class Roofline:
    peak_gflops: float
    bandwidth_gbs: float | None
    overhead_ms: float
    peak_int8_gops: float | None = None  # None: int8 computes at peak_gflops

    @classmethod
    def from_target(cls, target: Target) -> "Roofline":
        if not target.peak_gflops:
            raise RooflineUnavailableError(
                f"target '{target.id}' has no measured latency table and no peak FLOP/s to estimate one from; "
                f"profile it (adans-profile --target {target.id} ...) or give peak_gflops in its descriptor"
            )
        return cls(float(target.peak_gflops), target.memory_bandwidth_gbs, (target.kernel_overhead_us or 0.0) / 1e3,
                   float(target.peak_int8_gops) if target.peak_int8_gops else None)

    def peak_ops_per_ms(self, kernel: Kernel) -> float:
        peak = self.peak_int8_gops if kernel.quantized and self.peak_int8_gops else self.peak_gflops
        return peak * 1e6

    def kernel_ms(self, kernel: Kernel) -> float:
        compute_ms = kernel_flops(kernel) / self.peak_ops_per_ms(kernel)
        memory_ms = kernel_bytes(kernel) / (self.bandwidth_gbs * 1e6) if self.bandwidth_gbs else 0.0
        return max(compute_ms, memory_ms) + self.overhead_ms

    def describe(self) -> str:
        bw = f"{self.bandwidth_gbs:g} GB/s" if self.bandwidth_gbs else "bandwidth unknown (compute bound only)"
        int8 = (f"int8 peak {self.peak_int8_gops:g} GOP/s" if self.peak_int8_gops else
                "int8 assumed at the fp32 peak (the target gives no int8 throughput)")
        return f"roofline: peak {self.peak_gflops:g} GFLOP/s, {bw}, {self.overhead_ms * 1e3:g} us per kernel; {int8}"


@dataclass(frozen=True)
class TableFit:
    """time = a + b x MACs + c x bytes, least squares (non-negative) over a table's measured points.

    Stands in for families the table has no entry for. It is what the table
    says this device achieves on average, so it is closer than the data-sheet
    roofline, but it is still an estimate and reported as one.
    """

    a_ms: float
    ms_per_mac: float
    ms_per_byte: float

    @classmethod
    def fit(cls, samples: list[tuple[float, float, float]]) -> "TableFit | None":
        """samples: (macs, bytes, ms); None when there are too few."""
        if len(samples) < 3:
            return None
        from scipy.optimize import nnls

        x = np.array([[1.0, m, b] for m, b, _ in samples])
        y = np.array([t for _, _, t in samples])
        scale = x.max(axis=0)
        scale[scale == 0] = 1.0
        coef, _ = nnls(x / scale, y)
        coef = coef / scale
        return cls(float(coef[0]), float(coef[1]), float(coef[2]))

    def kernel_ms(self, kernel: Kernel) -> float:
        return self.a_ms + self.ms_per_mac * kernel_flops(kernel) / 2 + self.ms_per_byte * kernel_bytes(kernel)
