"""`python cli.py evaluate`: test every trained model of a sweep (or the given runs), compare with the paper, check
for degradation, register the models, write metrics and plots data.

For each run: load its logged model, measure top-1/top-5 error on the validation split and on ``evaluate.split``
(default: test), 10-crop too on ImageNet-kind data (Sec. 3.4), per-class accuracy and the confusion matrix, and the
std of every 3x3 layer's response (Figure 7); log them to the run; store the evaluation transform with the model
(for `predict`); register it. Then over all runs: mean +- std over seeds beside the paper's numbers, the degradation
check on the training curves (Figure 6), and the figures. Outputs (each complete or absent):

    <evaluate.out>                    flat numbers per net and the degradation check (DVC metrics)
    <evaluate.details>/summary.json   everything: runs, comparison table, degradation, environment
    <evaluate.details>/<run>.json     per-class accuracy, confusion matrix, layer responses
    <evaluate.plots>/                 figure6.png/csv, figure7.png/csv, runs/<run>/{learning_curves,confusion}.png,
                                      train_error.csv, val_error.csv (every run, long format),
                                      confusion/<run>.csv (DVC plots: see dvc.yaml's `plots`)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from resnet_pipeline import environment as runtime, paper, tracking
from resnet_pipeline.config import ConfigError
from resnet_pipeline.data import dataset_fingerprint, load_manifest, make_loader
from resnet_pipeline.data.loader import eval_geometry, loader_spec
from resnet_pipeline.evaluation.compare import comparison_table
from resnet_pipeline.evaluation.config import CHAMPION, SUMMARY, EvaluateConfig
from resnet_pipeline.evaluation.degradation import RunCurve, degradation_checks, final_error
from resnet_pipeline.evaluation.metrics import collect_predictions, headline, summarize
from resnet_pipeline.evaluation.preprocess import PREPROCESSING_FILE, Preprocessing
from resnet_pipeline.evaluation.registry import register
from resnet_pipeline.evaluation.responses import ResponseRecorder
from resnet_pipeline.evaluation.runs import RunInfo, load_trained_model, resolve_runs
from resnet_pipeline.evaluation.summary import EvaluationSummary, FigureFiles, LayerResponses, RegistryState
from resnet_pipeline.files import atomic_dir, safe_name, write_csv, write_json_atomic
from resnet_pipeline.models import count_params, net_label
from resnet_pipeline.report import plots
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.driver import DATA_DIR_TAG, DATA_FINGERPRINT_TAG
from resnet_pipeline.training.loop import resolve_device, resolve_precision

Log = Callable[[str], None]

# Curves read back from each run (steps are iterations): Figure 6 and the learning curves.
CURVES = ("train_error", "val_error", "train_loss", "val_loss")
UNITS = "errors and accuracies are fractions (0.0875 = 8.75%); differences are ours minus the paper's"


@dataclass
class ModelEvaluation:
    """One model's results: {"val", <split>, <split>_10crop} -> `metrics.summarize` output."""

    passes: dict[str, dict[str, Any]]
    responses: list[dict[str, Any]]  # Figure 7, per 3x3 layer


