"""Evaluation: error computation, the degradation check, the registry's champion, predict, the report.

Real components throughout: tiny ResNets trained for 20 iterations without Ray (`launcher="local"`)
as the children of a sweep-like parent run in a temporary sqlite MLflow store, evaluated with the
DALI CPU loader, registered, served by `predict`, and reported.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import write_images
from resnet_pipeline import paper, tracking
from resnet_pipeline.config import ConfigError
from resnet_pipeline.evaluation import EvaluateConfig, RunCurve, degradation_check, degradation_checks, final_error
from resnet_pipeline.evaluation.summary import EvaluationSummary
from resnet_pipeline.evaluation.metrics import collect_predictions, confusion_matrix, summarize, topk_error

SWEEP, EXPERIMENT, REGISTRY = "evsweep", "test-eval", "resnet-evtest"
TINY = dict(iterations=20, batch_size=32, milestones=[1000], log_every=5, eval_every=10, checkpoint_every=10,
            workers=1, precision="fp32", threads_per_worker=1, experiment=EXPERIMENT)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _eval_cfg(root: Path, **changes) -> EvaluateConfig:
    base = dict(out=str(root / "metrics/evaluation.json"), details=str(root / "metrics/evaluation"),
                plots=str(root / "plots"), reports=str(root / "reports"), batch_size=32, last_windows=2,
                registry_name=REGISTRY)
    return EvaluateConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def evaluated(tiny_data: Path, tmp_path_factory) -> dict:
    """A sweep-like parent run with plain and residual ResNet-8/14 children, then `run_evaluation`."""
    from resnet_pipeline import tracking
    from resnet_pipeline.evaluation.evaluate import run_evaluation
    from resnet_pipeline.models import ModelConfig
    from resnet_pipeline.training import TrainConfig
    from resnet_pipeline.training.driver import train

    root = tmp_path_factory.mktemp("evaluation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent, _ = tracking.start_run(uri, EXPERIMENT, SWEEP, {}, {"sweep": SWEEP})
    runs = {}
    try:
        for depth in (8, 14):
            for shortcut in ("plain", "A"):
                cfg = TrainConfig(**TINY, storage_path=str(root / "results"),
                                  run_name=f"{SWEEP}-cifar{depth}-{shortcut}-seed0")
                runs[depth, shortcut] = train(cfg, ModelConfig(depth=depth, shortcut=shortcut), tiny_data,
                                              backend="dali-cpu", num_threads=1, launcher="local", tracking_uri=uri,
                                              parent_run_id=parent)
    finally:
        tracking.end_run(uri, parent, tracking.FINISHED)
    cfg = _eval_cfg(root)
    summary = run_evaluation(cfg, tiny_data, experiment=EXPERIMENT, sweep=SWEEP, backend="dali-cpu", num_threads=1,
                             tracking_uri=uri)
    return {"root": root, "uri": uri, "parent": parent, "runs": runs, "cfg": cfg, "summary": summary,
            "data": tiny_data}


# --- error computation on a model with known outputs ----------------------------------------------

class Lookup(nn.Module):
    """Logits from a table, indexed by each image's first pixel: outputs known exactly."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()]


