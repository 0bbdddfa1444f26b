"""Export a PyTorch module to ONNX with parameter names kept as initializer names.

The whole design rests on one name space shared by the PyTorch model (where
candidates are evaluated by substituting parameters) and the ONNX graph
(where the winner is lowered). The TorchScript-based exporter keeps
`state_dict` names; these options keep them intact:

- `training=PRESERVE` on a module in eval mode: constant folding still runs,
  but the eval-mode peephole that folds BatchNormalization into Conv (and
  renames the weights) does not.
- `keep_initializers_as_inputs=True`: otherwise the exporter merges
  initializers with equal values into one (freshly initialised BatchNorm
  layers all share ones and zeros), which would tie unrelated parameters.
  The parameters are removed from the graph inputs again afterwards.

One thing constant folding still renames: a Linear applied to a tensor of
more than two axes (ConvNeXt's channels-last MLP) exports as MatMul(x, W^T),
and the folded W^T becomes a constant named `onnx::MatMul_N`, which no
parameter is called. After export each such constant that equals exactly
the transpose of one parameter is replaced by Transpose(parameter), the
parameter stored under its own name and layout; onnxsim folds it again in
the emitted model.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from typing import Iterator

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from adans_toolchain.errors import ModelLoadError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(module: nn.Module, image_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """Export `module` (eval mode) for inputs of shape (batch, *image_shape), batch dynamic."""
    module = module.eval()
    example = torch.zeros((1, *image_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        # The exporter prints its whole IR graph on failure; the error we
        # raise names the cause in one line instead.
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), _native_output_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE,
                keep_initializers_as_inputs=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise ModelLoadError(
            f"the model does not export to ONNX for input shape {list(example.shape)} ({type(e).__name__}: {_first_line(e)}); "
            "export it to ONNX yourself and give adans the .onnx file, or rerun with --debug and report the "
            "operator it names"
        ) from e
    model = onnx.load_from_string(buffer.getvalue())
    _drop_initializer_inputs(model)
    _name_folded_transposes(model, module)
    if len(model.graph.output) != 1:
        raise ModelLoadError(
            f"the model has {len(model.graph.output)} outputs; adans compiles classifiers with one logits output"
        )
    return model


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """File descriptors 1 and 2 pointed at the null device: the exporter's C++ logger prints its IR graph to stdout.

    torch.onnx's setup_onnx_logging tests the function `_jit_is_onnx_log_enabled`
    instead of calling it, so that logger is on during every export.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as null:
            for fd in saved:
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    initializer_names = {i.name for i in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "no message"


# The prefix of the names the TorchScript exporter gives constants it creates itself.
EXPORTER_CONSTANT = "onnx::"


def _name_folded_transposes(model: onnx.ModelProto, module: nn.Module) -> None:
    """Replace every exporter constant equal to a parameter's transpose, read only as a MatMul weight, by Transpose(parameter).

    The Transpose node outputs the constant's own tensor name, so its
    readers are unchanged. A constant equal to the transpose of several
    parameters (identically initialised ones) is named after the one whose
    bias the MatMul's following Add reads; failing that it is left as it is
    (and the analysis freezes its channels, with the reason).
    """
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append(node if node.op_type == "MatMul" and i == 1 else None)
    params = {name: p.detach().cpu().numpy() for name, p in module.named_parameters()}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, value in params.items():
        if value.ndim == 2:
            by_shape.setdefault(value.shape[::-1], []).append(name)
    existing = {i.name for i in graph.initializer}
    transposes, kept = [], []
    for init in graph.initializer:
        uses = readers.get(init.name, [])
        if not init.name.startswith(EXPORTER_CONSTANT) or len(init.dims) != 2 or not uses or None in uses:
            kept.append(init)
            continue
        value = numpy_helper.to_array(init)
        matches = [n for n in by_shape.get(tuple(value.shape), []) if np.array_equal(params[n].T, value)]
        if len(matches) > 1:
            biases = {i for node in uses for reader in _readers_of(graph, node.output[0]) for i in reader.input}
            matches = [n for n in matches if n.removesuffix("weight") + "bias" in biases]
        if len(matches) != 1:
            kept.append(init)
            continue
        name = matches[0]
        if name not in existing:
            kept.append(numpy_helper.from_array(params[name].astype(value.dtype), name))
            existing.add(name)
        transposes.append(helper.make_node("Transpose", [name], [init.name], name=f"{name}/transpose", perm=[1, 0]))
    if not transposes:
        return
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = transposes + list(graph.node)  # their inputs are initializers: first is topological order
    del graph.node[:]
    graph.node.extend(nodes)


def _readers_of(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if tensor in n.input]
