"""Shared builders for cost-model tests: hand-made workloads and synthetic lookup tables."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from cost_models import OpWorkload
from cost_models.kernels import Kernel
from cost_models.latency import installed_onnxruntime_version
from cost_models.lut import DEQUANTIZE, QUANTIZE, QUANTIZED, Family, LookupTable, Measurement, Point, reorder_family_key
from cost_models.roofline import kernel_bytes, kernel_flops
from targets import Target


def conv(name, x, y, c_in, c_out, hw, *, k=3, stride=1, groups=1, batch=1, bias=False, hw_out=None):
    hw_out = hw_out or hw // stride
    return OpWorkload(
        op_type="Conv", name=name, input_shape=(batch, c_in, hw, hw), output_shape=(batch, c_out, hw_out, hw_out),
        weight_shape=(c_out, c_in // groups, k, k), kernel=(k, k), strides=(stride, stride), dilations=(1, 1),
        groups=groups, has_bias=bias, input_names=(x, f"{name}.w") + ((f"{name}.b",) if bias else ()), output_names=(y,),
        attributes=(("pads", (k // 2,) * 4),),
    )


def bn(name, x, y, c, hw, batch=1):
    return OpWorkload("BatchNormalization", name, (batch, c, hw, hw), (batch, c, hw, hw), weight_shape=(c,), has_bias=True,
                      input_names=(x, f"{name}.s", f"{name}.b", f"{name}.m", f"{name}.v"), output_names=(y,))


def unary(op, name, x, y, shape):
    return OpWorkload(op, name, shape, shape, input_names=(x,), output_names=(y,))


def add(name, a, b, y, shape):
    return OpWorkload("Add", name, shape, shape, extra_input_shapes=(shape,), input_names=(a, b), output_names=(y,))


def gemm(name, x, y, k, n, batch=1):
    return OpWorkload("Gemm", name, (batch, k), (batch, n), weight_shape=(n, k), has_bias=True,
                      input_names=(x, f"{name}.w", f"{name}.b"), output_names=(y,), attributes=(("transB", 1),))


def make_target(**overrides) -> Target:
    """A CPU target with roofline numbers, for tests that must not depend on the machine."""
    fields = dict(id="testcpu", description="test CPU", kind="cpu", cpu_model="Test CPU", cores=2, frequency_ghz=2.0,
                  simd_width_bits=256, peak_gflops=64.0, memory_bandwidth_gbs=20.0, kernel_overhead_us=5.0, threads=2,
                  batch_size=1, device_match=("Test CPU",))
    fields.update(overrides)
    return Target(**fields)


def header(target: Target, *, batches=(1,), align=8, device="Test CPU, 2 cores") -> dict:
    return {
        "target": target.id, "device": device, "cpu_model": device, "gpu_model": None,
        "onnxruntime": installed_onnxruntime_version(), "provider": target.provider, "threads": target.threads,
        "batch_sizes": list(batches), "dtype": "float32", "date": "2026-01-01T00:00:00+00:00",
        "timing": {"method": "synthetic"}, "grid": {"align": align}, "models": [], "skipped": [],
    }


def affine_ms(kernel: Kernel) -> float:
    """A smooth, monotone stand-in for a measurement: 2 us + 1 ns per 100 MACs + 0.1 ns per byte."""
    return 0.002 + 1e-8 * kernel_flops(kernel) / 2 + 1e-7 * kernel_bytes(kernel) / 1000


def synthetic_table(kernel_specs, target: Target, *, batches=(1,), align=8,
                    ms: Callable[[Kernel], float] = affine_ms,
                    layout: Callable[[Kernel], str] = lambda k: "plain",
                    per_node_ms: float = 0.0, device="Test CPU, 2 cores") -> LookupTable:
    """A table over `kernel_specs` (FamilySpec-like: .kernel, .axes, .points()) with computed times."""
    table = LookupTable(header(target, batches=batches, align=align, device=device), {},
                        {"per_node_ms": per_node_ms, "run_overhead": []}, [])
    for spec in kernel_specs:
        fam = table.add_family(Family(spec.kernel.family_key, spec.kernel.family_fields, spec.axes))
        for p in spec.points():
            k = spec.kernel.with_channels(spec.axes, p)
            lay = QUANTIZED if k.quantized else layout(k)  # an int8 kernel reads and writes uint8
            fam.add(Point(p, Measurement(ms(k), ms(k) * 1.1, 1, lay, lay, 10, int(kernel_flops(k) // 2), kernel_bytes(k))))
            if k.quantized:
                _add_conversions(table, k, (QUANTIZE, DEQUANTIZE))
            if lay == "blocked":
                for direction, shape in (("ReorderInput", k.input_shape), ("ReorderOutput", k.output_shape)):
                    key = reorder_family_key(direction, batch=shape[0], spatial=tuple(shape[2:]), dtype="float32")
                    rf = table.family(key) or table.add_family(
                        Family(key, {"pattern": direction, "batch": shape[0], "spatial": list(shape[2:]), "dtype": "float32"}, ("c",)))
                    rf.add(Point((shape[1],), Measurement(1e-6 * np.prod(shape), 1e-6 * np.prod(shape))))
    return table


CONVERSION_MS_PER_ELEMENT = 1e-6


def _add_conversions(table: LookupTable, k: Kernel, directions: tuple[str, str]) -> None:
    """Conversions at the kernel's input and output, 1 ns per element (as for the reorders)."""
    for direction, shape in zip(directions, (k.input_shape, k.output_shape)):
        key = reorder_family_key(direction, batch=shape[0], spatial=tuple(shape[2:]), dtype="float32")
        family = table.family(key) or table.add_family(
            Family(key, {"pattern": direction, "batch": shape[0], "spatial": list(shape[2:]), "dtype": "float32"}, ("c",)))
        ms = CONVERSION_MS_PER_ELEMENT * np.prod(shape)
        family.add(Point((shape[1],), Measurement(ms, ms)))


def with_batch(op: OpWorkload, batch: int) -> OpWorkload:
    return replace(op, input_shape=(batch, *op.input_shape[1:]), output_shape=(batch, *op.output_shape[1:]))
