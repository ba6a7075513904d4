"""`prepare`: acquire a dataset, validate every image, split it, and write it where DALI reads it.

Output (``cfg.out_dir``)::

    <out>/<split>/<class>/<name>    accepted images (JPEG or PNG), splits train, val, test
    <out>/<split>.txt               "<split>/<class>/<name> <label>" lines: a DALI file_list
    <out>/manifest.json             counts, classes, source + sha256, statistics, versions
    <out>/rejected.txt              "<source path>\t<kind>: <reason>" for every file not accepted
    <out>/mean.npy                  per-pixel mean of the train split, HxWx3 float32 (small
                                    fixed-size data such as CIFAR's 32x32 only)

The output appears complete or not at all: it is built in a temporary folder beside ``out`` and
renamed into place; an existing ``out`` is replaced only once the new one is complete.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_pipeline.config import to_dict
from resnet_pipeline.environment import versions
from resnet_pipeline.files import atomic_dir
import resnet_pipeline.data.sources as sources
from resnet_pipeline.data.config import CIFAR10_CLASSES, CIFAR10_SIZE, CIFAR10_URL, DataConfig, DataError
from resnet_pipeline.data.demo import generate_demo
from resnet_pipeline.data.validate import KEPT_FORMATS, Inspection, inspect_image, pixel_sum, write_rgb_png

MANIFEST = "manifest.json"
REJECTED = "rejected.txt"
MEAN_IMAGE = "mean.npy"
FORMAT_VERSION = 1
# Offline downloads must fail fast (seconds), not hang on the OS's minutes-long TCP timeout.
DOWNLOAD_TIMEOUT_S = 10.0
# The per-pixel mean image is written for fixed-size data up to this side (CIFAR is 32).
MEAN_IMAGE_MAX_SIDE = 64
# Held-out splits win a duplicate: the same image in train and test is a leak, so the train copy
# goes. Lower is kept first.
_KEEP_PRIORITY = {"test": 0, "val": 1, "train": 2}
# Below this many files the validation runs in-process: worker start-up would cost more.
_MIN_FILES_FOR_POOL = 512
_VERSIONED = ("resnet-pipeline", "torch", "torchvision", "pillow", "numpy", "nvidia-dali-cuda130")


@dataclass
class _Candidate:
    source_split: str  # the split folder it was found in
    cls: str
    path: Path  # absolute, in the source or the scratch folder
    rel: str  # as reported: relative to the source root
    split: str  # where it goes: source_split, or val when held out from train
    inspection: Inspection | None = None
    dest: str | None = None  # "<split>/<class>/<name>" once accepted


_Rejection = collections.namedtuple("_Rejection", "rel kind reason")


def prepare(cfg: DataConfig, *, timeout_s: float = DOWNLOAD_TIMEOUT_S, workers: int | None = None) -> dict:
    """Prepare ``cfg.dataset`` from ``cfg.source`` into ``cfg.out_dir``; return the manifest.

    Raises DataError (a ConfigError) naming the path and what is expected when the source is missing, unreadable,
    truncated, fails its checksum, has the wrong layout, or leaves a class or split without images. Then nothing
    is left behind in ``out``.
    """
    # Resolved (symlinks too), so that an output inside the source is seen whatever path leads there.
    out = Path(cfg.out_dir).expanduser().resolve()
    workers = workers or os.cpu_count() or 1
    _check_out(out)
    with atomic_dir(out) as tmp:
        scratch = tmp / "_source"
        scratch.mkdir()
        source = _acquire(cfg, out, scratch, timeout_s)
        candidates, extras = _collect(source, cfg)
        pixel_sums = _inspect(candidates, workers, CIFAR10_SIZE[::-1] if cfg.dataset == "cifar10" else None)
        rejected = [_Rejection(c.rel, c.inspection.kind, c.inspection.reason)
                    for c in candidates if c.inspection.reason]
        rejected += [_Rejection(rel, "layout", reason) for _, rel, reason in extras]
        accepted, duplicates = _drop_duplicates([c for c in candidates if not c.inspection.reason])
        rejected += duplicates
        # Label order: sorted folder names, as torchvision's ImageFolder and DALI's file reader number them
        # (CIFAR-10's official order is already alphabetical).
        classes = sorted({c.cls for c in candidates})
        _require_images(accepted, candidates, classes, source.image_root)
        val_from = _split_val(accepted, classes, cfg)
        if source.info.get("sha256") is None:
            source.info["sha256"] = _tree_digest(candidates, extras)
        mean_image = _mean_image(candidates, accepted, pixel_sums)  # before files move out of scratch
        _write_images(accepted, tmp, workers, move=source.owned)
        manifest = _manifest(cfg, source.info, classes, accepted, rejected, val_from, mean_image, tmp)
        shutil.rmtree(scratch)
    return manifest


def load_manifest(data_dir: str | Path) -> dict:
    """Read ``<data_dir>/manifest.json``; DataError if it is absent (run `prepare` first)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: {data_dir} is not a prepared dataset; prepare it first with "
                        f"`python cli.py prepare` (the data section of params.yaml; --params for another file), "
                        f"offline from a local copy: `python cli.py prepare --source /path/to/archive-or-folder`")
    return json.loads(path.read_text())


