"""The MLflow model registry: one registered model per dataset, the `champion` alias.

Every evaluated model with finite metrics becomes a version (with its depth, shortcut, seed, errors, run id and git
commit as tags). The alias `champion` moves to a new version only when its *validation* error is strictly lower
than the current champion's: the test error is reported, never used to select anything (the paper's CIFAR-10
schedule was chosen on a held-out 45k/5k split, Sec. 4.2, so selecting on the test set would not be the paper's
protocol). A model with a non-finite metric (a diverged run) is never registered."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from resnet_pipeline import tracking
from resnet_pipeline.evaluation.config import CHAMPION
from resnet_pipeline.models import net_label

# MLflow's limit on a registered-model tag value; longer class lists live only in preprocessing.json.
MAX_TAG_VALUE = 5000


@dataclass
class RegistryOutcome:
    registered: bool
    name: str
    version: str | None = None
    champion: bool = False  # this version holds the alias after the call
    previous_champion: str | None = None  # the version that held it before (None: nobody)
    reason: str = ""


def takes_champion(val_error: float, champion_val_error: float | None) -> bool:
    """Whether a model with ``val_error`` replaces a champion with ``champion_val_error``.

    Strictly lower wins (a tie keeps the incumbent); a champion without a usable validation error (None or
    non-finite) is replaced by any finite one; a non-finite candidate never wins."""
    if not math.isfinite(val_error):
        return False
    if champion_val_error is None or not math.isfinite(champion_val_error):
        return True
    return val_error < champion_val_error


def _tag_float(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def _rounded(value: float) -> float:
    """The precision of a version's error tags (6 significant digits): selection compares at it too,
    so that a tag and the decision it records never disagree."""
    return float(f"{value:.6g}")


# The version tags: what a reader compares versions by, and nothing more (the version page of MLflow
# 3.17's UI shows five tag rows at a time, the rest out of sight in a scrolled box). The sweep, split
# and commit are in the description; the run holds every metric, the logged model the evaluation's.
VERSION_TAGS = ("depth", "shortcut", "seed")


def register(uri: str, name: str, run_id: str, metrics: Mapping[str, float | None], tags: Mapping[str, Any],
             classes: list[str] | None = None, dataset: str | None = None) -> RegistryOutcome:
    """Register run ``run_id``'s logged model under ``name`` and move `champion` if it earned it.

    ``metrics`` must include ``val_error`` (the selection metric); every value must be finite for the model to be
    registered. The version's tags: `VERSION_TAGS` of ``tags``, and the errors of ``metrics`` (6 significant
    digits); its description says why it holds the alias or not."""
    if "val_error" not in metrics:
        raise ValueError("metrics must include val_error: the champion is selected on validation error")
    bad = sorted(k for k, v in metrics.items() if v is None or not math.isfinite(float(v)))  # missing, NaN or inf
    if bad:
        return RegistryOutcome(False, name, reason=f"not registered: non-finite metric(s) {', '.join(bad)}")
    model_id = tracking.logged_model_id(uri, run_id)
    if model_id is None:
        return RegistryOutcome(False, name, reason=f"not registered: run {run_id} has no logged model")
    model_tags = {"selection": f"alias @{CHAMPION}: the lowest validation error (the test error is never used)"}
    if dataset:
        model_tags["dataset"] = dataset
    if classes is not None and len(json.dumps(classes)) <= MAX_TAG_VALUE:
        model_tags["classes"] = json.dumps(classes)
    errors = {k: float(v) for k, v in metrics.items() if k.endswith("_error") and "top5" not in k}
    version_tags = {**{k: str(tags[k]) for k in VERSION_TAGS if k in tags},
                    **{k: f"{_rounded(v):g}" for k, v in errors.items()}}
    version = tracking.register_model_version(
        uri, name, run_id, model_id, version_tags, model_tags,
        description=f"ResNets (He et al. 2015 reproduction) trained on {dataset or 'one dataset'}; "
                    f"@{CHAMPION} is the version with the lowest validation error.")
    val = _rounded(float(metrics["val_error"]))
    current = tracking.alias_version(uri, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    current_val = _tag_float(current.tags, "val_error") if current is not None else None
    if previous == str(version.version):
        champion, reason = True, "already the champion"
    elif takes_champion(val, current_val):
        tracking.set_alias(uri, name, CHAMPION, version.version)
        why = ("first version" if current is None else
               f"validation error {val:.4f} < champion v{previous}'s "
               f"{current_val if current_val is not None else 'unknown'}")
        champion, reason = True, f"became champion: {why}"
    else:
        champion, reason = False, (f"registered; champion stays v{previous} (validation error {val:.4f} >= "
                                   f"{current_val:.4f})")
    outcome = RegistryOutcome(True, name, str(version.version), champion, previous, reason)
    about = [net_label(tags["depth"], tags["shortcut"]) if "depth" in tags else "a ResNet",
             f"seed {tags.get('seed', '?')}", *([f"sweep {tags['sweep']}"] if tags.get("sweep") else []),
             *([f"git commit {str(tags['git_commit'])[:12]}"] if tags.get("git_commit") else [])]
    described = [f"{k.removesuffix('_error').replace('_', ' ')} error {v:.2%}" for k, v in errors.items()]
    tracking.set_version_description(
        uri, name, version.version,
        f"{', '.join(about)}: {', '.join(described)}. At registration: {outcome.reason}. @{CHAMPION} goes to the "
        "lowest validation error; the test error never selects.")
    return outcome
