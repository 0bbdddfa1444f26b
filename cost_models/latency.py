"""Latency in milliseconds: a measured lookup table, or a roofline estimate.

With a table (profiled on the device by `adans-profile`), a workload's
latency is

    sum over executed kernels of table[family](channels)     (kernels.py, lut.py)
  + layout changes between kernels                           (see below)
  + nodes x per-node dispatch cost + per-run cost             (runtime, measured)
  [x calibration ratio of this model, when the table has one]

Kernels are the fused units the runtime executes (Conv+BN+Relu is one), so
the unfused search graph and the simplified emitted graph of a plan get the
same prediction.

Layout: on x86, ONNX Runtime runs a convolution whose channel counts are
multiples of its SIMD block (8 for AVX2, 16 for AVX-512) in a blocked
"NCHWc" layout and inserts reorder nodes where blocked and plain kernels
meet. The profiler records, per measured point, which layout the kernel
wants for its input and leaves its output in, and what the reorders cost;
the model replays that along the graph: a tensor produced blocked and read
plain (or the reverse) pays one reorder. A Conv+Add whose residual arrives
blocked is fused by the runtime into one blocked convolution with a sum
input; the profiler measures that context as the `blocked_residual` variant.
On targets with no blocked layout (ARM, CUDA) every kernel is plain and this
step adds nothing.

Precision: a kernel whose weights are int8 (precision.with_weight_bits) is
priced from the table's int8 entries (`"precision": "int8"` families,
profiled with `adans-profile --precisions float,int8`): ONNX Runtime's fused
integer kernel reading and writing uint8 activations (the `int8` layout).
Where an int8 kernel meets a float one, the replay above adds the
QuantizeLinear or DequantizeLinear the runtime runs there (with its
channels-last transposes), as measured; between int8 kernels nothing. So a
layer is worth quantizing on a target only if its int8 kernel plus the
conversions it causes beat its float kernel there, as the table says.
Weight-free kernels (pooling, Flatten, a residual Add not fused into a
convolution) are priced at their float cost, with the conversions around
them; ONNX Runtime runs some of them in int8 between int8 layers (QLinearAdd,
QLinearGlobalAveragePool), which these elementwise passes approximate. A table
without int8 entries cannot price an int8 kernel and says so
(`LookupTablePrecisionError`); the roofline prices one from its bytes (see
roofline.py).

Without a table, each kernel costs max(FLOPs/peak, bytes/bandwidth) + a
per-kernel overhead from the target descriptor, and `notes`/`describe()`
say "estimated (roofline)". A kernel family missing from a table is either
an error (`missing="error"`) or priced by a roofline fitted to the table,
and reported in `notes` — never 0 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Sequence

import numpy as np

from targets import Target

from .base import CostModel, UnsupportedOperatorError, register
from .kernels import Kernel, element_bytes, executed_kernels, structure_fingerprint
from .lut import (
    BLOCKED,
    PLAIN,
    QUANTIZED,
    STATISTICS,
    LookupTable,
    LookupTableError,
    LookupTablePrecisionError,
    RuntimeFacts,
    check_batch,
    check_header,
    conversion_path,
    missing_precision_message,
    reorder_family_key,
)
from .roofline import Roofline, RooflineUnavailableError, TableFit, kernel_bytes, kernel_flops
from .workload import FLOAT_PRECISION, Workload, batch_of

SOURCE_TABLE = "measured table"
SOURCE_ROOFLINE = "estimated (roofline)"
BLOCKED_RESIDUAL = "blocked_residual"


@dataclass(frozen=True)
class KernelPrice:
    name: str
    pattern: str
    ms: float
    nodes: int
    in_layout: str
    out_layout: str
    how: str  # "measured", "interpolated", "extrapolated", "estimated"
    precision: str = FLOAT_PRECISION


@dataclass(frozen=True)
class Prediction:
    """One workload's predicted latency, itemised."""

    kernels: tuple[KernelPrice, ...]
    # (tensor, direction, ms): layout reorders, and quantize/dequantize where float and int8 kernels meet
    reorders: tuple[tuple[str, str, float], ...]
    nodes: int
    node_overhead_ms: float
    run_overhead_ms: float
    scale: float
    total_ms: float

    @property
    def kernel_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    @property
    def reorder_ms(self) -> float:
        return sum(ms for _, _, ms in self.reorders)