def evaluate_model(model, data_dir: str | Path, classes: list[str], *, split: str = "test", normalize: str,
                   backend: str = "auto", num_threads: int = 2, batch_size: int = 256, ten_crop: bool = False,
                   aug: dict[str, Any] | None = None, device=None) -> ModelEvaluation:
    """Evaluate one model on the validation split and on ``split`` (single view, and 10-crop when
    ``ten_crop``), recording the 3x3 layers' responses (Figure 7) during the single-view pass.
    ``aug``: ImageNet-kind crop_size and eval_resize (`make_loader` keywords)."""
    device = device or torch.device("cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    # On a GPU, under the autocast training used (bf16 where supported): ten-crop views of ResNet-152
    # in fp32 are what would not fit. On the CPU in fp32, as before.
    amp = resolve_precision("auto", device) if device.type == "cuda" else None

    def predictions(name: str, crops: bool = False):
        loader = make_loader(data_dir, name, train=False, batch_size=batch_size, backend=backend,
                             num_threads=num_threads, normalize=normalize, ten_crop=crops, **eval_geometry(aug))
        return collect_predictions(model, loader, device, amp)

    with ResponseRecorder(model) as recorder:
        probs, labels = predictions(split)
    passes = {split: summarize(probs, labels, classes)}
    if split != "val":
        passes["val"] = summarize(*predictions("val"), classes)
    if ten_crop:
        passes[f"{split}_10crop"] = summarize(*predictions(split, True), classes)
    return ModelEvaluation(passes, recorder.stds())


def runs_data(runs: Sequence[Any], data_dir: str | Path | None, default: str | Path | None) -> str | Path:
    """The dataset to evaluate ``runs`` on: ``data_dir`` when given, else the folder they trained on
    (their `data_dir` tag) when it is still there, else ``default``. ConfigError when ``data_dir``
    holds other data than they trained on (another `dataset_fingerprint`), naming both."""
    trained = {(r.tags.get(DATA_DIR_TAG), r.tags.get(DATA_FINGERPRINT_TAG)) for r in runs
               if r.tags.get(DATA_FINGERPRINT_TAG)}
    if data_dir is None:
        folders = {folder for folder, _ in trained if folder and Path(folder, "manifest.json").is_file()}
        if len(folders) == 1:
            return folders.pop()
        if default is None:
            raise ConfigError("evaluate: no dataset given and the runs do not name one; use --data")
        data_dir = default
    if trained and Path(data_dir, "manifest.json").is_file():
        given = dataset_fingerprint(data_dir)
        if given not in {fp for _, fp in trained}:
            where = ", ".join(sorted(f"{folder} (fingerprint {fp})" for folder, fp in trained))
            raise ConfigError(f"--data {data_dir} (fingerprint {given}) is not the data these runs trained on: "
                              f"{where}; evaluate on that data, or leave --data out")
    return data_dir


def _check_data(data_dir: str | Path, cfg: EvaluateConfig,
                aug: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any], str]:
    """(folder, manifest, kind) of the prepared dataset, with the splits evaluation needs."""
    path = Path(data_dir).resolve()
    manifest = load_manifest(path)
    for split in dict.fromkeys(("val", cfg.split)):
        if split not in manifest["splits"]:
            hint = "; set evaluate.split: val" if split == "test" else ""
            raise ConfigError(f"--data {path}: the prepared dataset has no {split!r} split "
                              f"(it has {', '.join(manifest['splits'])}){hint}")
    kind = loader_spec(path, "val", train=False, batch_size=1, normalize="per_channel", **eval_geometry(aug)).kind
    if cfg.ten_crop == "on" and kind != "imagenet":
        raise ConfigError(f"evaluate.ten_crop: 'on' needs ImageNet-kind data, but {path} holds small fixed-size "
                          "images (CIFAR kind, tested on a single view as in Sec. 4.2); use auto or off")
    return path, manifest, kind


def environment(device) -> dict[str, Any]:
    """Where this evaluation ran: git commit, versions, device."""
    name = runtime.gpu_name(device) if device.type == "cuda" else runtime.device_name()
    return {"git_commit": runtime.git_commit(), "git_dirty": runtime.git_dirty(), "python": platform.python_version(),
            "device": name, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "versions": {k: v for k, v in runtime.versions(runtime.RUN_PACKAGES).items() if v is not None},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _make_output_folders(cfg: EvaluateConfig) -> None:
    """The outputs' folders, made now, so that a bad path fails before any work."""
    for key in ("out", "details", "plots"):
        folder = Path(getattr(cfg, key)).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"evaluate.{key}: cannot create folder {folder}: {exc.strerror or exc}") from None


