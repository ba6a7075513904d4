"""Data: prepare (validation, splits, atomic output, sources) and the DALI (CPU) and torch loaders.

Everything runs on small generated data under tmp_path; DALI runs for real, in CPU mode.
"""

from __future__ import annotations

import collections
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import make_image_folder, tree_digest, write_images
from resnet_pipeline.config import ConfigError
from resnet_pipeline.data import DataConfig, DataError, load_data_config, load_manifest, make_loader, prepare
from resnet_pipeline.data.loader import loader_spec

BACKENDS = ["dali-cpu", "torch"]


def _prepare(source: Path | str, out: Path, dataset: str = "imagefolder", **overrides) -> dict:
    cfg = load_data_config({}, dataset=dataset, source=str(source), out=str(out), **overrides)
    return prepare(cfg, timeout_s=1.0)


def _rejected(out: Path) -> dict[str, str]:
    lines = (out / "rejected.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines)


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory) -> Path:
    """A prepared 32x32 dataset: 3 classes, 20/21/22 train images (PNG, so decoding is exact),
    val split off train, a test split."""
    src = tmp_path_factory.mktemp("src")
    for c, n in enumerate((20, 21, 22)):
        write_images(src / "train" / f"class{c}", n, fmt="PNG", seed=c, prefix="tr")
        write_images(src / "test" / f"class{c}", 5, fmt="PNG", seed=10 + c, prefix="te")
    out = tmp_path_factory.mktemp("prepared") / "cifar_like"
    _prepare(src, out, val_fraction=0.2)
    return out


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A prepared dataset of JPEGs of several sizes (the ImageNet kind), with its own val split."""
    src = tmp_path_factory.mktemp("src_in")
    for s, split in enumerate(("train", "val")):
        for c in range(2):
            for i, size in enumerate([(40, 30), (36, 52), (48, 48), (64, 40)]):
                write_images(src / split / f"n0{c}", 1, size=size, seed=100 * s + 10 * c + i, prefix=f"s{i}")
    out = tmp_path_factory.mktemp("prepared_in") / "imagenet_like"
    _prepare(src, out)
    return out


# -- prepare: validation ---------------------------------------------------------------------------

def test_prepare_rejects_bad_files_and_converts_modes(tmp_path):
    src = make_image_folder(tmp_path / "src", {"cat": 8, "dog": 8})
    cat, dog = src / "train" / "cat", src / "train" / "dog"
    good = (cat / "train0_000.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(good[: len(good) // 2])  # a corrupt (cut) JPEG
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(png, format="PNG")
    bad_crc = bytearray(png.getvalue())
    bad_crc[-20] ^= 0xFF  # flips a byte inside a chunk: PNG's CRC check fails
    (cat / "bad_crc.png").write_bytes(bytes(bad_crc))
    (cat / "empty.jpg").write_bytes(b"")
    (dog / "notes.jpg").write_text("this is text, not a JPEG\n")
    (dog / "data.bin").write_bytes(np.random.default_rng(0).bytes(500))
    (src / "train" / "README.txt").write_text("stray file beside the class folders")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(dog / "grey.png")  # mode L
    Image.new("P", (32, 32), 3).save(dog / "palette.png")
    Image.new("CMYK", (32, 32), (0, 50, 100, 0)).save(cat / "cmyk.jpg")
    shutil.copy(dog / "train1_003.jpg", dog / "zz_duplicate.jpg")  # sorts after its original
    shutil.copy(src / "test" / "cat" / "test0_000.jpg", cat / "leaked.jpg")  # a test image in train
    before = tree_digest(src)

    m = _prepare(src, tmp_path / "out", val_fraction=0.0)
    out = tmp_path / "out"

    assert tree_digest(src) == before, "the source must not be modified"
    rejected = _rejected(out)
    assert rejected["train/cat/truncated.jpg"].startswith("corrupt:")
    assert rejected["train/cat/bad_crc.png"].startswith("corrupt:")
    assert rejected["train/cat/empty.jpg"].startswith("empty:")
    assert rejected["train/dog/notes.jpg"].startswith("not-image:")
    assert rejected["train/dog/data.bin"].startswith("not-image:")
    assert rejected["train/README.txt"].startswith("layout:")
    assert rejected["train/dog/zz_duplicate.jpg"] == "duplicate: same bytes as train/dog/train1_003.jpg"
    assert rejected["train/cat/leaked.jpg"].startswith("leak: same bytes as test/cat/test0_000.jpg")
    assert "train copy is dropped" in rejected["train/cat/leaked.jpg"]
    assert len(rejected) == 8 and m["rejected"]["count"] == 8
    assert {r["path"] for r in m["rejected"]["files"]} == set(rejected)
    # 8 good + grey + palette (dog) / + cmyk (cat); the leak's test copy stays in test.
    assert m["splits"]["train"]["per_class"] == {"cat": 9, "dog": 10}
    assert m["splits"]["test"]["per_class"] == {"cat": 2, "dog": 2}
    assert (out / "test" / "cat" / "test0_000.jpg").is_file()
    for name in ("train/dog/grey.png", "train/dog/palette.png", "train/cat/cmyk.png"):
        with Image.open(out / name) as im:
            assert (im.format, im.mode) == ("PNG", "RGB")
    grey = np.asarray(Image.open(out / "train/dog/grey.png"))
    assert (grey == np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)[..., None]).all()  # lossless
    assert {c["to"] for c in m["converted"]} == {"train/dog/grey.png", "train/dog/palette.png", "train/cat/cmyk.png"}
    listed = (out / "train.txt").read_text().splitlines()
    assert len(listed) == 19 and all((out / line.rsplit(" ", 1)[0]).is_file() for line in listed)
    assert m["image_size"] == [32, 32] and np.load(out / m["mean_image"]).shape == (32, 32, 3)
    assert m["versions"]["python"] and m["versions"]["torch"] and m["versions"]["pillow"]
    assert len(m["source"]["sha256"]) == 64


def test_odd_file_names_still_load(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 3, "b": 3})
    folder = bytes(src / "train" / "a")
    for i, name in enumerate([b"two  spaces .jpg", b"latin1-\xe9.jpg", b"new\nline.jpg"]):
        os.rename(write_images(tmp_path / "tmp", 1, seed=50 + i)[0], folder + b"/" + name)
    m = _prepare(src, tmp_path / "out", val_fraction=0.0)
    assert m["splits"]["train"]["per_class"]["a"] == 6
    loader = make_loader(tmp_path / "out", "train", train=False, batch_size=4, backend="dali-cpu")
    assert sum(len(y) for _, y in loader) == 9


def test_mean_and_std_are_over_the_train_split(cifar_like):
    m = load_manifest(cifar_like)
    files = [cifar_like / line.rsplit(" ", 1)[0] for line in (cifar_like / "train.txt").read_text().splitlines()]
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float64) for f in files])  # N, H, W, 3
    assert np.allclose(m["mean"], pixels.mean((0, 1, 2)))
    assert np.allclose(m["std"], pixels.std((0, 1, 2)))
    assert np.allclose(np.load(cifar_like / "mean.npy"), pixels.mean(0), atol=1e-4)


def test_split_is_deterministic_and_stratified(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 30, "b": 20, "c": 11})

    def val_files(out: Path, seed: int) -> list[str]:
        _prepare(src, out, val_fraction=0.2, split_seed=seed)
        return (out / "val.txt").read_text().splitlines()

    first, again, other = val_files(tmp_path / "o1", 0), val_files(tmp_path / "o2", 0), val_files(tmp_path / "o3", 1)
    assert first == again
    assert first != other
    m = load_manifest(tmp_path / "o1")
    assert m["splits"]["val"]["per_class"] == {"a": 6, "b": 4, "c": 2}  # round(0.2 * n) per class
    assert m["splits"]["train"]["per_class"] == {"a": 24, "b": 16, "c": 9}
    names = lambda split: {Path(l.split(" ")[0]).name for l in (tmp_path / "o1" / f"{split}.txt").read_text().splitlines()}
    assert not names("train") & names("val")
    assert len(names("train") | names("val")) == 61
    assert m["val_from"] == "train"


def test_cifar10_protocol_numbers():
    """The paper's 45k/5k split of CIFAR-10 (Sec. 4.2) is what the default params give."""
    cfg = load_data_config(Path(__file__).resolve().parent.parent / "params.yaml")
    assert cfg.dataset == "cifar10" and cfg.val_fraction == 0.1
    assert round(5000 * cfg.val_fraction) * 10 == 5000


