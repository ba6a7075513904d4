"""Classification metrics from predictions: top-k error, per-class accuracy, the confusion matrix.

`collect_predictions` runs a model over a loader once and keeps every sample's class probabilities; everything else
is a pure function of (probabilities, labels), so it is tested on hand-made numbers. Multi-view batches ([N, K, 3,
H, W], e.g. 10-crop) are scored by averaging the K views' softmax outputs, as the paper's 10-crop testing does
(Sec. 3.4) and as the training loop's `evaluate` does."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnet_pipeline.training.loop import has_top5, predict_views


@torch.no_grad()
def collect_predictions(model: nn.Module, loader: Iterable, device: torch.device,
                        amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities float64 [N, classes], labels int64 [N]) over ``loader``, on the CPU. Ten-crop batches average
    their views; the forward passes run under ``amp_dtype``'s autocast, in bounded chunks (`predict_views`)."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for images, target in loader:
            p = predict_views(model, images.to(device, non_blocking=True), amp_dtype)  # (B, classes)
            probs.append(p.double().cpu())
            labels.append(target.to("cpu", torch.int64))
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("the loader yielded no samples")
    return torch.cat(probs), torch.cat(labels)


def topk_error(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of samples whose label is not among the k most probable classes."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices  # (N, k)
    return float((~(top == labels[:, None]).any(1)).double().mean())


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [classes, classes]: row = true class, column = predicted class."""
    index = labels.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def summarize(probs: torch.Tensor, labels: torch.Tensor, classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Top-1/top-5 error, loss, count, per-class accuracy and the confusion matrix of one pass
    (top-5 error None for 5 classes or fewer, where it is always 0: `has_top5`)."""
    if probs.shape[1] != len(classes):
        raise ValueError(f"the model predicts {probs.shape[1]} classes but the dataset has {len(classes)}")
    cm = confusion_matrix(probs.argmax(1), labels, len(classes))
    return {
        "top1_error": topk_error(probs, labels, 1),
        "top5_error": topk_error(probs, labels, 5) if has_top5(len(classes)) else None,
        "loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),  # of the view-averaged probabilities
        "count": int(labels.shape[0]),
        # Top-1 accuracy per true class (None for a class without samples).
        "per_class_accuracy": {classes[i]: float(cm[i, i]) / t if t > 0 else None
                               for i, t in enumerate(cm.sum(1).tolist())},
        "confusion_matrix": cm.tolist(),
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of `summarize`'s result (what goes into the summary and MLflow)."""
    return {k: metrics[k] for k in ("top1_error", "top5_error", "loss", "count")}
