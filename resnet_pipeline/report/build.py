"""`python cli.py report`: reports/<sweep>/report.md and report.html from the evaluation's outputs.

Reads what `evaluate` wrote (the summary JSON and the plots folder), so the report is a pure rendering of recorded
results: the tables beside the paper, the degradation check, the figures, the MLflow run ids, the environment and
the commands that reproduce it. The folder is built in a temporary sibling and renamed into place, then logged to
the sweep's parent run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from resnet_pipeline import paper, tracking
from resnet_pipeline.config import ConfigError, project_relative
from resnet_pipeline.evaluation.config import SUMMARY, EvaluateConfig
from resnet_pipeline.evaluation.summary import EvaluationSummary
from resnet_pipeline.files import atomic_dir
from resnet_pipeline.models import net_label
from resnet_pipeline.report.document import (Block, Bullets, Code, Heading, Image, Paragraph, Table, to_html,
                                             to_markdown)

Log = Callable[[str], None]


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _pm(mean: float | None, std: float | None, n: int) -> str:
    return f"{_pct(mean)} ± {_pct(std)}" if mean is not None and n > 1 and std is not None else _pct(mean)


def _pm_over_seeds(entry: dict[str, Any], key: str) -> str:
    """A comparison-table entry's ``<key>_mean`` ± ``<key>_std`` over its runs."""
    return _pm(entry.get(f"{key}_mean"), entry.get(f"{key}_std"), entry["runs"])


def _diff(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def _paper_cell(entry: dict[str, Any], metric: str) -> str:
    value = entry.get(f"paper_{metric}_error")
    if value is None:
        return "-"
    mark = " (~)" if entry.get(f"paper_{metric}_source") == "secondary" else ""
    return f"{_pct(value)} ({entry[f'paper_{metric}_where']}){mark}"


def load_summary(cfg: EvaluateConfig, sweep: str | None) -> EvaluationSummary:
    """The evaluation summary (<evaluate.details>/summary.json), checked to be the requested sweep's."""
    path = Path(cfg.details) / SUMMARY
    if not path.is_file():
        raise ConfigError(f"{path} not found (evaluate.details): run `python cli.py evaluate"
                          f"{' --sweep ' + sweep if sweep else ''}` first")
    try:
        summary = EvaluationSummary.from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); run `python cli.py evaluate` again") from None
    except TypeError as exc:  # written by another version of `evaluate`
        raise ConfigError(f"{path} is not an evaluation summary ({exc}); run `python cli.py evaluate` again") from None
    if sweep is not None and summary.sweep != sweep:
        held = f"sweep {summary.sweep!r}" if summary.sweep else "individual runs"
        raise ConfigError(f"{path} holds the evaluation of {held}, not sweep {sweep!r}: run "
                          f"`python cli.py evaluate --sweep {sweep}` first")
    return summary


