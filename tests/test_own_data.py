"""The README's "Your own data" commands, as written there, on a generated folder of photos: two
classes, JPEG and PNG (RGB, greyscale, RGBA) of mixed sizes, no val/ or test/ split, no params file.

Only time is shortened: each command gets `-S` overrides after its own (later ones win) for a few
iterations on 32-pixel crops. Everything else, the names included, is what the README says.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_pipeline.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

FAST = {
    # One worker: a sweep's trials then train in their Tune process (no worker group to start).
    "train": ["train.workers=1", "train.iterations=4", "train.batch_size=16", "train.log_every=2", "train.eval_every=4",
              "train.checkpoint_every=4", "train.precision=fp32", "train.threads_per_worker=1"],
    "data": ["data.crop_size=32", "data.resize_range=[36, 48]", "data.eval_resize=36", "data.num_threads=1"],
}


def readme_commands() -> list[list[str]]:
    """The `python cli.py ...` lines of the README's "Your own data" section, continuations joined."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    section = section[:section.index("\n## ", 1)]
    block = re.sub(r"\\\n\s+", " ", section)
    return [shlex.split(line.strip())[2:] for line in block.splitlines() if line.startswith("    python cli.py ")]


def write_photos(root: Path) -> None:
    """photos/train/{cats,dogs}/NNNN.<jpg|png>: sizes from 48 to 160 pixels, some greyscale, some with alpha."""
    rng = np.random.default_rng(0)
    sizes = [(96, 72), (64, 120), (160, 100), (48, 48), (80, 80)]
    for c, name in enumerate(("cats", "dogs")):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(1, 25):
            w, h = sizes[i % len(sizes)]
            pixels = np.clip(rng.normal(80 + 100 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i % 4 == 1:
                image.save(folder / f"{i:04d}.jpg", quality=90)
            elif i % 4 == 2:
                image.convert("L").save(folder / f"{i:04d}.jpg", quality=90)
            elif i % 4 == 3:
                image.convert("RGBA").save(folder / f"{i:04d}.png")
            else:
                image.save(folder / f"{i:04d}.png")


def test_readme_own_data_commands_run_as_written(tmp_path: Path, monkeypatch, ray_session) -> None:
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    commands = readme_commands()
    assert [c[0] for c in commands] == ["prepare", "train", "sweep", "evaluate", "predict"]
    monkeypatch.chdir(tmp_path)  # the README's relative paths, and MLflow's default store (./mlflow.db)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_photos(tmp_path / "photos")
    outputs = {}
    for args in commands:
        extra = {"prepare": [], "predict": [], "evaluate": FAST["data"]}.get(args[0], FAST["train"] + FAST["data"])
        args = args + [a for s in extra for a in ("-S", s)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}"
        outputs[args[0]] = result.output
    # What the data's kind decided, said once by train.
    assert "data: imagenet kind (images of several sizes, 2 classes): normalize per_channel (auto)" in outputs["train"]
    # Names from the data folder, not from CIFAR-10.
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name("resnet-mine") is not None
    assert client.get_experiment_by_name("resnet-cifar10") is None
    assert (tmp_path / "results" / "mine").is_dir() and not (tmp_path / "results" / "cifar10").exists()
    assert client.get_model_version_by_alias("resnet-mine", "champion") is not None
    # Two classes: no top-5 error anywhere.
    assert "top-5" not in outputs["evaluate"] and "top5" not in outputs["train"]
    runs = client.search_runs([client.get_experiment_by_name("resnet-mine").experiment_id])
    assert runs and not [k for r in runs for k in r.data.metrics if "top5" in k]
    # predict: both classes, probabilities that add up.
    lines = outputs["predict"].splitlines()
    assert lines[0] == "photos/train/cats/0001.jpg"
    probs = {line.split()[1]: float(line.split()[0].rstrip("%")) for line in lines[1:]}
    assert set(probs) == {"cats", "dogs"} and sum(probs.values()) == pytest.approx(100, abs=0.05)
