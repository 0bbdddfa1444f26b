"""Latency lookup tables: format, loading, header checks, interpolation.

A table is JSON (`format: adans-lut/1`):

    {
      "format": "adans-lut/1",
      "header": {target, device, cpu_model, gpu_model, onnxruntime, provider,
                 threads, batch_sizes, dtype, precisions, date, timing{...},
                 grid{align, ...}, models[...]},
      "runtime": {"per_node_ms": ..., "run_overhead": [{batch, io_bytes, ms}, ...]},
      "calibration": [{model, fingerprint, batch, measured_ms, predicted_ms, ratio}, ...],
      "families": [
        {"key": "<canonical JSON of the family fields>", "fields": {...},
         "axes": ["c_in", "c_out"],
         "points": [{"c": [16, 16], "min_ms": .., "median_ms": .., "nodes": 1,
                     "in": "blocked", "out": "blocked", "repeats": 60,
                     "macs": .., "bytes": ..,
                     "variants": {"blocked_residual": {...same fields...}}}, ...]},
        ...
      ]
    }

A *family* is a kernel signature without its channel counts (see
`kernels.Kernel.family_fields`: fused pattern, batch, dtype, spatial shapes,
kernel, strides, dilations, pads, groups); its *points* are measurements at
channel counts on a grid. `Family.lookup` is exact at a grid point and
interpolates multilinearly between the neighbouring grid points otherwise.

Channel counts that are multiples of the grid's `align` (8 by default)
run different code in ONNX Runtime (the blocked NCHWc kernels on x86, full
SIMD tiles elsewhere) and are usually cheaper than their neighbours, so the
cost is a staircase, not a line. Interpolation therefore only mixes points
of the query's own class along each axis (aligned with aligned, unaligned
with unaligned), and every aligned count up to the grid's dense limit is
itself a grid point. That keeps "16 channels is cheaper than 15" in the
prediction wherever the table measured it.

Precision: `adans-profile --precisions float,int8` also measures the int8
form of every weighted kernel (ONNX Runtime's fused QDQ kernels). Those
families carry `"precision": "int8"` in their fields; their points read and
write the `int8` layout (uint8 activations), and the table holds
`QuantizeLinear` / `DequantizeLinear` families (keyed like the reorders)
for what converting a tensor between float and int8 costs. A table without
int8 families (every table profiled before this) loads unchanged and prices
float kernels as before; it cannot price an int8 layer
(`LookupTablePrecisionError`). The format stays `adans-lut/1`: nothing an
older reader looks up changed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Iterable

from .workload import FLOAT_PRECISION

LUT_FORMAT = "adans-lut/1"
STATISTICS = ("min", "median")
BLOCKED, PLAIN = "blocked", "plain"
QUANTIZED = "int8"  # the layout an int8 kernel reads and writes: uint8 activations
QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
REORDER_INPUT, REORDER_OUTPUT = "ReorderInput", "ReorderOutput"
# Families that price a conversion between kernels, not a kernel of the model.
CONVERSION_PATTERNS = frozenset({REORDER_INPUT, REORDER_OUTPUT, QUANTIZE, DEQUANTIZE})


class LookupTableError(ValueError):
    """A lookup table cannot be read or is not a valid adans table."""


class LookupTableMismatchError(LookupTableError):
    """A lookup table was profiled for another device, runtime, thread count or batch: re-profile."""


class LookupTablePrecisionError(LookupTableError):
    """A lookup table has no entries at a precision the search prices (e.g. int8): re-profile with it."""


def missing_precision_message(source: str, precision: str, target_id: str) -> str:
    return (
        f"the latency table {source} has no {precision} kernels (it was profiled for "
        f"float only), so it cannot price {precision} layers; re-profile it with "
        f"adans-profile --target {target_id} --precisions float,{precision} ... -o {source} "
        f"(it resumes, adding the {precision} kernels), or search without {precision}"
    )


@dataclass(frozen=True)
class Measurement:
    """Timing of one single-kernel graph at one channel point."""

    min_ms: float
    median_ms: float
    nodes: int = 1  # runtime nodes the kernel executes as (fused = 1; internal reorders count)
    in_layout: str = PLAIN  # layout the kernel wants its data input in
    out_layout: str = PLAIN  # layout it leaves its output in
    repeats: int = 0
    macs: int | None = None
    bytes: int | None = None

    def ms(self, statistic: str) -> float:
        return self.min_ms if statistic == "min" else self.median_ms

    def to_dict(self) -> dict:
        d = {"min_ms": self.min_ms, "median_ms": self.median_ms, "nodes": self.nodes, "in": self.in_layout,
             "out": self.out_layout, "repeats": self.repeats}
        if self.macs is not None:
            d["macs"] = self.macs
        if self.bytes is not None:
            d["bytes"] = self.bytes
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        return cls(float(d["min_ms"]), float(d["median_ms"]), int(d.get("nodes", 1)), d.get("in", PLAIN),
                   d.get("out", PLAIN), int(d.get("repeats", 0)), d.get("macs"), d.get("bytes"))


@dataclass(frozen=True)
class Point:
    channels: tuple[int, ...]
    measurement: Measurement
    # Other contexts of the same kernel, e.g. "blocked_residual": a Conv+Add
    # whose residual already arrives in the blocked layout (ONNX Runtime then
    # fuses the Add into the convolution as a sum).
    variants: tuple[tuple[str, Measurement], ...] = ()

    def variant(self, name: str) -> Measurement | None:
        return dict(self.variants).get(name)

    def to_dict(self) -> dict:
        d = {"c": list(self.channels), **self.measurement.to_dict()}
        if self.variants:
            d["variants"] = {k: v.to_dict() for k, v in self.variants}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        variants = tuple(sorted((k, Measurement.from_dict(v)) for k, v in d.get("variants", {}).items()))
        return cls(tuple(int(c) for c in d["c"]), Measurement.from_dict(d), variants)


@dataclass(frozen=True)
class Estimate:
    """A family's cost at one channel point: measured (exact) or interpolated."""

    ms: float
    nodes: int
    in_layout: str
    out_layout: str
    exact: bool
    extrapolated: bool = False
    variants: tuple[tuple[str, "Estimate"], ...] = ()

    def variant(self, name: str) -> "Estimate | None":
        return dict(self.variants).get(name)