def dataset_fingerprint(data_dir: str | Path) -> str:
    """12 hex digits identifying what a prepared dataset holds: the manifest (less the versions, the
    prepare settings and where the source lay) and the split lists (every file with its label). The
    same data prepared again, or moved, gives the same fingerprint; another split seed does not."""
    root = Path(data_dir)
    manifest = load_manifest(root)
    held = {k: v for k, v in manifest.items() if k not in ("versions", "config")}
    held["source"] = {k: v for k, v in manifest["source"].items() if k != "location"}
    digest = hashlib.sha256(json.dumps(held, sort_keys=True).encode())
    for split in sorted(manifest["splits"]):
        digest.update((root / manifest["splits"][split]["list"]).read_bytes())
    return digest.hexdigest()[:12]


# -- acquiring ---------------------------------------------------------------------------------

@dataclass
class _Source:
    info: dict  # kind, location, sha256, format: for the manifest
    root: Path  # reported paths are relative to this
    image_root: Path  # holds train/ (and val/, test/)
    owned: bool  # the files are our scratch copies, so they may be moved instead of copied
    skipped: list[str]  # archive members not unpacked (links, unsafe paths)


def _acquire(cfg: DataConfig, out: Path, scratch: Path, timeout_s: float) -> _Source:
    if cfg.dataset == "demo":
        root = generate_demo(scratch / "demo", classes=cfg.demo_classes,
                             train_per_class=cfg.demo_train_per_class, test_per_class=cfg.demo_test_per_class,
                             image_size=cfg.demo_image_size, seed=cfg.demo_seed)
        info = {"kind": "generated", "location": "resnet_pipeline.data.demo", "sha256": None, "format": "image-folder"}
        return _Source(info, root, root, owned=True, skipped=[])
    source = str(cfg.source)
    if sources.is_url(source):
        md5 = None
        if Path(source).name == Path(CIFAR10_URL).name:
            from torchvision.datasets import CIFAR10

            md5 = CIFAR10.tgz_md5  # the official tarball's checksum, as torchvision verifies it
        path = sources.download(source, Path(cfg.download_dir), md5=md5, timeout_s=timeout_s)
        info = {"kind": "url", "location": source}
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data.source: {path} does not exist. Expected a folder, a .tar/.tar.gz/.zip "
                            "archive" + (" or an http(s) URL" if cfg.dataset == "cifar10" else ""))
        path = path.resolve()
        if out == path or out.is_relative_to(path) or path.is_relative_to(out):
            raise DataError(f"data.out: {out} overlaps the source {path}; the output must lie outside it")
        info = {"kind": "folder" if path.is_dir() else "archive", "location": str(path)}
    if path.is_dir():
        root, owned, skipped = path, False, []
        info["sha256"] = None  # a digest of the files, filled in once they are hashed
    else:
        if not sources.is_archive(path):
            raise DataError(f"data.source: {path} is not a folder nor a supported archive "
                            f"({', '.join(sources.ARCHIVE_SUFFIXES)})")
        info["sha256"] = sources.sha256_file(path)
        root, owned = scratch / "extracted", True
        skipped = sources.extract(path, root)
    batches = sources.find_cifar_batches(root)
    if batches is not None:
        if cfg.dataset != "cifar10":
            raise DataError(f"data.source: {path} holds CIFAR-10 python batches; use dataset: cifar10")
        info["format"] = "cifar10-python"
        converted = scratch / "cifar10-images"
        # An archive's batches lie in scratch: name the archive; a folder's are the user's own files.
        sources.cifar_batches_to_folders(batches, converted, source=None if path.is_dir() else str(path))
        return _Source(info, converted, converted, owned=True, skipped=skipped)
    info["format"] = "image-folder"
    return _Source(info, root, sources.find_image_root(root, str(path)), owned=owned, skipped=skipped)