def build_report(cfg: EvaluateConfig, *, sweep: str | None = None, params_file: str | None = None,
                 log: Log = print) -> Path:
    """Write <reports>/<sweep>/ (report.md, report.html, figures/, evaluation.json: the summary it
    renders); return it."""
    cfg.validate()
    summary = load_summary(cfg, sweep)
    name = summary.sweep or "runs"
    plots_dir = Path(summary.plots_dir)
    figures = {"figure6.png": plots_dir / summary.plots.figure6, "figure7.png": plots_dir / summary.plots.figure7,
               **{f"runs/{Path(rel).parent.name}/{Path(rel).name}": plots_dir / rel
                  for row in summary.runs for rel in row["plots"].values()}}
    missing = [str(p) for p in [*figures.values(), *(Path(r["detail"]) for r in summary.runs)] if not p.is_file()]
    if missing:
        raise ConfigError(f"file(s) written by the evaluation are missing: {', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}; run `python cli.py evaluate` again")
    details = {r["run_id"]: json.loads(Path(r["detail"]).read_text()) for r in summary.runs}
    dest = Path(cfg.reports) / name
    with atomic_dir(dest) as tmp:
        for rel, src in figures.items():
            (tmp / "figures" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / "figures" / rel)
        (tmp / "evaluation.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
        blocks = report_blocks(summary, params_file, details)
        (tmp / "report.md").write_text(to_markdown(blocks))
        (tmp / "report.html").write_text(to_html(blocks, f"ResNet reproduction: {name}", images_root=tmp))
    log(f"wrote {dest}/report.md and report.html")
    if summary.parent_run_id:
        tracking.log_artifacts(summary.tracking_uri, summary.parent_run_id, dest, "report")
        log(f"logged to the sweep's MLflow run {summary.parent_run_id} (artifacts: report/)")
    return dest


def report_blocks(summary: EvaluationSummary, params_file: str | None = None,
                  details: dict[str, dict[str, Any]] | None = None) -> list[Block]:
    """The report as document blocks (see `document.py`); ``details``: run id -> detail file."""
    view = " with 10-crop testing" if summary.compared.endswith("_10crop") else ", single view"
    return [
        Heading(1, f"ResNet reproduction: {summary.sweep or 'runs'}"),
        Paragraph(f"He, Zhang, Ren, Sun, \"Deep Residual Learning for Image Recognition\" (arXiv 1512.03385). "
                  f"Dataset `{summary.dataset}` ({project_relative(summary.data_dir)}), {len(summary.runs)} evaluated "
                  f"run(s), errors on the `{summary.split}` split{view}. Evaluated {summary.environment['date']}."),
        *_results(summary), *_degradation(summary), *_figures(summary), *_runs(summary),
        *_per_class(summary, details or {}), *_environment(summary), *_reproduce(summary, params_file)]


def _results(summary: EvaluationSummary) -> list[Block]:
    protocols = "; ".join(f"{f}: {p}" for f, p in summary.paper_protocol.items())
    blocks: list[Block] = [
        Heading(2, "Results beside the paper"),
        Paragraph(f"Errors in %, ours as mean ± std over seeds where there are several; difference = ours minus "
                  f"the paper's, in percentage points. Ours: `{summary.compared}`. The paper's protocol: "
                  f"{protocols}. Numbers marked (~) were checked against secondary sources only."
                  + ("" if summary.paper_benchmark else
                     f" The data (`{summary.dataset}`) is neither CIFAR-10 nor ImageNet, so no paper figure "
                     "stands beside these errors.")),
    ]
    table = summary.table
    # Columns empty for the whole table are left out: the paper's on data that is neither CIFAR-10 nor
    # ImageNet, top-5 for 5 classes or fewer.
    paper1, top5, paper5 = (any(e[key] is not None for e in table)
                            for key in ("paper_top1_error", "top5_error_mean", "paper_top5_error"))
    header = ["net", "runs", "top-1", *(["paper top-1", "diff"] if paper1 else []), *(["top-5"] if top5 else []),
              *(["paper top-5", "diff"] if paper5 else []), "val top-1", "final train", "note"]
    rows = [[net_label(e["depth"], e["shortcut"]), str(e["runs"]), _pm_over_seeds(e, "top1_error"),
             *([_paper_cell(e, "top1"), _diff(e["diff_top1_error"])] if paper1 else []),
             *([_pm_over_seeds(e, "top5_error")] if top5 else []),
             *([_paper_cell(e, "top5"), _diff(e["diff_top5_error"])] if paper5 else []),
             _pm_over_seeds(e, "val_error"), _pm_over_seeds(e, "train_error"), e["paper_note"] or ""] for e in table]
    notes = {e["paper_note"] or "" for e in table}
    if len(notes) == 1:  # the same note on every row: said once, below the table
        header, rows = header[:-1], [row[:-1] for row in rows]
    blocks.append(Table(header, rows))
    # (Without a paper benchmark the paragraph above says so already.)
    if len(notes) == 1 and next(iter(notes)) and summary.paper_benchmark:
        blocks.append(Paragraph(f"Note: {next(iter(notes))}."))
    complexity = []
    for e in summary.table:
        params = sorted({r["params"] for r in summary.runs
                         if (r["shortcut"], r["depth"]) == (e["shortcut"], e["depth"])})
        ref = paper.CIFAR10_PARAMS.get(e["depth"]) if e["family"] == "cifar" else None
        complexity.append([net_label(e["depth"], e["shortcut"]), ", ".join(f"{p:,}" for p in params),
                           f"{ref.value / 1e6:g}M ({ref.where})" if ref else "-"])
    header = ["net", "parameters (ours)", "paper"]
    if all(row[2] == "-" for row in complexity):  # no paper count for any of these nets
        header, complexity = header[:2], [row[:2] for row in complexity]
    blocks += [Paragraph("Parameters, counted from the modules (option A adds none, so plain and residual twins "
                         "match; the paper's Table 6 lists CIFAR-10 counts; Table 1's multiply-adds refer to "
                         "224x224 ImageNet inputs):"),
               Table(header, complexity)]
    return blocks


def _degradation(summary: EvaluationSummary) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Degradation check (Figure 6)"),
                           Paragraph("Does training error rise with depth among plain nets while residual nets of "
                                     "the same depths do not? Computed from the training curves logged in MLflow.")]
    for check in summary.degradation:
        residual = check["residual_shortcut"] or "-"
        blocks.append(Paragraph(f"**Plain vs ResNet ({residual}): {check['verdict']}.** {check['answer']}"))
        if check["points"]:
            blocks.append(Table(
                ["depth", "plain: final training error", "seeds", f"ResNet ({residual}): final training error",
                 "seeds"],
                [[str(p["depth"]), _pm(p["plain"], p["plain_std"], p["plain_seeds"]), str(p["plain_seeds"]),
                  _pm(p["residual"], p["residual_std"], p["residual_seeds"]), str(p["residual_seeds"])]
                 for p in check["points"]]))
    return blocks