def _aligned(value: int, align: int) -> bool:
    return align > 1 and value % align == 0


def _axis_weights(values: list[int], q: int, align: int) -> tuple[list[tuple[int, float]], bool]:
    """Grid values along one axis and their linear weights for query q; (weights, extrapolated)."""
    if q in values:
        return [(q, 1.0)], False
    same = [v for v in values if _aligned(v, align) == _aligned(q, align)] if align > 1 else values
    cands = same or values
    below = [v for v in cands if v < q]
    above = [v for v in cands if v > q]
    if below and above:
        lo, hi = below[-1], above[0]
        w = (q - lo) / (hi - lo)
        return [(lo, 1.0 - w), (hi, w)], False
    side = below[-2:] if below else above[:2]
    if len(side) == 1:
        return [(side[0], 1.0)], True
    v1, v2 = (side[1], side[0]) if below else (side[0], side[1])  # v1 nearest to q
    w = (q - v1) / (v2 - v1)
    return [(v1, 1.0 - w), (v2, w)], True


@dataclass
class Family:
    key: str
    fields: dict
    axes: tuple[str, ...]
    points: dict[tuple[int, ...], Point] = field(default_factory=dict)
    _axis_values: list[list[int]] | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def add(self, point: Point) -> None:
        if len(point.channels) != len(self.axes):
            raise LookupTableError(f"point {point.channels} has {len(point.channels)} channel counts, family has axes {self.axes}")
        self.points[point.channels] = point
        self._axis_values = None
        self._cache.clear()

    def axis_values(self) -> list[list[int]]:
        if self._axis_values is None:
            self._axis_values = [sorted({p[i] for p in self.points}) for i in range(len(self.axes))]
        return self._axis_values

    def lookup(self, channels: tuple[int, ...], *, align: int, statistic: str = "min") -> Estimate:
        """Cost at `channels`: exact at a grid point, else multilinear within the alignment class."""
        cache_key = (channels, align, statistic)
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = self._cache[cache_key] = self._lookup(channels, align, statistic)
        return hit

    def _lookup(self, channels: tuple[int, ...], align: int, statistic: str) -> Estimate:
        if not self.points:
            raise LookupTableError(f"family {self.fields.get('pattern')} has no measured points")
        point = self.points.get(tuple(channels))
        if point is not None:
            return _estimate_from(point, statistic, exact=True)
        per_axis = []
        extrapolated = False
        for values, q in zip(self.axis_values(), channels):
            weights, extra = _axis_weights(values, int(q), align)
            per_axis.append(weights)
            extrapolated |= extra
        corners = []
        for combo in product(*per_axis):
            c = tuple(v for v, _ in combo)
            w = math.prod(wt for _, wt in combo)
            if c in self.points and w != 0.0:
                corners.append((self.points[c], w))
        total = sum(w for _, w in corners)
        if not corners or abs(total) < 1e-12:
            # The grid is not a full product here (e.g. a Pad that cannot
            # shrink channels): take the nearest measured point.
            nearest = min(self.points.values(), key=lambda p: sum(abs(a - b) for a, b in zip(p.channels, channels)))
            est = _estimate_from(nearest, statistic, exact=False)
            return Estimate(est.ms, est.nodes, est.in_layout, est.out_layout, False, True, est.variants)
        corners = [(p, w / total) for p, w in corners]
        return _interpolate(corners, statistic, extrapolated)

    def to_dict(self) -> dict:
        return {"key": self.key, "fields": self.fields, "axes": list(self.axes),
                "points": [p.to_dict() for _, p in sorted(self.points.items())]}

    @classmethod
    def from_dict(cls, d: dict) -> "Family":
        fam = cls(d["key"], d.get("fields", {}), tuple(d.get("axes", ())))
        for p in d.get("points", []):
            fam.add(Point.from_dict(p))
        return fam


