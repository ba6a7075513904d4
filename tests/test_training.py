"""Training: schedule, checkpoints, the loop without Ray, and 2-worker Ray Train runs tracked in MLflow."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import s3_keys
from resnet_pipeline.config import ConfigError
from resnet_pipeline.models import ModelConfig
from resnet_pipeline.training import CheckpointManager, PaperSchedule, TrainConfig, load_checkpoint
from resnet_pipeline.storage import display, join
from resnet_pipeline.training.loop import DataSource, InjectedFailure, NonFiniteLossError, fit

# ResNet-8 (n=1) keeps every run to seconds; the code paths are those of ResNet-20..1202.
TINY = dict(batch_size=32, milestones=[1000], log_every=10, eval_every=20, checkpoint_every=10,
            workers=1, precision="fp32", deterministic=True, threads_per_worker=1)


def _src(data: Path) -> DataSource:
    return DataSource(str(data), backend="dali-cpu", num_threads=1)


# --- schedule ---------------------------------------------------------------------------------

def _schedule(**kw) -> PaperSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return PaperSchedule(opt, kw.pop("peak", 0.1), kw.pop("milestones", [32_000, 48_000]), **kw)


def test_schedule_milestones() -> None:
    s = _schedule()
    assert [s.lr_at(i) for i in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert s.step(32_000) == pytest.approx(0.01) and s.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_warmup_ends_on_training_error_or_cap() -> None:
    s = _schedule(warmup=True, warmup_lr=0.01, warmup_until_error=0.8, warmup_max_iterations=400)
    assert s.lr_at(0) == 0.01 and s.lr_at(399) == 0.01 and s.lr_at(400) == 0.1  # the cap
    s.observe_train_error(0.85)
    assert s.lr_at(100) == 0.01
    s.observe_train_error(0.79)  # Section 4.2: back to 0.1 once training error < 80%
    assert s.lr_at(101) == 0.1
    restored = _schedule(warmup=True)
    restored.load_state_dict(s.state_dict())
    assert restored.lr_at(101) == 0.1


def test_plateau_divides_the_lr_after_patience_validations_without_progress() -> None:
    s = _schedule(milestones=[], plateau_patience=2, plateau_threshold=0.01)
    for error in (0.50, 0.40, 0.395, 0.39):  # 0.395 and 0.39 improve by less than the threshold
        s.observe_val_error(error)
    assert s.lr_at(10**6) == pytest.approx(0.01)  # Sec. 3.4: divided by 10 on a plateau
    s.observe_val_error(0.30)
    s.observe_val_error(0.31)
    assert s.lr_at(0) == pytest.approx(0.01)  # a new best resets the count; one stale check is not enough
    restored = _schedule(milestones=[], plateau_patience=2, plateau_threshold=0.01)
    restored.load_state_dict(s.state_dict())
    restored.observe_val_error(0.30)  # the second stale check in a row, counted across the restore
    assert restored.lr_at(0) == pytest.approx(0.001)
    off = _schedule(milestones=[])
    for error in (0.5, 0.5, 0.5):
        off.observe_val_error(error)
    assert off.lr_at(0) == pytest.approx(0.1)


def test_warmup_auto_follows_the_paper_and_lr_scaling() -> None:
    cfg = TrainConfig()
    assert not cfg.warmup_enabled(56, "cifar") and cfg.warmup_enabled(110, "cifar")
    assert not cfg.warmup_enabled(152, ModelConfig(depth=152).resolved_family())  # ImageNet ResNet-152: no warm-up
    assert TrainConfig(warmup="on").warmup_enabled(18, "imagenet")
    assert not TrainConfig(warmup="off").warmup_enabled(110, "cifar")
    assert TrainConfig(batch_size=512, lr_scaling="linear").peak_lr == pytest.approx(0.4)
    assert TrainConfig(batch_size=512).peak_lr == pytest.approx(0.1)


@pytest.mark.parametrize("changes,match", [
    (dict(batch_size=127, workers=2), r"batch_size 127 is not divisible by train.workers 2"),
    (dict(lr=0.0), r"train.lr: must be a positive"),
    (dict(lr=-0.1), r"train.lr: must be a positive"),
    (dict(milestones=[48_000, 32_000]), r"train.milestones"),
    (dict(milestones=[32_000, 32_000]), r"train.milestones: must be strictly increasing"),
    (dict(warmup_until_error=float("nan")), r"train.warmup_until_error: must be a training error in \(0, 1\]"),
    (dict(warmup_until_error=5.0), r"train.warmup_until_error"),
    (dict(warmup_max_iterations=-5), r"train.warmup_max_iterations: must be a positive integer"),
    (dict(inject_failure_at=-3), r"train.inject_failure_at: must be an iteration >= 0"),
    (dict(iterations=0), r"train.iterations"),
    (dict(lr=float("inf")), r"train.lr: must be a finite number, got inf"),
    (dict(weight_decay=float("nan")), r"train.weight_decay: must be a finite number, got nan"),
])
def test_invalid_train_config(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(TrainConfig(), **changes).validate()


def test_workers_auto_is_one_per_gpu_else_two_on_the_cpu() -> None:
    auto = TrainConfig()  # workers: auto is the default, so that dvc repro runs on one GPU as on eight
    assert auto.workers == "auto"
    assert auto.resolved(gpus=1, cpus=16).workers == 1
    assert auto.resolved(gpus=8, cpus=64).workers == 8
    assert auto.resolved(gpus=3, cpus=48).workers == 2  # the largest count that divides batch 128
    assert auto.resolved(gpus=0, cpus=2).workers == 2 and auto.resolved(gpus=0, cpus=1).workers == 1
    assert dataclasses.replace(auto, use_gpu="off").resolved(gpus=8, cpus=64).workers == 2
    assert TrainConfig(workers=4).resolved(gpus=1, cpus=2).workers == 4  # a number is kept (and checked where it runs)
    with pytest.raises(ValueError, match="call TrainConfig.resolved"):
        auto.per_worker_batch


def test_workers_in_params_take_a_number_or_auto(tmp_path: Path) -> None:
    from resnet_pipeline.config import load_section

    assert load_section(TrainConfig, "train", {"train": {"workers": "auto"}}).workers == "auto"
    assert load_section(TrainConfig, "train", {"train": {"workers": 4}}).workers == 4
    with pytest.raises(ConfigError, match=r"train.workers: 'many' is not valid; expected an integer or one of 'auto'"):
        load_section(TrainConfig, "train", {"train": {"workers": "many"}})


def test_dali_on_gpus_gets_a_gpus_share_of_the_cores() -> None:
    from resnet_pipeline.training.driver import Devices, loader_threads

    node = Devices(gpus=8, cpus=64, cpus_per_gpu=8)
    eight = TrainConfig(workers=8)
    # 8 workers on 8 GPUs: 7 DALI threads each (one core per GPU left to the training process), not 2 // 8.
    assert loader_threads(eight, "auto", 2, node) == 7
    assert loader_threads(eight, "dali-gpu", 2, node, gpu_share=0.25) == 1
    assert loader_threads(eight, "torch", 16, node) == 2
    assert loader_threads(dataclasses.replace(eight, use_gpu="off"), "auto", 16, node) == 2
    assert loader_threads(TrainConfig(workers=2), "auto", 2, Devices(gpus=0, cpus=2, cpus_per_gpu=0)) == 1


def test_typo_in_params_is_reported(tmp_path: Path, monkeypatch) -> None:
    from resnet_pipeline.config import load_params, load_section

    with pytest.raises(ConfigError, match=r"unknown key\(s\) in params section 'train': lerning_rate"):
        load_section(TrainConfig, "train", {"train": {"lerning_rate": 0.1}})
    params = tmp_path / "params.yaml"
    params.write_text("sweeps:\n  seeds: 3\n")  # a misspelt section: all of sweep's keys would stay at their defaults
    with pytest.raises(ConfigError, match=r"unknown section\(s\) sweeps; valid sections are: data, model, train"):
        load_params(params)
    params.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"section 'train' must be a mapping of keys to values, got int 5"):
        load_params(params)
    # The default params file is the one in the folder the command runs in, as DVC reads it, else the project's.
    params.write_text("train:\n  lr: 0.05\n")
    monkeypatch.chdir(tmp_path)
    assert load_params()["train"] == {"lr": 0.05}
    params.unlink()
    assert load_params()["train"]["lr"] == 0.1  # params.yaml of the project: the paper's recipe
    with pytest.raises(ConfigError, match="train.experiment: must not be empty"):
        load_section(TrainConfig, "train", experiment=" ")


# --- checkpoints ------------------------------------------------------------------------------

class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_checkpoint_round_trip_keep_last_and_best(where: str, tmp_path: Path, request) -> None:
    if where == "s3":
        store = request.getfixturevalue("s3_store")
        directory = join(store["uri"], "unit", "checkpoints")
    else:
        directory = tmp_path
    mgr = CheckpointManager(directory, keep_last=2)
    assert mgr.load_latest() is None and mgr.best_error() is None
    for it, err in [(10, 0.5), (20, 0.3), (30, 0.4)]:
        mgr.save({"iteration": it, "w": torch.full((3,), float(it))}, it, val_error=err)
    assert mgr.iterations() == [20, 30]  # the last two
    assert load_checkpoint(mgr.best_path)["iteration"] == 20 and mgr.best_error() == 0.3
    assert torch.equal(mgr.load_latest()["w"], torch.full((3,), 30.0))
    assert mgr.mark_once(".failure_injected") and not mgr.mark_once(".failure_injected")
    if where == "s3":  # the objects themselves, as S3 lists them
        assert s3_keys(store, "results/unit/") == [f"results/unit/checkpoints/{n}" for n in (
            ".failure_injected", "best.json", "best.pt", "ckpt_00000020.pt", "ckpt_00000030.pt")]
        assert display(mgr.best_path) == "s3://ckpt/results/unit/checkpoints/best.pt"  # no credentials shown


def test_unwritable_object_store_fails_before_anything_starts(s3_store: dict) -> None:
    from resnet_pipeline.training.driver import resolve_storage

    with pytest.raises(ConfigError, match=r"train.storage_path s3://no-such-bucket/results: cannot write there") as e:
        resolve_storage("s3://no-such-bucket/results")
    assert "AWS_ENDPOINT_URL" in str(e.value)
    # Credentials in the URI would be written into Tune's and MLflow's records: refused, never echoed.
    for uri in ("s3://AKIA:se/cret@ckpt/results", "s3://ckpt/results?secret_key=se/cret"):
        with pytest.raises(ConfigError, match=r"s3://ckpt/results: credentials in the URI are not accepted") as e:
            resolve_storage(uri)
        assert "cret" not in str(e.value)
    assert resolve_storage(s3_store["uri"]) == s3_store["uri"]
    assert not s3_keys(s3_store, "results/.write-check")  # the probe object is gone


def test_failed_write_leaves_previous_checkpoint_usable(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save({"iteration": 10}, 10)
    with pytest.raises(RuntimeError, match="disk full"):
        mgr.save({"iteration": 20, "bad": _Unpicklable()}, 20)
    assert mgr.iterations() == [10] and mgr.load_latest()["iteration"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_checkpoint_to_an_unwritable_place_names_it(tmp_path: Path) -> None:
    from resnet_pipeline.training import CheckpointError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=str(blocker)):
        CheckpointManager(blocker / "checkpoints").save({"iteration": 1}, 1)


# --- the loop without Ray ---------------------------------------------------------------------

def test_fit_resumes_bit_exactly(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Stopping after 20 iterations and resuming to 40 gives the weights of a straight 40-iteration run."""
    model_cfg = ModelConfig(depth=8)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    straight = fit(TrainConfig(iterations=40, **TINY), model_cfg, _src(tiny_data), tmp_path / "a")
    # deterministic: true also fixes cuBLAS's workspace, without which a GPU's first step would raise
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    fit(TrainConfig(iterations=20, **TINY), model_cfg, _src(tiny_data), tmp_path / "b")
    resumed = fit(TrainConfig(iterations=40, **TINY), model_cfg, _src(tiny_data), tmp_path / "b")
    assert resumed.iteration == 40
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    state = load_checkpoint(CheckpointManager(tmp_path / "b" / "checkpoints").latest())
    assert state["iteration"] == 40 and state["config"]["train"]["iterations"] == 40
    assert {"model", "optimizer", "schedule", "scaler", "rng", "epoch", "batch_in_epoch"} <= set(state)
    # Restarted after its last checkpoint (say, killed in the test pass), a run trains no further and
    # reports the same final metrics, the last training window's included.
    again = fit(TrainConfig(iterations=40, **TINY), model_cfg, _src(tiny_data), tmp_path / "b")
    assert again.iteration == 40
    assert again.metrics == resumed.metrics
    assert resumed.metrics["train_error"] == straight.metrics["train_error"]


