"""The model zoo: shapes, gradients, the paper's counts, torchvision parity, errors, pickling."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from click.testing import CliRunner

from resnet_pipeline.models import (SHORTCUTS, ModelConfig, ZeroPadShortcut, build_model, count_mult_adds,
                                    count_params, infer_family, make_shortcut, resnet_cifar, resnet_imagenet,
                                    zoo_table)


@pytest.fixture(scope="module")
def zoo() -> dict[tuple, dict]:
    return {(r["family"], r["depth"], r["shortcut"], r["variant"]): r for r in zoo_table()}


def _forward_backward(model: torch.nn.Module, input_size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, input_size, input_size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("depth", [20, 32])
def test_cifar_forward_backward(depth: int, shortcut: str) -> None:
    _forward_backward(resnet_cifar(depth, 10, shortcut), 32, 10)


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("depth,variant", [(18, "v1"), (34, "v1"), (50, "v1"), (50, "v1.5")])
def test_imagenet_forward_backward(depth: int, variant: str, shortcut: str) -> None:
    # 101 and 152 reuse these blocks; they are covered by construction, counts and torchvision parity.
    # Small input keeps this fast; the 7x7/2 stem and max-pool still run.
    _forward_backward(resnet_imagenet(depth, 7, shortcut, variant), 64, 7)


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_depths_on_cifar_sized_data_use_cifar_stem(depth: int) -> None:
    model = build_model(ModelConfig(depth=depth), num_classes=10, input_size=32)
    assert model.stem == "cifar" and isinstance(model.maxpool, torch.nn.Identity)
    _forward_backward(model, 32, 10)
    assert build_model(ModelConfig(depth=depth), num_classes=10, input_size=224).stem == "imagenet"


CIFAR_A_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
IMAGENET_B_PARAMS_M = {18: 11.69, 34: 21.80, 50: 25.56, 101: 44.55, 152: 60.19}  # torchvision v1.5
IMAGENET_V1_MULT_ADDS_G = {18: 1.81, 34: 3.66, 50: 3.86, 101: 7.57, 152: 11.28}  # paper Table 1: 1.8 ... 11.3
IMAGENET_V15_MULT_ADDS_G = {50: 4.09, 101: 7.80, 152: 11.51}


@pytest.mark.parametrize("depth", CIFAR_A_PARAMS)
def test_cifar_param_counts(zoo, depth: int) -> None:
    assert zoo["cifar", depth, "A", None]["params"] == CIFAR_A_PARAMS[depth]
    # Option A is parameter-free: the residual net has exactly its plain twin's parameters.
    assert zoo["cifar", depth, "plain", None]["params"] == CIFAR_A_PARAMS[depth]
    assert zoo["cifar", depth, "A", None]["params"] < zoo["cifar", depth, "B", None]["params"] \
        < zoo["cifar", depth, "C", None]["params"]


@pytest.mark.parametrize("depth", IMAGENET_B_PARAMS_M)
def test_imagenet_counts(zoo, depth: int) -> None:
    for variant in ("v1", "v1.5"):
        assert round(zoo["imagenet", depth, "B", variant]["params"] / 1e6, 2) == IMAGENET_B_PARAMS_M[depth]
        a, b, c = (zoo["imagenet", depth, s, variant]["params"] for s in "ABC")
        assert zoo["imagenet", depth, "plain", variant]["params"] == a <= b < c
    assert zoo["imagenet", depth, "B", "v1"]["mult_adds"] / 1e9 == pytest.approx(IMAGENET_V1_MULT_ADDS_G[depth],
                                                                                  rel=0.01)
    if depth in IMAGENET_V15_MULT_ADDS_G:
        assert zoo["imagenet", depth, "B", "v1.5"]["mult_adds"] / 1e9 == pytest.approx(
            IMAGENET_V15_MULT_ADDS_G[depth], rel=0.01)


@pytest.mark.parametrize("model,size", [
    (resnet_cifar(20, 10, "A"), 32), (resnet_cifar(20, 10, "C"), 32), (resnet_imagenet(18, 10, "plain"), 64),
    (resnet_imagenet(50, 1000, "B", "v1"), 224), (resnet_imagenet(50, 10, "A", "v1.5", stem="cifar"), 32),
])
def test_structural_count_agrees_with_forward_hooks(model, size: int) -> None:
    from resnet_pipeline.models.complexity import resnet_mult_adds

    assert resnet_mult_adds(model, size) == count_mult_adds(model, size)


def test_count_mult_adds_matches_hand_count() -> None:
    # conv 3x3, 3->4 channels, on 8x8 (padding 1): 8*8*4 outputs x 3*3*3 each; then fc 4->2 after pooling.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert count_mult_adds(model, 8) == 8 * 8 * 4 * 27 + 4 * 2
    assert count_params(model) == 4 * 27 + 4 * 2 + 2


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_parity(depth: int) -> None:
    ref = getattr(torchvision.models, f"resnet{depth}")().eval()
    ours = resnet_imagenet(depth, 1000, "B", "v1.5").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_zero_pad_shortcut() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    assert make_shortcut("plain", 16, 32, 2) is None
    assert isinstance(make_shortcut("A", 16, 16, 1), torch.nn.Identity)
    assert isinstance(make_shortcut("B", 16, 16, 1), torch.nn.Identity)
    assert isinstance(make_shortcut("B", 16, 32, 2), torch.nn.Sequential)
    assert isinstance(make_shortcut("C", 16, 16, 1), torch.nn.Sequential)


def test_plain_net_has_no_shortcut_and_residual_differs() -> None:
    torch.manual_seed(0)
    plain = resnet_cifar(20, 10, "plain").eval()
    res = resnet_cifar(20, 10, "A").eval()
    res.load_state_dict(plain.state_dict())  # identical parameters (option A adds none)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), res(x))


def test_zero_init_residual() -> None:
    model = resnet_cifar(20, 10, "A", zero_init_residual=True)
    assert all(not b.bn2.weight.any() for b in model.layer1)
    assert resnet_cifar(20, 10, "A").layer1[0].bn2.weight.all()
    with pytest.raises(ValueError, match="plain"):
        resnet_cifar(20, 10, "plain", zero_init_residual=True)


@pytest.mark.parametrize("call,match", [
    (lambda: resnet_cifar(21), r"6n\+2.*20, 32, 44, 56, 110, 1202"),
    (lambda: resnet_imagenet(19), r"18, 34, 50, 101, 152"),
    (lambda: resnet_cifar(20, shortcut="D"), r"'D'.*plain, A, B, C"),
    (lambda: resnet_imagenet(50, variant="v2"), r"v1, v1.5"),
    (lambda: infer_family([20, 18]), r"mix"),
    (lambda: infer_family([21]), r"invalid depth"),
    (lambda: infer_family([]), r"no depths"),
])
def test_invalid_arguments_name_the_valid_choices(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_infer_family() -> None:
    assert infer_family([18, 34, 50, 101, 152]) == "imagenet"
    assert infer_family([20, 32, 44, 56, 110]) == "cifar"
    assert infer_family(50) == "imagenet"  # 50 is also 6n+2; the ImageNet net wins unless family is given
    assert build_model(ModelConfig(depth=50, family="cifar"), 10).stem == "cifar"


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_pickle_round_trip(shortcut: str) -> None:
    model = resnet_cifar(20, 10, shortcut).eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_models_import_only_torch() -> None:
    code = ("import sys, resnet_pipeline.models; "
            "bad = [m for m in ('ray', 'mlflow', 'nvidia.dali', 'dvc') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_models_json() -> None:
    from resnet_pipeline.cli import main

    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # output also has stderr
    assert len(rows) == 6 * 4 + 5 * 4 * 2
    assert set(rows[0]) >= {"family", "depth", "shortcut", "variant", "params", "mult_adds", "input_size"}
    r56 = next(r for r in rows if r["family"] == "cifar" and r["depth"] == 56 and r["shortcut"] == "A")
    assert r56["params"] == 853_018 and r56["input_size"] == 32
    table = CliRunner().invoke(main, ["models", "--family", "cifar"])
    assert table.exit_code == 0 and "853,018" in table.output


# Operations whose CUDA kernels raise under torch.use_deterministic_algorithms(True) (PyTorch's list;
# the ones a classification net could reach).
NONDETERMINISTIC_ON_CUDA = {
    "_adaptive_avg_pool2d_backward", "adaptive_max_pool2d_backward", "avg_pool3d_backward",
    "fractional_max_pool2d_backward", "max_unpool2d", "reflection_pad2d_backward", "replication_pad2d_backward",
    "upsample_bilinear2d_backward", "nll_loss2d_forward", "grid_sampler_2d_backward", "histc", "bincount",
}


@pytest.mark.parametrize("depth", [8, 18, 50])
@pytest.mark.parametrize("shortcut", ["plain", "A", "B"])
def test_no_operation_that_deterministic_cuda_refuses(depth: int, shortcut: str) -> None:
    """train.deterministic on a GPU: the forward, the loss and the backward of every net use only
    operations that have deterministic CUDA kernels. Recorded on the CPU: the operators are chosen
    before the device is. The global pooling, ``nn.AdaptiveAvgPool2d(1)``, is one: PyTorch lowers an
    output size of 1 to a mean over H and W on every device (but XPU and mkldnn tensors), so
    ``_adaptive_avg_pool2d_backward``, which raises on CUDA, never runs; another output size would."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = build_model(ModelConfig(depth=depth, shortcut=shortcut), num_classes=10, input_size=32)
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with Ops() as ops:
        torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2])).backward()
    assert "mean" in ops.names
    assert not ops.names & NONDETERMINISTIC_ON_CUDA, ops.names & NONDETERMINISTIC_ON_CUDA
