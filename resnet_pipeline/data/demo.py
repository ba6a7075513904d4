"""A small procedurally drawn dataset for the demo pipeline: no download, same bytes every time.

Each class is one kind of shape or texture, drawn with random colours, position, scale, rotation and noise, so the task
is learnable (a CIFAR ResNet-20 leaves chance within a minute of CPU training) but not trivial (low-contrast, small or
noisy samples stay hard). The files are written as JPEGs in the image-folder layout, so `prepare` validates and copies
them like any real source and the loaders run the real decode path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# JPEG quality of the written files: high enough that the shapes survive, low enough to be a
# realistic (lossy) decode path.
JPEG_QUALITY = 90
# Most images have a clearly visible shape (colour distance >= MIN_CONTRAST on the 0-255 scale,
# moderate noise), so a small net learns within a minute; HARD_FRACTION of them get any contrast
# and heavy noise, some of them unrecognisable, so accuracy stays below 100%.
MIN_CONTRAST = 120.0
HARD_FRACTION = 0.15


def _disc(u, v, r, rng):
    return u * u + v * v < r * r


def _ring(u, v, r, rng):
    d = np.sqrt(u * u + v * v)
    return (d < r) & (d > r * rng.uniform(0.45, 0.7))


def _square(u, v, r, rng):
    return np.maximum(np.abs(u), np.abs(v)) < r * 0.8


def _triangle(u, v, r, rng):
    # Equilateral, pointing "up" in the rotated frame: three half-planes.
    h = r * 0.5
    return (v < h) & (np.sqrt(3) * u - v < r) & (-np.sqrt(3) * u - v < r)


def _cross(u, v, r, rng):
    w = r * rng.uniform(0.2, 0.35)
    return ((np.abs(u) < w) & (np.abs(v) < r)) | ((np.abs(v) < w) & (np.abs(u) < r))


def _stripes(u, v, r, rng):
    period = rng.uniform(3.0, 7.0) * r / 8.0 + 2.0
    return np.sin(2 * np.pi * v / period) > 0


def _checker(u, v, r, rng):
    period = rng.uniform(3.0, 6.0) * r / 8.0 + 2.0
    return (np.floor(u / period) + np.floor(v / period)) % 2 == 0


def _dots(u, v, r, rng):
    mask = np.zeros(u.shape, bool)
    for _ in range(int(rng.integers(4, 9))):
        cu, cv = rng.uniform(-1.6 * r, 1.6 * r, size=2)
        rad = rng.uniform(0.12, 0.22) * r + 0.8
        mask |= (u - cu) ** 2 + (v - cv) ** 2 < rad * rad
    return mask


# class name -> (mask function, base rotation in degrees, rotation jitter in degrees).
# Stripes appear as three classes that differ only in orientation (0, 90, +-45 degrees).
SHAPES: dict[str, tuple[Callable, float, float]] = {
    "disc": (_disc, 0.0, 180.0),
    "ring": (_ring, 0.0, 180.0),
    "square": (_square, 0.0, 20.0),
    "triangle": (_triangle, 0.0, 25.0),
    "cross": (_cross, 0.0, 20.0),
    "hstripes": (_stripes, 0.0, 15.0),
    "vstripes": (_stripes, 90.0, 15.0),
    "dstripes": (_stripes, 45.0, 15.0),
    "checker": (_checker, 0.0, 20.0),
    "dots": (_dots, 0.0, 180.0),
}


def draw(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image of class ``class_index``."""
    name = list(SHAPES)[class_index]
    mask_fn, base_deg, jitter_deg = SHAPES[name]
    angle = np.deg2rad(base_deg + rng.uniform(-jitter_deg, jitter_deg))
    if name == "dstripes" and rng.random() < 0.5:
        angle = np.pi - angle  # both diagonals
    scale = size / 32.0
    r = rng.uniform(6.0, 12.0) * scale
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    mask = mask_fn(u, v, r, rng)
    if name in ("hstripes", "vstripes", "dstripes", "checker"):
        # Textures fill a random rectangle, not the whole image.
        x0, y0 = rng.integers(0, size // 3, size=2)
        x1, y1 = rng.integers(2 * size // 3, size + 1, size=2)
        mask &= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    background = rng.uniform(0, 255, size=3)
    foreground = rng.uniform(0, 255, size=3)
    if rng.random() < HARD_FRACTION:
        noise = rng.uniform(25.0, 50.0)  # hard: any contrast (even none), heavy noise
    else:
        noise = rng.uniform(4.0, 25.0)
        while np.linalg.norm(foreground - background) < MIN_CONTRAST:
            foreground = rng.uniform(0, 255, size=3)
    # A smooth background gradient, so the background is not one flat colour.
    gradient = rng.uniform(-40, 40, size=3) * ((xx + yy) / (2 * size) - 0.5)[..., None]
    img = np.where(mask[..., None], foreground, background) + gradient
    img += rng.normal(0.0, noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate_demo(root: str | Path, *, classes: int = 10, train_per_class: int = 300,
                  test_per_class: int = 60, image_size: int = 32, seed: int = 0) -> Path:
    """Write the demo dataset as ``root/{train,test}/<class>/<class>_NNNNN.jpg``; return ``root``.

    Deterministic: every (split, class) has its own numpy RNG seeded by (seed, split, class), so
    the same arguments give the same bytes.
    """
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be in 2..{len(SHAPES)}, got {classes}")
    root = Path(root)
    for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for class_index, name in enumerate(list(SHAPES)[:classes]):
            rng = np.random.default_rng([seed, split_index, class_index])
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(draw(class_index, image_size, rng)).save(
                    folder / f"{name}_{i:05d}.jpg", quality=JPEG_QUALITY)
    return root