def run_evaluation(cfg: EvaluateConfig, data_dir: str | Path | None, *, experiment: str | None,
                   sweep: str | None = None, run_ids: Sequence[str] = (), backend: str = "auto",
                   normalize: str = "auto", num_threads: int = 2, aug: dict[str, Any] | None = None,
                   tracking_uri: str | None = None, log: Log = print,
                   default_data: str | Path | None = None) -> EvaluationSummary:
    """Evaluate a sweep's finished trials (or ``run_ids``); write the outputs; return the summary.

    ``data_dir``: the prepared dataset; None: the one the runs trained on (their `data_dir` tag), else
    ``default_data``. A dataset other than the one the runs trained on is refused (`runs_data`). Everything that can
    be checked is checked before any model is loaded. ``normalize`` and ``aug`` (ImageNet-kind crop sizes) are used
    for runs that did not log the `data.*` they trained with."""
    cfg.validate()
    _make_output_folders(cfg)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if experiment == "auto":  # train.experiment's auto: the data folder's name, else any experiment
        experiment = TrainConfig().for_data(data_dir).experiment if data_dir is not None else None
    resolved = resolve_runs(uri, experiment, sweep, run_ids)
    runs, parent = resolved["runs"], resolved["parent"]
    experiment_id = tracking.get_run(uri, runs[0].run_id).info.experiment_id
    experiment = tracking.experiment_name(uri, experiment_id)  # where the runs are (auto searched them all)
    data_path, manifest, kind = _check_data(runs_data(runs, data_dir, default_data), cfg, aug)
    registry = cfg.resolved_registry_name(data_path)
    ten_crop = cfg.ten_crop == "on" or (cfg.ten_crop == "auto" and kind == "imagenet")
    device = resolve_device("auto")
    env = environment(device)
    of_sweep = f" of sweep '{sweep}' (MLflow run {parent.info.run_id})" if parent else ""
    log(f"evaluating {len(runs)} run(s){of_sweep} on {data_path} ({cfg.split} split"
        f"{', also 10-crop' if ten_crop else ''}), device {env['device']}")
    for s in resolved["skipped"]:
        log(f"  skipped {s['run_name']} ({s['run_id']}): {s['reason']}")

    with atomic_dir(cfg.details) as details_dir, atomic_dir(cfg.plots) as plots_dir:
        rows: list[dict[str, Any]] = []
        histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
        responses: dict[str, list[dict[str, Any]]] = {}
        for i, info in enumerate(runs, 1):
            log(f"[{i}/{len(runs)}] {info.run_name} ({info.run_id})")
            histories[info.run_id] = {k: tracking.metric_history(uri, info.run_id, k) for k in CURVES}
            row, responses[info.run_id] = _evaluate_run(
                uri, info, cfg, data_path, manifest, histories[info.run_id], details_dir, plots_dir,
                backend=backend, normalize=info.normalize or normalize, num_threads=num_threads, ten_crop=ten_crop,
                aug={**eval_geometry(aug), **info.aug}, device=device, registry=registry, sweep=sweep, log=log)
            rows.append(row)
        series7 = _figures(rows, histories, responses, plots_dir, manifest["dataset"], cfg.split)
        summary = _summary(
            cfg, uri, registry, manifest, rows, histories, series7, units=UNITS, sweep=sweep,
            parent_run_id=parent.info.run_id if parent is not None else None, experiment=experiment,
            experiment_id=experiment_id, data_dir=str(data_path),
            kind=kind, split=cfg.split, compared=f"{cfg.split}_10crop" if ten_crop else cfg.split,
            skipped=resolved["skipped"], environment=env)
        write_json_atomic(details_dir / SUMMARY, summary.to_json())
    write_json_atomic(cfg.out, dvc_metrics(summary))
    if parent is not None:  # the verdict where the sweep's runs are listed
        tracking.set_tags(uri, parent.info.run_id, {
            f"degradation.{c['residual_shortcut'] or 'none'}": c["verdict"] for c in summary.degradation})
    log(f"wrote {cfg.out}, {cfg.details}/ ({SUMMARY} and one file per run), {cfg.plots}/")
    return summary


