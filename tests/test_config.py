"""The params checks themselves: what `-S` strings become, and the one-line errors."""

import re

import pytest

from resnet_pipeline.config import ConfigError, apply_sets, load_section
from resnet_pipeline.sweep import SweepConfig
from resnet_pipeline.training.config import TrainConfig


def test_set_strings_are_read_as_their_fields_types() -> None:
    params = apply_sets({}, ["train.lr=0.05", "train.weight_decay=1e-4", "train.iterations=6.4e4", "train.sync_bn=true",
                             "train.run_name=2024", "train.milestones=10,20", "train.workers=4"])
    cfg = load_section(TrainConfig, "train", params)
    assert (cfg.lr, cfg.weight_decay, cfg.iterations, cfg.sync_bn) == (0.05, 1e-4, 64_000, True)
    assert (cfg.run_name, cfg.milestones, cfg.workers) == ("2024", [10, 20], 4)
    sweep = load_section(SweepConfig, "sweep", {"sweep": {"depths": "20,32", "gpus_per_trial": "0.5"}})
    assert (sweep.depths, sweep.gpus_per_trial) == ([20, 32], 0.5)


@pytest.mark.parametrize("values,match", [
    ({"sync_bn": 1}, r"^train.sync_bn: expected true or false, got 1$"),  # not read as true, as pydantic would
    ({"warmup": True}, r"^train.warmup: True is not valid; choose one of 'auto', 'on', 'off' \(YAML reads unquoted"),
    ({"milestones": [10, "x"]}, r"^train.milestones\[1\]: expected an integer, got 'x'$"),
    ({"lr": None}, r"^train.lr: must not be empty \(expected a number\)$"),
    ({"iterations": 2.5}, r"^train.iterations: expected an integer, got 2.5$"),
    ({"workers": 0}, r"^train.workers: must be a positive integer, got 0$"),
    ({"momentum": 1}, r"^train.momentum: must be in \[0, 1\), got 1$"),
    ({"max_failures": -2}, r"^train.max_failures: must be an integer >= -1 \(-1: unlimited\), got -2$"),
    ({"lerning_rate": 0.1, "lr2": 1}, r"^unknown key\(s\) in params section 'train': lerning_rate, lr2; valid keys"),
])
def test_bad_values_name_the_key_and_what_is_valid(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_section(TrainConfig, "train", {"train": values})


def test_a_params_file_extends_another_section_by_section(tmp_path) -> None:
    """``extends``: the file's keys over the base's, key by key within each section (a list is
    replaced, not merged); a chain of files reads the same way; the base's path is the file's."""
    from resnet_pipeline.config import load_params

    (tmp_path / "params.yaml").write_text("data: {out: a, num_threads: 2}\ntrain: {lr: 0.1, milestones: [1, 2]}\n")
    (tmp_path / "p").mkdir()
    (tmp_path / "p/params.yaml").write_text("extends: ../params.yaml\ntrain: {milestones: [5]}\nsweep: {name: x}\n")
    (tmp_path / "p/more.yaml").write_text("extends: params.yaml\ndata: {out: b}\nmodel: {}\n")
    assert load_params(tmp_path / "p/more.yaml") == {
        "data": {"out": "b", "num_threads": 2}, "train": {"lr": 0.1, "milestones": [5]}, "sweep": {"name": "x"},
        "model": {}}


@pytest.mark.parametrize("text,match", [
    ("extends: missing.yaml\n", r"extends: 'missing.yaml' is not a params file \(give its path, relative to"),
    ("extends: [a]\n", r"extends: \['a'\] is not a params file"),
    ("extends: params.yaml\n", r"extends: params.yaml extends itself, through"),
    ("extend: ../params.yaml\n", r"unknown section\(s\) extend; valid sections are: .* \(and extends: the file"),
])
def test_a_bad_extends_is_one_line_naming_the_file(tmp_path, text: str, match: str) -> None:
    from resnet_pipeline.config import load_params

    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_params(tmp_path / "params.yaml")


def test_the_pipelines_params_are_the_roots_with_their_changes() -> None:
    """Each pipeline's params.yaml holds only what it changes from the root's (every key it sets
    differs, or is an output path that its dvc.yaml interpolates), and reads as a complete file."""
    import yaml

    from resnet_pipeline.config import PROJECT_ROOT, SECTIONS, load_params

    root = load_params(PROJECT_ROOT / "params.yaml")
    for name in ("demo", "imagenet", "cifar10-short"):
        path = PROJECT_ROOT / "pipelines" / name / "params.yaml"
        own = yaml.safe_load(path.read_text())
        assert own.pop("extends") == "../../params.yaml"
        merged = load_params(path)
        assert set(merged) == set(SECTIONS) and all(set(root[s]) <= set(merged[s]) for s in SECTIONS), name
        interpolated = set(re.findall(r"\$\{(\w+\.\w+)\}", (path.parent / "dvc.yaml").read_text()))
        same = sorted(f"{s}.{k}" for s, keys in own.items() for k, v in (keys or {}).items()
                      if root[s].get(k, "<unset>") == v and f"{s}.{k}" not in interpolated)
        assert same in ([], ["data.source"]), (name, same)  # cifar10-short names its source for -S
