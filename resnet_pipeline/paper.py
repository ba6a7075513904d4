"""The paper's reference numbers, in one place (He, Zhang, Ren, Sun, arXiv 1512.03385).

Every number carries where it comes from and how it was measured, so that a comparison never sets a single-view test
error beside a 10-crop validation error without saying so. Errors are percentages, as printed in the paper.

``source="paper"`` numbers were checked against the paper's tables. ``source="secondary"`` marks the numbers that the
project's notes (PAPER.md, "(~)") could only check against secondary sources: show them, label them, never assert on
them. Plain Python only: importable anywhere (no torch, no MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["paper", "secondary"]

# The paper's CIFAR-10 ResNets use option A shortcuts (Sec. 4.2); its ImageNet Table 2 nets use A
# too ("identity mapping for all shortcuts and zero-padding for increasing dimensions"), Table 3
# compares A/B/C at 34 layers, and the bottleneck nets 50/101/152 use B.
CIFAR_RESIDUAL_SHORTCUT = "A"

CIFAR_TEST = "CIFAR-10 test set, single view of the 32x32 image (Sec. 4.2)"
IMAGENET_10CROP = "ImageNet validation set, 10-crop testing (Sec. 3.4)"
IMAGENET_MULTISCALE = "ImageNet validation set, single model, fully-convolutional multi-scale testing (Sec. 3.4)"


@dataclass(frozen=True)
class Reference:
    """One number from the paper: an error in percent, or a count."""

    value: float
    where: str  # "Table 6", "Figure 6", ...
    protocol: str  # what was measured, on which data
    source: Source = "paper"
    note: str = ""

    @property
    def label(self) -> str:
        """How a report cites it: "8.75 (Table 6)", "6.61 (Table 6, ~ secondary source)"."""
        extra = ", ~ secondary source" if self.source == "secondary" else ""
        return f"{self.value:g} ({self.where}{extra})"


@dataclass(frozen=True)
class Fact:
    """A qualitative finding the paper shows in a figure rather than a table."""

    text: str
    where: str
    source: Source = "paper"


# --- CIFAR-10 (Sec. 4.2, Table 6) -------------------------------------------------------------

# Test error (%) of the CIFAR-10 ResNets (option A). For 110 layers the paper reports the best of
# 5 runs; the mean +- std over those runs is below (CIFAR10_RESNET110_MEAN_STD).
CIFAR10_TABLE6: dict[int, Reference] = {
    20: Reference(8.75, "Table 6", CIFAR_TEST),
    32: Reference(7.51, "Table 6", CIFAR_TEST),
    44: Reference(7.17, "Table 6", CIFAR_TEST),
    56: Reference(6.97, "Table 6", CIFAR_TEST),
    110: Reference(6.43, "Table 6", CIFAR_TEST, note="best of 5 runs"),
    1202: Reference(7.93, "Table 6", CIFAR_TEST, note="overfits: training error < 0.1% (Sec. 4.2)"),
}
# ResNet-110 over 5 runs, mean and std (%). Marked (~) in PAPER.md: secondary sources only.
CIFAR10_RESNET110_MEAN_STD = (Reference(6.61, "Table 6", CIFAR_TEST, "secondary", "mean of 5 runs"),
                              Reference(0.16, "Table 6", CIFAR_TEST, "secondary", "std of 5 runs"))

# Parameters of the CIFAR-10 nets (Table 6), in units; plain twins have the same count (option A
# adds no parameters).
CIFAR10_PARAMS: dict[int, Reference] = {
    d: Reference(v, "Table 6", "parameters")
    for d, v in {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}.items()
}

# Plain nets have no table entry (Figure 6 shows curves only). Plain-110's error is above 60%:
# marked (~) in PAPER.md.
CIFAR10_PLAIN110_ERROR_ABOVE = Reference(60.0, "Figure 6", CIFAR_TEST, "secondary",
                                         "plain-110's error is higher than 60% (not plotted)")

# What the widely used PyTorch reproduction reaches for ResNet-20..110: not the paper. It trains
# 200 epochs, normalises with ImageNet mean/std and picks the best checkpoint on the test set.
COMMON_PYTORCH_REPRODUCTION: dict[int, Reference] = {
    d: Reference(v, "a widely used PyTorch reproduction", CIFAR_TEST, "secondary",
                 "200 epochs, ImageNet mean/std, best checkpoint selected on the test set")
    for d, v in {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61, 110: 6.32}.items()
}

# --- ImageNet (Sec. 4.1, Tables 1-4) ----------------------------------------------------------

# Table 2: top-1 error (%), 10-crop, plain vs ResNet (option A) at 18 and 34 layers.
IMAGENET_TABLE2: dict[tuple[str, int], Reference] = {
    key: Reference(v, "Table 2", IMAGENET_10CROP)
    for key, v in {("plain", 18): 27.94, ("plain", 34): 28.54, ("A", 18): 27.88, ("A", 34): 25.03}.items()
}

# Table 3: (top-1, top-5) error (%), 10-crop.
IMAGENET_TABLE3: dict[tuple[str, int], tuple[Reference, Reference]] = {
    key: (Reference(t1, "Table 3", IMAGENET_10CROP), Reference(t5, "Table 3", IMAGENET_10CROP))
    for key, (t1, t5) in {
        ("plain", 34): (28.54, 10.02),
        ("A", 34): (25.03, 7.76),
        ("B", 34): (24.52, 7.46),
        ("C", 34): (24.19, 7.40),
        ("B", 50): (22.85, 6.71),
        ("B", 101): (21.75, 6.05),
        ("B", 152): (21.43, 5.71),
    }.items()
}

# Table 4: single model, multi-scale testing, (top-1, top-5) error (%). Marked (~) in PAPER.md.
IMAGENET_TABLE4: dict[tuple[str, int], tuple[Reference, Reference]] = {
    key: (Reference(t1, "Table 4", IMAGENET_MULTISCALE, "secondary"),
          Reference(t5, "Table 4", IMAGENET_MULTISCALE, "secondary"))
    for key, (t1, t5) in {
        ("B", 34): (21.84, 5.71),
        ("C", 34): (21.53, 5.60),
        ("B", 50): (20.74, 5.25),
        ("B", 101): (19.87, 4.60),
        ("B", 152): (19.38, 4.49),
    }.items()
}

# Table 1: multiply-adds ("FLOPs") per 224x224 image, of the v1 (paper) bottleneck.
TABLE1_MULT_ADDS: dict[int, Reference] = {
    d: Reference(v, "Table 1", "multiply-adds at 224x224")
    for d, v in {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}.items()
}

# --- Figures 6 and 7: what the curves show ----------------------------------------------------

FIGURE6_FACTS: tuple[Fact, ...] = (
    Fact("Plain nets: training and test error get worse as depth goes 20 -> 32 -> 44 -> 56 "
         "(the degradation problem).", "Figure 6 left"),
    Fact("Plain-110 has more than 60% error and is not plotted.", "Figure 6 left", "secondary"),
    Fact("ResNets: training and test error get better with depth.", "Figure 6 middle"),
    Fact("ResNet-1202 reaches less than 0.1% training error but a higher test error than ResNet-110 "
         "(overfitting).", "Figure 6 right"),
)

FIGURE7_FACTS: tuple[Fact, ...] = (
    Fact("The standard deviation of the 3x3 layers' responses (after BN, before the addition or ReLU) "
         "is smaller for ResNets than for their plain counterparts.", "Figure 7"),
    Fact("Deeper ResNets have smaller responses (each residual function changes the signal less).",
         "Figure 7"),
)


_TOPS = ("top1", "top5")


def error_reference(family: str, depth: int, shortcut: str) -> dict[str, Reference]:
    """The paper's error(s) for this net, as {"top1": ..., "top5": ...} (either may be absent).

    CIFAR: Table 6 (ResNets with option A only; plain nets have no table entry). ImageNet: Table 3 where it
    lists the net (it has top-5), else Table 2; both are 10-crop. Table 4 (multi-scale) is not a like-for-like
    comparison and is only returned by `multiscale_reference`."""
    if family == "cifar":
        listed = shortcut == CIFAR_RESIDUAL_SHORTCUT and depth in CIFAR10_TABLE6
        return {"top1": CIFAR10_TABLE6[depth]} if listed else {}
    if family == "imagenet":
        if (shortcut, depth) in IMAGENET_TABLE3:
            return dict(zip(_TOPS, IMAGENET_TABLE3[shortcut, depth]))
        return {"top1": IMAGENET_TABLE2[shortcut, depth]} if (shortcut, depth) in IMAGENET_TABLE2 else {}
    raise ValueError(f"unknown family {family!r}; valid are 'cifar', 'imagenet'")


def multiscale_reference(depth: int, shortcut: str) -> dict[str, Reference]:
    """Table 4's single-model multi-scale errors (secondary source), for information only."""
    return dict(zip(_TOPS, IMAGENET_TABLE4.get((shortcut, depth), ())))


def benchmark(manifest: dict) -> str | None:
    """Which of the paper's benchmarks a prepared dataset (its manifest) is, by the family of nets the paper
    trained on it: "cifar" for CIFAR-10, "imagenet" for ILSVRC2012 (1,000 classes of images of varying size),
    else None. The paper's figures compare only with runs on that benchmark: a ResNet-20 on the demo data, or
    a ResNet-18 on CIFAR-10, has no paper figure."""
    if manifest.get("dataset") == "cifar10":
        return "cifar"
    if manifest.get("num_classes") == 1000 and not manifest.get("image_size"):
        return "imagenet"
    return None


def protocol(family: str) -> str:
    """How the paper measured the errors this family is compared with."""
    return CIFAR_TEST if family == "cifar" else IMAGENET_10CROP