# -- collecting and validating ------------------------------------------------------------------

def _collect(source: _Source, cfg: DataConfig) -> tuple[list[_Candidate], list[tuple[Path | None, str, str]]]:
    """Every file of the source: candidates to inspect, and (path, rel, reason) extras that are not in the
    layout. Raises DataError on a wrong layout or an empty class folder."""
    image_root = source.image_root

    def rel(p: Path) -> str:
        return p.relative_to(source.root).as_posix()

    candidates: list[_Candidate] = []
    extras: list[tuple[Path | None, str, str]] = [
        (None, name, "link, special file or path outside the archive's folder (not unpacked)")
        for name in source.skipped]

    def add_extras(entry: Path, reason: str) -> None:
        for f in ([entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())):
            extras.append((f, rel(f), reason))

    if image_root != source.root:  # one wrapping top folder; anything beside it is not data
        for entry in sorted(source.root.iterdir()):
            if entry != image_root:
                add_extras(entry, f"outside the top folder {image_root.name}/")
    for entry in sorted(image_root.iterdir()):
        if entry.name not in sources.SPLITS or not entry.is_dir():
            add_extras(entry, "outside the train/, val/, test/ folders")
    class_sets: dict[str, list[str]] = {}
    for split in sources.SPLITS:
        split_dir = image_root / split
        if not split_dir.is_dir():
            continue
        class_dirs = []
        for entry in sorted(split_dir.iterdir()):
            if not entry.is_dir() or entry.name.startswith(".") or entry.name in sources.IGNORED_NAMES:
                add_extras(entry, f"not inside a class folder of {split}/")
                continue
            name = entry.name
            if name != name.strip() or not _encodable(name) or any(ch in name for ch in "\n\t\r"):
                raise DataError(f"class folder name {name!r} in {split_dir} is not usable: no leading or "
                                "trailing spaces, tabs, line breaks or invalid UTF-8")
            class_dirs.append(entry)
        if not class_dirs:
            raise DataError(f"{split_dir} has no class folders: expected {split}/<class>/<images>")
        class_sets[split] = [d.name for d in class_dirs]
        for class_dir in class_dirs:
            found = len(candidates)
            for f in sorted(p for p in class_dir.rglob("*") if not p.is_dir()):
                if not f.is_file():  # a link to nothing, a socket, a FIFO: nothing to read or hash
                    extras.append((None, rel(f), "not a regular file (a broken link or a special file)"))
                elif any(part.startswith(".") for part in f.relative_to(class_dir).parts):
                    extras.append((f, rel(f), "hidden file"))
                else:
                    candidates.append(_Candidate(split, class_dir.name, f, rel(f), split))
            if len(candidates) == found:
                raise DataError(f"class folder {class_dir} is empty: every class needs at least one image "
                                "(hidden files and broken links do not count)")
    _check_classes(class_sets, image_root, cfg.dataset)
    return candidates, extras


def _check_classes(class_sets: dict[str, list[str]], image_root: Path, dataset: str) -> None:
    """DataError unless every split has the train split's class folders (and CIFAR-10's, for cifar10)."""
    train_classes = class_sets["train"]
    for split, names in class_sets.items():
        if names != train_classes:
            missing = sorted(set(train_classes) - set(names))
            extra = sorted(set(names) - set(train_classes))
            raise DataError(f"{image_root / split} has other classes than {image_root / 'train'}: "
                            f"missing {missing or 'none'}, extra {extra or 'none'}; every split needs the same "
                            "class folders")
    if dataset == "cifar10" and tuple(train_classes) != CIFAR10_CLASSES:
        raise DataError(f"{image_root / 'train'} has classes {train_classes}, expected CIFAR-10's "
                        f"{list(CIFAR10_CLASSES)} (use dataset: imagefolder for other data)")