def _images(keys: list[int]) -> torch.Tensor:
    x = torch.zeros(len(keys), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(keys, dtype=torch.float32)
    return x


def test_top1_top5_error_confusion_and_per_class_accuracy() -> None:
    # Six classes. Sample 0: right; 1: label ranked 2nd (top-5 hit); 2: label ranked last (top-5
    # miss); 3: right. Two batches, as a loader yields them.
    table = [[9, 1, 2, 3, 4, 5], [8, 9, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 0, 9, 0, 0]]
    loader = [(_images([0, 1]), torch.tensor([0, 0])), (_images([2, 3]), torch.tensor([5, 3]))]
    probs, labels = collect_predictions(Lookup(table), loader, torch.device("cpu"))
    assert probs.shape == (4, 6) and torch.allclose(probs.sum(1), torch.ones(4, dtype=torch.float64))
    assert topk_error(probs, labels, 1) == 0.5 and topk_error(probs, labels, 5) == 0.25
    classes = [f"c{i}" for i in range(6)]
    m = summarize(probs, labels, classes)
    assert m["top1_error"] == 0.5 and m["top5_error"] == 0.25 and m["count"] == 4
    cm = torch.tensor(m["confusion_matrix"])
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[5, 0] == 1 and cm[3, 3] == 1 and cm.sum() == 4
    assert m["per_class_accuracy"] == {"c0": 0.5, "c1": None, "c2": None, "c3": 1.0, "c4": None, "c5": 0.0}
    expected_loss = -sum(math.log(p) for p in probs[torch.arange(4), labels].tolist()) / 4
    assert m["loss"] == pytest.approx(expected_loss)
    # The training loop's own evaluate agrees.
    from resnet_pipeline.training.loop import evaluate

    loop = evaluate(Lookup(table), loader, torch.device("cpu"))
    assert loop["top1_error"] == 0.5 and loop["top5_error"] == 0.25 and loop["loss"] == pytest.approx(expected_loss)
    with pytest.raises(ValueError, match="predicts 6 classes but the dataset has 5"):
        summarize(probs, labels, classes[:5])
    # Five classes or fewer: the label is always among the top 5, so top-5 error is left out.
    five = [row[:5] for row in table]
    labels5 = torch.tensor([0, 0, 4, 3])
    loader5 = [(_images([0, 1]), labels5[:2]), (_images([2, 3]), labels5[2:])]
    assert summarize(*collect_predictions(Lookup(five), loader5, torch.device("cpu")), classes[:5])["top5_error"] is None
    assert "top5_error" not in evaluate(Lookup(five), loader5, torch.device("cpu"))


def test_ten_crop_scores_the_mean_of_the_views_softmax() -> None:
    # One view says class 0 with certainty, nine lean to class 1. The mean of the softmax outputs
    # (the paper's 10-crop testing) picks class 1; averaging logits would pick class 0.
    table = [[20.0, 0.0], [0.0, 1.0]]
    views = _images([0] + [1] * 9).unsqueeze(0)  # (1 image, 10 views, 3, 4, 4)
    probs, labels = collect_predictions(Lookup(table), [(views, torch.tensor([0]))], torch.device("cpu"))
    expected = torch.tensor(table, dtype=torch.float64).softmax(1)[[0] + [1] * 9].mean(0)
    assert torch.allclose(probs[0], expected)
    assert topk_error(probs, labels, 1) == 1.0
    assert torch.tensor(table)[[0] + [1] * 9].mean(0).argmax() == 0  # logit averaging would differ


def test_ten_crop_views_are_scored_in_bounded_chunks_under_autocast() -> None:
    """predict_views runs a [B, 10, 3, H, W] batch through the model at most ``chunk`` images at a time
    (ResNet-152 on 2,560 views at once may not fit a GPU) with the same result, and under the autocast
    dtype it is given."""
    from resnet_pipeline.models import ModelConfig, build_model
    from resnet_pipeline.training.loop import predict_views

    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=8), num_classes=5, input_size=16).eval()
    seen: list[tuple[int, torch.dtype]] = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append((o.shape[0], o.dtype)))
    views = torch.randn(4, 10, 3, 16, 16)
    with torch.no_grad():
        whole = predict_views(model, views, chunk=1000)
        chunked = predict_views(model, views, chunk=7)
        low = predict_views(model, views, torch.bfloat16, chunk=16)
    assert [n for n, _ in seen[1:7]] == [7, 7, 7, 7, 7, 5]  # 40 views, 7 at a time
    assert torch.allclose(whole, chunked, atol=1e-6) and whole.shape == (4, 5)
    assert seen[-1][1] == torch.bfloat16 and torch.allclose(low, whole, atol=0.05)


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]), 3)
    assert cm.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]


# --- the degradation check on constructed curves --------------------------------------------------

def _curve(final: float, noise: float = 0.0) -> list[tuple[int, float]]:
    """A falling training-error curve that ends at ``final`` (the last 3 windows around it)."""
    return [(100, 0.9), (200, 0.5), (300, final + noise), (400, final - noise), (500, final)]


def _runs(plain: dict[int, float], residual: dict[int, float], seeds: int = 2, shortcut: str = "A") -> list[RunCurve]:
    out = []
    for s in range(seeds):
        noise = 0.002 * (s + 1)
        out += [RunCurve("plain", d, s, _curve(e, noise)) for d, e in plain.items()]
        out += [RunCurve(shortcut, d, s, _curve(e, noise)) for d, e in residual.items()]
    return out


def test_degradation_detected_with_numbers_behind_it() -> None:
    runs = _runs({20: 0.02, 32: 0.04, 56: 0.08}, {20: 0.03, 32: 0.02, 56: 0.01})
    check = degradation_check(runs, last_windows=3)
    assert check.verdict == "degradation" and check.answer.startswith("Yes")
    assert check.depths == [20, 32, 56] and check.residual_shortcut == "A"
    assert [p.plain for p in check.points] == pytest.approx([0.02, 0.04, 0.08])
    assert [p.residual for p in check.points] == pytest.approx([0.03, 0.02, 0.01])
    assert check.plain_rise == pytest.approx(0.06) and check.residual_rise == pytest.approx(-0.02)
    assert all(p.plain_seeds == 2 and p.residual_seeds == 2 for p in check.points)
    assert "plain-20 2.00% -> plain-56 8.00%" in check.answer
    assert "ResNet-20 (A) 3.00% -> ResNet-56 1.00%" in check.answer


def test_no_degradation_and_both_degrade() -> None:
    flat = degradation_check(_runs({20: 0.050, 56: 0.055}, {20: 0.04, 56: 0.03}), last_windows=3)
    assert flat.verdict == "no degradation" and flat.answer.startswith("No")  # +0.5 points < 1-point margin
    both = degradation_check(_runs({20: 0.02, 56: 0.10}, {20: 0.02, 56: 0.06}), last_windows=3)
    assert both.verdict == "both degrade" and both.answer.startswith("No")
    # A wider margin turns a 3-point plain rise into "no degradation".
    runs = _runs({20: 0.02, 56: 0.05}, {20: 0.02, 56: 0.01})
    assert degradation_check(runs, last_windows=3).verdict == "degradation"
    assert degradation_check(runs, last_windows=3, margin=0.05).verdict == "no degradation"
    # A residual net worse than a shallower one counts, even when the deepest is back down.
    middle = degradation_check(_runs({20: 0.02, 32: 0.04, 44: 0.06, 56: 0.08}, {20: 0.04, 32: 0.15, 44: 0.24,
                                                                              56: 0.045}), last_windows=3)
    assert middle.verdict == "both degrade" and middle.residual_rise == pytest.approx(0.005)
    assert middle.residual_worst_rise == pytest.approx(0.20) and middle.residual_worst_depths == [20, 44]
    assert "but ResNet-20 4.00% -> ResNet-44 24.00% (+20.00 points)" in middle.answer