def _fact(f: paper.Fact) -> str:
    return f"{f.text} ({f.where}{', ~ secondary source' if f.source == 'secondary' else ''})"


def _figures(summary: EvaluationSummary) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Figure 6: training curves"),
        Paragraph("Training error (dashed) and validation error (bold) against iterations, plain nets left, "
                  "ResNets right, averaged over seeds. The paper draws the test error; we draw the validation "
                  "error because the test set is evaluated once, at the end. What the paper's figure shows:"),
        Bullets([_fact(f) for f in paper.FIGURE6_FACTS]),
        Image("figures/figure6.png", "Figure 6 from our runs"),
        Heading(2, "Figure 7: layer responses"),
        Paragraph(f"Standard deviation of each 3x3 layer's response (the BN output, before the addition or ReLU), "
                  f"with the trained weights in eval mode, over every image of the `{summary.split}` split; "
                  "top: network order, bottom: sorted. What the paper's figure shows:"),
        Bullets([_fact(f) for f in paper.FIGURE7_FACTS]),
        Image("figures/figure7.png", "Figure 7 from our runs"),
    ]
    if summary.layer_responses:
        blocks.append(Table(["net", "3x3 layers", "mean std", "max std"],
                            [[net_label(r.depth, r.shortcut), str(r.layers), f"{r.mean_std:.3f}",
                              f"{r.max_std:.3f}"] for r in summary.layer_responses]))
    return blocks


# Where `mlflow ui` serves a local store (its default address); a tracking server serves its own UI.
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> str:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def _run_link(summary: EvaluationSummary, run_id: str) -> str:
    """The run id, linked to its page in the MLflow UI (when the summary knows its experiment)."""
    exp = summary.experiment_id
    if not exp:
        return f"`{run_id}`"
    page = f"{ui_base(summary.tracking_uri)}/#/experiments/{exp}/runs/{run_id}"
    # workflowType: MLflow 3's UI opens on its GenAI pages otherwise (a per-browser setting).
    return f"[{run_id}]({page}?workflowType=machine_learning)"