def _estimate_from(point: Point, statistic: str, *, exact: bool) -> Estimate:
    m = point.measurement
    variants = tuple((k, Estimate(v.ms(statistic), v.nodes, v.in_layout, v.out_layout, exact)) for k, v in point.variants)
    return Estimate(m.ms(statistic), m.nodes, m.in_layout, m.out_layout, exact, False, variants)


def _interpolate(corners: list[tuple[Point, float]], statistic: str, extrapolated: bool) -> Estimate:
    ms = max(0.0, sum(p.measurement.ms(statistic) * w for p, w in corners))
    # Layout and node count are discrete: take them from the heaviest corner.
    lead = max(corners, key=lambda pw: abs(pw[1]))[0].measurement
    names = set.intersection(*(set(dict(p.variants)) for p, _ in corners)) if corners else set()
    variants = []
    for name in sorted(names):
        v_ms = max(0.0, sum(p.variant(name).ms(statistic) * w for p, w in corners))
        v_lead = max(corners, key=lambda pw: abs(pw[1]))[0].variant(name)
        variants.append((name, Estimate(v_ms, v_lead.nodes, v_lead.in_layout, v_lead.out_layout, False, extrapolated)))
    return Estimate(ms, lead.nodes, lead.in_layout, lead.out_layout, False, extrapolated, tuple(variants))


def conversion_path(have: str, want: str) -> tuple[str, ...]:
    """The conversions the runtime inserts for a tensor produced in layout `have` and read in `want`.

    Float and int8 meet only through the plain layout: a blocked tensor is
    reordered to plain before it is quantized, a dequantized one reordered
    to blocked after.
    """
    if have == want:
        return ()
    to_plain = {BLOCKED: (REORDER_OUTPUT,), QUANTIZED: (DEQUANTIZE,), PLAIN: ()}
    from_plain = {BLOCKED: (REORDER_INPUT,), QUANTIZED: (QUANTIZE,), PLAIN: ()}
    try:
        return to_plain[have] + from_plain[want]
    except KeyError as e:
        raise LookupTableError(f"unknown layout {e.args[0]!r} in the table; known: {BLOCKED}, {PLAIN}, {QUANTIZED}") from None


def reorder_family_key(direction: str, *, batch: int, spatial: tuple[int, ...], dtype: str) -> str:
    """Key of the family that prices one conversion of a tensor (see `CONVERSION_PATTERNS`).

    `ReorderInput` to blocked, `ReorderOutput` to plain; `QuantizeLinear` float
    to int8, `DequantizeLinear` back (each with the transposes the runtime
    adds to run int8 convolutions channels-last). Keyed by the tensor's shape
    without its channel count; `dtype` is the float side's element type.
    """
    return json.dumps({"pattern": direction, "batch": batch, "spatial": list(spatial), "dtype": dtype},
                      sort_keys=True, separators=(",", ":"))


def family_precision(family: Family) -> str:
    return str(family.fields.get("precision", FLOAT_PRECISION))