def test_resume_from_a_checkpoint_inside_a_logging_window(tiny_data: Path, tmp_path: Path) -> None:
    """checkpoint_every 15, log_every 10: a restart from the checkpoint at 15 still reports the window
    16..20 with the totals of 11..15 (the window's training error also ends the warm-up)."""
    cfg = TrainConfig(iterations=30, **{**TINY, "checkpoint_every": 15, "eval_every": 1000})

    def run(folder: Path, **kw) -> list[tuple[int, float, float]]:
        windows: list[tuple[int, float, float]] = []
        def report(m: dict, step: int) -> None:
            if "train_error" in m:
                windows.append((step, m["train_error"], m["train_loss"]))
        try:
            fit(dataclasses.replace(cfg, **kw), ModelConfig(depth=8), _src(tiny_data), folder, report=report)
        except InjectedFailure:
            pass
        return windows

    straight = run(tmp_path / "a")
    assert [w[0] for w in straight] == [10, 20, 30]
    assert [w[0] for w in run(tmp_path / "b", inject_failure_at=17)] == [10]  # fails after the checkpoint at 15
    assert run(tmp_path / "b", inject_failure_at=17) == straight[1:]


def test_nonfinite_loss_stops_with_the_iteration(tiny_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(iterations=30, lr=1e12, **TINY)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* at iteration \d+"):
        fit(cfg, ModelConfig(depth=8), _src(tiny_data), tmp_path)


def test_nonfinite_steps_can_be_skipped(tiny_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(iterations=20, lr=1e12, nonfinite="skip", **TINY)
    result = fit(cfg, ModelConfig(depth=8), _src(tiny_data), tmp_path)
    assert result.metrics["nonfinite_skipped"] > 0
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def _skip_nonfinite_rank(rank: int, init_file: str, out: str) -> None:
    """One of 2 DDP ranks: 3 steps, rank 1's second batch is NaN; what each step did, and the weights."""
    import torch.distributed as dist

    from resnet_pipeline.models import build_model
    from resnet_pipeline.training.loop import train_step

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(ModelConfig(depth=8), num_classes=4, input_size=32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    skipped = []
    for step in range(3):
        images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 * step + rank))
        if step == 1 and rank == 1:
            images[0] = float("nan")
        _, wrong = train_step(model, images, torch.arange(4), optimizer, scaler, None, skip_nonfinite=True)
        skipped.append(wrong is None)
    torch.save({"skipped": skipped, "weights": [p.detach() for p in model.parameters()]}, out)
    dist.destroy_process_group()


def test_nonfinite_skip_is_taken_by_every_rank_together(tmp_path: Path) -> None:
    """With 2 DDP ranks and a NaN loss on one, both skip that step (one skipping alone hung the other in
    the gradient all-reduce) and stay identical."""
    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_skip_nonfinite_rank, args=(r, str(tmp_path / "init"), outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert alive == [False, False] and [p.exitcode for p in procs] == [0, 0], "a rank hung or failed"
    results = [torch.load(o) for o in outs]
    assert results[0]["skipped"] == results[1]["skipped"] == [False, True, False]
    for w0, w1 in zip(results[0]["weights"], results[1]["weights"]):
        assert torch.equal(w0, w1)


# --- the GPU path, proved on the CPU -----------------------------------------------------------

class HostSyncs(TorchDispatchMode):
    """Records the operations that make the host wait for a device, or copy a host value to it:
    ``_local_scalar_dense`` (``.item()``, ``float()``/``bool()`` of a tensor) and ``lift_fresh`` (a
    tensor built from Python data, e.g. ``new_tensor(3.0)``, which on a GPU is a host-to-device copy)."""

    SYNCS = ("_local_scalar_dense", "lift_fresh", "lift_fresh_copy")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["dali-cpu", "torch"])
def test_training_steps_never_sync_with_the_host(tiny_data: Path, tmp_path: Path, backend: str) -> None:
    """Between logging windows the step loop neither reads a device value back nor builds a tensor from
    Python numbers (on a GPU each is a blocking copy): 15 steps record none."""
    from resnet_pipeline.training.loop import Trainer

    cfg = TrainConfig(iterations=40, **{**TINY, "log_every": 20})
    trainer = Trainer(cfg, ModelConfig(depth=8), DataSource(str(tiny_data), backend=backend, num_threads=1),
                      tmp_path)
    trainer.wrap()
    trainer.train_until(2)  # the first steps build the loader's workers and the optimizer state
    with HostSyncs() as syncs:
        trainer.train_until(17)
    assert trainer.state.iteration == 17 and syncs.seen == []
    trainer.end_window()  # reads the totals back, once per window
    assert 0 <= trainer.state.metrics["data_wait_fraction"] <= 1 and trainer.state.metrics["train_error"] <= 1
    # The detector sees what the old loop did every step: float() of a device value, and a tensor
    # built from a Python number on the device.
    loss = torch.ones(())
    with HostSyncs() as syncs:
        loss.new_tensor(float(17)) + float(loss)
    assert syncs.seen == ["lift_fresh", "_local_scalar_dense"]


def test_train_window_runs_without_the_trainer() -> None:
    """`train_window` with a plain model, optimizer and batch iterator (as torchvision's
    `train_one_epoch`): it sets the schedule's lr per iteration, counts every step in the window, and
    skips a NaN batch's step under skip_nonfinite."""
    from resnet_pipeline.models import build_model
    from resnet_pipeline.training.loop import Window, train_window

    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=8), num_classes=4, input_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = PaperSchedule(optimizer, 0.1, [3], 0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4)) for _ in range(5)]
    batches[2][0][0] = float("nan")
    window = Window(torch.device("cpu"))
    skipped = train_window(model, optimizer, scaler, schedule, iter(batches), window, 0, 5, torch.device("cpu"),
                           skip_nonfinite=True)
    loss_sum, wrong, count = window.sums()
    assert skipped == 1 and window.iterations == 5 and count == 16 and 0 <= wrong <= 16
    assert float(window.step) == 5 and optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_a_checkpoint_resumes_onto_another_device(tiny_data: Path, tmp_path: Path) -> None:
    """A checkpoint is read onto the CPU and only the weights and optimizer state move to the model's
    device: read onto the device (a GPU), the saved RNG state became a device tensor, which
    torch.set_rng_state refuses, and every restart on a GPU died. The 'meta' device stands in for a
    GPU here: a restore onto it must leave the RNG states on the CPU and the tensors on 'meta'."""
    from resnet_pipeline.training.loop import Trainer

    cfg = TrainConfig(iterations=10, **TINY)
    fit(cfg, ModelConfig(depth=8), _src(tiny_data), tmp_path)
    trainer = Trainer(dataclasses.replace(cfg, iterations=20), ModelConfig(depth=8), _src(tiny_data), tmp_path,
                      device=torch.device("meta"))
    assert trainer.restore() and trainer.state.iteration == 10
    assert torch.get_rng_state().device.type == "cpu"
    assert next(trainer.model.parameters()).device.type == "meta"
    momentum = next(iter(trainer.optimizer.state.values()))["momentum_buffer"]
    assert momentum.device.type == "meta"


