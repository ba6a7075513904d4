"""Our errors beside the paper's: mean +- std over seeds per (family, depth, shortcut), the paper's figure for the
same net, and the difference. Pure Python on plain dicts. Errors are fractions here (as in MLflow); `paper.py` holds
percentages and is converted once."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from resnet_pipeline import paper
from resnet_pipeline.stats import mean_std


# Other per-run values whose mean +- std over seeds the table carries: the validation error (which
# selects models) and the final training error (Figure 6's measure).
EXTRA_KEYS = ("val_error", "train_error")


def _sort_key(key: tuple[str, int, str]) -> tuple:
    family, depth, shortcut = key
    return family, shortcut != "plain", shortcut, depth


def comparison_table(rows: Iterable[Mapping[str, Any]], benchmark: str | None) -> list[dict[str, Any]]:
    """One entry per (family, depth, shortcut) of ``rows``.

    Each row needs family, depth, shortcut, seed, top1_error and top5_error (fractions, measured the way the paper
    measured that family: see `paper.protocol`), and may carry EXTRA_KEYS. ``benchmark`` is the data's paper
    benchmark (`paper.benchmark`): only nets of that family get the paper's figures; on any other data there is
    nothing like-for-like to compare with."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["family"], int(r["depth"]), r["shortcut"]), []).append(r)
    table = []
    for (family, depth, shortcut), group in sorted(groups.items(), key=lambda item: _sort_key(item[0])):
        entry: dict[str, Any] = {"family": family, "depth": depth, "shortcut": shortcut,
                                 "seeds": sorted(int(r["seed"]) for r in group), "runs": len(group),
                                 "protocol": paper.protocol(family)}
        refs = paper.error_reference(family, depth, shortcut) if family == benchmark else {}
        for metric in ("top1", "top5"):
            mean, std = mean_std(r.get(f"{metric}_error") for r in group)
            entry[f"{metric}_error_mean"], entry[f"{metric}_error_std"] = mean, std
            ref = refs.get(metric)
            entry[f"paper_{metric}_error"] = ref.value / 100 if ref else None
            entry[f"paper_{metric}_where"] = ref.where if ref else None
            entry[f"paper_{metric}_source"] = ref.source if ref else None
            entry[f"diff_{metric}_error"] = mean - ref.value / 100 if ref and mean is not None else None
        for key in EXTRA_KEYS:  # aggregated when the rows carry them
            if any(key in r for r in group):
                entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std(r.get(key) for r in group)
        variants = sorted({str(r.get("variant", "v1")) for r in group})
        entry["variants"] = variants
        entry["paper_note"] = _note(family, depth, shortcut, refs, variants) if family == benchmark else (
            f"no paper figure: the paper trained {family} nets on {_BENCHMARK_DATA[family]}, not on this data")
        table.append(entry)
    return table


_BENCHMARK_DATA = {"cifar": "CIFAR-10", "imagenet": "ImageNet (ILSVRC2012, 1,000 classes)"}


def _note(family: str, depth: int, shortcut: str, refs: Mapping[str, paper.Reference], variants: Sequence[str]) -> str:
    notes = [refs["top1"].note] if "top1" in refs and refs["top1"].note else []
    if refs and "v1.5" in variants and depth >= 50:
        notes.append("ours: v1.5 blocks (stride on the 3x3), the paper's are v1 (stride on the first 1x1)")
    if family == "cifar" and depth == 110 and shortcut == paper.CIFAR_RESIDUAL_SHORTCUT:
        mean, std = paper.CIFAR10_RESNET110_MEAN_STD
        notes.append(f"mean +- std over 5 runs {mean.value:g} +- {std.value:g} (~ secondary source)")
    if family == "cifar" and shortcut == "plain":
        notes.append("no table entry: Figure 6 shows plain nets as curves only")
        if depth == 110:
            notes.append(f"plain-110 error > {paper.CIFAR10_PLAIN110_ERROR_ABOVE.value:g}% (~ secondary source)")
    if family == "cifar" and shortcut in ("B", "C"):
        notes.append("the paper's CIFAR-10 nets use option A only")
    if family == "imagenet":
        ms = paper.multiscale_reference(depth, shortcut)
        if ms:
            notes.append(f"multi-scale (Table 4, ~ secondary source): {ms['top1'].value:g}/{ms['top5'].value:g}")
    if not refs and not notes:
        notes.append("the paper reports no number for this net")
    return "; ".join(notes)