@dataclass
class LookupTable:
    header: dict
    families: dict[str, Family] = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    calibration: list[dict] = field(default_factory=list)

    @property
    def align(self) -> int:
        return int(self.header.get("grid", {}).get("align", 1) or 1)

    def family(self, key: str) -> Family | None:
        return self.families.get(key)

    def add_family(self, family: Family) -> Family:
        existing = self.families.get(family.key)
        if existing is None:
            self.families[family.key] = family
            return family
        for point in family.points.values():
            existing.add(point)
        return existing

    def families_with_pattern(self, pattern: str) -> Iterable[Family]:
        return (f for f in self.families.values() if f.fields.get("pattern") == pattern)

    def kernel_families(self, precision: str | None = None) -> Iterable[Family]:
        """Families of model kernels (conversions left out), at `precision` when given."""
        return (f for f in self.families.values()
                if f.fields.get("pattern") not in CONVERSION_PATTERNS
                and (precision is None or family_precision(f) == precision))

    def precisions(self) -> set[str]:
        """Precisions the table has measured kernels at ('fp32', 'int8'); a table from before int8: {'fp32'}."""
        return {family_precision(f) for f in self.kernel_families() if f.points}

    # -- file format ----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": LUT_FORMAT,
            "header": self.header,
            "runtime": self.runtime,
            "calibration": self.calibration,
            "families": [f.to_dict() for f in self.families.values()],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "table") -> "LookupTable":
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LookupTableError(f"{source} is not an adans latency table (format {fmt!r}, expected {LUT_FORMAT!r})")
        table = cls(dict(data.get("header", {})), {}, dict(data.get("runtime", {})), list(data.get("calibration", [])))
        try:
            for f in data.get("families", []):
                table.add_family(Family.from_dict(f))
        except (KeyError, TypeError, ValueError) as e:
            raise LookupTableError(f"{source} has a malformed family entry ({e}); re-profile") from e
        return table

    @classmethod
    def load(cls, path: str | Path) -> "LookupTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LookupTableError(f"lookup table {path} does not exist; build it with adans-profile") from None
        except (OSError, json.JSONDecodeError) as e:
            raise LookupTableError(f"cannot read lookup table {path}: {e}") from e
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        """Atomic write (a crash mid-write leaves the previous file intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class RuntimeFacts:
    """What the table must match, as seen by the process that uses it."""

    target_id: str
    provider: str
    threads: int
    expected_onnxruntime: str | None  # None: accept the table's version (and report it)
    device_name: str | None  # the host's device string when the target is the host, else None
    device_match: tuple[str, ...] = ()


def check_header(header: dict, facts: RuntimeFacts, *, source: str) -> list[str]:
    """Refuse a table profiled elsewhere; returns notes for what was accepted without a check."""
    problems = []
    if header.get("target") != facts.target_id:
        problems.append(f"target '{header.get('target')}' != '{facts.target_id}'")
    if header.get("provider") != facts.provider:
        problems.append(f"execution provider {header.get('provider')} != {facts.provider}")
    if header.get("threads") != facts.threads:
        problems.append(f"threads {header.get('threads')} != {facts.threads}")
    if facts.expected_onnxruntime is not None and header.get("onnxruntime") != facts.expected_onnxruntime:
        problems.append(f"onnxruntime {header.get('onnxruntime')} != {facts.expected_onnxruntime}")
    device = str(header.get("device", ""))
    if facts.device_name is not None and device != facts.device_name:
        problems.append(f"device '{device}' != '{facts.device_name}'")
    if facts.device_match and not any(m.lower() in device.lower() for m in facts.device_match):
        problems.append(f"device '{device}' is not a {' / '.join(facts.device_match)}")
    if problems:
        raise LookupTableMismatchError(
            f"lookup table {source} does not match this target/runtime: {'; '.join(problems)}. "
            f"Re-profile on the device: adans-profile --target {facts.target_id} ... -o {source}"
        )
    notes = []
    if facts.expected_onnxruntime is None:
        notes.append(
            f"latency table profiled with onnxruntime {header.get('onnxruntime')} on {device} "
            f"({header.get('date', 'date unknown')}); deploy with that runtime for the prediction to hold"
        )
    return notes


def check_batch(header: dict, batch: int, *, source: str, target_id: str) -> None:
    batches = header.get("batch_sizes", [])
    if batch not in batches:
        raise LookupTableMismatchError(
            f"lookup table {source} was profiled for batch sizes {batches}, not {batch}. "
            f"Re-profile with it: adans-profile --target {target_id} --batch {batch} ... -o {source}"
        )