def _inspect(candidates: list[_Candidate], workers: int, expected_size: tuple[int, int] | None
             ) -> dict[tuple[int, int], np.ndarray]:
    """Run ``inspect_image`` on every candidate, in worker processes when there are many.

    Returns the pixel sums (float64 HxWx3, by (H, W)) of the small accepted train candidates, summed as the
    results stream in, so no image is held in memory: the mean image's numerator before the val split and the
    duplicates are taken out.
    """
    paths = [str(c.path) for c in candidates]
    inspect = functools.partial(inspect_image, expected_size=expected_size, keep_pixels_max_side=MEAN_IMAGE_MAX_SIDE)
    sums: dict[tuple[int, int], np.ndarray] = {}

    def consume(results) -> None:
        for c, r in zip(candidates, results):
            if r.rgb is not None and c.source_split == "train":
                size = (r.size[1], r.size[0])
                pixels = np.frombuffer(r.rgb, np.uint8).reshape(*size, 3)
                sums[size] = sums[size] + pixels if size in sums else pixels.astype(np.float64)
            r.rgb, c.inspection = None, r

    if workers > 1 and len(paths) >= _MIN_FILES_FOR_POOL:
        chunk = max(1, min(256, len(paths) // (workers * 8)))
        # spawn, not fork: the caller may hold DALI or torch threads, which fork does not copy.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            consume(pool.map(inspect, paths, chunksize=chunk))
    else:
        consume(map(inspect, paths))
    return sums


def _drop_duplicates(accepted: list[_Candidate]) -> tuple[list[_Candidate], list[_Rejection]]:
    """Keep the first copy of identical bytes (held-out splits first, then sorted path order)."""
    kept: dict[str, _Candidate] = {}
    rejected = []
    for c in sorted(accepted, key=lambda c: (_KEEP_PRIORITY[c.split], c.rel)):
        first = kept.get(c.inspection.sha256)
        if first is None:
            kept[c.inspection.sha256] = c
        elif first.split != c.split:
            rejected.append(_Rejection(c.rel, "leak", (
                f"same bytes as {first.rel}: an image in both {c.split} and {first.split} would leak the "
                f"held-out set, so the {c.split} copy is dropped")))
        else:
            rejected.append(_Rejection(c.rel, "duplicate", f"same bytes as {first.rel}"))
    keep = {id(c) for c in kept.values()}
    return [c for c in accepted if id(c) in keep], rejected


def _require_images(accepted: list[_Candidate], candidates: list[_Candidate], classes: list[str],
                    image_root: Path) -> None:
    """Every class of every split must keep at least one image after validation."""
    have = {(c.split, c.cls) for c in accepted}
    for split in sorted({c.split for c in candidates}):
        for cls in classes:
            if (split, cls) not in have:
                bad = [c for c in candidates if c.split == split and c.cls == cls]
                reasons = collections.Counter(c.inspection.reason or "duplicate" for c in bad)
                raise DataError(f"class folder {image_root / split / cls} has no valid image: all {len(bad)} "
                                f"files were rejected ({'; '.join(f'{n}x {r}' for r, n in reasons.most_common(3))})")


def _split_val(accepted: list[_Candidate], classes: list[str], cfg: DataConfig) -> str | None:
    """Move a fixed-seed, stratified ``val_fraction`` of each train class to `val` (when the source has no val
    split). CIFAR-10: 0.1 of 5,000 per class gives the paper's 45k/5k split (Sec. 4.2). Each class draws from its
    own RNG seeded by (split_seed, label), so one class's files do not shift another's split."""
    if any(c.split == "val" for c in accepted):
        return "source"
    if cfg.val_fraction == 0:
        return None
    by_class = collections.defaultdict(list)
    for c in accepted:
        if c.split == "train":
            by_class[c.cls].append(c)
    for label, cls in enumerate(classes):
        members = sorted(by_class[cls], key=lambda c: c.rel)
        n_val = int(round(len(members) * cfg.val_fraction))
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) >= 2 else 0  # keep both sides non-empty
        order = np.random.default_rng([cfg.split_seed, label]).permutation(len(members))
        for i in order[:n_val]:
            members[i].split = "val"
    return "train"


def _tree_digest(candidates: list[_Candidate], extras: list[tuple[Path | None, str, str]]) -> str:
    """sha256 of a folder source: over the sorted "<relative path> <sha256 of bytes>" lines of every file in it."""
    lines = [(c.rel, c.inspection.sha256) for c in candidates]
    lines += [(rel, sources.sha256_file(path)) for path, rel, _ in extras if path is not None]
    digest = hashlib.sha256()
    for rel, sha in sorted(lines):
        digest.update(os.fsencode(rel) + f"\t{sha}\n".encode())  # the name's bytes, whatever their encoding
    return digest.hexdigest()


# -- writing ------------------------------------------------------------------------------------

def _encodable(text: str) -> bool:
    """Whether ``text`` survives UTF-8 (file names that are not valid UTF-8 decode to surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _out_name(c: _Candidate, taken: set[str]) -> str:
    """``<split>/<class>/<name>``: the source name (whitespace replaced, so file lists parse),
    with the extension of what is written; a clash gets the content hash appended."""
    rel_in_class = c.path.name if c.inspection.convert is None else Path(c.path.name).stem + ".png"
    stem, ext = os.path.splitext(rel_in_class)
    if c.inspection.convert is None and ext.lower() not in KEPT_FORMATS[c.inspection.format]:
        ext = KEPT_FORMATS[c.inspection.format][0]
    stem = "".join("_" if ch.isspace() or not _encodable(ch) else ch for ch in stem) or "image"
    name = f"{c.split}/{c.cls}/{stem}{ext}"
    if name in taken:
        name = f"{c.split}/{c.cls}/{stem}-{c.inspection.sha256[:12]}{ext}"
    taken.add(name)
    return name


def _write_images(accepted: list[_Candidate], tmp: Path, workers: int, *, move: bool) -> None:
    """Put accepted files into ``tmp``: moved when they are our scratch copies (an unpacked
    archive), else copied; converted ones re-encoded. I/O bound, so threads."""
    taken: set[str] = set()
    for c in sorted(accepted, key=lambda c: c.rel):
        c.dest = _out_name(c, taken)
    for folder in {str(Path(c.dest).parent) for c in accepted}:
        (tmp / folder).mkdir(parents=True, exist_ok=True)

    def write(c: _Candidate) -> None:
        if c.inspection.convert is not None:
            write_rgb_png(c.path, tmp / c.dest)
        elif move:
            os.replace(c.path, tmp / c.dest)
        else:
            shutil.copyfile(c.path, tmp / c.dest)

    with ThreadPoolExecutor(max(2, workers * 2)) as pool:
        list(pool.map(write, accepted))


def _manifest(cfg: DataConfig, source_info: dict, classes: list[str], accepted: list[_Candidate],
              rejected: list[_Rejection], val_from: str | None, mean_image: np.ndarray | None, tmp: Path) -> dict:
    label = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in sources.SPLITS:
        members = sorted((c for c in accepted if c.split == split), key=lambda c: c.dest)
        if not members:
            continue
        # A DALI file_list: paths relative to the list's folder, then the label.
        (tmp / f"{split}.txt").write_text("".join(f"{c.dest} {label[c.cls]}\n" for c in members))
        per_class = collections.Counter(c.cls for c in members)
        splits[split] = {"count": len(members), "per_class": {c: per_class.get(c, 0) for c in classes},
                         "list": f"{split}.txt"}
    if mean_image is not None:
        np.save(tmp / MEAN_IMAGE, mean_image)
    rejected = sorted(rejected, key=lambda r: r.rel)
    # One line per file, whatever its name holds: escape what would break the line or the encoding.
    lines = (f"{r.rel}\t{r.kind}: {r.reason}".encode("utf-8", "backslashreplace").decode()
             .replace("\n", "\\n") + "\n" for r in rejected)
    (tmp / REJECTED).write_text("".join(lines))
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": cfg.dataset,
        "source": source_info,
        "classes": classes,
        "num_classes": len(classes),
        "splits": splits,
        "val_from": val_from,
        "split": {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed, "stratified": True},
        "image_size": _fixed_size(accepted),
        **_channel_stats([c for c in accepted if c.split == "train"]),
        "mean_image": MEAN_IMAGE if mean_image is not None else None,
        "converted": [{"path": c.rel, "to": c.dest, "reason": c.inspection.convert}
                      for c in sorted(accepted, key=lambda c: c.rel) if c.inspection.convert],
        "rejected": {
            "count": len(rejected),
            "file": REJECTED,
            "by_kind": dict(sorted(collections.Counter(r.kind for r in rejected).items())),
            "files": [{"path": r.rel, "kind": r.kind, "reason": r.reason} for r in rejected],
        },
        "config": to_dict(cfg),
        "versions": {"python": platform.python_version(), **versions(_VERSIONED)},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _channel_stats(train: list[_Candidate]) -> dict:
    """The manifest's statistics of the train split, 0-255 scale: per-channel mean and std over all its pixels,
    and the eigen-decomposition of the RGB covariance (AlexNet's colour augmentation, which Sec. 3.4 uses)."""
    n = sum(c.inspection.pixels for c in train)
    mean = np.sum([c.inspection.sums for c in train], axis=0) / n
    cov = np.sum([c.inspection.products for c in train], axis=0) / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return {"mean": mean.tolist(), "std": np.sqrt(np.diag(cov)).tolist(),
            "rgb_eigval": np.clip(eigval[order], 0, None).tolist(), "rgb_eigvec": eigvec[:, order].tolist()}


def _fixed_size(accepted: list[_Candidate]) -> list[int] | None:
    """[H, W] when every accepted image has that size, else None."""
    sizes = {(c.inspection.size[1], c.inspection.size[0]) for c in accepted}
    return list(sizes.pop()) if len(sizes) == 1 else None


def _mean_image(candidates: list[_Candidate], accepted: list[_Candidate],
                pixel_sums: dict[tuple[int, int], np.ndarray]) -> np.ndarray | None:
    """The per-pixel mean of the final train split (Sec. 4.2 subtracts it), HxWx3 float32, 0-255, for small
    fixed-size data. ``pixel_sums`` covers every accepted train candidate; the few that moved to val or were
    dropped as duplicates are decoded again and taken out."""
    size = _fixed_size(accepted)
    if size is None or max(size) > MEAN_IMAGE_MAX_SIDE:
        return None
    final = {id(c) for c in accepted if c.split == "train"}
    left_out = [(str(c.path), c.inspection.convert is not None) for c in candidates
                if c.source_split == "train" and not c.inspection.reason and id(c) not in final]
    total = pixel_sums[tuple(size)]
    if left_out:
        total = total - pixel_sum(left_out)
    return (total / len(final)).astype(np.float32)


def _check_out(dest: Path) -> None:
    """The output replaces the folder whole: never a file, nor a folder of someone else's files."""
    if dest.exists() and not dest.is_dir():
        raise DataError(f"data.out: {dest} exists and is not a folder")
    if dest.is_dir() and not (dest / MANIFEST).is_file() and any(dest.iterdir()):
        raise DataError(f"data.out: {dest} is a folder that `prepare` did not write (it has files and no "
                        f"{MANIFEST}); give a new or empty folder, or a prepared dataset's folder to replace")


def summary(manifest: dict, out: Path) -> str:
    """A few lines on what `prepare` wrote (for the CLI)."""
    counts = ", ".join(f"{split} {info['count']:,}" for split, info in manifest["splits"].items())
    rejected = manifest["rejected"]
    lines = [f"{manifest['dataset']}: {manifest['num_classes']} classes, {counts} -> {out}",
             f"rejected {rejected['count']} file(s)" + (f" {rejected['by_kind']} (see {out / REJECTED})"
                                                        if rejected["count"] else ""),
             f"converted to RGB PNG: {len(manifest['converted'])}",
             "train mean " + ", ".join(f"{m:.1f}" for m in manifest["mean"])
             + " / std " + ", ".join(f"{s:.1f}" for s in manifest["std"]) + " (0-255)"]
    return "\n".join(lines)
