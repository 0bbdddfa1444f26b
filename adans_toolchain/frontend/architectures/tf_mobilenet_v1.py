# PyTorch definition matching TF-slim MobileNetV1 (BN folded into conv bias, ReLU6, TF 'SAME' padding,
# 1001 classes with index 0 = background). Input: RGB in [-1, 1] (pixel/127.5 - 1), NCHW.
#
# Source: ../shared/data/imagenet/tf_mobilenet_v1.py of the adans project workspace (the definition that
# matches Google's TF-slim MobileNetV1 checkpoints, Apache-2.0, de-quantized with BN folded into the conv
# bias: mobilenet_v1_0.5_160.pth, mobilenet_v1_0.75_192.pth). Copied unchanged below the line; only the
# `tf_mobilenet_v1` factory and TF_MOBILENET_V1 table at the end were added for adans' built-in `--arch` names.
# -----------------------------------------------------------------------------------------------------------
import math, torch.nn as nn, torch.nn.functional as F
DW_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
BASE = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
class Conv2dSame(nn.Conv2d):
    def forward(self, x):
        ih, iw = x.shape[-2:]; kh, kw = self.kernel_size; s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0); pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph or pw: x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
class TFMobileNetV1(nn.Module):
    def __init__(self, width_mult=1.0, num_classes=1001):
        super().__init__()
        ch = [max(int(c * width_mult), 8) for c in BASE]
        layers = [Conv2dSame(3, ch[0], 3, 2, bias=True)]
        for i, s in enumerate(DW_STRIDES):
            layers.append(Conv2dSame(ch[i], ch[i], 3, s, groups=ch[i], bias=True))
            layers.append(Conv2dSame(ch[i], ch[i + 1], 1, 1, bias=True))
        self.features = nn.ModuleList(layers)
        self.classifier = nn.Linear(ch[-1], num_classes)
    def forward(self, x):
        for conv in self.features: x = F.relu6(conv(x))
        return self.classifier(x.mean((2, 3)))


# -- adans additions -----------------------------------------------------------------------------------------
# Built-in name -> (width multiplier, input resolution the weights were trained at).
TF_MOBILENET_V1 = {"tf_mobilenet_v1_0.5_160": (0.5, 160), "tf_mobilenet_v1_0.75_192": (0.75, 192)}


def tf_mobilenet_v1(name: str) -> TFMobileNetV1:
    """An untrained TF-slim MobileNetV1 for a built-in name (1001 classes; label offset 1, input in [-1, 1])."""
    width, _ = TF_MOBILENET_V1[name]
    return TFMobileNetV1(width_mult=width)
