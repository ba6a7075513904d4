"""Parameter and multiply-add counts, computed from the modules (not typed in)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from resnet_pipeline.models.blocks import SHORTCUTS, VARIANTS
from resnet_pipeline.models.resnet import CIFAR_DEPTHS, IMAGENET_DEPTHS, ResNet, resnet_cifar, resnet_imagenet


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_mult_adds(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass on one ``input_size`` x ``input_size`` image.

    Counts convolutions and linear layers (what Table 1's "FLOPs" counts); BN, ReLU, pooling and additions
    are negligible and left out. Works on the meta device, so counting ResNet-1202 costs no memory or compute.
    """
    total = 0

    def hook(m: nn.Conv2d | nn.Linear, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        is_linear = isinstance(m, nn.Linear)
        total += out.numel() * (m.in_features if is_linear else m.in_channels // m.groups * math.prod(m.kernel_size))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, channels, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def _conv_out(size: int, conv: nn.Conv2d | nn.MaxPool2d) -> int:
    k, st, p = (x[0] if isinstance(x, tuple) else x for x in (conv.kernel_size, conv.stride, conv.padding))
    return (size + 2 * p - k) // st + 1


def _conv_macs(conv: nn.Conv2d, size: int) -> tuple[int, int]:
    """(multiply-adds, output size) of a square conv on a ``size`` x ``size`` input."""
    out = _conv_out(size, conv)
    return out * out * conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size), out


def resnet_mult_adds(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of a ``ResNet`` by walking its stem, blocks and classifier: the same count as
    :func:`count_mult_adds` (the tests check both agree) without running a forward pass, which makes
    the whole zoo table instant (ResNet-1202 runs 1,200 layers even on the meta device)."""
    if not isinstance(model, ResNet):
        return count_mult_adds(model, input_size)
    total, size = _conv_macs(model.conv1, input_size)
    if isinstance(model.maxpool, nn.MaxPool2d):
        size = _conv_out(size, model.maxpool)
    for stage in model.stages():
        for block in stage:
            block_in = size
            for conv in (m for m in block.children() if isinstance(m, nn.Conv2d)):  # conv1, conv2 (, conv3)
                macs, size = _conv_macs(conv, size)
                total += macs
            for m in (block.downsample.modules() if block.downsample is not None else ()):
                if isinstance(m, nn.Conv2d):
                    total += _conv_macs(m, block_in)[0]
    return total + model.fc.in_features * model.fc.out_features


def _row(model: nn.Module, input_size: int, **keys: Any) -> dict[str, Any]:
    return dict(keys, input_size=input_size, params=count_params(model), mult_adds=resnet_mult_adds(model, input_size))


@functools.lru_cache(maxsize=None)
def _zoo_table(family: str | None) -> tuple[dict[str, Any], ...]:
    rows: list[dict[str, Any]] = []
    # The small CIFAR nets build faster on the CPU than through the meta device's dispatch
    # (ResNet-1202: about 1 s vs 4 s here); the large ImageNet nets the other way round.
    if family in (None, "cifar"):
        with torch.device("cpu"):
            rows += [_row(resnet_cifar(d, 10, sc), 32, family="cifar", depth=d, shortcut=sc, variant=None)
                     for d in CIFAR_DEPTHS for sc in SHORTCUTS]
    if family in (None, "imagenet"):
        with torch.device("meta"):  # shapes only: no weights are allocated or initialised
            rows += [_row(resnet_imagenet(d, 1000, sc, v), 224, family="imagenet", depth=d, shortcut=sc, variant=v)
                     for d in IMAGENET_DEPTHS for sc in SHORTCUTS for v in VARIANTS]
    return tuple(rows)


def zoo_table(family: str | None = None) -> list[dict[str, Any]]:
    """Every depth x shortcut (x variant) with its parameters and multiply-adds: CIFAR nets at 32x32 with 10
    classes, ImageNet nets at 224x224 with 1000 classes."""
    return [dict(r) for r in _zoo_table(family)]
