"""`LoaderSpec`: what every loader backend (DALI on GPU or CPU, torch) needs, and the transforms they share.

Every backend applies the same transforms, described once here and built from one `LoaderSpec`:

CIFAR kind (small fixed-size images, Sec. 4.2 of the paper)
    normalise at the stored resolution: (x - mean) / std, where mean is the train split's per-pixel mean image
    (``normalize="per_pixel"``, the paper's "subtract the per-pixel mean"; dividing by the per-channel std is a
    constant rescale that the BN after conv1 absorbs) or the per-channel mean (``"per_channel"``); train: pad
    ``pad`` (4) pixels with zeros (the mean colour, after normalising), take a random crop of the original size,
    flip horizontally with p=0.5; eval: the image as is.
ImageNet kind (large images, Sec. 3.4)
    train: resize the shorter side to a random integer in ``resize_range`` ([256, 480]), random ``crop_size``
    (224) crop, flip with p=0.5, per-channel normalisation; eval: shorter side to ``eval_resize`` (256), centre
    crop; ``ten_crop``: the four corner crops and the centre crop, then the horizontal flip of each, as
    [N, 10, 3, crop, crop].
Colour augmentation (``color_aug``, train only)
    AlexNet's PCA lighting, which the paper's Sec. 3.4 uses as "standard colour augmentation": add
    sum_i alpha_i sqrt(lambda_i) p_i to every pixel, alpha_i ~ N(0, 0.1), with (lambda_i, p_i) the eigen-pairs of
    the train split's RGB covariance (from the manifest). AlexNet scales by lambda_i; on 0-255 data that would
    shift pixels by hundreds, so like common implementations we scale by the standard deviation along each
    component.

Sharding: the split is cut into ``num_shards`` contiguous shards (DALI's rule: shard i holds samples floor(N*i/S) ..
floor(N*(i+1)/S)-1). Evaluation: each rank reads its own shard once, so every sample is seen exactly once across ranks;
the last batch may be partial. Training: the whole split is reshuffled every epoch before it is cut, and every rank
steps (N // S) // batch_size batches, dropping the remainder, so ranks stay in lockstep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Protocol

import numpy as np

# The five crop positions of ten-crop evaluation, as (x, y) fractions of the free space:
# top-left, top-right, bottom-left, bottom-right, centre.
FIVE_CROPS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))
# AlexNet's PCA lighting: alpha ~ N(0, 0.1) (Krizhevsky et al. 2012, Sec. 4.1).
LIGHTING_STD = 0.1


@dataclass(frozen=True)
class LoaderSpec:
    """What a backend needs, resolved from the manifest and `make_loader`'s arguments."""

    root: Path
    files: tuple[str, ...]  # relative to root, in the prepared file list's order
    labels: tuple[int, ...]
    num_classes: int
    train: bool
    kind: Literal["cifar", "imagenet"]
    batch_size: int
    shard_id: int
    num_shards: int
    seed: int
    num_threads: int
    mean: tuple[float, float, float]  # per channel, 0-255
    std: tuple[float, float, float]
    mean_image: np.ndarray | None  # HxWx3 float32, 0-255, for normalize="per_pixel"
    image_size: tuple[int, int] | None  # (H, W) when fixed
    pad: int
    crop_size: int
    resize_range: tuple[int, int]
    eval_resize: int
    ten_crop: bool
    color_aug: bool
    lighting: np.ndarray  # 3x3: column i is sqrt(lambda_i) * p_i, 0-255 scale
    normalize: str = "per_pixel"  # as resolved: per_pixel or per_channel

    @property
    def num_samples(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> int:
        """The side of the images the model sees: the stored size (CIFAR kind) or the crop."""
        return self.image_size[0] if self.kind == "cifar" and self.image_size else self.crop_size

    def shard_bounds(self) -> tuple[int, int]:
        """[begin, end) of this shard, DALI's rule."""
        n, s, i = self.num_samples, self.num_shards, self.shard_id
        return (n * i) // s, (n * (i + 1)) // s

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank in training)."""
        if self.train:
            return (self.num_samples // self.num_shards) // self.batch_size
        begin, end = self.shard_bounds()
        return math.ceil((end - begin) / self.batch_size)


class SpecLoader:
    """What every backend shares: sizes come from its LoaderSpec."""

    spec: LoaderSpec

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def num_samples(self) -> int:
        return self.spec.num_samples

    def __len__(self) -> int:
        return len(self.spec)


class Loader(Protocol):
    """What `make_loader` returns. ``iter()`` runs one epoch, yielding (images, labels): images float32 [N, 3, H, W]
    ([N, 10, 3, H, W] for ten-crop), labels int64 [N]. DALI GPU loaders yield CUDA tensors, the others CPU tensors."""

    backend: str
    spec: LoaderSpec

    @property
    def num_classes(self) -> int: ...
    @property
    def num_samples(self) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]: ...  # noqa: F821


def shard_seed(seed: int, shard_id: int) -> int:
    """A distinct 31-bit augmentation seed per (seed, shard)."""
    return int(np.random.SeedSequence([seed, shard_id]).generate_state(1)[0] & 0x7FFFFFFF)
