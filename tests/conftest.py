"""Shared test helpers: small generated image folders, folder digests, a server that never answers."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from PIL import Image

from resnet_pipeline.config import PROJECT_ROOT

# A test that takes one of these fixtures starts Ray or runs DVC pipelines: `make test-fast` leaves it out.
SLOW_FIXTURES = {"ray_session", "demo_repo", "first_repro"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that uses a fixture of SLOW_FIXTURES (tests that start Ray or DVC in
    another way carry the mark themselves)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def write_images(folder: Path, count: int, *, size: tuple[int, int] = (32, 32), fmt: str = "JPEG",
                 seed: int = 0, prefix: str = "img") -> list[Path]:
    """``count`` random RGB images (width, height = ``size``) as ``folder/<prefix>_NNN.<ext>``.

    Smooth colour blobs plus noise rather than pure noise, so JPEG keeps them recognisable.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        centre = rng.uniform(0, [width, height])
        blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * (min(size) / 4) ** 2))
        colour, background = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = background + blob[..., None] * (colour - background) + rng.normal(0, 10, (height, width, 3))
        path = folder / f"{prefix}_{i:03d}{ext}"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format=fmt, **(
            {"quality": 95} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


def make_image_folder(root: Path, classes: dict[str, int], *, splits: tuple[str, ...] = ("train", "test"),
                      size: tuple[int, int] = (32, 32), fmt: str = "JPEG", test_fraction: float = 0.25) -> Path:
    """An image-folder dataset: ``root/<split>/<class>/*`` with ``classes[name]`` train images per
    class and ``test_fraction`` as many in every other split (at least one)."""
    for s, split in enumerate(splits):
        for c, (name, count) in enumerate(sorted(classes.items())):
            n = count if split == "train" else max(1, int(count * test_fraction))
            write_images(root / split / name, n, size=size, fmt=fmt, seed=1000 * s + c, prefix=f"{split}{c}")
    return root


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path, bytes and mode under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*")):
        digest.update(os.fsencode(path.relative_to(root)))
        if path.is_file():
            digest.update(path.read_bytes())
        digest.update(str(path.stat().st_mode).encode())
    return digest.hexdigest()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: accepts TCP connections (the kernel's backlog) but never answers,
    like a firewalled proxy; a client without a timeout would hang on it forever."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def _write_colour_classes(root: Path, per_class: dict[str, int]) -> None:
    """Four classes told apart by their dominant colour, under noise and a random bright square:
    easy enough that a ResNet-8 learns them in a few epochs, which is what these tests need."""
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.float64)
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, colour in enumerate(colours):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = colour + rng.normal(0, 45, (32, 32, 3))
                x, y = rng.integers(0, 24, 2)
                img[y:y + 8, x:x + 8] = rng.uniform(0, 255, 3)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("source")
    _write_colour_classes(src, {"train": 64, "test": 16})
    from resnet_pipeline.data import DataConfig, prepare

    out = tmp_path_factory.mktemp("data") / "colours"
    prepare(DataConfig(dataset="imagefolder", source=str(src), out=str(out), val_fraction=0.25))
    return out


@pytest.fixture(scope="session")
def ray_session(s3_store: dict) -> Iterator[None]:
    """One local Ray instance shared by every test that needs it (starting Ray costs seconds). It
    starts after `s3_store`, so that its processes have the S3 endpoint and credentials. Its log
    lines are not streamed here: Ray prints them to whatever sys.stdout is at that moment, which in a
    later CLI test is the CliRunner's captured output (a raylet warning about a nearly full disk
    once broke a test that parses that output as JSON). They stay in /tmp/ray/session_*/logs."""
    import ray

    from resnet_pipeline.training.ray_launch import init_ray

    init_ray(workers=2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_store() -> Iterator[dict]:
    """A real S3 API on 127.0.0.1 (moto's server) with one bucket, reached as a user reaches MinIO:
    ``AWS_ENDPOINT_URL`` and credentials in the environment, set before the shared Ray instance
    starts (its processes inherit them), and a plain ``s3://ckpt/results`` URI."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="ckpt")
    try:
        yield {"client": client, "bucket": "ckpt", "uri": "s3://ckpt/results"}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_keys(store: dict, prefix: str = "") -> list[str]:
    """The objects under ``prefix``, without the empty "folder/" markers pyarrow leaves."""
    pages = store["client"].get_paginator("list_objects_v2").paginate(Bucket=store["bucket"], Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


# --- a temporary git + DVC copy of the repository (tests/test_dvc.py, tests/test_reliability.py) --

def copy_repo(dest: Path) -> None:
    """The project's files as a fresh clone would have them (tracked + untracked, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=test@example.com", "-c", "user.name=test", *args], cwd=repo,
                   check=True, capture_output=True)


def dvc(repo: Path, *args: str, stdout_only: bool = False) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory) -> Path:
    """A git copy of the repository whose demo sweep is 2 single-worker trials of 40 iterations,
    deterministic, on easy data (seconds of training per trial), and whose imagenet pipeline is one
    tiny net on a generated ImageNet-layout folder."""
    repo = tmp_path_factory.mktemp("repo")
    copy_repo(repo)
    source = tmp_path_factory.mktemp("colours")
    _write_colour_classes(source, {"train": 64, "test": 16})
    params_path = repo / "pipelines/demo/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(dataset="imagefolder", source=str(source), val_fraction=0.25)
    params["train"].update(iterations=40, batch_size=32, milestones=[1000], log_every=10, eval_every=20,
                           checkpoint_every=10, workers=1, threads_per_worker=1, precision="fp32", deterministic=True)
    params["sweep"].update(depths=[8], shortcuts=["plain", "A"], max_concurrent=1)  # one after the other
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    _shrink_imagenet(repo, tmp_path_factory.mktemp("imagenet"))
    _shrink_cifar10_short(repo, tmp_path_factory.mktemp("cifar10-jpeg"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "test copy")
    return repo


def _shrink_imagenet(repo: Path, source: Path) -> None:
    """An ImageNet-layout folder (train/ and val/ by class, JPEG and PNG of mixed sizes over 64 px),
    and the imagenet pipeline's params cut to one tiny net: the same stages, crops of 32 px."""
    sizes = [(96, 72), (80, 120), (72, 72)]
    for c, size in enumerate(sizes):
        for s, (split, count) in enumerate((("train", 24), ("val", 8))):
            write_images(source / split / f"n0000{c}", count, size=size, fmt="JPEG" if c % 2 == 0 else "PNG",
                         seed=100 * s + c, prefix=split)
    params_path = repo / "pipelines/imagenet/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(source=str(source), num_threads=2, crop_size=32, resize_range=[40, 56], eval_resize=40)
    params["train"].update(iterations=12, batch_size=16, workers=1, log_every=4, eval_every=6, checkpoint_every=6,
                           plateau_patience=1)
    params["sweep"].update(depths=[18], shortcuts=["A"], include=[])  # Table 2: ResNet-18 (option A)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def _shrink_cifar10_short(repo: Path, folder: Path) -> None:
    """A tiny archive in the layout of cifar10-jpeg.tar.gz (cifar10-jpeg/{train,test}/<class>/*.jpg,
    CIFAR-10's 10 classes) as pipelines/cifar10-short's data.source, and its schedule cut to a few
    iterations; the nets, the stages and every other value are the pipeline's own."""
    import io
    import tarfile

    from resnet_pipeline.data.config import CIFAR10_CLASSES

    archive = folder / "cifar10-jpeg.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 8), ("test", 2)):
            for c, name in enumerate(CIFAR10_CLASSES):
                for i in range(n):
                    buf = io.BytesIO()
                    pixels = np.clip(rng.normal(25 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    params_path = repo / "pipelines/cifar10-short/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(source=str(archive), val_fraction=0.25, num_threads=1)
    params["train"].update(iterations=4, milestones=[2, 3], batch_size=16, log_every=1, eval_every=2,
                           checkpoint_every=2, precision="fp32")
    params["evaluate"].update(batch_size=16)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def first_repro(demo_repo: Path) -> str:
    return dvc(demo_repo, "repro", "pipelines/demo/dvc.yaml")