# -- prepare: failures leave nothing behind --------------------------------------------------------

def test_truncated_archive_fails_without_output(tmp_path):
    src = make_image_folder(tmp_path / "cifar10-jpeg", {"a": 20, "b": 20})
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="cifar10-jpeg")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    out = tmp_path / "new" / "deep" / "out"
    with pytest.raises(DataError, match="truncated") as err:
        _prepare(archive, out)
    assert str(archive) in str(err.value)
    assert not (tmp_path / "new").exists(), "no output, temporary or parent folder may be left"


def test_failed_prepare_keeps_the_previous_output(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 6, "b": 6})
    out = tmp_path / "out"
    _prepare(src, out)
    before = tree_digest(out)
    for f in (src / "train" / "b").iterdir():
        f.write_bytes(b"")  # now every image of class b is rejected
    with pytest.raises(DataError, match="no valid image"):
        _prepare(src, out)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_empty_class_folder_fails_naming_the_path(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 5, "b": 5})
    (src / "train" / "empty_class").mkdir()
    (src / "test" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/empty_class is empty"):
        _prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hidden_files_and_broken_links_are_not_images(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 5, "b": 5}, splits=("train", "val"))
    (src / "train" / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    m = _prepare(src, tmp_path / "out")
    assert _rejected(tmp_path / "out")["train/a/gone.jpg"].startswith("layout: not a regular file")
    assert m["splits"]["train"]["count"] == 10
    # A val class holding only a hidden file is empty: an error, not a val split carved from train.
    for f in (src / "val" / "b").iterdir():
        f.unlink()
    (src / "val" / "b" / ".DS_Store").write_bytes(b"finder")
    with pytest.raises(DataError, match=r"class folder .*val/b is empty"):
        _prepare(src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_output_never_replaces_other_files_nor_lands_in_the_source(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 3, "b": 3})
    before = tree_digest(src)
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("months of work")
    with pytest.raises(DataError, match=r"data.out: .*work is a folder that `prepare` did not write"):
        _prepare(src, work)
    assert (work / "thesis.tex").read_text() == "months of work"
    _prepare(src, tmp_path / "empty_is_fine")
    link = tmp_path / "link"
    link.symlink_to(src)
    with pytest.raises(DataError, match="overlaps the source"):
        _prepare(link, link / "prepared")  # the output path leads into the source through a link
    assert tree_digest(src) == before


def test_archive_cut_between_members_or_encrypted_fails_clearly(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 3, "b": 3})
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname="src")
    with tarfile.open(archive) as tf:
        cut = tf.getmembers()[-4].offset  # the test split's last files and the end marker go
    archive.write_bytes(archive.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"archive .*data.tar is truncated"):
        _prepare(archive, tmp_path / "out")
    zipped = tmp_path / "data.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(src.rglob("*.jpg")):
            zf.write(f, f.relative_to(src).as_posix())
    data = bytearray(zipped.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # mark every member encrypted
        at = data.find(signature)
        while at >= 0:
            data[at + flags_at] |= 1
            at = data.find(signature, at + 4)
    zipped.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"archive .*data.zip is unreadable: .*encrypted"):
        _prepare(zipped, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tar", "data.zip", "src"]


@pytest.mark.parametrize("layout, message", [
    ("no_train", "wrong layout: expected train/<class>"),
    ("two_tops", "wrong layout"),
    ("class_mismatch", "other classes than"),
    ("missing", "does not exist"),
])
def test_wrong_layout_fails_clearly(tmp_path, layout, message):
    src = tmp_path / "src"
    if layout == "no_train":
        write_images(src / "images" / "a", 3)
    elif layout == "two_tops":
        make_image_folder(src / "one", {"a": 3})
        make_image_folder(src / "two", {"a": 3})
    elif layout == "class_mismatch":
        make_image_folder(src, {"a": 3, "b": 3})
        shutil.rmtree(src / "test" / "b")
    with pytest.raises(DataError, match=message):
        _prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cifar10_dataset_checks_classes_and_checksums(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 3, "b": 3})
    with pytest.raises(DataError, match="expected CIFAR-10's"):
        _prepare(src, tmp_path / "out", dataset="cifar10")
    batches = tmp_path / "fake" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"not the official bytes")
    with pytest.raises(DataError, match="checksum mismatch"):
        _prepare(tmp_path / "fake", tmp_path / "out", dataset="cifar10")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(batches, arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match=f"checksum mismatch in {archive}: ") as err:
        _prepare(archive, tmp_path / "out", dataset="cifar10")
    assert "download=True" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_zip_archive_with_one_top_folder(tmp_path):
    src = make_image_folder(tmp_path / "photos", {"x": 4, "y": 4}, splits=("train", "val"), size=(50, 40))
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
        zf.writestr("__MACOSX/._junk", b"resource fork")
        zf.writestr("LICENSE.txt", b"CC-BY 4.0")  # a file beside the top folder
    m = _prepare(archive, tmp_path / "out")
    assert m["splits"]["train"]["count"] == 8 and m["splits"]["val"]["count"] == 2
    assert m["val_from"] == "source" and m["image_size"] == [40, 50]
    assert m["rejected"]["files"] == [
        {"path": "LICENSE.txt", "kind": "layout", "reason": "outside the top folder photos/"},
        {"path": "__MACOSX/._junk", "kind": "layout", "reason": "outside the top folder photos/"}]
    assert m["source"]["kind"] == "archive" and len(m["source"]["sha256"]) == 64
    # Older Windows tools separate folders with backslashes.
    windows = tmp_path / "windows.zip"
    with zipfile.ZipFile(windows, "w") as zf:
        for f in sorted(src.rglob("*.jpg")):
            zf.write(f, "\\".join(f.relative_to(src).parts))
    assert _prepare(windows, tmp_path / "out2")["splits"]["train"]["count"] == 8


