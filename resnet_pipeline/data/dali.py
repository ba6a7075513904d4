"""The DALI loader: one pipeline-building function for every dataset kind, train and eval.

The only module that imports DALI (`make_loader` imports it only for a DALI backend). The transforms are those
described in `spec.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from resnet_pipeline.data.spec import FIVE_CROPS, LIGHTING_STD, LoaderSpec, SpecLoader, shard_seed

READER = "reader"  # the reader's name, which the iterator reads its epoch size from


def build_pipeline(spec: LoaderSpec, *, device: str = "cpu", device_id: int | None = None,
                   checkpoint: bytes | None = None):
    """A DALI pipeline yielding (images float32 CHW, labels int32 [1]) per sample.

    Training pipelines keep DALI checkpoints (the reader's epoch and position, every random operator's state):
    ``checkpoint`` restores one, the reader then skipping to its position without reading or decoding what lies
    before. ``device="gpu"`` decodes with nvJPEG ("mixed") and runs the augmentation on the GPU; ``device="cpu"``
    runs everything on the CPU and needs ``device_id=None`` (DALI's CPU_ONLY_DEVICE_ID still looks for CUDA).
    """
    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=device_id,
                  seed=shard_seed(spec.seed, spec.shard_id), prefetch_queue_depth=2,
                  enable_checkpointing=spec.train, checkpoint=checkpoint)
    def pipeline():
        encoded, labels = _read(spec)
        # `prepare` already applied every EXIF rotation (re-encoding those files), so the decoder
        # need not look for one; the torch backend does not either.
        decode = dict(device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, adjust_orientation=False)
        if spec.kind == "cifar":
            images, outputs = _cifar_images(spec, encoded, decode)
        else:
            images, outputs = _imagenet_images(spec, encoded, decode), []
        if spec.train and spec.color_aug:
            images = _lighting(spec, images, device)
        # On the GPU, labels (and the mean-table rows) go there too: every output then comes out on the same device.
        return (images, *[(x.gpu() if device == "gpu" else x) for x in (labels, *outputs)])

    return pipeline()


def _read(spec: LoaderSpec):
    """The file reader: (encoded images, labels) of this shard."""
    return fn.readers.file(
        file_root=str(spec.root), files=list(spec.files), labels=list(spec.labels), name=READER,
        shard_id=spec.shard_id, num_shards=spec.num_shards,
        # Training: a global reshuffle every epoch (the same permutation on every rank, as the shared seed
        # makes it), then each rank reads its contiguous shard, the same positions of every epoch's permutation
        # (DALI keeps the shard when it reshuffles, and refuses stick_to_shard=True beside
        # shuffle_after_epoch; its reader_meta reports it set).
        shuffle_after_epoch=spec.train, **({"shuffle_after_epoch_seed": spec.seed} if spec.train else {}),
        # Each shard is padded to whole batches with repeats of its last sample, which the iterator cuts again
        # (PARTIAL; training then drops what lies past the common number of batches, see DaliLoader). So an epoch
        # ends where the reader's shard ends, and the next one starts afresh instead of on the previous epoch's
        # leftovers (which would put a sample on two ranks in the same epoch).
        stick_to_shard=not spec.train, pad_last_batch=True,
        # Plain reads: for small files (CIFAR's are ~1 KB) an mmap per file costs more than it saves.
        dont_use_mmap=True)


def _cifar_images(spec: LoaderSpec, encoded, decode: dict) -> tuple[Any, list]:
    """CIFAR-kind images, uint8 CHW, and the mean-table rows the loader normalises them with.

    Each DALI CPU operator costs 10-17 us per 32x32 image whatever its arithmetic (its per-sample overhead), so
    the pipeline runs the fewest: the decoder, and one crop_mirror_normalize (shift with zero fill, flip, HWC ->
    CHW, uint8). The loader normalises the whole batch in one pass: x / std minus the mean / std, the mean (per
    pixel or per channel) shifted and flipped as each sample was (see `mean_table`). The result is the same as
    subtracting the mean at the stored resolution and padding with zeros (the mean colour, after normalising)."""
    if not spec.train:
        images = fn.decoders.image(encoded, **decode)  # HWC uint8
        return fn.crop_mirror_normalize(images, mirror=0, dtype=types.UINT8, output_layout="CHW"), []
    # Sec. 4.2: pad 4 pixels, random 32x32 crop = shift the window by an integer in [-4, 4]: the decoder decodes the
    # part of the image the window keeps, and crop_mirror_normalize places it in the window, zeros on the side it left.
    height, width = spec.image_size
    row, anchor, shape, pos_x, pos_y, mirror = fn.external_source(
        source=ShiftSampler(spec), num_outputs=6, batch=True, batch_info=True)
    images = fn.decoders.image_slice(encoded, anchor, shape, axis_names="WH", normalized_anchor=False,
                                     normalized_shape=False, **decode)
    # uint8 out: a quarter of the bytes for the iterator to copy; the loader normalises.
    images = fn.crop_mirror_normalize(images, mirror=mirror, dtype=types.UINT8, output_layout="CHW",
                                      crop=(height, width), crop_pos_x=pos_x, crop_pos_y=pos_y,
                                      out_of_bounds_policy="pad")
    return images, [row]


def _imagenet_images(spec: LoaderSpec, encoded, decode: dict):
    """ImageNet-kind images, float32 CHW normalised: training's scale augmentation and random crop or its flip
    (Sec. 3.4), or evaluation's centre crop (or 10 crops) of the resized image."""
    images = fn.decoders.image(encoded, **decode)  # HWC uint8
    norm = dict(mean=[float(m) for m in spec.mean], std=[float(s) for s in spec.std], dtype=types.FLOAT,
                output_layout="CHW")
    crop = (spec.crop_size, spec.crop_size)
    if spec.train:
        # Sec. 3.4: shorter side random in [256, 480], random 224 crop or its flip.
        low, high = spec.resize_range
        shorter = fn.random.uniform(values=[float(v) for v in range(low, high + 1)])
        images = fn.resize(images, resize_shorter=shorter, antialias=True)
        return fn.crop_mirror_normalize(
            images, crop=crop, crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
            crop_pos_y=fn.random.uniform(range=[0.0, 1.0]), mirror=fn.random.coin_flip(), **norm)
    images = fn.resize(images, resize_shorter=float(spec.eval_resize), antialias=True)
    positions = FIVE_CROPS if spec.ten_crop else ((0.5, 0.5),)
    crops = [fn.crop_mirror_normalize(images, crop=crop, crop_pos_x=x, crop_pos_y=y, mirror=flip, **norm)
             for flip in ((0, 1) if spec.ten_crop else (0,)) for x, y in positions]
    return fn.stack(*crops) if spec.ten_crop else crops[0]  # [10, 3, crop, crop]


def _lighting(spec: LoaderSpec, images, device: str):
    """PCA lighting (see spec.py): one RGB offset per image, in normalised units, computed on the CPU."""
    alpha = fn.random.normal(shape=[3], stddev=LIGHTING_STD)
    components = spec.lighting / np.asarray(spec.std)[:, None]  # column i: sqrt(lambda_i) p_i / std
    offset = sum(alpha[i] * types.Constant(np.ascontiguousarray(components[:, i], dtype=np.float32), device="cpu")
                 for i in range(3))
    offset = fn.reshape(offset, shape=[3, 1, 1])
    return images + (offset.gpu() if device == "gpu" else offset)


class ShiftSampler:
    """The random part of the CIFAR training augmentation, a batch at a time (DALI's ``external_source``): each
    sample's shift (x, y), an integer in [-pad, pad], and flip, and what follows from them: the part of the image
    the shifted window keeps (the decoder's anchor and shape), where it lies in the window (crop_mirror_normalize's
    position: 1 where the shift is negative, which pads before the image, 0 where it pads after), and the row of
    `mean_table` that the loader subtracts.

    Drawn with numpy rather than by DALI's random and arithmetic operators: every DALI operator costs per sample, a
    call per batch does not (`docs/benchmarks.md`). Each batch's draws are a function of (seed, shard, epoch,
    batch), which DALI gives (``batch_info``) and restores from a checkpoint, so a restored pipeline replays exactly.
    """

    def __init__(self, spec: LoaderSpec) -> None:
        self.batch_size, self.pad = spec.batch_size, spec.pad
        height, width = spec.image_size
        self.size = np.array([width, height], np.float32)
        self.seed = shard_seed(spec.seed, spec.shard_id)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        p = self.pad
        rng = np.random.default_rng([self.seed, info.epoch_idx, info.iteration])
        shift = rng.integers(-p, p + 1, size=(self.batch_size, 2), dtype=np.int32)  # (x, y)
        flip = rng.integers(0, 2, size=self.batch_size).astype(np.int32)
        anchor = np.maximum(shift, 0).astype(np.float32)
        shape = (self.size - np.abs(shift)).astype(np.float32)
        before_x, before_y = (shift < 0).astype(np.float32).T
        x, y = (shift + p).T
        row = (y * (2 * p + 1) + x) * 2 + flip  # the order `mean_table` stacks its entries in
        return row, anchor, shape, np.ascontiguousarray(before_x), np.ascontiguousarray(before_y), flip


def mean_table(spec: LoaderSpec) -> torch.Tensor:
    """What the loader subtracts from a CIFAR-kind batch after `build_pipeline`: mean / std (the per-pixel mean
    image, or the per-channel mean as a constant image), [1, 3, H, W] in evaluation; in training the same shifted
    and flipped as each sample was (zeros where the shift pads), one entry per (shift y, shift x, flip):
    [(2 pad + 1)^2 * 2, 3, H, W], the rows `ShiftSampler` gives (162 entries at the paper's pad of 4: 2 MB for
    32x32 images, 8 MB at the CIFAR kind's largest, 64x64)."""
    height, width = spec.image_size
    mean = spec.mean_image if spec.mean_image is not None else np.broadcast_to(
        np.asarray(spec.mean, np.float32), (height, width, 3))
    mean = torch.from_numpy(np.ascontiguousarray(mean, np.float32)).permute(2, 0, 1)
    mean = mean / torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    if not spec.train:
        return mean[None].contiguous()
    p = spec.pad
    padded = torch.nn.functional.pad(mean, (p, p, p, p))
    shifted = torch.stack([padded[:, p + dy:p + dy + height, p + dx:p + dx + width]
                           for dy in range(-p, p + 1) for dx in range(-p, p + 1)])
    return torch.stack([shifted, shifted.flip(-1)], dim=1).reshape(-1, 3, height, width).contiguous()


def pipeline_parts(spec: LoaderSpec, device: str) -> int:
    """How many DALI pipelines feed one training loader on the CPU: 2 when the batch splits evenly, else 1 (and 1
    in evaluation, on the GPU, and for batches of one).

    Each part runs ``num_threads`` threads. A pipeline waits for each operator to finish the whole batch before
    the next one starts, and leaves the cores idle meanwhile; a second pipeline fills those gaps. Measured on 2
    cores: two pipelines of 2 threads 1.25-1.4x the images/s of one of 2 threads (`docs/benchmarks.md`).
    """
    return 2 if device == "cpu" and spec.train and spec.batch_size % 2 == 0 else 1


class DaliLoader(SpecLoader):
    """Iterable over epochs of (images float32 [N,3,H,W], labels int64 [N]); see `make_loader`.

    A training loader on the CPU may read through several pipelines (`pipeline_parts`): part p of this rank is
    shard ``shard_id * parts + p`` of ``num_shards * parts``, so the parts together read exactly this rank's
    shard, and each batch joins one sub-batch of every part. Every part steps the same number of batches per
    epoch (``len(self)``; see `LoaderSpec.__len__`).

    Built once per run: each ``iter()`` runs the rest of the current epoch, and the reader reshuffles for the next.
    `state_dict` holds the epoch, the batch and the parts' DALI checkpoints; `load_state_dict` rebuilds the pipelines
    from them, so a restored loader continues the stream exactly without decoding the batches before its position.
    """

    def __init__(self, spec: LoaderSpec, *, device: str = "cpu", device_id: int | None = None):
        if device == "cpu":
            device_id = None
        self.spec = spec
        self.backend = f"dali-{device}"
        self._device, self._device_id = device, device_id
        parts = pipeline_parts(spec, device)
        self._specs = [dataclasses.replace(spec, shard_id=spec.shard_id * parts + p, num_shards=spec.num_shards * parts,
                                           batch_size=spec.batch_size // parts) for p in range(parts)]
        self._names = ["images", "labels"] + (["row"] if spec.kind == "cifar" and spec.train else [])
        self._build()
        self._mean = None  # CIFAR kind: -mean / std (`mean_table`), and 1 / std
        if spec.kind == "cifar":
            where = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
            self._mean = mean_table(spec).neg().to(where)
            self._inv_std = (1 / torch.tensor(spec.std, dtype=torch.float32)).view(1, 3, 1, 1).to(where)
        self.epoch, self.position = 0, 0

    def _build(self, checkpoints: list[bytes] | None = None) -> None:
        # PARTIAL: the iterator yields each shard whole, the padded repeats cut from its last batch, and takes every
        # batch the reader made for the epoch (with DROP it leaves one in the pipeline when a shard is a sample longer
        # than the shortest and that one is a multiple of the batch: the next epoch would start with it). Training stops
        # each part after the same number of full batches and throws the rest of the epoch away.
        self.pipelines = [build_pipeline(s, device=self._device, device_id=self._device_id,
                                         checkpoint=checkpoints[i] if checkpoints else None)
                          for i, s in enumerate(self._specs)]
        self._iterators = [DALIGenericIterator(p, self._names, reader_name=READER,
                                               last_batch_policy=LastBatchPolicy.PARTIAL) for p in self.pipelines]

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the epoch, the batches of it taken, and (training) DALI's checkpoints."""
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        if self.spec.train:
            state["dali"] = [cpt for iterator in self._iterators for cpt in iterator.checkpoints()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoints = state.get("dali")
        if checkpoints is not None and len(checkpoints) != len(self._specs):
            raise ValueError(f"the loader state has {len(checkpoints)} DALI pipelines, this loader "
                             f"{len(self._specs)}: it was saved with another number of workers or threads")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if checkpoints is not None:
            self._build(list(checkpoints))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        train = self.spec.train
        if train and self.position >= len(self):
            self._finish_epoch()  # the rest of the reader's epoch (past the common number of batches)
            self.epoch, self.position = self.epoch + 1, 0
        elif not train and self.position:
            self._finish_epoch()  # an abandoned evaluation pass: DALI cannot restart mid-epoch
            self.position = 0
        iterators = [iter(iterator) for iterator in self._iterators]
        while not train or self.position < len(self):
            try:
                parts = [next(iterator)[0] for iterator in iterators]
            except StopIteration:
                break
            images = self._join(parts)
            labels = parts[0]["labels"] if len(parts) == 1 else torch.cat([part["labels"] for part in parts])
            if images.shape[0] == 0:
                continue  # a shard one sample shorter than the longest can end in an empty batch
            self.position += 1
            yield images, labels.reshape(-1).long()  # DALI gives int32 [N, 1]
        if not train:
            produced, self.position = self.position, 0
            self._finish_epoch()
            if produced != len(self):
                raise RuntimeError(f"DALI produced {produced} batches in an evaluation pass, expected {len(self)}")
        elif self.position != len(self):  # ranks would fall out of step; fail loudly instead
            raise RuntimeError(f"DALI produced {self.position} batches in epoch {self.epoch}, expected {len(self)}")

    def _finish_epoch(self) -> None:
        """Run every iterator to the end of its epoch (`next`, not `iter`: iter() on an iterator whose epoch has
        ended starts the next one)."""
        for iterator in self._iterators:
            while next(iterator, None) is not None:
                pass

    def _join(self, parts: list[dict]) -> torch.Tensor:
        """The parts' images as one float batch; CIFAR kind: uint8 in, x / std - mean / std out, the mean gathered
        for each sample's shift and flip, in one pass over the data."""
        images = [part["images"] for part in parts]
        if self._mean is None:
            return images[0] if len(images) == 1 else torch.cat(images)
        out = torch.empty((sum(len(x) for x in images), *images[0].shape[1:]), dtype=torch.float32,
                          device=images[0].device)
        with single_threaded(out.device.type == "cpu"):
            for seg, x, part in zip(out.split([len(x) for x in images]), images, parts):
                if "row" in part:
                    torch.index_select(self._mean, 0, part["row"].reshape(-1), out=seg)
                else:
                    seg.copy_(self._mean.expand_as(seg))
                seg.addcmul_(x, self._inv_std)
        return out


@contextlib.contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block (and restore the count after).

    For the loader's pass over a batch while DALI's threads decode the next ones: with torch's intra-op threads
    too, the cores are oversubscribed (an op split across threads waits for its slowest one, which DALI has taken
    the core from, and the waiting threads spin). On 2 cores that pass took 17 us of wall time per CIFAR image
    against 1 us alone, and the loader ran at 25k against 37k images/s on one thread (`docs/benchmarks.md`).
    A no-op where torch already runs one thread, as in every `cli.py` command (OMP_NUM_THREADS=1).
    """
    threads = torch.get_num_threads()
    if enabled and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
