"""Residual blocks and the one place that decides the shortcut (paper Section 3.3, Table 3).

Pure nn.Modules: no I/O, no device moves, no lambdas (Ray pickles models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS: tuple[str, ...] = ("plain", "A", "B", "C")
VARIANTS: tuple[str, ...] = ("v1", "v1.5")


def _check_choice(what: str, value: str, choices: tuple[str, ...], meaning: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices are {', '.join(choices)} ({meaning})")
    return value


def check_shortcut(kind: str) -> str:
    return _check_choice("shortcut", kind, SHORTCUTS, "plain: no shortcut, A: identity + zero-padding, "
                         "B: projection where dimensions change, C: projection everywhere")


def check_variant(variant: str) -> str:
    return _check_choice("variant", variant, VARIANTS, "v1: stride on the bottleneck's first 1x1 conv as in the "
                         "paper, v1.5: stride on the 3x3 as torchvision")


def conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A square conv without bias (BN follows), padded to keep the map size at stride 1."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity that subsamples by ``stride`` and zero-pads the extra channels. Parameter-free,
    so a residual net has exactly the parameters of its plain twin (Section 4.2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A cannot reduce channels ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_ch - self.in_ch
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x  # pad the channel dim at the end

    def extra_repr(self) -> str:
        return f"{self.in_ch}->{self.out_ch}, stride={self.stride}"


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """The shortcut of one block (Table 3): None for ``plain``, ``ZeroPadShortcut`` for A where dimensions
    change, a 1x1 conv + BN projection (``nn.Sequential`` indexed 0/1, as torchvision's ``downsample``) for B
    where dimensions change and for C everywhere, else ``nn.Identity``."""
    check_shortcut(kind)
    if kind == "plain":
        return None
    changes = stride != 1 or in_ch != out_ch
    if kind == "C" or (kind == "B" and changes):
        return nn.Sequential(conv(in_ch, out_ch, 1, stride), nn.BatchNorm2d(out_ch))
    if kind == "A" and changes:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs (Figure 5 left). Used by the CIFAR nets and ResNet-18/34."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, shortcut: str = "B", variant: str = "v1") -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv(in_ch, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, out_ch, 3)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            out = out + self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand x4 (Figure 5 right). ResNet-50/101/152.

    v1 (the paper) strides the first 1x1 conv; v1.5 (torchvision) strides the 3x3, which costs more
    multiply-adds (4.1 vs 3.8 GFLOPs for ResNet-50) and is slightly more accurate."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, shortcut: str = "B", variant: str = "v1") -> None:
        super().__init__()
        check_variant(variant)
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv(in_ch, planes, 1, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            out = out + self.downsample(x)
        return self.relu(out)