def test_offline_download_fails_fast_with_a_hint(tmp_path, silent_server):
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        _prepare(f"{silent_server}/cifar-10-python.tar.gz", tmp_path / "out", dataset="cifar10",
                 download_dir=str(tmp_path / "downloads"))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "cannot download" in message and "dvc exp run -S data.source=" in message and "--source" in message
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "downloads").glob("*")) if (tmp_path / "downloads").exists() else True


def test_refused_download_fails_at_once(tmp_path, silent_server):
    closed_port_url = silent_server.rsplit(":", 1)[0] + ":9"  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(DataError, match="data.source"):
        _prepare(f"{closed_port_url}/cifar-10-python.tar.gz", tmp_path / "out", dataset="cifar10",
                 download_dir=str(tmp_path / "downloads"))
    assert time.monotonic() - start < 5


# -- demo ------------------------------------------------------------------------------------------

def test_demo_dataset_is_deterministic(tmp_path):
    def run(out: Path) -> dict:
        cfg = load_data_config({}, dataset="demo", out=str(out), demo_classes=4, demo_train_per_class=12,
                               demo_test_per_class=3)
        return prepare(cfg)

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name != "manifest.json":  # records its own output path
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    first["config"].pop("out"), second["config"].pop("out")
    assert first == second
    assert first["splits"]["train"]["count"] + first["splits"]["val"]["count"] == 48
    assert first["source"]["kind"] == "generated" and first["rejected"]["count"] == 0
    with Image.open(next((tmp_path / "a" / "train").rglob("*.jpg"))) as im:
        assert (im.format, im.size) == ("JPEG", (32, 32))


