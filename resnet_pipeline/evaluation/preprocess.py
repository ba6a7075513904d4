"""The evaluation transform for single image files, and what it needs, stored with each model.

`Preprocessing` is everything needed to turn an image file into the model's input exactly as the evaluation loaders do
(`resnet_pipeline/data/spec.py`, single view): the classes, the dataset kind, the normalisation (the train split's
per-pixel mean image, or per-channel mean) and the per-channel std, and for the ImageNet kind the resize and crop sizes.
`evaluate` writes it as ``preprocessing.json`` next to each logged model, so `predict` needs no dataset folder.

CIFAR kind: the stored images all have the dataset's size (`prepare` checks it); an image of another size is first
resized to it (the aspect ratio is not kept). ImageNet kind: shorter side to ``eval_resize``, centre ``crop_size`` crop,
as the torch loader does (DALI's resampling differs from torchvision's by small amounts)."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_pipeline.config import ConfigError
from resnet_pipeline.data import load_manifest
from resnet_pipeline.data.loader import eval_geometry, loader_spec

PREPROCESSING_FILE = "preprocessing.json"
FORMAT_VERSION = 1


class ImageInputError(ConfigError):
    """An input image is missing or cannot be decoded; the message names the file."""


@dataclass
class Preprocessing:
    dataset: str
    classes: list[str]
    kind: str  # cifar | imagenet
    normalize: str  # per_pixel | per_channel
    mean: list[float]  # per channel, 0-255
    std: list[float]
    image_size: list[int] | None  # [H, W] of the dataset's images when fixed
    crop_size: int
    eval_resize: int
    mean_image: list | None = None  # H x W x 3, 0-255, for normalize == per_pixel
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dataset(cls, data_dir: str | Path, normalize: str, aug: dict[str, Any] | None = None) -> "Preprocessing":
        """Read from a prepared dataset, with the loaders' own resolution of kind and sizes
        (``aug``: ImageNet-kind crop_size and eval_resize, as given to `make_loader`)."""
        manifest = load_manifest(data_dir)
        spec = loader_spec(data_dir, "val", train=False, batch_size=1, normalize=normalize, **eval_geometry(aug))
        return cls(dataset=manifest["dataset"], classes=list(manifest["classes"]), kind=spec.kind,
                   normalize=normalize, mean=[float(m) for m in spec.mean], std=[float(s) for s in spec.std],
                   image_size=list(spec.image_size) if spec.image_size else None, crop_size=spec.crop_size,
                   eval_resize=spec.eval_resize,
                   mean_image=spec.mean_image.tolist() if spec.mean_image is not None else None)

    @property
    def input_size(self) -> int:
        """The side of the images the model sees: the stored size (CIFAR kind) or the crop."""
        return self.image_size[0] if self.kind == "cifar" and self.image_size else self.crop_size  # LoaderSpec's rule

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str = "preprocessing.json") -> "Preprocessing":
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} is not a valid preprocessing file: {exc}") from None

    def transform(self, image: Any) -> Any:
        """uint8 [3, H, W] tensor -> float32 [3, h, w] model input (the single-view eval transform)."""
        import torch
        from torchvision.transforms.v2 import functional as TF

        inv_std = (1.0 / torch.tensor(self.std, dtype=torch.float32)).view(3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        if self.kind == "cifar":
            if self.image_size and list(image.shape[1:]) != list(self.image_size):
                image = TF.resize(image, list(self.image_size), antialias=True)
            if self.mean_image is not None:
                mean = torch.from_numpy(np.asarray(self.mean_image, dtype=np.float32)).permute(2, 0, 1)  # HWC -> CHW
        else:
            image = TF.resize(image, [self.eval_resize], antialias=True)
            _, height, width = image.shape
            c = self.crop_size
            # The loaders round the centre crop's offset half away from zero (DALI's rule).
            top, left = math.floor(0.5 * (height - c) + 0.5), math.floor(0.5 * (width - c) + 0.5)
            image = image[:, top:top + c, left:left + c]
        return ((image.float() - mean) * inv_std).contiguous()


def read_image(path: str | Path) -> Any:
    """Decode one file to a uint8 [3, H, W] RGB tensor, applying its EXIF orientation (`prepare`
    applied it to the dataset's files). ImageInputError names the file when it cannot. Pillow: any
    format a user's photo may come in, and its EXIF rotation (one image at a time; speed is no concern)."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageInputError(f"image not found: {p}")
    if not p.is_file():
        raise ImageInputError(f"not a file: {p} (give image files, e.g. JPEG or PNG)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not raw:
        raise ImageInputError(f"cannot read {p} as an image: the file is empty")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a recognised image format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageInputError(f"cannot read {p} as an image (JPEG, PNG, GIF or WebP): "
                              f"{reason.split('. ')[0] or type(exc).__name__}") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
