"""Building blocks shared by several test modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision

from adans_toolchain.analysis.channels import ChannelAnalysis, analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.architectures.cifar_resnet import cifar_resnet


@dataclass
class Exported:
    module: torch.nn.Module
    onnx_model: object
    analysis: ChannelAnalysis
    image_shape: tuple[int, int, int]


def build(name: str) -> torch.nn.Module:
    if name == "cifar_resnet20":
        return cifar_resnet(20)
    if name == "googlenet":
        return torchvision.models.googlenet(weights=None, init_weights=False, aux_logits=False)
    return torchvision.models.get_model(name, weights=None)


def export_and_analyse(module: torch.nn.Module, image_shape: tuple[int, int, int]) -> Exported:
    module = module.eval()
    model = export_onnx(module, image_shape)
    return Exported(module, model, analyse_channels(Graph.from_model(model, image_shape)), image_shape)


def with_a_weight_scale_tripled(int8_model, spec):
    """A copy of a QDQ model whose first quantized layer's weight scale is three times what it should be: what a
    wrong scale or a saturating integer kernel does to the logits, for tests of the int8 validation."""
    import onnx
    from onnx import numpy_helper

    tampered = onnx.ModelProto()
    tampered.CopyFrom(int8_model)
    node, _ = next(k for k in sorted(spec.constants) if k[1] == 1)
    dq = next(n for n in tampered.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
              {i for m in tampered.graph.node if m.name == node for i in m.input})
    scale = next(i for i in tampered.graph.initializer if i.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 3, scale.name))
    return tampered
