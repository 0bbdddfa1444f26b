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
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from typing import Iterator

import onnx
import torch
import torch.nn as nn

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
