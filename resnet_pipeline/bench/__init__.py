"""Benchmarks, above the library (nothing in it imports them): `data` (loaders), `train` (the training
paths, depths, sweep overhead), `gpu` (a GPU machine with only PyTorch), and `cli` (`python cli.py bench`).
Results belong in docs/benchmarks.md."""
