"""What a runtime executes: a workload's operators grouped into kernels.

The search prices the *unfused* exported graph (Conv -> BatchNormalization
-> Relu as three nodes, shape arithmetic for the CIFAR shortcut's padding
still present); the emitted model is that graph after onnxsim (BatchNorm
folded into the Conv, shape arithmetic folded to constants, consecutive
Slices merged), and ONNX Runtime then fuses Conv with a following Add
and/or activation into one kernel. A cost model that prices operators one by
one would charge the search graph for work the runtime never does, and would
price the two forms of the same plan differently. `executed_kernels` maps
either form to the same list of kernels:

- shape computations (everything that only feeds a Reshape target, Pad
  amounts, Slice bounds, ...) are folded before run time and dropped;
- operators that leave their input unchanged (a Slice or Pad whose output
  shape equals its input shape, a Reshape to the same shape) are dropped;
- Conv [+ BatchNormalization] [+ Add of a same-shape residual] [+ activation]
  is one kernel when each link is the only consumer of the previous one
  (BatchNorm folds into the weights; ONNX Runtime's FusedConv and its NCHWc
  Conv take the residual and the activation);
- Gemm / MatMul [+ bias Add] [+ activation] is one kernel;
- consecutive Slices are one kernel;
- everything else is one kernel per operator.

A kernel's *family* is everything about it except its channel counts; a
lookup table stores one family per key with measurements over a grid of
channel counts (see `lut.py`).

Precision: a kernel whose weighted operator has int8 weights
(`OpWorkload.weight_bits`, set by precision.with_weight_bits) runs as ONNX
Runtime's fused integer kernel (QLinearConv, QGemm, QLinearMatMul) on uint8
activations; its family carries `"precision": "int8"`, so it is priced from
the table's int8 entries. Float families carry no precision field, so the
keys of tables profiled before int8 existed are unchanged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from math import prod

from .workload import FLOAT_PRECISION, OpWorkload, Shape, Workload, precision_name

# Activations ONNX Runtime fuses into the preceding Conv/Gemm (FusedConv,
# NCHWc Conv, FusedGemm).
FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"})

# Input positions that carry shapes or amounts rather than data: a tensor
# consumed only at such positions (or by operators that only feed them) is
# shape arithmetic, constant-folded by onnxsim before run time.
_PARAMETER_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Clip": frozenset({1, 2}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "TopK": frozenset({1}),
    "Split": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "OneHot": frozenset({1, 2}),
}

# Operators that are the identity when their output shape equals their input shape.
_IDENTITY_WHEN_SAME_SHAPE = frozenset(
    {"Slice", "Pad", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Tile", "Identity", "Dropout"}
)

_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_GEMM_OPS = frozenset({"Gemm", "MatMul"})

# Activations of an int8 kernel: ONNX Runtime's QDQ kernels read and write
# uint8 (quantization/qdq.py INT8_SCHEME: uint8, asymmetric, per tensor).
QUANTIZED_ACTIVATION_DTYPE = "uint8"

BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}


def element_bytes(dtype: str) -> int:
    try:
        return BYTES_PER_ELEMENT[dtype]
    except KeyError:
        raise ValueError(f"unknown element type '{dtype}'; known: {', '.join(sorted(BYTES_PER_ELEMENT))}") from None


def _mask(shape: Shape) -> list[int]:
    """A shape with its channel axis (axis 1) replaced by -1: the family does not depend on it."""
    return [(-1 if i == 1 else int(d)) for i, d in enumerate(shape)]


@dataclass(frozen=True)
class Kernel:
    """One unit the runtime executes: one operator, or a fused chain of them."""

    pattern: str  # e.g. "Conv+Add+Relu"; BatchNormalization folded into a Conv is not named
    ops: tuple[OpWorkload, ...]  # the operators, anchor first
    data_input: str | None  # the tensor the anchor reads
    residual: str | None  # the other input of a fused Add
    others: tuple[str, ...]  # further activation inputs (binary operators, Concat)
    output: str
    residual_shape: Shape = ()
    other_shapes: tuple[Shape, ...] = ()

    @property
    def anchor(self) -> OpWorkload:
        return self.ops[0]

    @property
    def input_shape(self) -> Shape:
        return self.anchor.input_shape

    @property
    def output_shape(self) -> Shape:
        return self.ops[-1].output_shape

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every activation tensor the kernel reads, data input first."""
        first = (self.data_input,) if self.data_input else ()
        return first + ((self.residual,) if self.residual else ()) + self.others

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        """Shapes of `inputs`, in the same order."""
        first = (self.input_shape,) if self.data_input else ()
        return first + ((self.residual_shape,) if self.residual else ()) + self.other_shapes

    @property
    def batch(self) -> int:
        return int(self.input_shape[0]) if self.input_shape else 1

    @property
    def is_conv(self) -> bool:
        return self.anchor.op_type in _CONV_OPS

    @property
    def is_depthwise(self) -> bool:
        a = self.anchor
        return (
            self.is_conv and a.groups > 1 and len(a.input_shape) > 1 and a.groups == a.input_shape[1] == a.output_shape[1]
        )

    @property
    def precision(self) -> str:
        """'fp32', or 'int8' for a weighted kernel with int8 weights (which then runs on uint8 activations)."""
        return precision_name(self.anchor.weight_bits)

    @property
    def quantized(self) -> bool:
        return self.precision != FLOAT_PRECISION

    @property
    def activation_dtype(self) -> str:
        return QUANTIZED_ACTIVATION_DTYPE if self.quantized else self.anchor.dtype

    def with_weight_bits(self, bits: int) -> "Kernel":
        """The same kernel with its weighted operator at `bits`-bit weights."""
        from dataclasses import replace

        return replace(self, ops=(replace(self.anchor, weight_bits=bits), *self.ops[1:]))

    @property
    def folds_batchnorm(self) -> bool:
        return any(op.op_type == "BatchNormalization" for op in self.ops[1:])

    def default_axes(self) -> tuple[str, ...]:
        """The channel axes a lookup table varies for this kernel's family."""
        if len(self.input_shape) < 2 or len(self.output_shape) < 2:
            return ()
        if self.is_conv:
            return ("c",) if self.is_depthwise else ("c_in", "c_out")
        if self.anchor.op_type in _GEMM_OPS:
            return ("k", "n")
        if self.input_shape[1] == self.output_shape[1]:
            return ("c",)
        return ("c_in", "c_out")

    def channels(self, axes: tuple[str, ...]) -> tuple[int, ...]:
        values = {
            "c_in": lambda: self.input_shape[1],
            "c_out": lambda: self.output_shape[1],
            "c": lambda: self.output_shape[1],
            "k": lambda: self.input_shape[-1],
            "n": lambda: self.output_shape[-1],
        }
        try:
            return tuple(int(values[a]()) for a in axes)
        except KeyError as e:
            raise ValueError(f"unknown channel axis {e.args[0]!r}; known: {', '.join(values)}") from None

    def with_channels(self, axes: tuple[str, ...], channels: tuple[int, ...]) -> "Kernel":
        """The same kernel with other channel counts along `axes` (shapes and weight shapes follow)."""
        from dataclasses import replace

        values = dict(zip(axes, channels))
        c_in = values.get("c_in", values.get("c", values.get("k")))
        c_out = values.get("c_out", values.get("c", values.get("n")))

        def set_c(shape: Shape, c: int | None) -> Shape:
            if c is None or len(shape) < 2:
                return shape
            return (shape[0], int(c), *shape[2:]) if len(shape) > 2 else (shape[0], int(c))

        ops = []
        for i, op in enumerate(self.ops):
            in_shape = set_c(op.input_shape, c_in if i == 0 else c_out)
            out_shape = set_c(op.output_shape, c_out)
            w, groups = op.weight_shape, op.groups
            if i == 0 and w and op.op_type in _CONV_OPS:
                ci, co = in_shape[1], out_shape[1]
                groups = ci if self.is_depthwise else op.groups
                w = (co, ci // groups, *op.kernel) if op.op_type == "Conv" else (ci, co // groups, *op.kernel)
            elif i == 0 and w and op.op_type in _GEMM_OPS:
                k, n = in_shape[-1], out_shape[-1]
                w = (n, k) if len(w) == 2 and w[0] == op.output_shape[-1] and w[0] != w[1] else (k, n)
            elif w and op.op_type == "BatchNormalization":
                w = (out_shape[1],)
            extra = tuple(set_c(s, c_out) if len(s) > 1 and len(op.output_shape) > 1 and s[1] == op.output_shape[1] else s
                          for s in op.extra_input_shapes)
            ops.append(replace(op, input_shape=in_shape, output_shape=out_shape, weight_shape=w, groups=groups,
                               extra_input_shapes=extra))
        residual = set_c(self.residual_shape, c_out) if self.residual else self.residual_shape
        others = tuple(set_c(s, c_out) if len(s) > 1 and s[1] == self.output_shape[1] else s for s in self.other_shapes)
        return replace(self, ops=tuple(ops), residual_shape=residual, other_shapes=others)

    @cached_property
    def family_fields(self) -> dict:
        """Everything that identifies this kernel's family (channel counts excluded)."""
        a = self.anchor
        if self.is_depthwise:
            groups: object = "depthwise"
        else:
            groups = int(a.groups)
        fields = {
            "pattern": self.pattern,
            "batch": self.batch,
            "dtype": a.dtype,
            "input": _mask(self.input_shape),
            "output": _mask(self.output_shape),
            "residual": _mask(self.residual_shape) if self.residual else None,
            "others": [_mask(s) for s in self.other_shapes],
            "kernel": list(a.kernel),
            "strides": list(a.strides),
            "dilations": list(a.dilations),
            "groups": groups,
            "attrs": {k: _jsonable(v) for k, v in a.attributes},
        }
        if self.quantized:  # float families keep the keys they had before int8 was profiled
            fields["precision"] = self.precision
        return fields

    @cached_property
    def family_key(self) -> str:
        return json.dumps(self.family_fields, sort_keys=True, separators=(",", ":"))

    # -- what the kernel moves and computes (for roofline and memory) --------
    def activation_bytes(self) -> int:
        """Bytes read from and written to activations (inputs once, output once)."""
        size = element_bytes(self.activation_dtype)
        shapes = [self.input_shape, self.output_shape]
        if self.residual:
            shapes.append(self.residual_shape)
        shapes.extend(self.other_shapes)
        return size * sum(prod(s) for s in shapes if s)

    def weight_elements(self) -> tuple[int, int]:
        """(weight elements, bias elements) as deployed: a folded BatchNorm becomes a bias."""
        a = self.anchor
        weights = prod(a.weight_shape) if a.weight_shape else 0
        bias = 0
        if a.op_type == "BatchNormalization":
            # Inference BatchNormalization keeps scale, shift, mean and variance.
            return 0, 4 * int(a.output_shape[1])
        if a.op_type == "LayerNormalization":
            # Scale and bias over the normalised axes (not necessarily axis 1: ConvNeXt's is channels-last).
            return weights, weights if a.has_bias else 0
        if a.weight_shape and (a.has_bias or self.folds_batchnorm):
            bias = int(self.output_shape[1]) if len(self.output_shape) > 1 else int(self.output_shape[-1])
        return weights, bias


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _shape_computations(ops: list[OpWorkload]) -> set[int]:
    """Indices of operators whose outputs only feed parameter inputs (shape arithmetic)."""
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, op in enumerate(ops):
        for pos, name in enumerate(op.input_names):
            if name:
                consumers[name].append((i, pos))
    shape_ops: set[int] = set()
    for i in range(len(ops) - 1, -1, -1):  # consumers come after producers
        outputs = [o for o in ops[i].output_names if o]
        if not outputs:
            continue

        def shape_like(tensor: str) -> bool:
            uses = consumers.get(tensor, [])
            return bool(uses) and all(
                j in shape_ops or pos in _PARAMETER_INPUTS.get(ops[j].op_type, ()) for j, pos in uses
            )

        if all(shape_like(o) for o in outputs):
            shape_ops.add(i)
    return shape_ops


def _resolve(name: str, alias: dict[str, str]) -> str:
    while name in alias:
        name = alias[name]
    return name


def executed_kernels(workload: Workload) -> tuple[Kernel, ...]:
    """The kernels ONNX Runtime executes for `workload`, in topological order."""
    all_ops = list(workload)
    drop = _shape_computations(all_ops)
    alias: dict[str, str] = {}
    ops: list[OpWorkload] = []
    for i, op in enumerate(all_ops):
        if i in drop:
            continue
        if (
            op.op_type in _IDENTITY_WHEN_SAME_SHAPE
            and op.input_shape == op.output_shape
            and not op.extra_input_shapes
            and op.input_names
            and op.output_names
        ):
            alias[op.output_names[0]] = _resolve(op.input_names[0], alias)
            continue
        ops.append(op)

    def data_inputs(op: OpWorkload) -> list[str]:
        # The first input is the data input; other activation inputs follow in
        # order, one per shape in extra_input_shapes.
        names = [_resolve(n, alias) for n in op.input_names if n]
        params = _PARAMETER_INPUTS.get(op.op_type, frozenset())
        acts = [n for pos, n in enumerate(names) if pos not in params]
        return acts[: 1 + len(op.extra_input_shapes)]

    inputs_of = [data_inputs(op) for op in ops]
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, names in enumerate(inputs_of):
        for n in dict.fromkeys(names):
            consumers[n].append(i)
    out_of = [op.output_names[0] if op.output_names else op.name for op in ops]

    def sole_consumer(tensor: str) -> int | None:
        uses = consumers.get(tensor, [])
        return uses[0] if len(uses) == 1 else None

    absorbed: set[int] = set()
    placed: list[tuple[int, Kernel]] = []
    for i, op in enumerate(ops):
        if i in absorbed:
            continue
        chain = [i]
        residual: str | None = None
        residual_shape: Shape = ()
        t = op.op_type
        if t in _CONV_OPS or t in _GEMM_OPS:
            j = sole_consumer(out_of[i])
            if t in _CONV_OPS and j is not None and ops[j].op_type == "BatchNormalization" and inputs_of[j][:1] == [out_of[chain[-1]]]:
                chain.append(j)
                j = sole_consumer(out_of[j])
            if j is not None and ops[j].op_type == "Add":
                add = ops[j]
                names = inputs_of[j]
                if t in _CONV_OPS and len(names) == 2 and add.extra_input_shapes and add.extra_input_shapes[0] == add.input_shape == add.output_shape:
                    chain.append(j)
                    residual = names[1] if names[0] == out_of[chain[-2]] else names[0]
                    residual_shape = add.output_shape
                    j = sole_consumer(out_of[j])
                elif t == "MatMul" and len(names) == 1:  # constant bias: MatMul+Add is a Gemm
                    chain.append(j)
                    j = sole_consumer(out_of[j])
            if j is not None and ops[j].op_type in FUSABLE_ACTIVATIONS:
                chain.append(j)
        elif t == "Slice":
            j = sole_consumer(out_of[i])
            while j is not None and ops[j].op_type == "Slice":
                chain.append(j)
                j = sole_consumer(out_of[j])
        absorbed.update(chain)
        members = tuple(ops[k] for k in chain)
        names = inputs_of[i]
        others = tuple(names[1:]) if len(chain) == 1 else ()
        other_shapes = tuple(op.extra_input_shapes[: len(others)])
        if t == "Slice":
            pattern = "Slice"  # onnxsim merges consecutive Slices into one
        else:
            pattern = "+".join(m.op_type for m in members if not (m.op_type == "BatchNormalization" and m is not op))
        # A kernel runs when its last member would: a fused Add may read a
        # residual produced after the anchor, so order by the last member.
        placed.append((chain[-1], Kernel(
                pattern=pattern,
                ops=members,
                data_input=names[0] if names else None,
                residual=residual,
                others=others,
                output=out_of[chain[-1]],
                residual_shape=residual_shape,
                other_shapes=other_shapes,
            )
        ))
    return tuple(k for _, k in sorted(placed, key=lambda p: p[0]))


def structure_fingerprint(kernels: tuple[Kernel, ...]) -> str:
    """Identifies a model's kernel structure independently of its channel counts.

    Every pruning plan of one model, in either graph form, has the same
    fingerprint; lookup-table calibration is keyed by it. Precision is left
    out: a model's calibration ratio then scales its float and int8 plans
    alike, so a search compares them on the same footing.
    """
    import hashlib

    def structure(kernel: Kernel) -> str:
        fields = {k: v for k, v in kernel.family_fields.items() if k != "precision"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    text = "\n".join(structure(k) for k in kernels)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
