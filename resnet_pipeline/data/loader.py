"""`make_loader`: one factory for the DALI (GPU or CPU) and torch loaders of a prepared dataset.

It resolves a `LoaderSpec` (`resnet_pipeline.data.spec`, which describes the transforms every backend applies)
from the manifest and its arguments, and imports the chosen backend only when it is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from resnet_pipeline.config import ConfigError
from resnet_pipeline.data.config import BACKENDS, NORMALIZATIONS, DataError
from resnet_pipeline.data.prepare import load_manifest
from resnet_pipeline.data.spec import Loader, LoaderSpec

Kind = Literal["auto", "cifar", "imagenet"]
KINDS = get_args(Kind)
# Images no larger than this (per side) and all of one size are the CIFAR kind.
CIFAR_KIND_MAX_SIDE = 64


def dali_available() -> bool:
    """Whether nvidia-dali is installed (found, not imported: only dali.py imports it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` picks DALI on the GPU (nvJPEG decode) when there is one, else DALI on the CPU, else torch (no DALI
    installed). An explicit choice that cannot run raises ConfigError."""
    if backend not in BACKENDS:
        raise ConfigError(f"data.backend: {backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return ("dali-gpu" if cuda_available() else "dali-cpu") if dali_available() else "torch"
    if backend.startswith("dali") and not dali_available():
        raise ConfigError(f"data.backend: {backend} needs nvidia-dali, which is not installed; use torch")
    if backend == "dali-gpu" and not cuda_available():
        raise ConfigError("data.backend: dali-gpu needs a CUDA GPU and none is visible; use dali-cpu or auto")
    return backend


def eval_geometry(aug: dict[str, Any] | None) -> dict[str, Any]:
    """The keywords of ImageNet-kind geometry ``aug`` that evaluation uses (no colour augmentation)."""
    return {k: v for k, v in (aug or {}).items() if k in ("crop_size", "resize_range", "eval_resize")}


def make_loader(data_dir: str | Path, split: str, *, train: bool, batch_size: int, backend: str = "auto",
                shard_id: int = 0, num_shards: int = 1, seed: int = 0, num_threads: int = 2,
                normalize: str = "auto", ten_crop: bool = False, color_aug: bool = False,
                kind: Kind = "auto", pad: int = 4, crop_size: int = 224,
                resize_range: tuple[int, int] = (256, 480), eval_resize: int = 256,
                device_id: int | None = None) -> Loader:
    """A loader over ``<data_dir>/<split>`` (a folder written by `prepare`).

    Args:
        split: "train", "val" or "test".
        train: training augmentation, reshuffling every epoch and equal steps on every rank; else the evaluation
            transform, in file order, each sample once across ranks.
        backend: "auto", "dali-gpu", "dali-cpu" or "torch" (see `resolve_backend`).
        shard_id, num_shards: this rank and the world size.
        seed: augmentation and shuffling seed (each shard derives its own augmentation stream).
        num_threads: DALI CPU threads per pipeline (a CPU training loader runs two pipelines, see
            `dali.pipeline_parts`), or torch DataLoader workers.
        normalize: "per_pixel" (the train split's mean image; CIFAR kind only), "per_channel", or "auto":
            per_pixel for the CIFAR kind (Sec. 4.2), per_channel for the ImageNet kind (Sec. 3.4).
        kind: "cifar" (no resize, pad + crop), "imagenet" (scale augmentation + crops), or "auto": cifar when all
            images share one size of at most 64 pixels a side.
        pad: CIFAR padding in pixels (Sec. 4.2: 4).
        crop_size, resize_range, eval_resize: ImageNet crop side, training shorter-side range and evaluation
            shorter side (Sec. 3.4: 224, [256, 480], 256); small values suit tests.
        ten_crop: evaluation only, ImageNet kind: yield [N, 10, 3, crop, crop].
        device_id: GPU index for dali-gpu (default: torch's current device).

    ``len(loader)`` is batches per epoch on this rank, ``loader.num_samples`` the size of the whole split (all
    ranks), ``loader.num_classes`` the number of classes.
    """
    spec = loader_spec(data_dir, split, train=train, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards,
                       seed=seed, num_threads=num_threads, normalize=normalize, ten_crop=ten_crop, color_aug=color_aug,
                       kind=kind, pad=pad, crop_size=crop_size, resize_range=resize_range, eval_resize=eval_resize)
    resolved = resolve_backend(backend)
    if resolved == "torch":
        from resnet_pipeline.data.torch_loader import TorchLoader

        return TorchLoader(spec)
    from resnet_pipeline.data.dali import DaliLoader

    if resolved == "dali-gpu" and device_id is None:
        import torch

        device_id = torch.cuda.current_device()
    return DaliLoader(spec, device="gpu" if resolved == "dali-gpu" else "cpu", device_id=device_id)


def loader_spec(data_dir: str | Path, split: str, *, train: bool, batch_size: int, shard_id: int = 0,
                num_shards: int = 1, seed: int = 0, num_threads: int = 2, normalize: str = "auto",
                ten_crop: bool = False, color_aug: bool = False, kind: Kind = "auto", pad: int = 4,
                crop_size: int = 224, resize_range: tuple[int, int] = (256, 480),
                eval_resize: int = 256) -> LoaderSpec:
    """Check the arguments against the prepared dataset and resolve them into a LoaderSpec."""
    root = Path(data_dir)
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise DataError(f"{root} has no {split!r} split; it has {', '.join(manifest['splits'])}")
    if batch_size < 1:
        raise ConfigError(f"batch_size: {batch_size} is not valid; use an integer >= 1")
    if not 0 <= shard_id < num_shards:
        raise ConfigError(f"shard_id: {shard_id} is not valid for num_shards={num_shards}; use 0..{num_shards - 1}")
    if num_threads < 1:
        raise ConfigError(f"num_threads: {num_threads} is not valid; use an integer >= 1")
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize: {normalize!r} is not valid; choose one of {', '.join(NORMALIZATIONS)}")
    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not valid; choose one of {', '.join(KINDS)}")
    image_size = tuple(manifest["image_size"]) if manifest["image_size"] else None
    if kind == "auto":
        kind = "cifar" if image_size is not None and max(image_size) <= CIFAR_KIND_MAX_SIDE else "imagenet"
    if kind == "cifar" and image_size is None:
        raise ConfigError(f"kind: cifar needs images of one size, but {root} has several; use kind imagenet")
    if ten_crop and (train or kind != "imagenet"):
        raise ConfigError("ten_crop: only for evaluation (train=False) of the imagenet kind")
    if kind == "imagenet" and not resize_range[0] <= resize_range[1]:
        raise ConfigError(f"resize_range: {resize_range} is not valid; use (low, high) with low <= high")
    if kind == "imagenet" and crop_size > min(resize_range[0], eval_resize):
        raise ConfigError(f"crop_size: {crop_size} is larger than the resized shorter side "
                          f"(resize_range {resize_range}, eval_resize {eval_resize})")
    mean_image = None
    if normalize == "auto":
        normalize = "per_pixel" if kind == "cifar" and manifest.get("mean_image") else "per_channel"
    if normalize == "per_pixel":
        if kind != "cifar" or not manifest.get("mean_image"):
            raise ConfigError(f"data.normalize: per_pixel needs the train split's mean image, which `prepare` "
                              f"writes only for small fixed-size images (CIFAR kind); {root} is {kind} kind. "
                              "Use normalize: per_channel")
        mean_image = np.load(root / manifest["mean_image"]).astype(np.float32)
    files, labels = read_file_list(root / manifest["splits"][split]["list"])
    if num_shards > len(files):
        raise ConfigError(f"num_shards: {num_shards} is more than the {len(files)} samples of {split}")
    lighting = np.asarray(manifest["rgb_eigvec"], np.float64) * np.sqrt(np.asarray(manifest["rgb_eigval"], np.float64))
    spec = LoaderSpec(
        root=root, files=tuple(files), labels=tuple(labels), num_classes=len(manifest["classes"]),
        train=train, kind=kind, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards, seed=seed,
        num_threads=num_threads, mean=tuple(manifest["mean"]), std=tuple(manifest["std"]), mean_image=mean_image,
        image_size=image_size, pad=pad, crop_size=crop_size, resize_range=tuple(resize_range),
        eval_resize=eval_resize, ten_crop=ten_crop, color_aug=color_aug,
        lighting=lighting.astype(np.float32), normalize=normalize)
    if train and len(spec) == 0:
        raise ConfigError(f"batch_size: {batch_size} is larger than a training shard of {split} "
                          f"({spec.num_samples // num_shards} samples); no batch would be produced")
    return spec


def read_file_list(path: Path) -> tuple[list[str], list[int]]:
    """Parse a "<relative path> <label>" list written by `prepare` (a DALI file_list)."""
    rows = [line.rpartition(" ") for line in path.read_text().splitlines()]
    return [name for name, _, _ in rows], [int(label) for _, _, label in rows]
