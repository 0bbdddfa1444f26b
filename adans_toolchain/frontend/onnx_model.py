"""ONNX files as models: checked, normalised, and wrapped so the pipeline can treat them like any other.

The ONNX file's initializer names are the parameter names: analysis,
evaluation (onnx_evaluation.py substitutes initializers in ONNX Runtime) and
lowering all address parameters by those names, exactly as they address
`state_dict` names for a PyTorch model.

A user's ONNX file is normalised once, without changing what it computes:

- initializers listed as graph inputs (old exporters,
  `keep_initializers_as_inputs`) are dropped from the inputs, so the image
  is the only input;
- `Constant` nodes become initializers, so weights stored that way are
  parameters the analysis can bind;
- an initializer read by several nodes gets one copy per reader: an
  exporter that merges equal values (freshly initialised BatchNorm layers
  all hold ones and zeros) would otherwise tie unrelated parameters;
- every node gets a unique name (group ids and bindings name nodes);
- a fixed batch size becomes a symbolic one (the analysis probes batch 2),
  and stale `value_info` shapes are dropped.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from adans_toolchain.errors import DataError, ModelLoadError

BATCH_DIM = "batch"
# Operator domains ONNX Runtime implements without a custom-op library.
_RUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


class OnnxModel(nn.Module):
    """An ONNX model behind the nn.Module surface the pipeline uses: `forward` runs ONNX Runtime,
    `state_dict` maps initializer names to their values. It has no trainable parameters."""

    def __init__(self, model: onnx.ModelProto, *, threads: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.threads = threads
        self._session = None

    def _get_session(self):
        if self._session is None:
            from adans_toolchain.runtime.sessions import make_session

            self._session = make_session(self.model, self.threads or torch.get_num_threads())
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._get_session()
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return torch.from_numpy(np.asarray(session.run(None, feed)[0]))

    def state_dict(self, *args, **kwargs) -> "OrderedDict[str, torch.Tensor]":  # noqa: ARG002 - nn.Module signature
        return OrderedDict(
            (init.name, torch.from_numpy(numpy_helper.to_array(init).copy())) for init in self.model.graph.initializer
        )


def load_onnx_model(path: str | Path):
    """Read, check and normalise an ONNX file; returns a frontend.models.LoadedModel."""
    from adans_toolchain.frontend.loading import LoadedModel

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ...
        raise ModelLoadError(f"cannot read {path} as an ONNX model ({_first_line(e)}); is the file complete?") from e
    if not model.graph.node:
        raise ModelLoadError(f"{path} holds no ONNX graph (no nodes); is the file complete and really an ONNX model?")
    try:
        # By path, so that models with external data or over 2 GB are checked too.
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - ValidationError, or a C++ error for unreadable data
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model (onnx.checker: {_first_line(e)}); re-export it"
        ) from e
    fixed_batch = normalise_onnx(model, path.name)
    description = f"ONNX model {path.name} (opset {_opset(model)}, {len(model.graph.node)} nodes)"
    if fixed_batch:
        description += f"; its fixed batch size {fixed_batch} was made dynamic"
    module = OnnxModel(model)
    module.fixed_batch = fixed_batch
    return LoadedModel(module.eval(), "onnx", description, onnx_model=model)


def normalise_onnx(model: onnx.ModelProto, label: str = "the ONNX model") -> int | None:
    """Normalise in place (see the module docstring); returns the batch size it had if it was fixed."""
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    _constants_to_initializers(model)
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise ModelLoadError(
            f"{label} has {len(inputs)} inputs ({names}); adans compiles image classifiers with one input, "
            "a batch of images (batch, channels, height, width)"
        )
    if len(graph.output) != 1:
        names = ", ".join(f"'{o.name}'" for o in graph.output)
        raise ModelLoadError(
            f"{label} has {len(graph.output)} outputs ({names}); adans compiles classifiers with one logits output; "
            "re-export it returning only the logits"
        )
    image = inputs[0]
    tensor_type = image.type.tensor_type
    dims = list(tensor_type.shape.dim) if tensor_type.HasField("shape") else []
    shape_text = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "unknown"
        raise ModelLoadError(
            f"{label}'s input '{image.name}' is {kind}; adans evaluates float32 image classifiers (input FLOAT)"
        )
    if len(dims) != 4:
        raise ModelLoadError(
            f"{label}'s input '{image.name}' has shape {shape_text}, not an image batch; adans compiles image "
            "classifiers whose one input is (batch, channels, height, width)"
        )
    if dims[1].HasField("dim_value") and dims[3].HasField("dim_value") and dims[1].dim_value > 4 and dims[3].dim_value in (1, 3, 4):
        raise ModelLoadError(
            f"{label}'s input '{image.name}' has shape {shape_text}, channels last (NHWC); adans needs channels "
            "first (batch, channels, height, width): re-export it without the input transpose"
        )
    del graph.input[:]
    graph.input.extend(inputs)
    fixed_batch = None
    if dims[0].HasField("dim_value"):
        fixed_batch = int(dims[0].dim_value)
    for value in (graph.input[0], graph.output[0]):
        vdims = value.type.tensor_type.shape.dim
        if len(vdims):
            vdims[0].Clear()
            vdims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    _name_nodes(model)
    _unshare_initializers(model)
    return fixed_batch


def check_onnx_runs_on(module: OnnxModel, image_shape: tuple[int, ...]) -> None:
    """Clear errors for data that does not fit the ONNX model's input, before anything else runs it."""
    image = module.model.graph.input[0]
    dims = image.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    wrong = [(i, want, got) for i, (want, got) in enumerate(zip(declared, image_shape)) if want is not None and want != got]
    if wrong:
        want = [d if d is not None else "?" for d in declared]
        fix = ("give images with as many channels as the model's input" if any(i == 0 for i, _, _ in wrong)
               else "give images of that size (--input-size H W resizes an ImageFolder)")
        raise DataError(
            f"the ONNX model expects images of shape {want} (channels, height, width) but the VAL images are "
            f"{list(image_shape)}; {fix}"
        )
    try:
        logits = module(torch.zeros((2, *image_shape), dtype=torch.float32))
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        custom = sorted({f"{n.domain}:{n.op_type}" for n in module.model.graph.node if n.domain not in _RUNTIME_DOMAINS})
        if custom or "not a registered function/op" in str(e):
            named = f"custom operator(s) {', '.join(custom)}" if custom else "an operator"
            raise ModelLoadError(
                f"the ONNX model uses {named} that ONNX Runtime does not implement ({_first_line(e)}); adans runs "
                "models of standard ONNX operators: re-export the model without them"
            ) from e
        if getattr(module, "fixed_batch", None):
            raise ModelLoadError(
                f"the ONNX model was exported with a fixed batch size of {module.fixed_batch} and does not run on "
                f"other batch sizes ({_first_line(e)}); re-export it with a dynamic batch axis "
                "(torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}))"
            ) from e
        raise DataError(
            f"the ONNX model cannot run on the VAL images (shape {list(image_shape)}): {_first_line(e)}; "
            "check the data's channels and size (--input-size)"
        ) from e
    if logits.ndim != 2 or logits.shape[0] != 2:
        raise ModelLoadError(
            f"the ONNX model returns a tensor of shape {list(logits.shape)} for 2 images; adans compiles classifiers "
            "whose one output is logits of shape (batch, classes)"
        )


# -- normalisation steps -------------------------------------------------------


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    kept, moved = [], []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 and node.attribute[0].name == "value":
            moved.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0]))
        else:
            kept.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(moved)


def _unshare_initializers(model: onnx.ModelProto) -> None:
    """One copy of a float initializer per node that reads it (the first reader keeps the name)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in initializers:
                readers[name].append((node, k))
    taken = set(initializers) | {o for n in graph.node for o in n.output}
    for name, uses in readers.items():
        init = initializers[name]
        if len(uses) < 2 or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        if len({id(n) for n, _ in uses}) < 2:
            continue  # one node reading it twice: nothing to untie
        value = numpy_helper.to_array(init)
        first = uses[0][0]
        for node, k in uses[1:]:
            if node is first:
                continue
            copy_name = f"{name}__{node.name}"
            i = 2
            while copy_name in taken:
                copy_name = f"{name}__{i}"
                i += 1
            taken.add(copy_name)
            graph.initializer.append(numpy_helper.from_array(value, copy_name))
            node.input[k] = copy_name


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{i}"
            name, j = base, 2
            while name in seen:
                name = f"{base}_{j}"
                j += 1
            node.name = name
        seen.add(node.name)


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
