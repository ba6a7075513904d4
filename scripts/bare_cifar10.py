"""An independent CIFAR-10 loop for the fidelity check of docs/results.md: torchvision's stock data
path and a plain PyTorch training loop, with the paper's recipe (Sec. 4.2) on a schedule of your choice.

It shares only the network with the pipeline (`resnet_pipeline.models.resnet_cifar`, torch only):
no DALI, no Ray, no MLflow, none of our loaders, schedule or training step. Data: a folder written by
`python cli.py prepare` (its train/ and test/ image folders; the 45k/5k split's 5k validation images
are left out, as in the pipeline). Transforms: torchvision's stock CIFAR augmentation, RandomCrop(32,
padding=4) + RandomHorizontalFlip, and per-channel normalisation (the pipeline subtracts the per-pixel
mean, Sec. 4.2). The lr steps at iterations (MultiStepLR stepped per iteration).

    python scripts/bare_cifar10.py --data data/prepared/cifar10-short --depth 20 --iterations 2000 \\
        --milestones 1000,1500 --precision bf16 --threads 2

Prints one JSON line: the final test error, the last 200 iterations' training error, the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnet_pipeline.models import resnet_cifar  # noqa: E402

# The CIFAR-10 training set's per-channel mean and std, as commonly used with torchvision.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a folder written by `cli.py prepare` (train/ and test/)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--shortcut", default="A")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--milestones", default="1000,1500", help="iterations at which the lr is divided by 10")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="CPU autocast dtype")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the loader uses 2 processes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train_set = torchvision.datasets.ImageFolder(root / "train", train_tf)
    test_set = torchvision.datasets.ImageFolder(root / "test", test_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                               num_workers=2, persistent_workers=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=500, num_workers=2)

    model = resnet_cifar(args.depth, num_classes=len(train_set.classes), shortcut=args.shortcut)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    milestones = [int(m) for m in args.milestones.split(",") if m]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    started, it, recent = time.perf_counter(), 0, []  # recent: (wrong, count) of the last 200 iterations
    model.train()
    while it < args.iterations:
        for images, labels in train_loader:
            with torch.autocast(**amp):
                logits = model(images.contiguous(memory_format=torch.channels_last))
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            recent = (recent + [(int((logits.argmax(1) != labels).sum()), len(labels))])[-200:]
            it += 1
            if it % 100 == 0:
                print(f"it {it} loss {loss.item():.3f} lr {schedule.get_last_lr()[0]:.4g} "
                      f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
            if it == args.iterations:
                break
    train_s = time.perf_counter() - started

    model.eval()
    wrong = total = 0
    with torch.no_grad(), torch.autocast(**amp):
        for images, labels in test_loader:
            wrong += int((model(images.contiguous(memory_format=torch.channels_last)).argmax(1) != labels).sum())
            total += len(labels)
    print(json.dumps({"depth": args.depth, "shortcut": args.shortcut, "iterations": args.iterations,
                      "precision": args.precision, "seed": args.seed, "test_error": wrong / total,
                      "train_error_last_200": sum(w for w, _ in recent) / sum(n for _, n in recent),
                      "train_s": round(train_s, 1), "test_images": total}))


if __name__ == "__main__":
    main()
