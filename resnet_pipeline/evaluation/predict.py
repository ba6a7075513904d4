"""`python cli.py predict`: the top-5 classes of image files under a logged or registered model.

The model folder (``models:/<name>@champion`` by default) holds the pt2 model and the ``preprocessing.json`` that
`evaluate` stored beside it: class names and the evaluation transform, so an image goes through exactly what the
evaluation loader applies. The pt2 format is loaded with torch.export: no pickled code runs (loading a pickled
model from an untrusted source would be unsafe)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from resnet_pipeline import tracking
from resnet_pipeline.config import ConfigError
from resnet_pipeline.evaluation.config import CHAMPION
from resnet_pipeline.evaluation.preprocess import PREPROCESSING_FILE, ImageInputError, Preprocessing, read_image


def champion_uri(registry_name: str) -> str:
    return f"models:/{registry_name}@{CHAMPION}"


def predict(paths: Sequence[str | Path], model_uri: str, *, tracking_uri: str | None = None,
            top_k: int = 5) -> list[dict[str, Any]]:
    """[{"image": path, "top": [{"class", "index", "probability"}, ...]}] for each image, best first.

    Every file is read and decoded before the model is fetched: a missing or non-image file raises ImageInputError
    naming it."""
    import torch

    if top_k < 1:
        raise ConfigError(f"top_k: must be >= 1, got {top_k}")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not model_uri.startswith(("models:/", "runs:/")):
        raise ConfigError(f"--model {model_uri!r}: give a models:/ or runs:/ URI of this project's MLflow store "
                          f"({uri}); models from elsewhere are not loaded (a pickled model runs code when loaded)")
    if not paths:
        raise ImageInputError("no images given")
    images = [read_image(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracking.download_model(uri, model_uri, tmp)
        except tracking.TrackingError as exc:
            have = tracking.registered_aliases(uri)
            hint = (f"the store has {', '.join(have)}; pass one as --model" if have else
                    "the store has no registered model yet: run `python cli.py evaluate` first")
            raise tracking.TrackingError(f"{exc}; {hint}") from None
        if not (local / "data" / "model.pt2").is_file():
            raise ConfigError(f"model {model_uri!r} is not in the pt2 (torch.export) format that training logs; "
                              "refusing to load it (a pickled model runs code when loaded)")
        prep_file = local / PREPROCESSING_FILE
        if not prep_file.is_file():
            raise ConfigError(f"model {model_uri!r} has no {PREPROCESSING_FILE} (class names and the evaluation "
                              "transform): run `python cli.py evaluate` on its training run first")
        prep = Preprocessing.from_json(prep_file.read_text(), where=f"{model_uri}/{PREPROCESSING_FILE}")
        model = tracking.load_pytorch_model(uri, str(local))
    batch = torch.stack([prep.transform(image) for image in images])  # (N, 3, h, w)
    with torch.no_grad():
        probs = model(batch).float().softmax(1)  # (N, classes)
    if probs.shape[1] != len(prep.classes):
        raise ConfigError(f"model {model_uri!r} predicts {probs.shape[1]} classes but its {PREPROCESSING_FILE} "
                          f"names {len(prep.classes)}")
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [{"image": str(path),
             "top": [{"class": prep.classes[i], "index": int(i), "probability": float(p)}
                     for p, i in zip(values.tolist(), indices.tolist())]}
            for path, values, indices in zip(paths, top.values, top.indices)]