def installed_onnxruntime_version() -> str | None:
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def runtime_facts(target: Target, threads: int) -> RuntimeFacts:
    """What a table must match to be used for `target` from this process."""
    if target.id == "host":
        from targets.host import device_name

        return RuntimeFacts(target.id, target.provider, threads, installed_onnxruntime_version(), device_name())
    return RuntimeFacts(target.id, target.provider, threads, target.onnxruntime_version, None, target.device_match)


@register("latency")
class LatencyCostModel(CostModel):
    name = "latency"
    unit = "ms"

    def __init__(
        self,
        target: Target,
        *,
        lut_path: str | Path | None = None,
        statistic: str = "min",
        missing: str = "estimate",
        threads: int | None = None,
        calibrate: bool = True,
    ) -> None:
        """`lut_path`: a table (must exist); None: the target's default location if a table is there, else roofline.

        `statistic`: "min" (the default; what min-of-repetitions measurement
        reports) or "median". `missing`: "estimate" (roofline fitted to the
        table, reported in notes) or "error" for a kernel family the table
        lacks. `threads`: the ONNX Runtime threads the model will run with
        (default: the target's). `calibrate`: apply the table's whole-model
        calibration ratio for a model it was profiled on.
        """
        super().__init__(target)
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, not {statistic!r}")
        if missing not in ("estimate", "error"):
            raise ValueError(f"missing must be 'estimate' or 'error', not {missing!r}")
        self.statistic = statistic
        self.missing = missing
        self.threads = threads or target.threads or 1
        self.calibrate = calibrate
        self.table: LookupTable | None = None
        self.table_precisions: frozenset[str] = frozenset()  # what the table measured kernels at
        self.roofline: Roofline | None = None
        self._fits: dict[str, TableFit | None] = {}  # per precision; absent: not fitted yet
        self._base_notes: list[str] = []
        self._missing_families: dict[str, str] = {}
        self._other_notes: dict[str, str] = {}
        path = Path(lut_path).expanduser() if lut_path is not None else target.lut_location()
        self.lut_path = path
        if lut_path is not None or path.is_file():
            self.table = LookupTable.load(path)
            self.table_precisions = frozenset(self.table.precisions())
            self._base_notes += check_header(self.table.header, runtime_facts(target, self.threads), source=str(path))
            self.source = SOURCE_TABLE
            self._base_notes.insert(0, f"{SOURCE_TABLE}: {path} ({len(self.table.families)} kernel families; "
                                       f"precisions {', '.join(sorted(self.table_precisions)) or 'none'})")
        else:
            self.roofline = Roofline.from_target(target)
            self.source = SOURCE_ROOFLINE
            self._base_notes.append(f"{SOURCE_ROOFLINE}: no latency table at {path}; {self.roofline.describe()}")
        self._sync_notes()

    # -- protocol ---------------------------------------------------------
    def estimate(self, workloads: Sequence[Workload]) -> np.ndarray:
        return np.array([self.predict(w).total_ms for w in batch_of(workloads)], dtype=np.float64)

    def describe(self) -> dict:
        d = super().describe()
        d["latency_source"] = self.source if not self._missing_families else f"{self.source} + roofline fallback"
        d["statistic"] = self.statistic
        d["threads"] = self.threads
        if self.table is not None:
            h = self.table.header
            d["lut"] = {k: h.get(k) for k in ("target", "device", "onnxruntime", "provider", "threads", "batch_sizes", "date")}
            d["lut"]["path"] = str(self.lut_path)
            d["lut"]["precisions"] = sorted(self.table_precisions)
        return d

    def check_precisions(self, precisions) -> None:
        """Raise LookupTablePrecisionError unless the table can price every precision in `precisions`.

        A roofline estimate (no table) prices any precision. Called for every
        int8 kernel priced; the compile checks the table the same way when its
        configuration is built (pipeline/costing.check_latency_precisions).
        """
        for precision in sorted(set(precisions) - {FLOAT_PRECISION}):
            if self.table is not None and precision not in self.table_precisions:
                raise LookupTablePrecisionError(missing_precision_message(str(self.lut_path), precision, self.target.id))

    # -- prediction ---------------------------------------------------------
    def predict(self, workload: Workload) -> Prediction:
        kernels = executed_kernels(workload)
        if self.table is None:
            assert self.roofline is not None
            prices = tuple(self._price_roofline(k, self.roofline) for k in kernels)
            total = sum(p.ms for p in prices)
            return Prediction(prices, (), len(prices), 0.0, 0.0, 1.0, total)
        table = self.table
        if kernels:
            check_batch(table.header, kernels[0].batch, source=str(self.lut_path), target_id=self.target.id)
        prices = [self._price_table(k) for k in kernels]
        prices, reorders = self._layouts(kernels, prices)
        nodes = sum(p.nodes for p in prices) + len(reorders)
        node_ms = nodes * float(table.runtime.get("per_node_ms", 0.0))
        run_ms = self._run_overhead(kernels)
        subtotal = sum(p.ms for p in prices) + sum(r[2] for r in reorders) + node_ms + run_ms
        scale = self._calibration(kernels)
        self._sync_notes()
        return Prediction(tuple(prices), tuple(reorders), nodes, node_ms, run_ms, scale, subtotal * scale)

    def _price_roofline(self, kernel: Kernel, roofline: Roofline | TableFit) -> KernelPrice:
        layout = QUANTIZED if kernel.quantized else PLAIN
        return KernelPrice(kernel.anchor.name, kernel.pattern, roofline.kernel_ms(kernel), 1, layout, layout, "estimated",
                           kernel.precision)

    def _price_table(self, kernel: Kernel) -> tuple[KernelPrice, KernelPrice | None]:
        table = self.table
        if kernel.quantized:
            self.check_precisions({kernel.precision})
        fam = table.family(kernel.family_key)
        if fam is None or not fam.points:
            return self._price_missing(kernel), None
        est = fam.lookup(kernel.channels(fam.axes), align=table.align, statistic=self.statistic)
        how = "measured" if est.exact else ("extrapolated" if est.extrapolated else "interpolated")
        if est.extrapolated:
            self._other_notes[f"extrapolated:{fam.key}"] = (
                f"{kernel.pattern} at channels {kernel.channels(fam.axes)} lies outside the table's grid; extrapolated"
            )
        price = KernelPrice(kernel.anchor.name, kernel.pattern, est.ms, est.nodes, est.in_layout, est.out_layout, how,
                            kernel.precision)
        v = est.variant(BLOCKED_RESIDUAL)
        variant = (KernelPrice(kernel.anchor.name, kernel.pattern, v.ms, v.nodes, v.in_layout, v.out_layout, how,
                               kernel.precision) if v else None)
        return price, variant

    def _price_missing(self, kernel: Kernel) -> KernelPrice:
        shapes = f"{kernel.pattern} {list(kernel.input_shape)} -> {list(kernel.output_shape)}"
        if self.missing == "error":
            raise UnsupportedOperatorError(
                f"the latency table {self.lut_path} has no entry for {shapes} ({kernel.anchor.name}); "
                f"profile this model into it (adans-profile --target {self.target.id} ... -o {self.lut_path})"
            )
        fit = self._table_fit(kernel.precision)
        price = self._price_roofline(kernel, fit)
        self._missing_families.setdefault(kernel.family_key, shapes)
        return price

    def _table_fit(self, precision: str) -> TableFit | Roofline:
        """A roofline fitted to the table's kernels of `precision` (int8 and float kernels scale differently)."""
        if precision not in self._fits:
            samples = [
                (p.measurement.macs, p.measurement.bytes, p.measurement.ms(self.statistic))
                for f in self.table.kernel_families(precision)
                for p in f.points.values()
                if p.measurement.macs is not None and p.measurement.bytes is not None
            ]
            self._fits[precision] = TableFit.fit(samples)
        fit = self._fits[precision]
        if fit is not None:
            return fit
        try:
            return Roofline.from_target(self.target)
        except RooflineUnavailableError as e:
            raise UnsupportedOperatorError(f"a kernel is missing from the latency table and no estimate is possible: {e}") from e

    def _layouts(self, kernels, priced) -> tuple[list[KernelPrice], list[tuple[str, str, float]]]:
        """Replay the conversions the runtime inserts between kernels (layout reorders, quantize/dequantize).

        Each conversion is one node, run once per tensor however many kernels read its result.
        """
        layout: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        conversions: dict[tuple[str, str], float] = {}
        dtype = kernels[0].anchor.dtype if kernels else "float32"

        def need(tensor: str, want: str, shape) -> None:
            for direction in conversion_path(layout.get(tensor, PLAIN), want):
                if (tensor, direction) not in conversions:
                    conversions[(tensor, direction)] = self._conversion_ms(direction, shape, dtype)

        prices = []
        consumed = set()
        for k, (price, variant) in zip(kernels, priced):
            if k.residual and variant is not None and layout.get(k.residual) == BLOCKED and price.in_layout == BLOCKED:
                price = variant  # the runtime fuses the Add into the blocked conv as a sum input
                need(k.residual, BLOCKED, k.residual_shape)
            elif k.residual:  # an int8 kernel adds its residual in int8 (QLinearAdd)
                need(k.residual, QUANTIZED if price.in_layout == QUANTIZED else PLAIN, k.residual_shape)
            if k.data_input:
                need(k.data_input, price.in_layout, k.input_shape)
            for name, shape in zip(k.others, k.other_shapes):
                need(name, PLAIN, shape)
            consumed.update(k.inputs)
            layout[k.output] = price.out_layout
            shapes[k.output] = k.output_shape
            prices.append(price)
        for k in kernels:  # graph outputs leave in the plain layout
            if k.output not in consumed:
                need(k.output, PLAIN, k.output_shape)
        return prices, [(t, direction, ms) for (t, direction), ms in conversions.items()]

    def _conversion_ms(self, direction: str, shape: tuple[int, ...], dtype: str) -> float:
        key = reorder_family_key(direction, batch=int(shape[0]), spatial=tuple(shape[2:]), dtype=dtype)
        fam = self.table.family(key)
        if fam is not None and fam.points:
            return fam.lookup((int(shape[1]),), align=1, statistic=self.statistic).ms
        # No conversion of this spatial size was measured: scale by elements
        # from the conversions in that direction that were (an estimate, reported).
        rates = [
            p.measurement.ms(self.statistic) / (f.fields["batch"] * p.channels[0] * prod(f.fields["spatial"]))
            for f in self.table.families_with_pattern(direction)
            for p in f.points.values()
        ]
        if not rates:
            raise UnsupportedOperatorError(
                f"the latency table {self.lut_path} needs a {direction} between kernels but measured none; re-profile"
            )
        self._other_notes[f"reorder:{key}"] = (
            f"{direction} of shape {list(shape)} not measured; estimated from the measured per-element rate"
        )
        return float(np.median(rates)) * prod(shape)

    def _run_overhead(self, kernels: tuple[Kernel, ...]) -> float:
        entries = self.table.runtime.get("run_overhead", [])
        if not kernels or not entries:
            return 0.0
        produced = {k.output for k in kernels}
        consumed = {t for k in kernels for t in k.inputs}
        size = element_bytes(kernels[0].anchor.dtype)
        io = sum(prod(s) for k in kernels for t, s in zip(k.inputs, k.input_shapes) if t not in produced)
        io += sum(prod(k.output_shape) for k in kernels if k.output not in consumed)
        io *= size
        same = [e for e in entries if e.get("batch") == kernels[0].batch] or entries
        x = np.array([float(e["io_bytes"]) for e in same])
        y = np.array([float(e["ms"]) for e in same])
        if len(set(x)) < 2:
            return float(np.mean(y))
        slope, intercept = np.polyfit(x, y, 1)
        return float(max(0.0, intercept + max(0.0, slope) * io))

    def _calibration(self, kernels: tuple[Kernel, ...]) -> float:
        if not self.calibrate or not self.table.calibration or not kernels:
            return 1.0
        fp = structure_fingerprint(kernels)
        batch = kernels[0].batch
        for c in self.table.calibration:
            if c.get("fingerprint") == fp and c.get("batch") == batch and c.get("apply", True):
                self._other_notes[f"calibration:{fp}:{batch}"] = (
                    f"calibrated: {c.get('model', 'this model')} at batch {batch} scaled by {float(c['ratio']):.3f} "
                    f"(whole baseline measured {c.get('measured_ms', float('nan')):.3f} ms vs "
                    f"{c.get('predicted_ms', float('nan')):.3f} ms from its kernels when profiled)"
                )
                return float(c["ratio"])
        return 1.0

    def _sync_notes(self) -> None:
        notes = list(self._base_notes)
        if self._missing_families:
            examples = "; ".join(list(self._missing_families.values())[:3])
            fitted = any(isinstance(f, TableFit) for f in self._fits.values())
            how = "a roofline fitted to the table" if fitted else "the target's roofline"
            notes.append(
                f"{len(self._missing_families)} kernel famil{'y' if len(self._missing_families) == 1 else 'ies'} "
                f"not in the table, estimated by {how} (e.g. {examples}); profile the model to measure them"
            )
        notes.extend(self._other_notes.values())
        self.notes[:] = notes


def kernel_cost_inputs(kernel: Kernel) -> tuple[int, int]:
    """(MACs, bytes) of a kernel, recorded with each measured point for `TableFit`."""
    try:
        macs = kernel_flops(kernel) // 2
    except UnsupportedOperatorError:
        macs = 0
    return macs, kernel_bytes(kernel)


__all__ = ["LatencyCostModel", "LookupTableError", "Prediction", "KernelPrice", "kernel_cost_inputs"]