def test_second_half_basis_compares_the_curves_at_equal_iterations() -> None:
    """A short run: plain-56 lies above plain-20 over the whole second half, then both curves drop at
    an lr step and the last windows cross. The final-windows basis misses the degradation; the
    second-half basis (mean over iterations > half the run, at equal iterations) sees it and says so."""
    def curve(second_half: list[float]) -> list[tuple[int, float]]:
        return [(100, 0.9), (200, 0.6)] + [(300 + 100 * i, e) for i, e in enumerate(second_half)]

    runs = [RunCurve("plain", 20, 0, curve([0.40, 0.38, 0.20, 0.19])),
            RunCurve("plain", 56, 0, curve([0.50, 0.48, 0.19, 0.18])),
            RunCurve("A", 20, 0, curve([0.38, 0.36, 0.18, 0.17])),
            RunCurve("A", 56, 0, curve([0.34, 0.32, 0.15, 0.14]))]
    final = degradation_check(runs, last_windows=2)
    assert final.verdict == "no degradation" and final.basis == "final"
    half = degradation_check(runs, last_windows=2, basis="second_half")
    assert half.verdict == "degradation" and half.basis == "second_half"
    # The windows logged after iteration 300 of a 600-iteration run: (0.38 + 0.20 + 0.19) / 3 for plain-20.
    assert [p.plain for p in half.points] == pytest.approx([0.77 / 3, 0.85 / 3])
    assert "second half of the run" in half.answer and "plain-20 25.67% -> plain-56 28.33%" in half.answer
    with pytest.raises(ValueError, match="basis must be one of final, second_half"):
        degradation_check(runs, basis="middle")


def test_not_enough_runs() -> None:
    only_one_common = degradation_check(_runs({20: 0.02, 56: 0.08}, {20: 0.03}), last_windows=3)
    assert only_one_common.verdict == "not enough runs" and "at least 2 depths" in only_one_common.answer
    assert "residual (A) nets at depths [20]" in only_one_common.answer
    assert degradation_check([], last_windows=3).verdict == "not enough runs"
    assert [c.verdict for c in degradation_checks(_runs({20: 0.02, 56: 0.08}, {}))] == ["not enough runs"]


def test_metric_history_keeps_the_last_value_of_a_replayed_step(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("replay"))
    # A run that failed after step 300 and resumed from its checkpoint at step 200 logs 300 again.
    for t, (step, value) in enumerate([(100, 0.9), (200, 0.5), (300, 0.4), (300, 0.3), (400, 0.2)]):
        client.log_metric(run.info.run_id, "train/error", value, timestamp=1_000 + t, step=step)
    client.set_terminated(run.info.run_id)
    assert tracking.metric_history(uri, run.info.run_id, "train_error") == [
        (100, 0.9), (200, 0.5), (300, 0.3), (400, 0.2)]


def test_artifacts_live_beside_the_sqlite_store_not_in_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    # `dvc exp run --temp` runs the stages in a temporary copy of the repository: an experiment
    # created there must not keep its artifacts in that copy, which DVC deletes afterwards.
    (tmp_path / "store").mkdir()
    (tmp_path / "temporary-copy").mkdir()
    monkeypatch.chdir(tmp_path / "temporary-copy")
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run_id, _ = tracking.start_run(uri, "resnet demo", "run", {}, {})
    tracking.log_dict(uri, run_id, {"a": 1}, "x.json")
    tracking.end_run(uri, run_id, "FINISHED")
    assert (tmp_path / "store" / "mlruns" / "resnet_demo" / run_id / "artifacts" / "x.json").is_file()
    assert tracking.load_dict(uri, run_id, "x.json") == {"a": 1}
    assert not any((tmp_path / "temporary-copy").iterdir())
    # A tracking server chooses its own artifact root.
    assert tracking.artifact_location("http://127.0.0.1:5000", "resnet demo") is None