def _runs(summary: EvaluationSummary) -> list[Block]:
    split, compared = summary.split, summary.compared
    tops = (1, 5) if any(r[split]["top5_error"] is not None for r in summary.runs) else (1,)  # none for <= 5 classes
    views = {split: split, **({compared: "10-crop"} if compared != split else {})}  # pass -> its columns' label
    header = ["run", "MLflow run id", "seed", "val top-1",
              *(f"{label} top-{k}" for label in views.values() for k in tops), "registry", "git commit"]
    rows = []
    holder = summary.registry.champion_version  # after the whole evaluation, not at each registration
    for r in summary.runs:
        reg = r["registry"]
        version = (f"v{reg['version']}" + (" @champion" if str(reg.get("version")) == str(holder) else "")
                   if reg.get("registered") else "not registered")
        rows.append([r["run_name"], _run_link(summary, r["run_id"]), str(r["seed"]), _pct(r["val"]["top1_error"]),
                     *(_pct(r[view][f"top{k}_error"]) for view in views for k in tops), version,
                     (r.get("git_commit") or "unknown")[:12]])
    reg = summary.registry
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(header, rows),
        Paragraph(f"Registered model `{reg.name}`: the alias `@{reg.alias}` is on version "
                  f"{reg.champion_version or '-'} (run `{reg.champion_run_id or '-'}`). It moves only to a "
                  "version with a lower validation error; the test error is reported, never used for selection; "
                  "models with non-finite metrics are not registered."),
    ]
    if summary.skipped:
        blocks += [Paragraph("Not evaluated:"),
                   Bullets([f"{s['run_name']} (`{s['run_id']}`): {s['reason']}" for s in summary.skipped])]
    blocks.append(Heading(3, "Per-run learning curves and confusion matrices"))
    for r in summary.runs:
        blocks += [Paragraph(f"{r['run_name']} (`{r['run_id']}`); per-class accuracy and the confusion matrix "
                             f"in `{r['detail']}`."),
                   Image(f"figures/runs/{Path(r['plots']['learning_curves']).parent.name}/learning_curves.png",
                         f"learning curves of {r['run_name']}"),
                   Image(f"figures/runs/{Path(r['plots']['confusion']).parent.name}/confusion.png",
                         f"confusion matrix of {r['run_name']}")]
    return blocks


# Up to this many classes the report tabulates per-class accuracy; beyond, the detail files hold it.
MAX_CLASSES_IN_REPORT = 20


def _per_class(summary: EvaluationSummary, details: dict[str, dict[str, Any]]) -> list[Block]:
    split = summary.split
    runs = [r for r in summary.runs if r["run_id"] in details]
    if not runs:
        return []
    classes = details[runs[0]["run_id"]]["classes"]
    blocks: list[Block] = [Heading(3, f"Per-class accuracy ({split} split, %)")]
    if len(classes) > MAX_CLASSES_IN_REPORT:
        return blocks + [Paragraph(f"{len(classes)} classes: see each run's detail file (`per_class_accuracy`).")]
    rows = [[c, *(_pct(details[r["run_id"]]["passes"][split]["per_class_accuracy"].get(c), 1) for r in runs)]
            for c in classes]
    return blocks + [Table(["class", *(r["run_name"] for r in runs)], rows)]


def _environment(summary: EvaluationSummary) -> list[Block]:
    env = summary.environment
    commits = sorted({r.get("git_commit") or "unknown" for r in summary.runs})
    items = [f"evaluation: git commit `{env['git_commit']}`, device {env['device']}, {env['platform']}, "
             f"{env['cpu_count']} CPUs, Python {env['python']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(env["versions"].items())),
             f"training runs' git commit(s): {', '.join(f'`{c}`' for c in commits)}",
             f"MLflow: `{summary.tracking_uri}`, experiment `{summary.experiment}`"
             + (f", sweep parent run `{summary.parent_run_id}`" if summary.parent_run_id else "")]
    return [Heading(2, "Environment"), Bullets(items)]


def _reproduce(summary: EvaluationSummary, params_file: str | None) -> list[Block]:
    params_file = project_relative(params_file) if params_file else None
    p = f" --params {params_file}" if params_file else ""
    # The pipeline beside its params file: pipelines/demo/params.yaml -> pipelines/demo/dvc.yaml.
    dvc_file = (Path(params_file).parent / "dvc.yaml").as_posix() if params_file else "dvc.yaml"
    repro = "dvc repro" if dvc_file == "dvc.yaml" else f"dvc repro {dvc_file}"
    sweep = summary.sweep
    which = f"--sweep {sweep}" if sweep else " ".join(f"--run {r['run_id']}" for r in summary.runs)
    commands = [f"python cli.py prepare{p}",
                f"python cli.py sweep{p} --name {sweep}" if sweep else f"python cli.py train{p}  # once per run",
                f"python cli.py evaluate{p} {which}", f"python cli.py report{p}{f' --sweep {sweep}' if sweep else ''}"]
    return [Heading(2, "How to reproduce"),
            Paragraph("From the repository root at the git commit above, with the same MLflow store "
                      f"(MLFLOW_TRACKING_URI); `{repro}` runs the same stages from `{dvc_file}`:"),
            Code("\n".join(commands))]
