"""The params checks themselves: what `-S` strings become, and the one-line errors."""

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
