"""The paper's two ResNet families, built from depth tables (Section 4.2 and Table 1).

Names follow torchvision (conv1, bn1, layer1..layer4, fc), so an ImageNet option-B v1.5 net loads a
``torchvision.models.resnetNN()`` state_dict with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch
from torch import nn

from resnet_pipeline.models.blocks import BasicBlock, Bottleneck, check_shortcut, check_variant

# ImageNet family, Table 1: block type and blocks per stage conv2_x..conv5_x.
IMAGENET_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)

# CIFAR family, Section 4.2: depth 6n+2, three stages of n basic blocks on {32, 16, 8} maps.
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}  # the paper's Table 6
CIFAR_WIDTHS = (16, 32, 64)

# Paper defaults: option A on CIFAR (Section 4.2), B for ImageNet (Table 3, used by 50/101/152).
DEFAULT_SHORTCUT: dict[str, str] = {"cifar": "A", "imagenet": "B"}

# Inputs smaller than this get the CIFAR stem (3x3/1, no max-pool) when the stem is not given:
# the ImageNet stem's 4x downsampling would leave a 32x32 image 1x1 by conv5_x.
SMALL_INPUT = 64


def _listed(values: Iterable[int]) -> str:
    return ", ".join(map(str, values))


def is_cifar_depth(depth: int) -> bool:
    return isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0


def cifar_blocks_per_stage(depth: int) -> int:
    """n for a CIFAR depth 6n+2; raises naming the valid depths."""
    if not is_cifar_depth(depth):
        raise ValueError(f"invalid CIFAR depth {depth!r}: must be 6n+2 with n >= 1, e.g. {_listed(CIFAR_DEPTHS)}")
    return (depth - 2) // 6


def infer_family(depths: int | Iterable[int]) -> str:
    """Which family a depth (or a list of depths, as in a sweep) belongs to.

    ImageNet depths win where both fit (50 and 152 are also 6n+2), so `--depths 18,34,50,101,152` means the
    ImageNet family; a list mixing the families is an error."""
    ds = [depths] if isinstance(depths, int) else list(depths)
    if not ds:
        raise ValueError("no depths given; give at least one, e.g. 20,32,44,56,110 or 18,34,50,101,152")
    if all(d in IMAGENET_DEPTHS for d in ds):
        return "imagenet"
    if all(is_cifar_depth(d) for d in ds):
        return "cifar"
    bad = [d for d in ds if d not in IMAGENET_DEPTHS and not is_cifar_depth(d)]
    if bad:
        raise ValueError(f"invalid depth(s) {_listed(bad)}: valid are the ImageNet depths {_listed(IMAGENET_DEPTHS)} "
                         f"or CIFAR depths 6n+2 ({_listed(CIFAR_DEPTHS)}, ...)")
    raise ValueError(f"depths {_listed(ds)} mix the ImageNet family ({_listed(IMAGENET_DEPTHS)}) "
                     "and the CIFAR family (6n+2); sweep one family at a time")


class ResNet(nn.Module):
    """A stem, stages of blocks, global average pool and a linear classifier.

    ``stem="imagenet"``: 7x7/2 conv + 3x3/2 max-pool (Table 1). ``stem="cifar"``: one 3x3/1 conv, no pooling
    (Section 4.2). Stage i > 0 starts with a stride-2 block."""

    def __init__(self, block: type[nn.Module], layers: Sequence[int], widths: Sequence[int], num_classes: int = 1000,
                 shortcut: str = "B", variant: str = "v1", stem: str = "imagenet", stem_width: int | None = None,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        check_shortcut(shortcut)
        check_variant(variant)
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}; valid choices are 'cifar', 'imagenet'")
        if zero_init_residual and shortcut == "plain":
            raise ValueError("zero_init_residual=True with shortcut='plain' would zero every block's output; "
                             "use it only with shortcut A, B or C")
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must have the same length")
        self.shortcut, self.variant, self.stem = shortcut, variant, stem
        stem_width = stem_width or widths[0]
        kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.conv1 = nn.Conv2d(3, stem_width, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_ch = stem_width
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, 2 if i > 0 and j == 0 else 1, shortcut, variant))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

        # He initialisation (He et al. 2015, "Delving deep into rectifiers"), as the paper states; BN keeps
        # PyTorch's initial weight 1 and bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each residual branch starts as zero, so each block starts as identity (arXiv 1706.02677).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))  # (B, num_classes) logits


def resnet_cifar(depth: int, num_classes: int = 10, shortcut: str = "A", zero_init_residual: bool = False) -> ResNet:
    """The CIFAR-10 nets of Section 4.2: depth 6n+2, {16, 32, 64} filters on {32, 16, 8} maps."""
    n = cifar_blocks_per_stage(depth)
    return ResNet(BasicBlock, (n, n, n), CIFAR_WIDTHS, num_classes, shortcut, "v1", stem="cifar",
                  zero_init_residual=zero_init_residual)


def resnet_imagenet(depth: int, num_classes: int = 1000, shortcut: str = "B", variant: str = "v1",
                    stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
    """The ImageNet nets of Table 1 (18/34 basic, 50/101/152 bottleneck)."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"invalid ImageNet depth {depth!r}; valid choices are {_listed(IMAGENET_DEPTHS)}")
    block, layers = IMAGENET_DEPTHS[depth]
    return ResNet(block, layers, IMAGENET_WIDTHS, num_classes, shortcut, variant, stem=stem,
                  zero_init_residual=zero_init_residual)


