"""Check one image file before it is accepted, and measure what the statistics need.

Runs in worker processes (a module-level function and plain dataclasses, so it pickles).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Formats kept byte for byte. Every other image format PIL reads is re-encoded as PNG, so the loaders only ever
# decode these two (DALI's and torchvision's decoders both handle them).
KEPT_FORMATS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}


@dataclass
class Inspection:
    """What ``inspect_image`` found about one file."""

    sha256: str
    reason: str | None = None  # why it is rejected; None when accepted
    kind: str | None = None  # short rejection category (empty, not-image, corrupt, size, mode)
    format: str | None = None
    size: tuple[int, int] | None = None  # (width, height), PIL's order
    convert: str | None = None  # why it must be re-encoded as an RGB PNG; None when kept as is
    # Sums over the image's pixels, 0-255 scale, float64: per channel (3), and of the channel products (3x3, the
    # squares on the diagonal); with `pixels`, enough for mean, std and the RGB covariance.
    sums: np.ndarray | None = None
    products: np.ndarray | None = None
    pixels: int = 0
    # The decoded RGB pixels (HxWx3 uint8 bytes) of small images, for the per-pixel mean image; the caller drops
    # them once summed.
    rgb: bytes | None = None


def inspect_image(path: str | Path, expected_size: tuple[int, int] | None = None,
                  keep_pixels_max_side: int = 0) -> Inspection:
    """Accept or reject one file by its content (its extension is ignored).

    Rejected: empty files, files that are not images, corrupt or truncated images (PIL ``verify`` and then a full
    decode), images of another size than ``expected_size`` (width, height). Accepted as is: RGB JPEG and PNG. Accepted
    after conversion to RGB and lossless re-encoding as PNG: greyscale, CMYK, palette and alpha modes (alpha is dropped,
    the colour channels are kept as stored), 16-bit colour PNGs (their high bytes kept), JPEGs with an EXIF rotation
    (applied, since the loaders' decoders disagree on honouring it), and other formats PIL reads (BMP, GIF, TIFF,
    WebP...). High-bit-depth modes (I, I;16, F: greyscale of more than 8 bits) are rejected: converting them would need
    a range we do not know. Accepted images no larger than ``keep_pixels_max_side`` a side keep their RGB pixels.
    """
    data = Path(path).read_bytes()
    result = Inspection(sha256=hashlib.sha256(data).hexdigest())
    if not data:
        return _reject(result, "empty", "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            result.format = im.format
            im.verify()
    except UnidentifiedImageError:
        return _reject(result, "not-image", "not an image (no image format recognised in its content)")
    except Exception as exc:  # PIL raises many types for corrupt data
        return _reject(result, "corrupt", f"corrupt {result.format or 'image'}: {exc}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # a full decode: catches truncation, which verify() does not for JPEG
            result.size = im.size
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                return _reject(result, "mode", f"unsupported mode {im.mode} (high bit depth)")
            if expected_size is not None and im.size != expected_size:
                return _reject(result, "size", f"size {im.size[0]}x{im.size[1]}, expected "
                                               f"{expected_size[0]}x{expected_size[1]}")
            # EXIF orientation 1 means "stored upright".
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1) if im.format == "JPEG" else 1
            if im.format not in KEPT_FORMATS:
                result.convert = f"{im.format} re-encoded as PNG"
            elif im.format == "PNG" and data[24] == 16:
                # PIL reads a 16-bit RGB(A) PNG as 8-bit RGB (the high bytes); torchvision's decoder would give
                # uint16, 257 times larger. Stored again as PIL reads it.
                result.convert = "16-bit PNG reduced to 8 bits per channel"
            elif im.mode != "RGB":
                result.convert = f"mode {im.mode} converted to RGB"
            elif orientation not in (0, 1):
                result.convert = f"EXIF orientation {orientation} applied"
            rgb = np.asarray(to_rgb(im) if result.convert else im)
            result.size = (rgb.shape[1], rgb.shape[0])  # after any EXIF rotation
            flat = rgb.reshape(-1, 3).astype(np.float64)
            result.sums, result.products, result.pixels = flat.sum(0), flat.T @ flat, len(flat)
            if max(im.size) <= keep_pixels_max_side:
                result.rgb = rgb.tobytes()
    except Exception as exc:
        return _reject(result, "corrupt", f"corrupt or truncated {result.format}: {exc}")
    return result


def _reject(result: Inspection, kind: str, reason: str) -> Inspection:
    result.kind, result.reason = kind, reason
    return result


def to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB version of ``im`` (EXIF rotation applied, alpha dropped)."""
    return ImageOps.exif_transpose(im).convert("RGB")


def write_rgb_png(src: str | Path, dest: str | Path) -> None:
    """Re-encode ``src`` as an RGB PNG at ``dest`` (lossless)."""
    with Image.open(src) as im:
        to_rgb(im).save(dest, format="PNG")


def pixel_sum(items: list[tuple[str, bool]]) -> np.ndarray:
    """Sum (float64, HxWx3) of equally sized images; ``items`` are (path, needs RGB conversion)."""
    total = 0.0
    for path, convert in items:
        with Image.open(path) as im:
            total = total + np.asarray(to_rgb(im) if convert else im.convert("RGB"), dtype=np.float64)
    return total