# -- loaders ---------------------------------------------------------------------------------------

def _decoded(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    lines = (data_dir / f"{split}.txt").read_text().splitlines()
    images = np.stack([np.asarray(Image.open(data_dir / l.rsplit(" ", 1)[0]).convert("RGB"), np.float32) for l in lines])
    return images, np.array([int(l.rsplit(" ", 1)[1]) for l in lines])


@pytest.mark.parametrize("normalize", ["per_pixel", "per_channel"])
def test_dali_cpu_eval_shapes_dtypes_and_normalisation(cifar_like, normalize):
    loader = make_loader(cifar_like, "test", train=False, batch_size=4, backend="dali-cpu", normalize=normalize)
    assert loader.backend == "dali-cpu" and loader.num_classes == 3 and loader.num_samples == 15 and len(loader) == 4
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 3]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.dtype == torch.float32 and images.shape == (15, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (15,)
    m = load_manifest(cifar_like)
    raw, expected_labels = _decoded(cifar_like, "test")
    mean = np.load(cifar_like / "mean.npy") if normalize == "per_pixel" else np.asarray(m["mean"], np.float32)
    expected = ((raw - mean) / np.asarray(m["std"], np.float32)).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    assert np.allclose(images.numpy(), expected, atol=1e-4)  # PNG: exact decode
    assert (labels.numpy() == expected_labels).all()
    again = torch.cat([b[0] for b in loader])  # a second epoch, same order
    assert torch.equal(again, images)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["per_pixel", "per_channel"])
