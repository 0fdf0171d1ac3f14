"""The models of the article that started the project, reachable by short names (``demo:MyBatchNormModel``)."""
from __future__ import annotations

import torch.nn as nn


class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 5)

    def forward(self, x):
        return self.linear(x)


class MyBatchNormModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.linear(x))


class ModelA(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 5)

    def forward(self, x):
        return self.linear(x)


class ModelB(nn.Module):
    def __init__(self):
        super().__init__()
        self.different_linear = nn.Linear(10, 5)

    def forward(self, x):
        return self.different_linear(x)


class ConvBatchNormModel(nn.Module):
    """A Conv + BatchNorm2d variant for the BatchNorm demo."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        return self.head(x.mean(dim=(2, 3)))


DEMO_MODELS = {
    "MyModel": MyModel,
    "MyBatchNormModel": MyBatchNormModel,
    "ModelA": ModelA,
    "ModelB": ModelB,
    "ConvBatchNormModel": ConvBatchNormModel,
}
