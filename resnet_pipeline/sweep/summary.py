"""The sweep's table, read back from its child runs in MLflow: per trial, and mean ± std over seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from resnet_pipeline import tracking
from resnet_pipeline.files import write_bytes_atomic, write_json_atomic
from resnet_pipeline.models import ModelConfig, net_label, trial_name
from resnet_pipeline.stats import mean_std
from resnet_pipeline.sweep.config import SweepConfig, Trial, trial_model
from resnet_pipeline.sweep.planning import complexity

SUMMARY_COLUMNS = ("depth", "shortcut", "seed", "status", "train_error", "val_error", "test_error", "params",
                   "mult_adds", "wall_time_s", "images_per_s", "run_id")


def summarize(uri: str, parent_id: str, sweep: SweepConfig, digest: str, trials: list[Trial],
              model_cfg: ModelConfig, num_classes: int, input_size: int) -> dict[str, Any]:
    """The sweep's table, read back from the child runs in MLflow (the source of truth)."""
    runs = {r.info.run_name: r for r in tracking.child_runs(uri, parent_id)}
    rows = []
    for t in trials:
        params, macs = complexity(trial_model(model_cfg, t), num_classes, input_size)
        row: dict[str, Any] = {"depth": t.depth, "shortcut": t.shortcut, "seed": t.seed, "params": params,
                               "mult_adds": macs, "status": "MISSING", "run_id": None}
        run = runs.get(t.run_name())
        if run is not None:
            m = tracking.run_metrics(run)
            speeds = [v for _, v in tracking.metric_history(uri, run.info.run_id, "images_per_s")]
            row.update(status=run.info.status, run_id=run.info.run_id, train_error=m.get("train_error"),
                       val_error=m.get("best_val_error"), test_error=m.get("test_error"),
                       wall_time_s=((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
                       images_per_s=statistics.median(speeds) if speeds else None)
        rows.append(row)
    return {"sweep": sweep.name, "config_digest": digest, "family": sweep.family, "trials": rows,
            "aggregate": aggregate(rows)}


def log_to_parent(uri: str, parent_id: str, summary: dict[str, Any], step: int) -> None:
    """The sweep's headline on its parent run, so that the collapsed runs table and the charts show it: the best
    finished trial by validation error (the test error never selects), its val and test error, and how many trials
    finished; at ``step``, the trials' last iteration, where the charts draw the trials' own final values."""
    done = [r for r in summary["trials"] if r["status"] == tracking.FINISHED and r.get("val_error") is not None]
    metrics = {"trials_finished": float(len(done))}
    if done:
        best = min(done, key=lambda r: r["val_error"])
        metrics.update(val_error=best["val_error"], **({"test_error": best["test_error"]}
                                                       if best.get("test_error") is not None else {}))
        tracking.set_tags(uri, parent_id, {"best_trial": trial_name(best["depth"], best["shortcut"], best["seed"])})
    tracking.log_metrics(uri, parent_id, metrics, step)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (depth, shortcut)."""
    out = []
    keys = sorted({(r["depth"], r["shortcut"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for depth, shortcut in keys:
        group = [r for r in rows if r["depth"] == depth and r["shortcut"] == shortcut and r["status"] == "FINISHED"]
        entry: dict[str, Any] = {"depth": depth, "shortcut": shortcut, "seeds": len(group)}
        for metric in ("train_error", "val_error", "test_error"):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_std([r.get(metric) for r in group])
        out.append(entry)
    return out


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    """summary.json (everything), summary.csv (one row per trial) and metrics.json (mean over seeds
    per net, flat, for `dvc metrics show`), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    flat = {net_label(a["depth"], a["shortcut"], "key"):
            {k: v for k, v in a.items() if k.endswith("_mean") or k == "seeds"} for a in summary["aggregate"]}
    lines = [",".join(SUMMARY_COLUMNS)] + [",".join("" if r.get(c) is None else str(r.get(c)) for c in SUMMARY_COLUMNS)
                                           for r in summary["trials"]]
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", flat)
    write_bytes_atomic(out / "summary.csv", ("\n".join(lines) + "\n").encode())
    return out