def _summary(cfg: EvaluateConfig, uri: str, registry: str, manifest: dict[str, Any], rows: list[dict[str, Any]],
             histories: dict[str, dict[str, list]], series7: list[dict[str, Any]], **fields: Any) -> EvaluationSummary:
    """The summary of the evaluated ``rows``: the paper comparison, the degradation checks on the training curves,
    Figure 7's per-net figures and the registry's champion; ``fields`` are the summary's other fields."""
    curves = [RunCurve(r["shortcut"], r["depth"], r["seed"], histories[r["run_id"]]["train_error"], r["run_id"])
              for r in rows]
    checks = degradation_checks(curves, last_windows=cfg.last_windows, margin=cfg.degradation_margin,
                                basis=cfg.degradation_basis)
    champion = tracking.alias_version(uri, registry, CHAMPION) if cfg.register else None
    families = sorted({r["family"] for r in rows})
    benchmark = paper.benchmark(manifest)
    return EvaluationSummary(
        tracking_uri=uri, dataset=manifest["dataset"], families=families,
        paper_protocol={f: paper.protocol(f) for f in families}, runs=rows, paper_benchmark=benchmark,
        table=comparison_table(rows, benchmark), degradation=[dataclasses.asdict(c) for c in checks],
        layer_responses=[LayerResponses(s["shortcut"], s["depth"], len(s["stds"]), sum(s["stds"]) / len(s["stds"]),
                                        max(s["stds"])) for s in series7],
        registry=RegistryState(registry, CHAMPION, str(champion.version) if champion is not None else None,
                               champion.run_id if champion is not None else None),
        plots_dir=Path(cfg.plots).as_posix(), plots=FigureFiles(), details_dir=Path(cfg.details).as_posix(),
        config=dataclasses.asdict(cfg), **fields)


def dvc_metrics(summary: EvaluationSummary) -> dict[str, Any]:
    """The DVC metrics file: per net ("<shortcut>-<depth>", as the sweep's metrics.json) the means
    over seeds and the paper's figure, and per degradation check its numbers; numbers only, flat
    enough for `dvc metrics show` and `dvc metrics diff`."""
    out: dict[str, dict[str, Any]] = {}
    for e in summary.table:
        out[net_label(e["depth"], e["shortcut"], "key")] = {
            "runs": e["runs"], "top1_error": e["top1_error_mean"], "top1_error_std": e["top1_error_std"],
            "top5_error": e["top5_error_mean"], "val_error": e.get("val_error_mean"),
            # The degradation check's measure (mean of the last evaluate.last_windows windows), not
            # the sweep's train_error_mean (the last window): another number, another name.
            "train_error_last_windows": e.get("train_error_mean"), "paper_top1_error": e["paper_top1_error"],
            "diff_top1_error": e["diff_top1_error"]}
    for check in summary.degradation:
        out[f"degradation-{check['residual_shortcut'] or 'none'}"] = {
            "reproduced": check["verdict"] == "degradation", "decided": check["verdict"] != "not enough runs",
            "plain_rise": check["plain_rise"], "residual_rise": check["residual_rise"],
            "residual_worst_rise": check["residual_worst_rise"]}
    return {key: {k: v for k, v in entry.items() if v is not None} for key, entry in out.items()}


