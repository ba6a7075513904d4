"""Figure 7: the standard deviation of each 3x3 layer's response.

The paper (Sec. 4.2, Figure 7): "The responses are the outputs of each 3x3 layer, after BN and before other
nonlinearity (ReLU/addition)". So a forward hook sits on the BN that follows each 3x3 conv (in our modules `convK`
feeds `bnK` of the same parent, torchvision's naming), and records that BN's output in eval mode, with the trained
weights. The std of one layer is taken over every element of its response (images x channels x positions),
accumulated in float64; hooks run before the in-place ReLU that follows, so they see the BN output."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


def three_by_three_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(conv name, the BN after it) for every 3x3 conv, in forward (definition) order.

    The CIFAR stem's conv1 is a 3x3 layer and counts (the paper's 6n+1 3x3 layers); the ImageNet stem's 7x7 conv and
    the 1x1 convs of bottlenecks and projections do not."""
    modules = dict(model.named_modules())
    layers = []
    for name, m in modules.items():
        if not (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)):
            continue
        parent, _, leaf = name.rpartition(".")
        if not leaf.startswith("conv"):
            raise ValueError(f"3x3 conv {name!r} is not named conv<k>; cannot find the BN that follows it")
        bn_name = f"{parent}.bn{leaf[4:]}" if parent else f"bn{leaf[4:]}"
        bn = modules.get(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"3x3 conv {name!r} has no BatchNorm2d {bn_name!r} after it")
        layers.append((name, bn))
    if not layers:
        raise ValueError("the model has no 3x3 conv layers")
    return layers


class ResponseRecorder:
    """Forward hooks that accumulate each 3x3 layer's response statistics while the context is
    open: every image of every forward pass counts (the evaluation's single-view pass over the
    whole split, so no class is over-represented: the files are sorted by class)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = three_by_three_layers(model)
        n = len(self.layers)
        self._sum = [torch.zeros((), dtype=torch.float64) for _ in range(n)]
        self._sumsq = [torch.zeros((), dtype=torch.float64) for _ in range(n)]
        self._count = [0] * n
        self._handles: list[Any] = []

    def _record(self, index: int, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        x = output.detach()  # (B, C, H, W), before the ReLU/addition that follows
        # float64 accumulation without a float64 copy of the activation.
        self._sum[index] = self._sum[index].to(x.device) + x.sum(dtype=torch.float64)
        self._sumsq[index] = self._sumsq[index].to(x.device) + x.square().sum(dtype=torch.float64)
        self._count[index] += x.numel()

    def __enter__(self) -> "ResponseRecorder":
        self._handles = [bn.register_forward_hook(functools.partial(self._record, i))
                         for i, (_, bn) in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def stds(self) -> list[dict[str, Any]]:
        """[{"index": 1-based layer index, "layer": conv name, "std": float}] in forward order."""
        if not self._count[0]:
            raise ValueError("no forward pass was recorded")
        out = []
        for i, (name, _) in enumerate(self.layers):
            n = self._count[i]
            mean = float(self._sum[i]) / n
            var = max(float(self._sumsq[i]) / n - mean * mean, 0.0)
            out.append({"index": i + 1, "layer": name, "std": var ** 0.5})
        return out
