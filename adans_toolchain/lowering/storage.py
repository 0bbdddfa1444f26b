"""How much storage an emitted ONNX model's weights take: dense, bitmask + values, and as a compressed file."""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class Storage:
    weights: int  # floating-point initializer elements
    nonzero_weights: int
    dense_bytes: int  # fp32
    bitmask_plus_values_bytes: int  # one bit per weight plus the non-zero values
    file_bytes: int
    file_bytes_zlib: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def storage(model: onnx.ModelProto) -> Storage:
    elements = nonzero = 0
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype.kind == "f":
            elements += value.size
            nonzero += int(np.count_nonzero(value))
    file_bytes = model.SerializeToString()
    return Storage(
        weights=elements,
        nonzero_weights=nonzero,
        dense_bytes=4 * elements,
        bitmask_plus_values_bytes=(elements + 7) // 8 + 4 * nonzero,
        file_bytes=len(file_bytes),
        file_bytes_zlib=len(zlib.compress(file_bytes, 9)),
    )