def test_train_augmentation_pads_crops_and_flips(cifar_like, backend, normalize):
    m = load_manifest(cifar_like)
    threads = torch.get_num_threads()
    loader = make_loader(cifar_like, "train", train=True, batch_size=8, backend=backend, seed=3, normalize=normalize)
    n_train = m["splits"]["train"]["count"]
    assert len(loader) == n_train // 8
    images, labels = next(iter(loader))
    assert torch.get_num_threads() == threads  # the DALI loader joins batches on one thread, then restores
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    raw, raw_labels = _decoded(cifar_like, "train")
    mean = np.load(cifar_like / "mean.npy") if normalize == "per_pixel" else np.asarray(m["mean"], np.float32)
    normalised = ((raw - mean) / np.asarray(m["std"], np.float32)).transpose(0, 3, 1, 2)
    # Every output is its source image shifted by (dy, dx) in [-4, 4] with zero fill, maybe mirrored.
    shifts = set()
    for x, y in zip(images.numpy(), labels.numpy()):
        found = None
        for i in np.flatnonzero(raw_labels == y):
            for flip in (False, True):
                src = normalised[i][..., ::-1] if flip else normalised[i]
                for dy in range(-4, 5):
                    for dx in range(-4, 5):
                        shifted = np.zeros_like(src)
                        ys, xs = slice(max(0, -dy), 32 - max(0, dy)), slice(max(0, -dx), 32 - max(0, dx))
                        yd, xd = slice(max(0, dy), 32 - max(0, -dy)), slice(max(0, dx), 32 - max(0, -dx))
                        shifted[:, ys, xs] = src[:, yd, xd]
                        if np.allclose(shifted, x, atol=1e-4):
                            found = (dy, dx, flip)
        assert found is not None, "an output is not a padded crop of a train image"
        shifts.add(found)
    assert len(shifts) > 1, "the augmentation should vary"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_shards_see_every_eval_sample_exactly_once(cifar_like, backend):
    seen = collections.Counter()
    for shard in range(2):
        loader = make_loader(cifar_like, "test", train=False, batch_size=3, backend=backend, shard_id=shard,
                             num_shards=2, num_threads=1)
        count = 0
        for images, _ in loader:
            count += len(images)
            seen.update(hashlib_of(x) for x in images)
        assert len(loader) == -(-count // 3)
    n_test = load_manifest(cifar_like)["splits"]["test"]["count"]
    assert n_test % 2 == 1, "the test wants uneven shards"
    assert len(seen) == n_test and set(seen.values()) == {1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_shards, batch_size", [(3, 4), (2, 5)])
def test_train_shards_step_together_and_partition_an_epoch(cifar_like, backend, num_shards, batch_size):
    # 51 train images. 3 ranks x batch 4: DALI reads each rank through two pipelines of batch 2, on
    # shards of 8 and 9 images. 2 ranks x batch 5 (odd: one pipeline): shards of 25 and 26. In both,
    # the shortest shard is a whole number of sub-batches and the longer one has one image more.
    n_train = load_manifest(cifar_like)["splits"]["train"]["count"]
    assert n_train == 51
    sums, steps = [], []
    for shard in range(num_shards):
        # pad=0: the crop is the identity; an image's row sums are unchanged by the flip.
        loader = make_loader(cifar_like, "train", train=True, batch_size=batch_size, backend=backend,
                             shard_id=shard, num_shards=num_shards, pad=0, num_threads=1, seed=5)
        epochs = [[b for b in loader] for _ in range(3)]
        steps.append([len(loader)] + [len(e) for e in epochs])
        sums.append([[tuple(x.sum(dim=(0, 2)).round(decimals=2).tolist()) for x in torch.cat([b[0] for b in e])]
                     for e in epochs])
    assert all(s == [(n_train // num_shards) // batch_size] * 4 for s in steps), steps
    for epoch in range(3):
        flat = [s for shard in sums for s in shard[epoch]]
        assert len(set(flat)) == len(flat), f"an image appeared twice in epoch {epoch} across ranks"
    assert sums[0][0] != sums[0][1], "each epoch is reshuffled"


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_loader_reshuffles_every_epoch_and_resumes_mid_epoch_exactly(cifar_like, backend):
    """The training loader is built once per run: each iter() runs the rest of the current epoch and
    the next one is reshuffled. A new loader given `state_dict()` from any point (mid-epoch, the end of
    an epoch, past it) continues the same stream, starting at that batch (DALI: from its checkpoint,
    which skips to the position without decoding what lies before)."""
    def build():
        return make_loader(cifar_like, "train", train=True, batch_size=8, backend=backend, seed=3, num_threads=1)

    def take(loader, count: int, out: list) -> None:
        while len(out) < count:
            for images, labels in loader:
                out.append((images.clone(), labels.clone()))
                if len(out) == count:
                    return

    n = len(build())
    straight: list = []
    take(build(), 3 * n, straight)
    first, second = (torch.cat([b[1] for b in straight[e * n:(e + 1) * n]]) for e in range(2))
    assert not torch.equal(first, second), "each epoch is reshuffled"
    for stop in (2, n, n + 1, 2 * n - 1):
        taken: list = []
        loader = build()
        take(loader, stop, taken)
        state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (stop // n - (stop % n == 0), stop % n or n)
        resumed = build()
        resumed.load_state_dict(state)
        take(resumed, 3 * n, taken)
        for i, ((a, la), (b, lb)) in enumerate(zip(straight, taken)):
            assert torch.equal(a, b) and torch.equal(la, lb), f"batch {i} differs after resuming at {stop}"


def test_torch_sampler_starts_at_the_position_without_reading_before(cifar_like):
    """The torch loader's sampler yields only the keys from the resumed batch on: nothing before it is
    read or decoded."""
    from resnet_pipeline.data.torch_loader import TorchLoader

    loader = TorchLoader(loader_spec(cifar_like, "train", train=True, batch_size=8, seed=3, num_threads=1))
    whole = list(loader._sampler)
    loader._sampler.start = 2
    assert list(loader._sampler) == whole[16:] and len(loader._sampler) == len(whole) - 16


def _png16(path: Path, rgb16: np.ndarray) -> None:
    """Write an HxWx3 uint16 array as a 16-bit RGB PNG (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height, width, _ = rgb16.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_dali_and_torch_agree_on_eval_tensors(tmp_path):
    src = make_image_folder(tmp_path / "src", {"a": 6, "b": 6}, fmt="JPEG")
    # A 16-bit colour PNG, which torchvision would decode as uint16 (257x the 8-bit values).
    _png16(src / "test" / "b" / "deep.png", np.linspace(0, 65535, 32 * 32 * 3).astype(np.uint16).reshape(32, 32, 3))
    out = tmp_path / "out"
    m = _prepare(src, out)
    assert [c["reason"] for c in m["converted"]] == ["16-bit PNG reduced to 8 bits per channel"]
    tensors = {}
    for backend in BACKENDS:
        loader = make_loader(out, "test", train=False, batch_size=4, backend=backend)
        tensors[backend] = [torch.cat(t) for t in zip(*loader)]
    (dali_x, dali_y), (torch_x, torch_y) = tensors["dali-cpu"], tensors["torch"]
    assert torch.equal(dali_y, torch_y)
    # Both decode with libjpeg-turbo; allow a few grey levels for a different IDCT or upsampling.
    std = min(load_manifest(out)["std"])
    assert (dali_x - torch_x).abs().max() <= 4 / std


def test_imagenet_kind_eval_and_ten_crop(imagenet_like):
    common = dict(normalize="per_channel", crop_size=24, eval_resize=32, resize_range=(32, 48))
    results = {}
    for backend in BACKENDS:
        single = make_loader(imagenet_like, "val", train=False, batch_size=3, backend=backend, **common)
        ten = make_loader(imagenet_like, "val", train=False, batch_size=3, backend=backend, ten_crop=True, **common)
        results[backend] = (torch.cat([x for x, _ in single]), torch.cat([x for x, _ in ten]))
        assert results[backend][0].shape == (8, 3, 24, 24)
        assert results[backend][1].shape == (8, 10, 3, 24, 24)
    single, ten = results["dali-cpu"]
    assert torch.allclose(ten[:, 4], single, atol=1e-5), "crop 5 is the centre crop"
    assert torch.allclose(ten[:, 5:], ten[:, :5].flip(-1), atol=1e-5), "crops 6-10 mirror crops 1-5"
    # The two backends' resize filters differ slightly (both antialiased); every image must agree
    # closely on average, which needs the same resized size (30x40 at shorter side 32: 32x43).
    for a, b in zip(results["dali-cpu"], results["torch"]):
        assert (a - b).abs().flatten(1).mean(1).max() < 0.02
    train = make_loader(imagenet_like, "train", train=True, batch_size=4, backend="dali-cpu", color_aug=True, **common)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64 and torch.isfinite(x).all()


def test_loader_argument_errors(cifar_like, imagenet_like):
    with pytest.raises(ConfigError, match="per_pixel"):
        make_loader(imagenet_like, "val", train=False, batch_size=2, crop_size=24, eval_resize=32, normalize="per_pixel")
    with pytest.raises(ConfigError, match="ten_crop"):
        make_loader(cifar_like, "test", train=False, batch_size=2, ten_crop=True)
    with pytest.raises(DataError, match="no 'nope' split"):
        make_loader(cifar_like, "nope", train=False, batch_size=2)
    with pytest.raises(ConfigError, match="data.backend"):
        make_loader(cifar_like, "test", train=False, batch_size=2, backend="cuda")
    with pytest.raises(ConfigError, match="shard_id"):
        make_loader(cifar_like, "test", train=False, batch_size=2, shard_id=2, num_shards=2)
    with pytest.raises(DataError, match="not a prepared dataset"):
        make_loader(cifar_like / "train", "train", train=True, batch_size=2)


# -- config, CLI, imports --------------------------------------------------------------------------

def test_config_validation_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"data.backend: 'gpu' is not valid; choose one of 'auto', 'dali-gpu'"):
        load_data_config({"data": {"backend": "gpu"}})
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_data_config({"data": {"val_fraction": 1.5}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_data_config({"data": {"val_fracion": 0.1}})
    with pytest.raises(ConfigError, match="data.source"):
        DataConfig(dataset="imagefolder", source=None).validate()
    cfg = load_data_config({"data": {"dataset": "cifar10", "out": "data/prepared/cifar10"}}, dataset="demo")
    assert cfg.out_dir == Path("data/prepared/demo") and cfg.source is None


def test_cli_prepare_with_params_file(tmp_path, monkeypatch):
    from resnet_pipeline.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("data:\n  dataset: demo\n  source: null\n  out: prepared/demo\n  demo_classes: 3\n"
                      "  demo_train_per_class: 10\n  demo_test_per_class: 2\n")
    monkeypatch.chdir(tmp_path)  # `out` is relative to the current folder
    runner = CliRunner()
    result = runner.invoke(main, ["prepare", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "demo: 3 classes" in result.output
    assert json.loads((tmp_path / "prepared/demo/manifest.json").read_text())["num_classes"] == 3
    bad = runner.invoke(main, ["prepare", "--params", str(params), "--dataset", "imagefolder",
                               "--source", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    assert not (tmp_path / "data").exists()


def test_import_does_not_load_dali_or_torch():
    code = ("import sys, resnet_pipeline.data; "
            "assert 'nvidia.dali' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def hashlib_of(x: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(x.numpy().round(3).tobytes()).hexdigest()


def test_dataset_fingerprint_follows_the_content_not_the_folder(tmp_path: Path) -> None:
    """What a sweep's digest holds of its data: prepared again (or moved) the same; another split not."""
    from resnet_pipeline.data import dataset_fingerprint

    src = make_image_folder(tmp_path / "src", {"a": 8, "b": 8})

    def prepared(name: str, split_seed: int) -> Path:
        out = tmp_path / name
        prepare(DataConfig(dataset="imagefolder", source=str(src), out=str(out), val_fraction=0.25,
                           split_seed=split_seed))
        return out

    first = dataset_fingerprint(prepared("first", 0))
    assert dataset_fingerprint(prepared("again", 0)) == first
    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    assert dataset_fingerprint(tmp_path / "moved") == first
    assert dataset_fingerprint(prepared("reseeded", 1)) != first


def test_normalize_auto_follows_the_datas_kind(cifar_like, tmp_path):
    """data.normalize: auto (the default) subtracts the per-pixel mean on CIFAR-kind data (Sec. 4.2) and
    the per-channel mean on ImageNet-kind data (Sec. 3.4), so a user's own photos train without a
    params file; per_pixel on photos of several sizes is still refused, naming the way out."""
    photos = tmp_path / "photos"
    for c in range(2):
        for i, size in enumerate([(90, 70), (64, 96)]):
            write_images(photos / "train" / f"class{c}", 6, size=size, seed=10 * c + i, prefix=f"p{i}")
    _prepare(photos, tmp_path / "prepared", val_fraction=0.25)
    assert loader_spec(cifar_like, "train", train=True, batch_size=4).normalize == "per_pixel"
    spec = loader_spec(tmp_path / "prepared", "train", train=True, batch_size=4, crop_size=48,
                       resize_range=(56, 64), eval_resize=56)
    assert (spec.kind, spec.normalize, spec.mean_image) == ("imagenet", "per_channel", None)
    with pytest.raises(ConfigError, match="per_pixel needs the train split's mean image"):
        loader_spec(tmp_path / "prepared", "train", train=True, batch_size=4, normalize="per_pixel", crop_size=48,
                    resize_range=(56, 64), eval_resize=56)


def test_torch_loader_workers_never_collect_what_the_training_process_holds(tiny_data, tmp_path):
    """The torch loader's workers fork with this process's objects frozen (gc.freeze): a worker that
    collected the training process's garbage would run its finalizers, and a DALI pipeline's, left by
    an earlier run in the same process, hung a worker (and the test suite) waiting for threads that
    fork does not copy. Each forked worker records how many objects it holds frozen."""
    script = f"""
import gc, os
marks = {str(tmp_path)!r}
os.register_at_fork(after_in_child=lambda: open(os.path.join(marks, str(os.getpid())), "w").write(
    str(gc.get_freeze_count())))
from resnet_pipeline.data import make_loader
loader = make_loader({str(tiny_data)!r}, "train", train=True, batch_size=8, backend="torch", num_threads=2)
next(iter(loader))
print("parent frozen after the fork:", gc.get_freeze_count())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).parent.parent))
    assert out.returncode == 0, out.stderr[-3000:]
    counts = [int(p.read_text()) for p in tmp_path.iterdir()]
    assert len(counts) == 2 and all(c > 1000 for c in counts), counts  # both workers, everything frozen
    assert "parent frozen after the fork: 0" in out.stdout  # the training process itself collects as before