def test_the_loader_is_built_once_per_run(tiny_data: Path, tmp_path: Path) -> None:
    """40 iterations of 6-batch epochs cross 6 epoch ends on one loader, which reshuffles itself."""
    from resnet_pipeline.training.loop import Trainer

    trainer = Trainer(TrainConfig(iterations=40, **TINY), ModelConfig(depth=8), _src(tiny_data), tmp_path)
    loader = trainer.loader
    result = trainer.run()
    assert result.iteration == 40 and trainer.loader is loader
    assert (loader.epoch, loader.position) == (40 // len(loader), 40 % len(loader))


def test_cudnn_benchmark_follows_determinism() -> None:
    from resnet_pipeline.training.loop import configure_torch

    configure_torch(TrainConfig(deterministic=False), torch.device("cuda", 0), 1)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    configure_torch(TrainConfig(deterministic=True), torch.device("cuda", 0), 1)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    configure_torch(TrainConfig(deterministic=False), torch.device("cpu"), 1)
    assert not torch.backends.cudnn.benchmark


def test_unwrap_removes_the_compile_wrapper() -> None:
    """Checkpoints hold the plain ResNet's keys whether or not train.compile wrapped it (resume loads
    them into a plain ResNet)."""
    from resnet_pipeline.models import build_model
    from resnet_pipeline.training.loop import unwrap

    model = build_model(ModelConfig(depth=8), num_classes=4, input_size=32)
    compiled = torch.compile(model)  # wraps now, compiles at the first call
    assert unwrap(compiled) is model
    assert list(unwrap(compiled).state_dict()) == list(model.state_dict())


# --- Ray Train, 2 workers, MLflow -------------------------------------------------------------

RAY_TINY = {**TINY, "workers": 2, "iterations": 80, "eval_every": 40, "checkpoint_every": 20, "log_every": 20}


@pytest.fixture(scope="module")
def ray_runs(tiny_data: Path, tmp_path_factory, ray_session, s3_store: dict) -> dict:
    """One uninterrupted 2-worker run, one whose rank-0 worker raises at iteration 30, one whose
    rank-0 worker process is killed (SIGKILL) at iteration 50, and the same SIGKILL with
    ``storage_path`` in S3 (checkpoints and Ray's run state there)."""
    from resnet_pipeline.training.driver import train

    root = tmp_path_factory.mktemp("ray_train")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for name, inject, how, storage in (("clean", None, "raise", root / "results"),
                                       ("faulty", 30, "raise", root / "results"),
                                       ("sigkilled", 50, "sigkill", root / "results"),
                                       ("s3-sigkilled", 50, "sigkill", s3_store["uri"])):
        cfg = TrainConfig(**RAY_TINY, storage_path=str(storage), run_name=name, experiment="test-train",
                          inject_failure_at=inject, inject_failure=how, max_failures=1)
        runs[name] = train(cfg, ModelConfig(depth=8), tiny_data, backend="dali-cpu", num_threads=2,
                           tracking_uri=uri)
        runs[name]["checkpoints"] = join(storage, name, "checkpoints")
    return runs


def _final_weights(summary: dict) -> dict[str, torch.Tensor]:
    return CheckpointManager(summary["checkpoints"]).load_latest()["model"]


def test_two_worker_run_learns(ray_runs: dict) -> None:
    m = ray_runs["clean"]["metrics"]
    # 4 classes: chance is 75% error.
    assert m["best_val_error"] < 0.5 and m["test_error"] < 0.5, m
    assert m["train_error"] < 0.5


@pytest.mark.parametrize("run", ["faulty", "sigkilled", "s3-sigkilled"])
def test_worker_failure_restarts_from_checkpoint_bit_exactly(ray_runs: dict, run: str) -> None:
    assert ".failure_injected" in CheckpointManager(ray_runs[run]["checkpoints"]).store.names()  # it did fail once
    assert ray_runs[run]["metrics"]["train_error"] == ray_runs["clean"]["metrics"]["train_error"]
    clean, faulty = _final_weights(ray_runs["clean"]), _final_weights(ray_runs[run])
    for name, w in clean.items():
        assert torch.equal(w, faulty[name]), name


def test_mlflow_run_content(ray_runs: dict, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    s = ray_runs["clean"]
    client = MlflowClient(s["tracking_uri"])
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "clean"
    p = run.data.params
    assert p["train.lr"] == "0.1" and p["train.batch_size"] == "32" and p["model.depth"] == "8"
    assert p["train.workers"] == "2"
    tags = run.data.tags
    assert tags["world_size"] == "2" and tags["shortcut"] == "A" and "mlflow.source.git.commit" in tags
    assert tags["version.torch"] == torch.__version__.split("+")[0] or tags["version.torch"].startswith("2.")
    history = client.get_metric_history(s["run_id"], "train/error")
    assert [h.step for h in history] == [20, 40, 60, 80]
    assert [h.step for h in client.get_metric_history(s["run_id"], "val/error")] == [40, 80]
    for key in ("train/lr", "train/images_per_s", "test/error", "val/error", "val/best_error"):
        assert key in run.data.metrics, key
    assert not [k for k in run.data.metrics if "top5" in k]  # 4 classes: top-5 error means nothing
    assert any(k.startswith("system/") for k in run.data.metrics), "no system metrics"
    # The faulty run's curve continues where it stopped: one point per step, no duplicates.
    faulty = [h.step for h in client.get_metric_history(ray_runs["faulty"]["run_id"], "train/error")]
    assert sorted(set(faulty)) == [20, 40, 60, 80]
    # The logged model loads back and predicts.
    mlflow.set_tracking_uri(s["tracking_uri"])
    from resnet_pipeline.tracking import logged_model_id

    model_id = logged_model_id(s["tracking_uri"], s["run_id"])
    assert client.get_logged_model(model_id).name == "resnet8-A"  # named after the net
    model = mlflow.pytorch.load_model(f"models:/{model_id}", dst_path=str(tmp_path))
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 4)


def test_failed_run_is_marked_failed_not_left_running(tiny_data: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from resnet_pipeline.training.driver import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(iterations=30, lr=1e12, storage_path=str(tmp_path / "results"), run_name="diverges",
                      experiment="test-failed", **TINY)
    with pytest.raises(NonFiniteLossError):
        train(cfg, ModelConfig(depth=8), tiny_data, backend="dali-cpu", launcher="local", tracking_uri=uri)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test-failed").experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "diverges"


def test_ctrl_c_during_a_ray_train_run_ends_it_killed(tiny_data: Path, tmp_path: Path, ray_session) -> None:
    """Ctrl-C while Ray Train runs: its graceful abort comes out as KeyboardInterrupt (it raised
    SystemExit, and the run ended FAILED), the run ends KILLED, and the SIGINT handler is ours again
    afterwards (Ray Train's stayed installed, pointing at the finished run's controller)."""
    import os
    import signal
    import threading
    import time

    from mlflow.tracking import MlflowClient

    from resnet_pipeline.training.driver import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(**{**RAY_TINY, "workers": 1, "iterations": 100_000}, storage_path=str(tmp_path / "results"),
                      run_name="ctrl-c", experiment="test-ctrl-c")
    ours = signal.getsignal(signal.SIGINT)

    def press_ctrl_c() -> None:  # once Ray Train's handler is in place, i.e. its run has started
        deadline = time.monotonic() + 120
        while signal.getsignal(signal.SIGINT) is ours and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, ModelConfig(depth=8), tiny_data, backend="dali-cpu", num_threads=1, tracking_uri=uri)
    assert signal.getsignal(signal.SIGINT) is ours
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test-ctrl-c").experiment_id])
    assert run.info.status == "KILLED"


def test_resuming_with_another_model_or_recipe_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    """A run name whose checkpoints were made with another depth or lr: a ConfigError naming the keys,
    before MLflow or training (it failed on loading the weights, or mixed two learning rates)."""
    from mlflow.tracking import MlflowClient

    from resnet_pipeline.training.driver import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(**{**TINY, "iterations": 10}, storage_path=str(tmp_path / "results"), run_name="r",
                      experiment="test-resume")
    run = dict(backend="dali-cpu", launcher="local", tracking_uri=uri)
    first = train(cfg, ModelConfig(depth=8), tiny_data, **run)
    with pytest.raises(ConfigError, match=r"run 'r' resumes from checkpoints .* made with other settings "
                                          r"\(train.lr: 0.1 there, 0.05 now\); .* another --run-name"):
        train(dataclasses.replace(cfg, lr=0.05), ModelConfig(depth=8), tiny_data, **run)
    with pytest.raises(ConfigError, match=r"model.depth: 8 there, 14 now"):
        train(cfg, ModelConfig(depth=14), tiny_data, **run)
    # The same net spelt out (shortcut A is CIFAR's auto), more iterations, another log_every: accepted.
    longer = dataclasses.replace(cfg, iterations=20, log_every=5)
    assert train(longer, ModelConfig(depth=8, shortcut="A"), tiny_data, **run)["run_id"] == first["run_id"]
    client = MlflowClient(uri)
    (only,) = client.search_runs([client.get_experiment_by_name("test-resume").experiment_id])
    assert only.info.status == "FINISHED"
    # An unreadable latest checkpoint: a ConfigError naming the file (the CLI's one line), not a traceback.
    latest = max((tmp_path / "results").rglob("*.pt"), key=lambda p: p.name)
    latest.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=rf"{latest.name}.* unreadable"):
        train(dataclasses.replace(cfg, iterations=30), ModelConfig(depth=8), tiny_data, **run)
    (only,) = client.search_runs([client.get_experiment_by_name("test-resume").experiment_id])
    assert only.info.status == "FINISHED"


def test_bad_data_dir_fails_before_anything_starts(tmp_path: Path) -> None:
    from resnet_pipeline.training.driver import train

    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        train(TrainConfig(**{**TINY, "workers": 2}), ModelConfig(depth=8), tmp_path / "missing",
              tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()