def _evaluate_run(uri: str, info: RunInfo, cfg: EvaluateConfig, data_path: Path, manifest: dict[str, Any],
                  history: dict[str, list[tuple[int, float]]], details_dir: Path, plots_dir: Path, *, backend: str,
                  normalize: str, num_threads: int, ten_crop: bool, aug: dict[str, Any], device, registry: str,
                  sweep: str | None, log: Log) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate one run, write its files, log them to the run, register its model; (row, responses)."""
    classes = list(manifest["classes"])
    prep = Preprocessing.from_dataset(data_path, normalize, aug)
    model = load_trained_model(uri, info, len(classes), prep.input_size)
    ev = evaluate_model(model, data_path, classes, split=cfg.split, normalize=normalize, backend=backend,
                        num_threads=num_threads, batch_size=cfg.batch_size, ten_crop=ten_crop, aug=aug, device=device)
    split = cfg.split
    compared = f"{split}_10crop" if ten_crop else split
    name, detail_file, run_plots = _write_run_files(info, ev, classes, split, history, details_dir, plots_dir)
    # Into the model's MLflow run and onto its logged model: the evaluation's numbers at the final iteration (val/error,
    # test/error, test/10crop_error, ...: one metric per quantity, so the last point of the training's own val/test
    # values is this evaluation's), the files under evaluation/, and the evaluation transform (what `predict` reads).
    final_iteration = max((s for curve in history.values() for s, _ in curve), default=0)
    model_id = tracking.logged_model_id(uri, info.run_id)
    tracking.log_metrics(uri, info.run_id, _scalars(ev.passes, ev.passes), final_iteration, model_id=model_id)
    tracking.log_artifacts(uri, info.run_id, run_plots, "evaluation")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "details.json").write_text(detail_file.read_text())
        tracking.log_artifacts(uri, info.run_id, tmp, "evaluation")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / PREPROCESSING_FILE).write_text(prep.to_json())
        if model_id is not None:
            tracking.log_model_files(uri, model_id, tmp)
    if cfg.register:  # the validation metrics select, the others are tags only
        tags = {"depth": info.depth, "shortcut": info.shortcut, "variant": info.model.variant, "family": info.family,
                "seed": info.seed, "run_name": info.run_name, "git_commit": info.git_commit or "unknown",
                "sweep": sweep or "", "dataset": manifest["dataset"], "eval_split": split}
        outcome = dataclasses.asdict(register(uri, registry, info.run_id, _scalars(ev.passes, ("val", split, compared)),
                                              tags, classes=classes, dataset=manifest["dataset"]))
    else:
        outcome = {"registered": False, "name": registry, "reason": "evaluate.register is false"}
    top5 = ev.passes[split]["top5_error"]
    log(f"    val {ev.passes['val']['top1_error']:.2%}  {split} {ev.passes[split]['top1_error']:.2%}"
        + (f" (top-5 {top5:.2%})" if top5 is not None else "")
        + (f"  10-crop {ev.passes[compared]['top1_error']:.2%}" if ten_crop else "")
        + f"  registry: {outcome['reason']}")
    row = {"run_id": info.run_id, "run_name": info.run_name, "family": info.family, "depth": info.depth,
           "shortcut": info.shortcut, "variant": info.model.variant, "seed": info.seed,
           "params": count_params(model), "git_commit": info.git_commit, "normalize": normalize,
           "train_error": final_error(history["train_error"], cfg.last_windows),
           "val": headline(ev.passes["val"]), split: headline(ev.passes[split]),
           **({compared: headline(ev.passes[compared])} if ten_crop else {}),
           # The comparison with the paper uses the paper's protocol: `compared` (see `paper.protocol`).
           "top1_error": ev.passes[compared]["top1_error"], "top5_error": ev.passes[compared]["top5_error"],
           "val_error": ev.passes["val"]["top1_error"], "compared": compared,
           "registry": outcome, "detail": f"{Path(cfg.details).as_posix()}/{name}.json",
           "plots": {"learning_curves": f"runs/{name}/learning_curves.png", "confusion": f"runs/{name}/confusion.png"}}
    return row, ev.responses


def _write_run_files(info: RunInfo, ev: ModelEvaluation, classes: list[str], split: str,
                     history: dict[str, list[tuple[int, float]]], details_dir: Path,
                     plots_dir: Path) -> tuple[str, Path, Path]:
    """The run's details JSON, confusion CSV and figures; (its file name, the JSON, its plots folder)."""
    name = safe_name(info.run_name)
    while name == Path(SUMMARY).stem or (details_dir / f"{name}.json").exists():  # keep both runs of one name
        name = f"{name}-{info.run_id[:8]}"
    detail_file, run_plots = details_dir / f"{name}.json", plots_dir / "runs" / name
    write_json_atomic(detail_file, {"run_id": info.run_id, "run_name": info.run_name, "classes": classes,
                                    "split": split, "passes": ev.passes, "layer_responses": ev.responses,
                                    "units": UNITS})
    # The confusion CSV (DVC plots data: DVC applies one template to the whole folder) has every (actual,
    # predicted) pair with its count, zeros included: the chart (.dvc/plots/confusion_counts.json) then has a
    # row and a column for a class the model never predicts.
    matrix = ev.passes[split]["confusion_matrix"]
    write_csv(plots_dir / "confusion" / f"{name}.csv", ["actual", "predicted", "count"],
              [[a, p, matrix[i][j]] for i, a in enumerate(classes) for j, p in enumerate(classes)])
    plots.learning_curves(history["train_error"], history["val_error"], run_plots / "learning_curves.png",
                          f"{info.run_name}: {net_label(info.depth, info.shortcut, 'legend')}",
                          test_error=ev.passes[split]["top1_error"] if split == "test" else None)
    plots.confusion(matrix, classes, run_plots / "confusion.png", f"{info.run_name}: confusion matrix ({split} split)")
    return name, detail_file, run_plots


