"""Where a result came from: git commit, package versions, Python, platform, CPU and device.

Recorded beside every dataset, run, evaluation and benchmark figure, so that a number carries its
evidence. torch is imported only by the device functions.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from resnet_pipeline.config import PROJECT_ROOT

# What a training run or an evaluation records the versions of.
RUN_PACKAGES = ("torch", "torchvision", "ray", "mlflow", "nvidia-dali-cuda130", "dvc")


def git(*args: str) -> str | None:
    """``git args`` in the project's work tree, or None where git or the repository is missing."""
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit() -> str:
    return git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> str:
    """"true" where tracked files have uncommitted changes, "false", or "unknown" without git."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return "unknown" if status is None else str(bool(status)).lower()


def versions(dists: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution; None for one that is not installed."""
    found: dict[str, str | None] = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name(device=None) -> str | None:
    """The CUDA device's name (the current one by default), or None without CUDA."""
    import torch

    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else None


def device_name() -> str:
    """The GPU, or ``cpu (<arch>)`` where there is none."""
    return gpu_name(0) or f"cpu ({platform.processor() or platform.machine()})"


def cuda_info() -> dict:
    """CUDA and cuDNN versions, compute capability and memory of the first GPU; empty without one."""
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "capability": f"{props.major}.{props.minor}", "gpu_memory_gib": round(props.total_memory / 2**30, 1)}


def machine_info() -> dict:
    """CPU model, core count, GPU, library versions and the load averages (how busy the shared machine
    was), recorded beside every benchmark figure."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name(), "python": platform.python_version(),
            **versions(("torch", "torchvision", "nvidia-dali-cuda130", "pillow", "numpy")), **cuda_info(),
            "load": load_average()}


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages, or None where the system gives none."""
    with contextlib.suppress(AttributeError, OSError):  # no getloadavg (Windows), or no load figures
        return os.getloadavg()
    return None