def test_registry_calls_read_the_store_they_are_given(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    a, b = (f"sqlite:///{tmp_path / name}.db" for name in ("a", "b"))
    client = mlflow.MlflowClient(a, registry_uri=a)
    client.create_registered_model("m")
    client.set_registered_model_alias("m", "champion", client.create_model_version("m", str(tmp_path)).version)
    # A registry chosen elsewhere in the process (as `mlflow.set_registry_uri` does) is not store b's.
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", a)
    assert tracking.registered_aliases(a) == ["models:/m@champion"]
    assert tracking.registered_aliases(b) == [] and tracking.alias_version(b, "m", "champion") is None


def test_final_training_error_is_the_mean_of_the_last_windows() -> None:
    curve = [(500, 0.10), (100, 0.90), (300, 0.20), (400, float("nan")), (200, 0.50)]
    assert final_error(curve, 2) == pytest.approx(0.15)  # (300, 500); NaN windows are left out
    assert final_error(curve, 1) == pytest.approx(0.10) and final_error([], 3) is None
    assert final_error([*curve, (500, 0.10), (500, 0.10)], 2) == pytest.approx(0.15)  # replayed after a resume
    # One check per residual shortcut, A first.
    runs = _runs({20: 0.02, 56: 0.08}, {20: 0.03, 56: 0.01}) + _runs({}, {20: 0.03, 56: 0.09}, shortcut="B")
    assert [(c.residual_shortcut, c.verdict) for c in degradation_checks(runs, last_windows=3)] == [
        ("A", "degradation"), ("B", "both degrade")]


# --- the paper's numbers and the comparison --------------------------------------------------------

def test_paper_references_and_secondary_marks() -> None:
    from resnet_pipeline.evaluation import comparison_table

    assert paper.error_reference("cifar", 56, "A")["top1"].value == 6.97
    assert paper.error_reference("cifar", 56, "plain") == {}
    t3 = paper.error_reference("imagenet", 34, "B")
    assert (t3["top1"].value, t3["top5"].value, t3["top1"].where) == (24.52, 7.46, "Table 3")
    assert paper.error_reference("imagenet", 18, "plain")["top1"].where == "Table 2"
    assert all(r.source == "secondary" for pair in paper.IMAGENET_TABLE4.values() for r in pair)
    assert paper.CIFAR10_RESNET110_MEAN_STD[0].source == "secondary" and paper.CIFAR10_TABLE6[110].source == "paper"
    rows = [{"family": "cifar", "depth": 56, "shortcut": "A", "seed": s, "top1_error": e, "top5_error": 0.002,
             "val_error": 0.06} for s, e in ((0, 0.070), (1, 0.074))]
    assert paper.benchmark({"dataset": "cifar10", "num_classes": 10, "image_size": [32, 32]}) == "cifar"
    assert paper.benchmark({"dataset": "imagefolder", "num_classes": 1000, "image_size": None}) == "imagenet"
    assert paper.benchmark({"dataset": "demo", "num_classes": 4, "image_size": [32, 32]}) is None
    # Only on the paper's own benchmark: ResNet-56 on other data, or an ImageNet net on CIFAR-10, has no figure.
    (other,) = comparison_table(rows, None)
    assert other["paper_top1_error"] is None and other["diff_top1_error"] is None
    assert other["paper_note"].startswith("no paper figure: the paper trained cifar nets on CIFAR-10")
    (imagenet_net,) = comparison_table([{**r, "family": "imagenet", "depth": 34, "shortcut": "B"} for r in rows],
                                       "cifar")
    assert imagenet_net["paper_top1_error"] is None
    (r50,) = comparison_table([{**r, "family": "imagenet", "depth": 50, "shortcut": "B", "variant": "v1.5"}
                               for r in rows], "imagenet")
    assert r50["paper_top1_error"] == pytest.approx(0.2285) and "ours: v1.5 blocks" in r50["paper_note"]
    (entry,) = comparison_table(rows, "cifar")
    assert entry["top1_error_mean"] == pytest.approx(0.072)
    assert entry["top1_error_std"] == pytest.approx(0.004 / 2 ** 0.5)
    assert entry["paper_top1_error"] == pytest.approx(0.0697) and entry["diff_top1_error"] == pytest.approx(0.0023)
    assert entry["paper_top5_error"] is None and entry["seeds"] == [0, 1] and entry["val_error_mean"] == 0.06


# --- evaluation of real trained runs ---------------------------------------------------------------

def test_evaluation_matches_the_training_runs_own_numbers(evaluated: dict) -> None:
    s, client = evaluated["summary"], _client(evaluated["uri"])
    assert s.sweep == SWEEP and s.parent_run_id == evaluated["parent"] and len(s.runs) == 4
    assert [(r["shortcut"], r["depth"]) for r in s.runs] == [("plain", 8), ("plain", 14), ("A", 8), ("A", 14)]
    for row in s.runs:
        run = client.get_run(row["run_id"])
        m = run.data.metrics
        assert run.info.status == "FINISHED"  # evaluation leaves no run RUNNING
        # The same final weights on the same test and val images as the training run's last evaluation.
        # One metric per quantity: the evaluation's numbers are the last points of test/error and
        # val/error, at the final step, beside the training's own (the same weights, the same images).
        steps = {h.step: h.value for h in client.get_metric_history(row["run_id"], "test/error")}
        assert len(steps) == 1 and row["test"]["top1_error"] == pytest.approx(m["test/error"], abs=1e-9)
        assert not [k for k in m if k.startswith(("final_", "eval_"))], m
        # Four classes: top-5 error would always read 0%, so nothing reports or logs it.
        assert row["test"]["top5_error"] is None and row["val"]["top5_error"] is None
        assert not [k for k in m if "top5" in k], m
        val_history = client.get_metric_history(row["run_id"], "val/error")
        assert row["val"]["top1_error"] == pytest.approx(max(val_history, key=lambda h: h.step).value, abs=1e-9)
        assert m["val/error"] == row["val"]["top1_error"]
        # The logged model carries the evaluation's metrics too (its page in the UI shows them).
        model = client.get_logged_model(client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{row['run_id']}'")[0].model_id)
        assert {x.key for x in model.metrics} >= {"val/error", "test/error", "test/loss"}
        artifacts = {a.path for a in client.list_artifacts(row["run_id"], "evaluation")}
        assert {"evaluation/details.json", "evaluation/confusion.png", "evaluation/learning_curves.png"} <= artifacts
        detail = json.loads(Path(row["detail"]).read_text())
        cm = torch.tensor(detail["passes"]["test"]["confusion_matrix"])
        assert cm.sum() == row["test"]["count"] == 64
        assert 1 - cm.trace().item() / 64 == pytest.approx(row["test"]["top1_error"])
        # Figure 7: one std per 3x3 layer, the CIFAR stem included (6n+1 layers).
        assert [x["index"] for x in detail["layer_responses"]] == list(range(1, row["depth"]))
        assert all(x["std"] > 0 for x in detail["layer_responses"])
    assert [(e["shortcut"], e["depth"], e["runs"]) for e in s.table] == [
        ("plain", 8, 1), ("plain", 14, 1), ("A", 8, 1), ("A", 14, 1)]
    assert s.degradation[0]["verdict"] in ("degradation", "no degradation", "both degrade")
    assert client.get_run(evaluated["parent"]).data.tags["degradation.A"] == s.degradation[0]["verdict"]
    assert s.degradation[0]["depths"] == [8, 14]
    plots = Path(s.plots_dir)
    for f in ("figure6.png", "figure7.png", "figure6.csv", "figure7.csv"):
        assert (plots / f).stat().st_size > 0, f
    lines = (plots / "figure7.csv").read_text().splitlines()
    assert lines[0] == "shortcut,depth,seed,layer_index,layer,std,rank_by_std" and len(lines) == 1 + 2 * 7 + 2 * 13
    # The DVC metrics file: flat numbers per net and per degradation check; the summary beside the details.
    metrics = json.loads(Path(evaluated["cfg"].out).read_text())
    assert set(metrics) == {"plain-8", "plain-14", "A-8", "A-14", "degradation-A"}
    assert all(isinstance(v, (int, float)) for entry in metrics.values() for v in entry.values())
    assert metrics["plain-14"]["top1_error"] == s.runs[1]["test"]["top1_error"]
    written = json.loads((Path(evaluated["cfg"].details) / "summary.json").read_text())
    assert written["runs"] == s.runs
    # The file is the dataclass, key for key and in order, and reads back to it.
    texts = [json.dumps(x, default=str) for x in (written, s.to_json(), EvaluationSummary.from_json(written).to_json())]
    assert texts[0] == texts[1] == texts[2]


def test_champion_is_the_lowest_validation_error(evaluated: dict) -> None:
    s, client = evaluated["summary"], _client(evaluated["uri"])
    versions = client.search_model_versions(f"name = '{REGISTRY}'")
    assert len(versions) == 4 and all(r["registry"]["registered"] for r in s.runs)
    champion = client.get_model_version_by_alias(REGISTRY, "champion")
    best = min(r["val"]["top1_error"] for r in s.runs)
    assert float(champion.tags["val_error"]) == best
    first_best = next(r for r in s.runs if r["val"]["top1_error"] == best)  # a tie keeps the first
    assert champion.run_id == first_best["run_id"] == s.registry.champion_run_id
    # A few rounded, clearly named tags; the version says why it is the champion.
    assert set(champion.tags) == {"depth", "shortcut", "seed", "val_error", "test_error"}, champion.tags
    assert len(champion.tags["val_error"]) <= 8 and "became champion: first version" in champion.description
    assert f"sweep {SWEEP}" in champion.description and "test error" in champion.description
    others = [v for v in versions if v.version != champion.version]
    assert all("champion stays" in client.get_model_version(REGISTRY, v.version).description for v in others)
    # Registered through the logged model: its page links the version ("Registered").
    from resnet_pipeline.tracking import logged_model_id

    model = client.get_logged_model(logged_model_id(evaluated["uri"], champion.run_id))
    assert {"name": REGISTRY, "version": int(champion.version)} in json.loads(model.tags["mlflow.modelVersions"])
    classes = json.loads(client.get_registered_model(REGISTRY).tags["classes"])
    assert classes == ["class0", "class1", "class2", "class3"]


def test_registry_alias_moves_only_on_lower_validation_error(evaluated: dict) -> None:
    from resnet_pipeline.evaluation.registry import register, takes_champion

    uri, name = evaluated["uri"], "resnet-aliases"
    a, b, c = (evaluated["runs"][k]["run_id"] for k in ((8, "A"), (14, "A"), (8, "plain")))
    tags = {"depth": 8, "shortcut": "A"}
    first = register(uri, name, a, {"val_error": 0.20, "test_error": 0.25}, tags)
    assert first.registered and first.champion and first.version == "1"
    worse = register(uri, name, b, {"val_error": 0.30, "test_error": 0.01}, tags)  # better test error: ignored
    assert worse.registered and not worse.champion and worse.previous_champion == "1"
    tie = register(uri, name, c, {"val_error": 0.20, "test_error": 0.10}, tags)
    assert tie.registered and not tie.champion
    nan = register(uri, name, c, {"val_error": float("nan"), "test_error": 0.1}, tags)
    inf = register(uri, name, b, {"val_error": 0.05, "test_loss": float("inf")}, tags)
    assert not nan.registered and "val_error" in nan.reason and not inf.registered and "test_loss" in inf.reason
    client = _client(uri)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    better = register(uri, name, b, {"val_error": 0.10, "test_error": 0.30}, tags)  # run b evaluated again
    assert better.champion and better.version == worse.version  # the same version, no duplicate
    assert str(client.get_model_version_by_alias(name, "champion").version) == worse.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert takes_champion(0.1, None) and takes_champion(0.1, float("nan")) and not takes_champion(float("nan"), 0.5)
    assert not takes_champion(0.2, 0.2)


def test_champion_loads_and_predicts_a_jpeg(evaluated: dict, tmp_path: Path, monkeypatch) -> None:
    from resnet_pipeline.cli import main
    from resnet_pipeline.evaluation.predict import predict

    uri = evaluated["uri"]
    jpeg, = write_images(tmp_path, 1, size=(48, 40), fmt="JPEG")  # not 32x32: resized as documented
    results = predict([jpeg], f"models:/{REGISTRY}@champion", tracking_uri=uri)
    (r,) = results
    assert r["image"] == str(jpeg) and len(r["top"]) == 4  # 4 classes: top-5 is all of them
    probs = [t["probability"] for t in r["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert {t["class"] for t in r["top"]} == {"class0", "class1", "class2", "class3"}
    # A registered name that the store does not have: the error lists the aliases it has.
    from resnet_pipeline.tracking import TrackingError

    with pytest.raises(TrackingError, match=rf"the store has .*models:/{REGISTRY}@champion.*; pass one as --model"):
        predict([jpeg], "models:/resnet-cifar10@champion", tracking_uri=uri)

    # A dataset image gets exactly the probabilities the evaluation computed for it.
    from resnet_pipeline.data import make_loader
    from resnet_pipeline.data.loader import loader_spec
    from resnet_pipeline.evaluation.runs import describe, load_trained_model

    data = evaluated["data"]
    spec = loader_spec(data, "test", train=False, batch_size=64)
    champion = _client(uri).get_model_version_by_alias(REGISTRY, "champion")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with monkeypatch.context() as m:
        m.setattr(tempfile, "tempdir", str(scratch))
        model = load_trained_model(uri, describe(_client(uri).get_run(champion.run_id)), 4, 32)
    # MLflow downloads into a temporary folder it never removes unless told where; nothing is left.
    assert not any(scratch.iterdir()), list(scratch.iterdir())
    probs_eval, _ = collect_predictions(model, make_loader(data, "test", train=False, batch_size=64,
                                                           backend="torch", num_threads=1), torch.device("cpu"))
    picks = [0, 17, 40]
    got = predict([spec.root / spec.files[i] for i in picks], f"models:/{REGISTRY}@champion", tracking_uri=uri)
    for i, g in zip(picks, got):
        for t in g["top"]:
            assert t["probability"] == pytest.approx(probs_eval[i, t["index"]].item(), abs=1e-4)

    # The CLI: a missing or non-image file is a one-line usage error naming it, before any model loads.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  registry_name: {REGISTRY}\n")
    (tmp_path / "notes.jpg").write_text("not an image")
    runner = CliRunner()
    ok = runner.invoke(main, ["predict", "--params", str(params), str(jpeg)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[0] == str(jpeg) and "%  class" in ok.output
    for bad, message in ((tmp_path / "missing.jpg", "image not found"), (tmp_path / "notes.jpg", "cannot read")):
        result = runner.invoke(main, ["predict", "--params", str(params), str(jpeg), str(bad)])
        assert result.exit_code == 2 and message in result.output and str(bad) in result.output
        assert "Traceback" not in result.output
    unknown = runner.invoke(main, ["predict", "--params", str(params), "--model", "models:/nope@champion", str(jpeg)])
    assert unknown.exit_code == 2 and "models:/nope@champion" in unknown.output


def test_preprocessing_is_the_eval_loaders(tiny_data: Path) -> None:
    from resnet_pipeline.data import make_loader
    from resnet_pipeline.data.loader import loader_spec
    from resnet_pipeline.evaluation.preprocess import Preprocessing, read_image

    for normalize in ("per_pixel", "per_channel"):
        prep = Preprocessing.from_json(Preprocessing.from_dataset(tiny_data, normalize).to_json())  # via JSON
        spec = loader_spec(tiny_data, "test", train=False, batch_size=8)
        mine = torch.stack([prep.transform(read_image(spec.root / f)) for f in spec.files[:8]])
        for backend in ("torch", "dali-cpu"):
            x, _ = next(iter(make_loader(tiny_data, "test", train=False, batch_size=8, backend=backend,
                                         num_threads=1, normalize=normalize)))
            assert torch.allclose(mine, x, atol=1e-5), (normalize, backend)


def test_ten_crop_evaluation_on_imagenet_kind_data(tmp_path: Path) -> None:
    from resnet_pipeline.data import DataConfig, make_loader, prepare
    from resnet_pipeline.evaluation.evaluate import evaluate_model
    from resnet_pipeline.evaluation.preprocess import Preprocessing, read_image
    from resnet_pipeline.models import resnet_cifar

    for s, (split, n) in enumerate((("train", 2), ("val", 1), ("test", 2))):
        for c in range(2):
            write_images(tmp_path / "src" / split / f"k{c}", n, size=(80, 72), seed=10 * s + c, prefix=split)
    data = tmp_path / "data"
    prepare(DataConfig(dataset="imagefolder", source=str(tmp_path / "src"), out=str(data)))
    torch.manual_seed(0)
    model = resnet_cifar(8, num_classes=2)  # any input size; untrained is fine for the mechanics
    ev = evaluate_model(model, data, ["k0", "k1"], split="test", normalize="per_channel", backend="dali-cpu",
                        num_threads=1, batch_size=2, ten_crop=True)
    assert set(ev.passes) == {"test", "val", "test_10crop"} and ev.passes["test_10crop"]["count"] == 4
    assert ev.passes["val"]["count"] == 2 and len(ev.responses) == 7
    prep = Preprocessing.from_dataset(data, "per_channel")
    assert prep.kind == "imagenet" and prep.input_size == 224
    x, _ = next(iter(make_loader(data, "test", train=False, batch_size=1, backend="torch", num_threads=1,
                                 normalize="per_channel")))
    first = data / (data / "test.txt").read_text().split()[0]
    assert torch.allclose(prep.transform(read_image(first)), x[0], atol=1e-5)


def test_three_by_three_layers_of_both_families() -> None:
    from resnet_pipeline.evaluation.responses import three_by_three_layers
    from resnet_pipeline.models import resnet_cifar, resnet_imagenet

    with torch.device("meta"):
        cifar20, r18, r50 = resnet_cifar(20), resnet_imagenet(18), resnet_imagenet(50)
    names = [n for n, _ in three_by_three_layers(cifar20)]
    assert len(names) == 19 and names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]  # 6n+1
    assert len(three_by_three_layers(r18)) == 16 and len(three_by_three_layers(r50)) == 16  # 7x7 stem excluded


def test_layer_responses_are_the_bn_outputs_before_relu() -> None:
    from resnet_pipeline.evaluation.responses import ResponseRecorder
    from resnet_pipeline.models import resnet_cifar

    torch.manual_seed(0)
    model = resnet_cifar(8, num_classes=4).eval()
    for m in model.modules():  # non-trivial BN statistics, so that outputs have a negative part
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(10, 3, 32, 32)
    with torch.no_grad(), ResponseRecorder(model) as recorder:
        model(x[:6])
        model(x[6:])  # two batches accumulate into one std over all 10 images
    stds = recorder.stds()
    with torch.no_grad():
        stem = model.bn1(model.conv1(x))  # layer 1: the stem's 3x3 conv, after BN, before ReLU
        block = model.layer1[0]
        after_first = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(torch.relu(stem))))))
    assert stem.min() < 0  # a hook that saw the ReLU's output would miss this part
    assert stds[0]["layer"] == "conv1" and stds[0]["std"] == pytest.approx(stem.std(unbiased=False).item(), rel=1e-5)
    assert stds[2]["layer"] == "layer1.0.conv2"
    assert stds[2]["std"] == pytest.approx(after_first.std(unbiased=False).item(), rel=1e-5)


# --- the report --------------------------------------------------------------------------------

def test_report_builds_from_the_evaluation(evaluated: dict) -> None:
    from resnet_pipeline.report.build import build_report

    cfg, s = evaluated["cfg"], evaluated["summary"]
    dest = build_report(cfg, sweep=SWEEP, params_file="pipelines/demo/params.yaml", log=lambda _: None)
    assert dest == Path(cfg.reports) / SWEEP
    md, html = (dest / "report.md").read_text(), (dest / "report.html").read_text()
    for text in ("Results beside the paper", "Degradation check (Figure 6)", s.degradation[0]["answer"],
                 "figures/figure6.png", "figures/figure7.png", "How to reproduce", "Per-class accuracy",
                 f"python cli.py evaluate --params pipelines/demo/params.yaml --sweep {SWEEP}",
                 s.environment["git_commit"]):
        assert text in md, text
    for row in s.runs:
        assert row["run_id"] in md and row["run_id"] in html
    assert html.startswith("<!DOCTYPE html>") and html.count("<img ") == 2 + 2 * len(s.runs)
    # Self-contained: every image embedded (MLflow's artifact viewer loads no relative file).
    assert html.count('<img src="data:image/png;base64,') == html.count("<img ") and 'src="figures/' not in html
    assert "<table>" in html and "**" not in html
    # Run ids link to the MLflow UI; only the current holder of the alias is marked.
    exp = s.experiment_id
    for row in s.runs:
        assert f'href="http://127.0.0.1:5000/#/experiments/{exp}/runs/{row["run_id"]}?workflowType=machine_learning"' in html
    assert md.count("@champion |") == 1, md
    # No top-5 or paper columns on 4-class, non-CIFAR data; no note repeated on every row.
    assert "top-5" not in md and "paper top-1" not in md and "the paper trained cifar nets" not in md  # the paragraph says it
    # How to reproduce names the pipeline's own dvc.yaml.
    assert "`dvc repro pipelines/demo/dvc.yaml`" in md
    for rel in ("figures/figure6.png", "figures/figure7.png", "evaluation.json"):
        assert (dest / rel).is_file(), rel
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    client = _client(evaluated["uri"])
    logged = {a.path for a in client.list_artifacts(evaluated["parent"], "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= logged
    assert client.get_run(evaluated["parent"]).info.status == "FINISHED"
    with pytest.raises(ConfigError, match="not sweep 'other'"):
        build_report(cfg, sweep="other", log=lambda _: None)


def test_report_document_escapes_links_and_embeds(tmp_path: Path) -> None:
    from resnet_pipeline.report.document import Bullets, Code, Heading, Image, Paragraph, Table, to_html, to_markdown

    (tmp_path / "f.png").write_bytes(b"png")
    blocks = [Heading(2, "A <b> & `x<y`"), Paragraph("**bold <i>** [a & b](https://e.org/?p=1&q=2) [no](ftp://x)"),
              Paragraph("one ` backtick **b**"), Table(["k|1", "v"], [["a\nb", "`c|d`"]]),
              Image("f.png", 'fig "1"'), Code("x < y\n\n"), Bullets(["**i**", "[l](http://l)"])]
    md = to_markdown(blocks)
    assert md == ("## A <b> & `x<y`\n\n**bold <i>** [a & b](https://e.org/?p=1&q=2) [no](ftp://x)\n\n"
                  "one ` backtick **b**\n\n| k\\|1 | v |\n|---|---|\n| a b | `c\\|d` |\n\n"
                  '![fig "1"](f.png)\n\n```\nx < y\n```\n\n- **i**\n- [l](http://l)\n')
    html = to_html(blocks, "T & <t>")
    for part in ("<title>T &amp; &lt;t&gt;</title>", "<h2>A &lt;b&gt; &amp; <code>x&lt;y</code></h2>",
                 '<p><strong>bold &lt;i&gt;</strong> <a href="https://e.org/?p=1&amp;q=2">a &amp; b</a> [no](ftp://x)</p>',
                 "<p>one ` backtick <strong>b</strong></p>", "<th>k|1</th>", "<td>a\nb</td><td><code>c|d</code></td>",
                 '<img src="f.png" alt="fig &#34;1&#34;">', "<pre><code>x &lt; y</code></pre>",
                 '<ul><li><strong>i</strong></li><li><a href="http://l">l</a></li></ul>'):
        assert part in html, part
    embedded = to_html(blocks, "T", images_root=tmp_path)
    assert '<img src="data:image/png;base64,cG5n" alt=' in embedded and 'src="f.png"' not in embedded
    with pytest.raises(TypeError, match="unknown block str"):
        to_markdown(["text"])


# --- config and CLI errors ------------------------------------------------------------------------

def test_evaluate_config_errors_name_the_key() -> None:
    from resnet_pipeline.evaluation import load_evaluate_config

    with pytest.raises(ConfigError, match=r"unknown key\(s\) in params section 'evaluate': splitt"):
        load_evaluate_config({"evaluate": {"splitt": "test"}})
    with pytest.raises(ConfigError, match=r"evaluate.split: 'train' is not valid; choose one of 'val', 'test'"):
        load_evaluate_config({"evaluate": {"split": "train"}})
    with pytest.raises(ConfigError, match="evaluate.registry_name"):
        load_evaluate_config({"evaluate": {"registry_name": "has space"}})
    assert load_evaluate_config({}).resolved_registry_name("data/prepared/cifar10") == "resnet-cifar10"
    for params in ("params.yaml", "pipelines/demo/params.yaml"):  # the project's own params files
        load_evaluate_config(Path(__file__).resolve().parent.parent / params)


def test_cli_evaluate_one_run_and_errors(evaluated: dict, tmp_path: Path, monkeypatch) -> None:
    from resnet_pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", evaluated["uri"])
    run_id = evaluated["runs"][8, "A"]["run_id"]
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  dataset: imagefolder\n  source: x\n  out: {evaluated['data']}\n  backend: dali-cpu\n"
        f"  num_threads: 1\ntrain:\n  experiment: {EXPERIMENT}\nsweep:\n  depths: [8, 14]\n  name: {SWEEP}\n"
        f"evaluate:\n  out: {tmp_path}/m.json\n  details: {tmp_path}/d\n  plots: {tmp_path}/p\n"
        f"  registry_name: {REGISTRY}\n  batch_size: 64\n")
    runner = CliRunner()
    versions = len(_client(evaluated["uri"]).search_model_versions(f"name = '{REGISTRY}'"))
    result = runner.invoke(main, ["evaluate", "--params", str(params), "--run", run_id])
    assert result.exit_code == 0, result.output
    assert "not enough runs" in result.output.lower()  # one run cannot show degradation
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["sweep"] is None and [r["run_id"] for r in summary["runs"]] == [run_id]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["A-8"]["top1_error"] == summary["runs"][0]["test"]["top1_error"]
    assert metrics["degradation-A"] == {"reproduced": False, "decided": False}
    assert len(_client(evaluated["uri"]).search_model_versions(f"name = '{REGISTRY}'")) == versions  # no duplicate
    for args, message in ((["--sweep", "nope"], "no sweep named 'nope'"), (["--run", "0" * 32], "not found"),
                          (["--sweep", SWEEP, "--run", run_id], "not both")):
        bad = runner.invoke(main, ["evaluate", "--params", str(params), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_import_stays_light() -> None:
    code = ("import sys, resnet_pipeline.evaluation, resnet_pipeline.paper, resnet_pipeline.report, "
            "resnet_pipeline.tracking; heavy = [m for m in ('torch', 'mlflow', 'matplotlib', 'ray') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluation_finds_the_runs_data_and_refuses_other_data(evaluated: dict, tmp_path: Path) -> None:
    """The runs record the dataset they trained on (folder and fingerprint): without --data, evaluation
    takes that folder (not data.out); a --data that holds other data is refused, naming both, before any
    model is loaded."""
    from resnet_pipeline.evaluation.evaluate import runs_data
    from resnet_pipeline.evaluation.runs import resolve_runs

    runs = resolve_runs(evaluated["uri"], EXPERIMENT, SWEEP, ())["runs"]
    assert {r.tags["data_dir"] for r in runs} == {str(evaluated["data"].resolve())}
    assert runs_data(runs, None, "data/prepared/cifar10") == str(evaluated["data"].resolve())
    assert runs_data(runs, evaluated["data"], None) == evaluated["data"]
    other = tmp_path / "other"
    src = tmp_path / "src"
    write_images(src / "train" / "a", 8, seed=1)
    write_images(src / "train" / "b", 8, seed=2)
    from resnet_pipeline.data import DataConfig, prepare

    prepare(DataConfig(dataset="imagefolder", source=str(src), out=str(other), val_fraction=0.25))
    with pytest.raises(ConfigError, match=r"--data .*other \(fingerprint \w+\) is not the data these runs trained on: "
                                          r".*\(fingerprint \w+\)"):
        runs_data(runs, other, None)