def _scalars(passes: dict[str, dict[str, Any]], keys) -> dict[str, float]:
    """``<pass>_error``, ``<pass>_top5_error`` (above 5 classes) and ``<pass>_loss`` of the passes ``keys`` name."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(keys):
        result = passes[key]
        out[f"{key}_error"] = result["top1_error"]
        if result["top5_error"] is not None:  # none for 5 classes or fewer
            out[f"{key}_top5_error"] = result["top5_error"]
        out[f"{key}_loss"] = result["loss"]
    return out


def _seed_mean(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Point-wise mean over seeds (one curve at least) at the iterations every seed logged."""
    maps = [dict(c) for c in curves]
    return [(s, sum(m[s] for m in maps) / len(maps)) for s in sorted(set(maps[0]).intersection(*maps[1:]))]


def _figures(rows: list[dict[str, Any]], histories: dict[str, dict[str, list]], responses: dict[str, list[dict]],
             plots_dir: Path, dataset: str, split: str) -> list[dict[str, Any]]:
    """Figures 6 and 7 (PNG and CSV) and the per-run curves for DVC plots; returns Figure 7's series."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["shortcut"] != "plain", r["shortcut"], r["depth"])):  # stable
        groups.setdefault((r["shortcut"], r["depth"]), []).append(r)
    # Figure 6: seed-mean curves per (shortcut, depth); Figure 7: seed-mean std per layer. The CSVs keep
    # every seed (Figure 7's with each layer's rank by magnitude).
    series6, lines6, series7, lines7 = [], [], [], []
    for (shortcut, depth), group in groups.items():
        series6.append({"shortcut": shortcut, "depth": depth,
                        "train": _seed_mean([histories[r["run_id"]]["train_error"] for r in group]),
                        "val": _seed_mean([histories[r["run_id"]]["val_error"] for r in group])})
        per_seed = [[layer["std"] for layer in responses[r["run_id"]]] for r in group]
        series7.append({"shortcut": shortcut, "depth": depth,
                        "stds": [sum(col) / len(col) for col in zip(*per_seed)]})
        for r in group:
            for curve in ("train_error", "val_error"):
                lines6 += [[shortcut, depth, r["seed"], curve, s, v]
                           for s, v in sorted(histories[r["run_id"]][curve])]
            layers = responses[r["run_id"]]
            rank = {layer["index"]: k for k, layer in enumerate(sorted(layers, key=lambda x: -x["std"]), 1)}
            lines7 += [[shortcut, depth, r["seed"], layer["index"], layer["layer"], layer["std"],
                        rank[layer["index"]]] for layer in layers]
    write_csv(plots_dir / "figure6.csv", ["shortcut", "depth", "seed", "curve", "iteration", "error"], lines6)
    # DVC plots: one chart per quantity with every run overlaid (.dvc/plots/by_run.json colours by
    # run), only the points each run logged (no blank cells for a chart to draw as zero).
    for curve in ("train_error", "val_error"):
        write_csv(plots_dir / f"{curve}.csv", ["run", "iteration", curve],
                  [[Path(r["detail"]).stem, s, v] for r in rows  # the run's name, made unique
                   for s, v in sorted(histories[r["run_id"]][curve])])
    plots.figure6(series6, plots_dir / "figure6.png",
                  f"Figure 6 ({dataset}): training error (dashed), validation error (bold)")
    write_csv(plots_dir / "figure7.csv", ["shortcut", "depth", "seed", "layer_index", "layer", "std", "rank_by_std"],
              lines7)
    plots.figure7(series7, plots_dir / "figure7.png",
                  f"Figure 7 ({dataset}, {split} images): std of the 3x3 layers' responses")
    return series7
