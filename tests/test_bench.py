"""Benchmarks at toy sizes: `bench depths` and `bench train` axes, and the GPU script's CPU smoke mode."""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_pipeline.config import PROJECT_ROOT
from resnet_pipeline.data.config import CIFAR10_CLASSES


def test_bench_depths_reports_effective_flops() -> None:
    from resnet_pipeline.bench.train import bench_depths

    report = bench_depths(cifar_depths=(8,), imagenet_depths=(18,), imagenet_input=32, batch_size=4, seconds=0,
                          min_steps=1, rounds=1, precisions=("fp32", "bf16"))
    peak = report["peak"]
    assert peak["gflops"] == peak["cores"] * peak["ghz"] * peak["flops_per_cycle"] > 0
    rows = report["results"]
    assert [(r["family"], r["depth"], r["precision"]) for r in rows] == [
        ("cifar", 8, "fp32"), ("cifar", 8, "bf16"), ("imagenet", 18, "fp32"), ("imagenet", 18, "bf16")]
    for r in rows:
        assert r["images_per_s"] > 0 and r["mult_adds"] > 0 and r["first_step_s"] > 0
        assert abs(r["gflops"] - r["images_per_s"] * 6 * r["mult_adds"] / 1e9) < 1e-9 * r["gflops"]
    for fp32, bf16 in (rows[:2], rows[2:]):
        assert abs(fp32["peak_fraction"] - fp32["gflops"] / peak["gflops"]) < 1e-12 and fp32["vs_first"] == 1
        # the peak is fp32's: no fraction of it for bf16; the ratio is against the same net in fp32
        assert bf16["peak_fraction"] is None and bf16["core_peak_fraction"] is None
        assert bf16["mult_adds"] == fp32["mult_adds"]
        assert abs(bf16["vs_first"] - bf16["images_per_s"] / fp32["images_per_s"]) < 1e-12
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid are fp32, bf16"):
        bench_depths(cifar_depths=(8,), imagenet_depths=(), precisions=("fp16",))
    with pytest.raises(ValueError, match="unknown graph 'jit'; valid are eager, compiled"):
        bench_depths(cifar_depths=(8,), imagenet_depths=(), graphs=("jit",))
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    for args, message in ((["--cifar-depths", "21"], "Invalid value for --cifar-depths: invalid CIFAR depth 21"),
                          (["--imagenet-depths", "19"], "Invalid value for --imagenet-depths: invalid ImageNet depth"),
                          (["--rounds", "0"], "Invalid value for '--rounds'")):
        bad = CliRunner().invoke(main, ["bench", "depths", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    tiny = ["bench", "depths", "--cifar-depths", "8", "--imagenet-depths", "", "--batch-size", "2", "--seconds", "0.01",
            "--rounds", "1"]
    table = CliRunner(env={"COLUMNS": "250"}).invoke(main, [*tiny, "--precision", "fp32", "--precision", "bf16"])
    assert table.exit_code == 0, table.output
    assert "vs_first" in table.output and "bf16" in table.output and "first_step_s" not in table.output


def test_bench_depths_compiles_each_net_and_precision() -> None:
    """`bench depths --graph compiled` times what `train.compile` trains: each (net, precision) through
    its own torch.compile graph, beside the eager net, the compilation counted in the warm-up step."""
    import torch._dynamo
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result = CliRunner().invoke(main, ["bench", "depths", "--cifar-depths", "8", "--imagenet-depths", "",
                                       "--batch-size", "2", "--seconds", "0.01", "--rounds", "1",
                                       "--precision", "bf16", "--precision", "fp32", "--graph", "eager",
                                       "--graph", "compiled", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precisions"] == ["bf16", "fp32"] and report["graphs"] == ["eager", "compiled"]
    assert [(r["precision"], r["graph"], r["vs_first"] == 1) for r in report["results"]] == [
        ("bf16", "eager", True), ("fp32", "eager", False), ("bf16", "compiled", False), ("fp32", "compiled", False)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # one per model at least


def test_bench_overhead_refuses_what_it_cannot_time_before_ray_starts(tiny_data: Path) -> None:
    import ray
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    running = ray.is_initialized()  # the session's shared instance may be up; this call must start none
    for args, message in ((["--launcher", "in-trial", "--workers", "2"],
                           "workers=2: the in-trial launcher trains one worker per trial"),
                          (["--workers", "0"], "Invalid value for '--workers'")):
        bad = CliRunner().invoke(main, ["bench", "overhead", "--data", str(tiny_data), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert ray.is_initialized() == running


def test_bench_train_precision_and_memory_format_axes(tiny_data: Path) -> None:
    from resnet_pipeline.bench.train import bench_train

    report = bench_train(tiny_data, depth=8, batch_size=8, iterations=4, log_every=2, precisions=("fp32", "bf16"),
                         memory_formats=("channels_last", "nchw"), modes=("bare",), variant_seconds=0, rounds=2)
    rows = [(r["round"], r["mode"], r["precision"], r["memory_format"]) for r in report["results"]]
    assert rows == [(0, "bare", "fp32", "channels_last"), (1, "bare", "fp32", "channels_last"),
                    (0, "bare", "fp32", "nchw"), (0, "bare", "bf16", "channels_last"), (0, "bare", "bf16", "nchw")]
    for r in report["results"][:2]:  # each round's bare run is that round's reference
        assert r["vs_bare"] == 1.0 and r["overhead_s"] is not None
    for r in report["results"][2:]:  # timed variants: one-iteration windows, stopped after three
        assert r["images_per_s"] > 0 and r["windows"] == 3 and r["overhead_s"] is None
        assert r["vs_bare"] == r["images_per_s"] / report["results"][0]["images_per_s"]
    [summary] = report["summary"]
    assert summary["mode"] == "bare" and summary["rounds"] == 2 and summary["vs_bare"] == 1.0
    assert summary["images_per_s"] == statistics.median(r["images_per_s"] for r in report["results"][:2])
    # The loop's wait for data, a fraction of each window's time, reported per row and in the summary.
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in report["results"])
    assert summary["data_wait_fraction"] == statistics.median(r["data_wait_fraction"] for r in report["results"][:2])


def test_bench_train_rounds_train_the_ray_path_again(tiny_data: Path, ray_session) -> None:
    """Each round is a new Ray Train run (the same run name would be taken as already done)."""
    from resnet_pipeline.bench.train import bench_train

    report = bench_train(tiny_data, depth=8, batch_size=8, iterations=4, log_every=2, modes=("ray-1",), rounds=2)
    assert [(r["round"], r["mode"]) for r in report["results"]] == [(0, "ray-1"), (1, "ray-1")]
    for r in report["results"]:
        assert r["windows"] == 2 and r["wall_s"] > 1 and r["vs_bare"] is None
    assert report["summary"][0]["rounds"] == 2 and report["summary"][0]["vs_bare"] is None


def test_bench_data_times_each_backend_side_by_side(tiny_data: Path) -> None:
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    args = ["bench", "data", "--data", str(tiny_data), "--batch-size", "8", "--seconds", "0.2", "--rounds", "2"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: stdout is the JSON; output also has stderr
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"dali-cpu", "torch"}
    for r in rows.values():
        assert len(r["rounds_images_per_s"]) == 2 and r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0
    # Training on the CPU reads through two DALI pipelines of data.num_threads (2) threads each.
    assert rows["dali-cpu"]["layout"] == "2 pipelines x 2 threads"
    assert rows["torch"]["layout"] == "2 worker processes"
    # The decoders side by side: TorchCodec (the torch backend's), torchvision.io (deprecated), Pillow;
    # all three decode the PNGs to the same pixels.
    decoders = {d["decoder"]: d for d in report["decoders"]}
    assert set(decoders) == {"torchcodec", "torchvision.io", "pillow"}
    assert all(d["images_per_s"] > 0 and d["same_pixels"] and d["files"] == 192 for d in decoders.values())
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0 and "dali-cpu" in table.output and "pipelines" in table.output, table.output
    for option, value in (("--seconds", "0"), ("--rounds", "0"), ("--batch-size", "-1")):
        bad = CliRunner().invoke(main, ["bench", "data", "--data", str(tiny_data), option, value])
        assert bad.exit_code == 2 and f"Invalid value for '{option}'" in bad.output, bad.output


def _tiny_cifar_archive(path: Path) -> Path:
    """The layout of cifar10-jpeg.tar.gz: cifar10-jpeg/{train,test}/<class>/NNNN.jpg."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 5), ("test", 1)):
            for c in CIFAR10_CLASSES:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{c}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_gpu_bench_smoke_on_cpu_imports_only_torch(tmp_path: Path) -> None:
    """The GPU benchmark's every part at toy sizes (`python -m resnet_pipeline.bench.gpu`, from the
    project folder as on the GPU machine), in an interpreter where Ray, MLflow, DALI, YAML, click and
    pydantic cannot be imported (the GPU machine has only PyTorch)."""
    archive = _tiny_cifar_archive(tmp_path / "cifar.tar.gz")
    out = tmp_path / "gpu_bench.json"
    code = ("import importlib.abc, runpy, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('ray', 'mlflow', 'yaml', 'click', 'pydantic') or name.startswith('nvidia.dali'):\n"
            "            raise ImportError(f'{name} is not installed on the GPU machine')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = ['gpu', '--device', 'cpu', '--smoke', '--cifar', {str(archive)!r}, '--out', {str(out)!r}, "
            f"'--work', {str(tmp_path / 'work')!r}]\n"
            "runpy.run_module('resnet_pipeline.bench.gpu', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [(t["net"], t["mode"]) for t in summary["throughput"]] == [("resnet20", "eager"), ("resnet50", "eager")]
    assert all(t["images_per_s"] > 0 for t in summary["throughput"])
    cifar = summary["cifar"]
    assert "error" not in cifar, cifar
    assert cifar["completed"] and cifar["iterations"] == 4, cifar
    assert (cifar["train_images"], cifar["val_images"], cifar["test_images"]) == (40, 10, 10)  # a stratified 10% per class
    assert 0 <= cifar["test_error"] <= 1 and cifar["images_per_s"] > 0 and 0 <= cifar["data_wait_fraction"] <= 1


def test_gpu_smoke_cpu_mode_runs_every_check_it_can_without_the_integrations(tmp_path: Path) -> None:
    """scripts/gpu_smoke.py --device cpu: the checks that need no CUDA pass through the real Trainer
    (no host sync in 20 steps, a mid-epoch resume identical to the straight run, a deterministic
    step, the bench's eager step); the CUDA ones say skipped. Ray, MLflow, DALI, YAML and click cannot
    even be imported in that interpreter, as on a GPU machine that has only PyTorch."""
    out = tmp_path / "smoke.json"
    code = ("import importlib.abc, runpy, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('ray', 'mlflow', 'yaml', 'click') or name.startswith('nvidia.dali'):\n"
            "            raise ImportError(f'{name} is not installed on the GPU machine')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = ['gpu_smoke.py', '--device', 'cpu', '--work', {str(tmp_path / 'work')!r}, '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(PROJECT_ROOT / 'scripts/gpu_smoke.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads(out.read_text())
    status = {k: v["status"] for k, v in report.items() if isinstance(v, dict) and "status" in v}
    assert status == {"sync_free": "ok", "resume": "ok", "deterministic": "ok", "cudnn_benchmark": "skipped",
                      "memory": "skipped", "bench": "ok"}, report
    assert report["sync_free"]["host_syncs"] == 0 and report["resume"]["identical"] is True
    assert report["bench"]["resnet20-eager"]["images_per_s"] > 0


def test_bench_resume_times_restoring_against_replaying(tiny_data: Path) -> None:
    """bench resume, both backends: a restored loader reaches the checkpointed batch (timed), and so does
    one that reads every batch before it; the figures are positive and the position is inside the epoch."""
    from resnet_pipeline.bench.data import bench_resume

    report = bench_resume(tiny_data, backends=["dali-cpu", "torch"], batch_size=16, num_threads=1, position=0.5)
    assert [r["backend"] for r in report["results"]] == ["dali-cpu", "torch"]
    for r in report["results"]:
        assert r["batches_per_epoch"] == 12 and r["position"] == 6
        assert r["build_s"] > 0 and r["restore_s"] > 0 and r["replay_s"] > 0
        assert r["replay_vs_restore"] == r["replay_s"] / r["restore_s"]