@dataclass
class ModelConfig:
    """The `model` section of params.yaml."""

    depth: int = 20
    family: Literal["auto", "cifar", "imagenet"] = "auto"
    shortcut: Literal["auto", "plain", "A", "B", "C"] = "auto"  # auto: A for CIFAR, B for ImageNet
    variant: Literal["v1", "v1.5"] = "v1"
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # auto: from the input size
    zero_init_residual: bool = False

    def resolved_family(self) -> str:
        return infer_family(self.depth) if self.family == "auto" else self.family

    def resolved_shortcut(self) -> str:
        return DEFAULT_SHORTCUT[self.resolved_family()] if self.shortcut == "auto" else self.shortcut

    def resolved_stem(self, input_size: int | None = None) -> str:
        """The CIFAR nets' 3x3 stem; for ImageNet nets, auto picks it below SMALL_INPUT pixels."""
        if self.resolved_family() == "cifar":
            return "cifar"
        if self.stem != "auto":
            return self.stem
        return "cifar" if input_size is not None and input_size < SMALL_INPUT else "imagenet"

    def validate(self) -> None:
        if self.resolved_family() == "cifar":
            cifar_blocks_per_stage(self.depth)
        elif self.depth not in IMAGENET_DEPTHS:
            raise ValueError(f"model.depth: invalid ImageNet depth {self.depth}; valid are {_listed(IMAGENET_DEPTHS)}")


def net_name(depth: int, shortcut: str) -> str:
    """A net's short name, for run names and files: ``plain20``, ``resnet56-A``, ``resnet50-B``."""
    return f"plain{depth}" if shortcut == "plain" else f"resnet{depth}-{shortcut}"


def net_label(depth: int, shortcut: str, style: Literal["text", "legend", "key"] = "text") -> str:
    """A net as the paper writes it: for text ``ResNet-56 A``, for a figure's legend or title ``ResNet-56 (A)``,
    as a metrics key ``A-56`` (the sweep's and DVC's metrics files); ``plain-20`` in all three."""
    if shortcut == "plain":
        return f"plain-{depth}"
    return {"text": f"ResNet-{depth} {shortcut}", "legend": f"ResNet-{depth} ({shortcut})",
            "key": f"{shortcut}-{depth}"}[style]


def trial_name(depth: int, shortcut: str, seed: int) -> str:
    """A training run of a sweep: ``resnet56-A-s0``, ``plain20-s1``."""
    return f"{net_name(depth, shortcut)}-s{seed}"


def build_model(cfg: ModelConfig, num_classes: int, input_size: int | None = None) -> ResNet:
    """A model from its config. The stem follows the input size when ``cfg.stem`` is auto."""
    cfg.validate()
    family, shortcut = cfg.resolved_family(), cfg.resolved_shortcut()
    if family == "cifar":
        return resnet_cifar(cfg.depth, num_classes, shortcut, cfg.zero_init_residual)
    return resnet_imagenet(cfg.depth, num_classes, shortcut, cfg.variant, cfg.resolved_stem(input_size),
                           cfg.zero_init_residual)
