"""`python cli.py report`: reports/<sweep>/report.md and report.html from the evaluation's outputs.

Reads what `evaluate` wrote (the summary JSON and the plots folder), so the report is a pure
rendering of recorded results: the tables beside the paper, the degradation check, the figures,
the MLflow run ids, the environment and the commands that reproduce it. The folder is built in a
temporary sibling and renamed into place, then logged to the sweep's parent run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from resnet_pipeline import paper
from resnet_pipeline.config import ConfigError, project_relative
from resnet_pipeline.models import net_label
from resnet_pipeline.evaluation.config import SUMMARY, EvaluateConfig
from resnet_pipeline.evaluation.summary import EvaluationSummary
from resnet_pipeline.report.document import (Block, Bullets, Code, Heading, Image, Paragraph, Table, to_html,
                                             to_markdown)

Log = Callable[[str], None]


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{_pct(mean)} ± {_pct(std)}" if n > 1 and std is not None else _pct(mean)


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
    from resnet_pipeline import tracking
    from resnet_pipeline.files import atomic_dir

    cfg.validate()
    summary = load_summary(cfg, sweep)
    name = summary.sweep or "runs"
    plots_dir = Path(summary.plots_dir)
    figures = {"figure6.png": plots_dir / summary.plots.figure6,
               "figure7.png": plots_dir / summary.plots.figure7}
    for row in summary.runs:
        for key, rel in row["plots"].items():
            figures[f"runs/{Path(rel).parent.name}/{Path(rel).name}"] = plots_dir / rel
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
        title = f"ResNet reproduction: {name}"
        (tmp / "report.md").write_text(to_markdown(blocks))
        (tmp / "report.html").write_text(to_html(blocks, title, images_root=tmp))
    log(f"wrote {dest}/report.md and report.html")
    if summary.parent_run_id:
        tracking.log_artifacts(summary.tracking_uri, summary.parent_run_id, dest, "report")
        log(f"logged to the sweep's MLflow run {summary.parent_run_id} (artifacts: report/)")
    return dest


def report_blocks(summary: EvaluationSummary, params_file: str | None = None,
                  details: dict[str, dict[str, Any]] | None = None) -> list[Block]:
    """The report as document blocks (see `document.py`); ``details``: run id -> detail file."""
    name = summary.sweep or "runs"
    compared = summary.compared
    ten_crop = compared.endswith("_10crop")
    blocks: list[Block] = [
        Heading(1, f"ResNet reproduction: {name}"),
        Paragraph(f"He, Zhang, Ren, Sun, \"Deep Residual Learning for Image Recognition\" (arXiv 1512.03385). "
                  f"Dataset `{summary.dataset}` ({project_relative(summary.data_dir)}), {len(summary.runs)} evaluated run(s), "
                  f"errors on the `{summary.split}` split" + (" with 10-crop testing" if ten_crop else
                                                                 ", single view") +
                  f". Evaluated {summary.environment['date']}."),
    ]
    blocks += _results(summary)
    blocks += _degradation(summary)
    blocks += _figures(summary)
    blocks += _runs(summary)
    blocks += _per_class(summary, details or {})
    blocks += _environment(summary)
    blocks += _reproduce(summary, params_file)
    return blocks


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
    shown = {"paper_top1": any(e["paper_top1_error"] is not None for e in table),
             "top5": any(e["top5_error_mean"] is not None for e in table),
             "paper_top5": any(e["paper_top5_error"] is not None for e in table)}
    header = ["net", "runs", "top-1", *(["paper top-1", "diff"] if shown["paper_top1"] else []),
              *(["top-5"] if shown["top5"] else []), *(["paper top-5", "diff"] if shown["paper_top5"] else []),
              "val top-1", "final train", "note"]
    rows = []
    for e in table:
        n = e["runs"]
        rows.append([net_label(e["depth"], e["shortcut"]), str(n), _pm(e["top1_error_mean"], e["top1_error_std"], n),
                     *([_paper_cell(e, "top1"), _diff(e["diff_top1_error"])] if shown["paper_top1"] else []),
                     *([_pm(e["top5_error_mean"], e["top5_error_std"], n)] if shown["top5"] else []),
                     *([_paper_cell(e, "top5"), _diff(e["diff_top5_error"])] if shown["paper_top5"] else []),
                     _pm(e.get("val_error_mean"), e.get("val_error_std"), n),
                     _pm(e.get("train_error_mean"), e.get("train_error_std"), n), e["paper_note"] or ""])
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
    # workflowType: MLflow 3's UI opens on its GenAI pages otherwise (a per-browser setting).
    return f"[{run_id}]({ui_base(summary.tracking_uri)}/#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning)"


def _runs(summary: EvaluationSummary) -> list[Block]:
    split, compared = summary.split, summary.compared
    top5 = any(r[split]["top5_error"] is not None for r in summary.runs)  # none for 5 classes or fewer
    header = ["run", "MLflow run id", "seed", "val top-1", f"{split} top-1", *([f"{split} top-5"] if top5 else [])]
    if compared != split:
        header += ["10-crop top-1", *(["10-crop top-5"] if top5 else [])]
    header += ["registry", "git commit"]
    rows = []
    holder = summary.registry.champion_version  # after the whole evaluation, not at each registration
    for r in summary.runs:
        reg = r["registry"]
        version = (f"v{reg['version']}" + (" @champion" if str(reg.get("version")) == str(holder) else "")) \
            if reg.get("registered") else "not registered"
        row = [r["run_name"], _run_link(summary, r["run_id"]), str(r["seed"]), _pct(r["val"]["top1_error"]),
               _pct(r[split]["top1_error"]), *([_pct(r[split]["top5_error"])] if top5 else [])]
        if compared != split:
            row += [_pct(r[compared]["top1_error"]), *([_pct(r[compared]["top5_error"])] if top5 else [])]
        rows.append(row + [version, (r.get("git_commit") or "unknown")[:12]])
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
    rows = []
    for c in classes:
        cells = []
        for r in runs:
            acc = details[r["run_id"]]["passes"][split]["per_class_accuracy"].get(c)
            cells.append(_pct(acc, 1))
        rows.append([c, *cells])
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
    if sweep:
        commands = [f"python cli.py prepare{p}", f"python cli.py sweep{p} --name {sweep}",
                    f"python cli.py evaluate{p} --sweep {sweep}", f"python cli.py report{p} --sweep {sweep}"]
    else:
        runs = " ".join(f"--run {r['run_id']}" for r in summary.runs)
        commands = [f"python cli.py prepare{p}", f"python cli.py train{p}  # once per run",
                    f"python cli.py evaluate{p} {runs}", f"python cli.py report{p}"]
    return [Heading(2, "How to reproduce"),
            Paragraph("From the repository root at the git commit above, with the same MLflow store "
                      f"(MLFLOW_TRACKING_URI); `{repro}` runs the same stages from `{dvc_file}`:"),
            Code("\n".join(commands))]
