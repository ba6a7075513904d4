"""The torch loader: torchvision decoding + a DataLoader, with the transforms described in `spec.py` (for
comparison with DALI, and for machines without DALI).

Configured to be a fair baseline: ``num_threads`` worker processes (one per core by default), persistent workers,
libjpeg-turbo decoding on uint8 tensors (TorchCodec's image decoders, which supersede torchvision.io's, deprecated
in torchvision 0.29; no PIL round trip), and pinned memory when a GPU is present.
"""

from __future__ import annotations

import gc
import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torchcodec.decoders import decode_image
from torchvision.transforms.v2 import functional as TF

from resnet_pipeline.data.spec import FIVE_CROPS, LIGHTING_STD, LoaderSpec, SpecLoader, shard_seed


def _anchor(free: int, fraction: float) -> int:
    """Crop offset ``fraction * free`` rounded half away from zero, as DALI's crop does (torchvision's centre crop
    rounds half to even, a pixel off for odd margins)."""
    return int(math.floor(fraction * free + 0.5))


class ShardDataset(torch.utils.data.Dataset):
    """The prepared split's files, decoded and transformed one sample at a time."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.channel_mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self.mean = self.channel_mean if spec.mean_image is None else (
            torch.from_numpy(spec.mean_image).permute(2, 0, 1).contiguous().float())  # HWC -> CHW
        self.inv_std = (1.0 / torch.tensor(spec.std, dtype=torch.float32)).view(3, 1, 1)
        self.lighting = torch.from_numpy(spec.lighting / np.asarray(spec.std)[:, None]).float()

    def __len__(self) -> int:
        return self.spec.num_samples

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: a sample index, or (index, epoch) in training, whose augmentation is then drawn from a generator
        seeded by (seed, shard, epoch, index): the same sample of the same epoch gets the same crop and flip
        whichever worker decodes it and wherever the epoch was started."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        spec = self.spec
        rng = torch.Generator().manual_seed(sample_seed(shard_seed(spec.seed, spec.shard_id), epoch, index))
        image = decode_image(spec.root / spec.files[index], mode="RGB")  # uint8 CHW
        x = self._cifar(image, rng) if spec.kind == "cifar" else self._imagenet(image, rng)
        if spec.train and spec.color_aug:
            alpha = torch.randn(3, generator=rng) * LIGHTING_STD
            x = x + (self.lighting @ alpha).view(3, 1, 1)
        return x, spec.labels[index]

    def _cifar(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        x = (image.float() - self.mean) * self.inv_std
        if self.spec.train:
            pad = self.spec.pad
            _, height, width = x.shape
            x = F.pad(x, (pad, pad, pad, pad))  # zeros: the mean colour after normalising
            dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=rng).tolist()
            x = x[:, dy:dy + height, dx:dx + width]
            if torch.rand((), generator=rng) < 0.5:
                x = x.flip(-1)
        return x.contiguous()

    def _imagenet(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        spec = self.spec
        c = spec.crop_size
        if spec.train:
            low, high = spec.resize_range
            image = _resize_shorter(image, int(torch.randint(low, high + 1, (), generator=rng)))
            _, height, width = image.shape
            top = int(torch.randint(0, height - c + 1, (), generator=rng))
            left = int(torch.randint(0, width - c + 1, (), generator=rng))
            x = image[:, top:top + c, left:left + c]
            if torch.rand((), generator=rng) < 0.5:
                x = x.flip(-1)
            return self._normalize(x)
        image = _resize_shorter(image, spec.eval_resize)
        _, height, width = image.shape
        positions = FIVE_CROPS if spec.ten_crop else ((0.5, 0.5),)
        anchors = [(_anchor(height - c, y), _anchor(width - c, x)) for x, y in positions]
        crops = [image[:, top:top + c, left:left + c] for top, left in anchors]
        if not spec.ten_crop:
            return self._normalize(crops[0])
        crops += [crop.flip(-1) for crop in crops]
        return torch.stack([self._normalize(crop) for crop in crops])  # [10, 3, c, c]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.channel_mean) * self.inv_std).contiguous()


def _resize_shorter(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize so that the shorter side is ``shorter``, the longer one rounded to the nearest pixel as DALI's
    ``resize_shorter`` does (torchvision's ``resize(image, [n])`` truncates it: 42 pixels where DALI makes 43 of
    42.67, and the crops then differ)."""
    _, height, width = image.shape
    scale = shorter / min(height, width)
    size = [shorter, int(width * scale + 0.5)] if height <= width else [int(height * scale + 0.5), shorter]
    return TF.resize(image, size, antialias=True)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (seed, epoch, sample): a cheap integer mix (a generator per sample costs microseconds;
    numpy's SeedSequence costs tens)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63


class ShardSampler(torch.utils.data.Sampler):
    """This rank's sample keys from batch ``start`` of epoch ``epoch``: its contiguous shard in file order (eval),
    or (index, epoch) pairs of its contiguous N // S slice of a permutation of the whole split drawn for the epoch
    (train). Skipped batches are never read."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        spec, skip = self.spec, self.start * self.spec.batch_size
        if not spec.train:
            begin, end = spec.shard_bounds()
            return iter(range(begin + skip, end))
        generator = torch.Generator().manual_seed(shard_seed(spec.seed, 10_000 + self.epoch))
        order = torch.randperm(spec.num_samples, generator=generator)
        per_rank = spec.num_samples // spec.num_shards
        mine = order[spec.shard_id * per_rank:(spec.shard_id + 1) * per_rank].tolist()
        return iter([(i, self.epoch) for i in mine[skip:]])

    def __len__(self) -> int:
        if not self.spec.train:
            begin, end = self.spec.shard_bounds()
            return max(0, end - begin - self.start * self.spec.batch_size)
        return self.spec.num_samples // self.spec.num_shards - self.start * self.spec.batch_size


class TorchLoader(SpecLoader):
    """Iterable over epochs of (images float32 [N,3,H,W], labels int64 [N]); see `make_loader`.

    Each ``iter()`` runs the rest of the current epoch, then moves to the next; `state_dict` and `load_state_dict`
    say and set where (epoch, batch): every epoch's stream is a function of the seed and the epoch, so a loader
    restored mid-epoch continues it exactly, reading nothing before."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.backend = "torch"
        self._sampler = ShardSampler(spec)
        workers = spec.num_threads
        self._loader = torch.utils.data.DataLoader(
            ShardDataset(spec), batch_size=spec.batch_size, sampler=self._sampler, drop_last=spec.train,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers > 0 else None)
        self.epoch, self.position = 0, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.spec.train and self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        self._sampler.epoch, self._sampler.start = self.epoch, self.position
        # iter() forks the workers (once: they persist). Frozen, the objects this process holds then are never collected
        # in a worker: a worker that collected this process's garbage would run its finalizers there, and a DALI
        # pipeline's (left by an earlier run in this process) waits for threads that a fork does not copy: the worker
        # hung, and the training with it. The gc.freeze recipe of CPython's docs, for fork without exec.
        gc.freeze()
        try:
            batches = iter(self._loader)
        finally:
            gc.unfreeze()
        for batch in batches:
            self.position += 1
            yield batch
        self.position = len(self) if self.spec.train else 0  # in training, the next iter() starts the next epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
