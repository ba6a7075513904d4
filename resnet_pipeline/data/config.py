"""The `data` section of params.yaml, as a typed dataclass.

params.yaml holds the defaults (the full CIFAR-10 reproduction); pipelines/<variant>/params.yaml holds other
variants; CLI flags only override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args

from resnet_pipeline.config import Bounds, ConfigError, check_fields, load_params, load_section
from resnet_pipeline.data.demo import SHAPES

# The official CIFAR-10 python tarball (Krizhevsky 2009). Its checksum is torchvision's.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# CIFAR-10's classes in label order (batches.meta of the official release, Krizhevsky 2009).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SIZE = (32, 32)

Dataset = Literal["cifar10", "imagefolder", "demo"]
Backend = Literal["auto", "dali-gpu", "dali-cpu", "torch"]
Normalize = Literal["auto", "per_pixel", "per_channel"]
BACKENDS, NORMALIZATIONS = get_args(Backend), get_args(Normalize)

Seed = Annotated[int, Bounds(ge=0)]
Count = Annotated[int, Bounds(ge=1)]


class DataError(ConfigError):
    """A data source or prepared folder is unusable. The message names the path and what is expected.

    A subclass of ConfigError (itself a ValueError) so the CLI reports it in one line, no traceback."""


@dataclass
class DataConfig:
    """Everything `prepare` and the loaders read from params.yaml's `data` section."""

    dataset: Dataset = "cifar10"
    # URL (downloaded, checksum verified), local archive (.tar, .tar.gz, .tgz, .zip) or folder. Not used for `demo`.
    source: str | None = CIFAR10_URL
    # Output folder; None means data/prepared/<dataset> (relative to the current dir).
    out: str | None = None
    # Where downloads are kept, so a re-run does not fetch again.
    download_dir: str = "data/downloads"
    # Fraction of each class's training images held out as `val` when the source has no val split. 0.1 of
    # CIFAR-10's 50k gives the paper's 45k/5k split (Sec. 4.2).
    val_fraction: Annotated[float, Bounds(ge=0, lt=1)] = 0.1
    split_seed: Seed = 0
    backend: Backend = "auto"
    # per_pixel: subtract the train split's mean image (Sec. 4.2), needs fixed-size small images; per_channel:
    # subtract the per-channel mean (Sec. 3.4's ImageNet nets). Both then divide by the per-channel std. auto:
    # per_pixel for CIFAR-kind data, per_channel for ImageNet-kind data.
    normalize: Normalize = "auto"
    # DALI CPU threads per pipeline; the torch backend uses this many DataLoader workers.
    num_threads: Count = 2
    # The generated `demo` dataset: classes x (train + test) images of size x size pixels.
    demo_classes: Annotated[int, Bounds(ge=2, le=len(SHAPES))] = 10
    demo_train_per_class: Count = 300
    demo_test_per_class: Count = 60
    demo_image_size: Annotated[int, Bounds(ge=16, le=256)] = 32
    demo_seed: Seed = 0
    # ImageNet-kind data (images larger than 64 px or of mixed sizes; Sec. 3.4): training resizes the shorter side to a
    # random value in resize_range and takes a random crop_size crop; evaluation resizes it to eval_resize and takes the
    # centre crop (or 10 crops). color_aug: the standard colour (PCA lighting) augmentation of [21], in training only.
    crop_size: Count = 224
    resize_range: list[int] = field(default_factory=lambda: [256, 480])
    eval_resize: Count = 256
    color_aug: bool = False

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"data/prepared/{self.dataset}")

    @property
    def aug(self) -> dict[str, Any]:
        """The ImageNet-kind geometry, as `make_loader` keywords (CIFAR-kind loaders ignore it)."""
        return {"crop_size": self.crop_size, "resize_range": tuple(self.resize_range),
                "eval_resize": self.eval_resize, "color_aug": self.color_aug}

    def validate(self) -> None:
        """Raise ConfigError naming the key and its valid values."""
        check_fields(self, "data")
        if self.dataset in ("cifar10", "imagefolder") and not self.source:
            raise ConfigError(f"data.source: dataset {self.dataset!r} needs a source: a URL, an archive "
                              "(.tar, .tar.gz, .tgz, .zip) or a folder")
        if len(self.resize_range) != 2 or not 0 < self.resize_range[0] <= self.resize_range[1]:
            raise ConfigError(f"data.resize_range: {self.resize_range} is not valid; use [low, high] with "
                              "0 < low <= high, e.g. [256, 480]")
        if self.crop_size > min(self.resize_range[0], self.eval_resize):
            raise ConfigError(f"data.crop_size: {self.crop_size} is larger than the resized shorter side "
                              f"(data.resize_range {self.resize_range}, data.eval_resize {self.eval_resize}); "
                              "use a crop_size <= both")


def load_data_config(params: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> DataConfig:
    """Read params' `data` section and apply non-None flag ``overrides``.

    Changing `dataset` by a flag also drops the section's `source` and `out` (unless given too): `--dataset demo` on the
    CIFAR-10 params must not write the demo into data/prepared/cifar10, nor treat the CIFAR-10 URL as an image folder.
    """
    if not isinstance(params, Mapping):
        params = load_params(params)
    section = dict(params.get("data") or {})
    new_dataset = overrides.get("dataset")
    if new_dataset is not None and new_dataset != section.get("dataset", DataConfig.dataset):
        section.pop("out", None)
        section.pop("source", None)
        if new_dataset != "cifar10":
            section["source"] = None
    return load_section(DataConfig, "data", {**params, "data": section}, **overrides)
