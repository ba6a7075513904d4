"""Which MLflow runs to evaluate, and their trained models as our own `nn.Module`s.

A run's model is the one it logged (``models:/<model id>``, named after its net: the final weights, pt2 format),
i.e. the model that gets registered. Its weights are loaded into a `ResNet` rebuilt from the run's logged
``model.*`` params, so that Figure 7's hooks can reach the BN modules; a forward pass of both on the same input
checks that they are the same function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from resnet_pipeline import tracking
from resnet_pipeline.config import ConfigError, from_dict
from resnet_pipeline.models import ModelConfig, build_model


class EvaluationError(ConfigError):
    """A run or model cannot be evaluated; the message names it and what to do."""


@dataclass
class RunInfo:
    run_id: str
    run_name: str
    status: str
    model: ModelConfig
    family: str
    shortcut: str
    seed: int
    git_commit: str | None
    normalize: str | None  # the data.normalize the run trained with, when it logged it
    tags: dict[str, str] = field(default_factory=dict)
    aug: dict[str, Any] = field(default_factory=dict)  # its logged data.crop_size, data.eval_resize

    @property
    def depth(self) -> int:
        return self.model.depth

    def label(self) -> str:
        return f"{self.run_name} ({self.run_id})"


def _param_value(text: str) -> Any:
    """A logged param back to its value ("20" -> 20, "False" -> False, "v1.5" -> "v1.5")."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def describe(run) -> RunInfo:
    """RunInfo from an MLflow run logged by `training.driver.train` (params model.*, tags)."""
    params, tags = run.data.params, run.data.tags
    label = f"{run.info.run_name} ({run.info.run_id})"
    section = {k.split(".", 1)[1]: _param_value(v) for k, v in params.items() if k.startswith("model.")}
    if not section:
        if "depth" not in tags:
            raise EvaluationError(f"run {label} has no model.* params nor a depth tag: it was not logged by "
                                  "`python cli.py train` or `sweep`")
        section = {"depth": int(tags["depth"]), "shortcut": tags.get("shortcut", "auto"),
                   "family": tags.get("family", "auto")}
    try:
        model = from_dict(ModelConfig, section, "model")
    except ConfigError as exc:
        raise EvaluationError(f"run {label}: its logged model config is invalid: {exc}") from None
    return RunInfo(run_id=run.info.run_id, run_name=run.info.run_name, status=run.info.status, model=model,
                   family=model.resolved_family(), shortcut=model.resolved_shortcut(),
                   seed=int(tags.get("seed", params.get("train.seed", "0"))),
                   git_commit=tags.get("mlflow.source.git.commit") or tags.get("git_commit"),
                   normalize=params.get("data.normalize"), tags=dict(tags),
                   aug={k: _param_value(params[f"data.{k}"]) for k in ("crop_size", "eval_resize")
                        if f"data.{k}" in params})


def resolve_runs(uri: str, experiment: str, sweep: str | None, run_ids: Sequence[str]) -> dict[str, Any]:
    """The runs to evaluate: a sweep's children, or the given run ids.

    Returns {"parent": the sweep's parent run or None, "runs": [RunInfo] (FINISHED), "skipped": [{"run_id", "run_name",
    "reason"}]}. A given run that is not FINISHED is an error; a sweep's unfinished trials are skipped (and listed)."""
    if sweep and run_ids:
        raise EvaluationError("give either a sweep name or run ids, not both")
    if not sweep and not run_ids:
        raise EvaluationError("nothing to evaluate: give a sweep name (--sweep) or run ids (--run)")
    runs, skipped, parent = [], [], None
    if sweep:
        parent = tracking.find_parent_run(uri, experiment, sweep)
        children = sorted(tracking.child_runs(uri, parent.info.run_id), key=lambda r: r.info.run_name)
        # The sweep's latest grid: an earlier run of it with more depths, shortcuts or seeds left more
        # children under the same parent, which are not part of the sweep now.
        grid = tracking.load_dict(uri, parent.info.run_id, tracking.SWEEP_GRID)
        if grid is not None:
            names = set(grid["trials"])
            skipped += [{"run_id": r.info.run_id, "run_name": r.info.run_name,
                         "reason": "not in the sweep's current grid (an earlier run of the sweep had it)"}
                        for r in children if r.info.run_name not in names]
            children = [r for r in children if r.info.run_name in names]
        for r in children:
            if r.info.status != tracking.FINISHED:
                skipped.append({"run_id": r.info.run_id, "run_name": r.info.run_name,
                                "reason": f"status {r.info.status} (not FINISHED)"})
            else:
                runs.append(describe(r))
        if not runs:
            raise EvaluationError(f"sweep {sweep!r} (MLflow run {parent.info.run_id}) has no finished trials "
                                  f"({len(children)} trials); run `python cli.py sweep` to finish them")
        # The sweep's table order: plain first, then by shortcut, depth and seed.
        runs.sort(key=lambda r: (r.family, r.shortcut != "plain", r.shortcut, r.depth, r.seed))
    else:
        for run_id in dict.fromkeys(run_ids):  # unique, in order
            r = tracking.get_run_or_error(uri, run_id)
            if r.info.status != tracking.FINISHED:
                raise EvaluationError(f"run {r.info.run_name} ({run_id}) is {r.info.status}, not FINISHED: only "
                                      "finished training runs can be evaluated")
            runs.append(describe(r))
    return {"parent": parent, "runs": runs, "skipped": skipped}


def load_trained_model(uri: str, info: RunInfo, num_classes: int, input_size: int):
    """The run's logged model as a `ResNet` (eval mode, CPU), checked against the logged model on
    an ``input_size`` batch."""
    import torch

    model_id = tracking.logged_model_id(uri, info.run_id)
    if model_id is None:
        raise EvaluationError(f"run {info.label()} has no logged model; it did not finish training")
    exported = tracking.load_pytorch_model(uri, f"models:/{model_id}")
    model = build_model(info.model, num_classes=num_classes, input_size=input_size)
    try:
        model.load_state_dict(exported.state_dict(), strict=True)
    except RuntimeError as exc:
        raise EvaluationError(f"run {info.label()}: the logged weights do not fit a {info.model} network for "
                              f"{num_classes} classes: {str(exc).splitlines()[0]} (is --data the dataset it "
                              "was trained on?)") from None
    model.eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)
        diff, scale = (ours - exported(x)).abs().max().item(), ours.abs().max().item()
    if not diff <= 1e-3 * max(1.0, scale):  # relative: a young net's logits can be huge
        raise EvaluationError(f"run {info.label()}: the rebuilt network differs from the logged model "
                              f"(max |difference| {diff:.3g} on logits up to {scale:.3g}); its model.* params do "
                              "not describe its weights")
    return model
