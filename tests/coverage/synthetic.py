"""Small networks built around the operators the coverage tests need (importable for --arch)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResizeSplitNet(nn.Module):
    """Resize inside a residual, a spatial Split, a channel chunk.

    (No nn.LocalResponseNorm: its export holds a shape-computing `If` node
    that the MACs cost model does not price yet; the ONNX LRN operator is
    covered by a hand-written graph in test_operator_rules.py.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.c3, self.b3 = nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24)
        self.c4 = nn.Conv2d(24, 12, 1)
        self.c5, self.c6 = nn.Conv2d(6, 8, 1), nn.Conv2d(6, 8, 1)
        self.fc = nn.Linear(16 + 24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        z = F.interpolate(self.c2(y), scale_factor=2, mode="nearest") + y  # Resize joins a residual stream
        z = F.interpolate(z, size=(16, 16), mode="bilinear", align_corners=False)
        top, bottom = torch.split(z, [8, 8], dim=2)  # Split over height: channels unchanged
        z = torch.cat([top, bottom], dim=2)
        w = F.relu(self.b3(self.c3(z)))
        a, b = torch.chunk(self.c4(w), 2, dim=1)  # chunk slices channels
        z = torch.cat([self.c5(a), self.c6(b)], 1)
        return self.fc(torch.cat([z, w], 1).mean((2, 3)))


class ShuffleNet(nn.Module):
    """Grouped convolution followed by a channel shuffle (ShuffleNet).

    (No pixel shuffle: it exports as DepthToSpace, which the MACs cost model
    does not price yet; the analysis rule is covered on a hand-written graph.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = self.g(y)
        n, c, h, w = y.shape
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        y = F.relu(self.c2(y))
        return self.fc(F.relu(self.c3(y)).mean((2, 3)))


def resize_split_net() -> nn.Module:
    return ResizeSplitNet()


def shuffle_net() -> nn.Module:
    return ShuffleNet()


def _slim_classifier(model: nn.Module, hidden: int = 64) -> nn.Module:
    """torchvision's VGG/AlexNet with the two 4096-wide hidden layers of the classifier made `hidden` wide.

    The features, the adaptive pool, the flatten into the first Linear and
    the dropouts are torchvision's own; only the 100M-parameter matrices that
    make every step of a CI run slow (not harder to analyse) are narrower.
    tools/coverage_table.py compiles the full-width models.
    """
    linear = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    first, middle, last = (model.classifier[i] for i in linear)
    model.classifier[linear[0]] = nn.Linear(first.in_features, hidden)
    model.classifier[linear[1]] = nn.Linear(hidden, hidden)
    model.classifier[linear[2]] = nn.Linear(hidden, last.out_features)
    return model


def vgg11_bn_slim() -> nn.Module:
    import torchvision

    return _slim_classifier(torchvision.models.vgg11_bn(weights=None))


def alexnet_slim() -> nn.Module:
    import torchvision

    return _slim_classifier(torchvision.models.alexnet(weights=None))
