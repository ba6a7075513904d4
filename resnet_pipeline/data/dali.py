"""The DALI loader: one pipeline-building function for every dataset kind, train and eval.

The only module that imports DALI. The transforms are those described in `loader.py`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from resnet_pipeline.data.loader import FIVE_CROPS, LIGHTING_STD, LoaderSpec, SpecLoader, shard_seed

READER = "reader"  # the reader's name, which the iterator reads its epoch size from


def build_pipeline(spec: LoaderSpec, *, device: str = "cpu", device_id: int | None = None):
    """A DALI pipeline yielding (images float32 CHW, labels int32 [1]) per sample.

    ``device="gpu"`` decodes with nvJPEG ("mixed") and runs the augmentation on the GPU;
    ``device="cpu"`` runs everything on the CPU and needs ``device_id=None`` (DALI's
    CPU_ONLY_DEVICE_ID still looks for CUDA).
    """
    from nvidia.dali import fn, pipeline_def, types

    def constant(array, on: str = device) -> object:
        return types.Constant(np.ascontiguousarray(array, dtype=np.float32), device=on)

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=device_id,
                  seed=shard_seed(spec.seed, spec.shard_id), prefetch_queue_depth=2)
    def pipeline():
        encoded, labels = fn.readers.file(
            file_root=str(spec.root), files=list(spec.files), labels=list(spec.labels), name=READER,
            shard_id=spec.shard_id, num_shards=spec.num_shards,
            # Training: a global reshuffle every epoch (the same permutation on every rank, as the
            # shared seed makes it), then each rank reads its contiguous shard of it.
            shuffle_after_epoch=spec.train, **({"shuffle_after_epoch_seed": spec.seed} if spec.train else {}),
            # Each shard is padded to whole batches with repeats of its last sample, which the
            # iterator drops again (PARTIAL in evaluation; DROP in training, where the shard's last,
            # incomplete batch goes too). So an epoch ends where the reader's shard ends, and the
            # next one starts on a fresh shard instead of on the previous epoch's leftovers (which
            # would put a sample on two ranks in the same epoch). Evaluation keeps its shard.
            stick_to_shard=not spec.train, pad_last_batch=True,
            # Plain reads: for small files (CIFAR's are ~1 KB) an mmap per file costs more than it saves.
            dont_use_mmap=True)
        # `prepare` already applied every EXIF rotation (re-encoding those files), so the decoder
        # need not look for one; the torch backend does not either.
        images = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu",
                                   output_type=types.RGB, adjust_orientation=False)  # HWC uint8
        if spec.kind == "cifar":
            # Subtract the mean at the stored resolution, where the per-pixel mean is aligned; the
            # padding added next is then 0, the mean colour. The mean is a full HxWx3 tensor in both
            # modes (per_channel tiles it): a same-shape subtraction is much cheaper in DALI than a
            # broadcast one, and the division by the std is fused into crop_mirror_normalize.
            height, width = spec.image_size
            mean = spec.mean_image if spec.mean_image is not None else np.broadcast_to(
                np.asarray(spec.mean, np.float32), (height, width, 3))
            images = images - constant(mean)  # float32 HWC
            if spec.train:
                # Sec. 4.2: pad 4 pixels, random 32x32 crop = shift the window by an integer in [-4, 4].
                shift = fn.random.uniform(values=[float(v) for v in range(-spec.pad, spec.pad + 1)], shape=[2])
                images = fn.slice(images, shift, np.array([width, height], np.float32), axis_names="WH",
                                  normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="pad")
            images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip() if spec.train else 0,
                                              std=[float(s) for s in spec.std], dtype=types.FLOAT,
                                              output_layout="CHW")
        else:
            mean = [float(m) for m in spec.mean]
            std = [float(s) for s in spec.std]
            crop = (spec.crop_size, spec.crop_size)
            if spec.train:
                # Sec. 3.4: shorter side random in [256, 480], random 224 crop or its flip.
                low, high = spec.resize_range
                shorter = fn.random.uniform(values=[float(v) for v in range(low, high + 1)])
                images = fn.resize(images, resize_shorter=shorter, antialias=True)
                images = fn.crop_mirror_normalize(
                    images, crop=crop, crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                    crop_pos_y=fn.random.uniform(range=[0.0, 1.0]), mirror=fn.random.coin_flip(),
                    mean=mean, std=std, dtype=types.FLOAT, output_layout="CHW")
            else:
                images = fn.resize(images, resize_shorter=float(spec.eval_resize), antialias=True)
                positions = FIVE_CROPS if spec.ten_crop else ((0.5, 0.5),)
                crops = [fn.crop_mirror_normalize(images, crop=crop, crop_pos_x=x, crop_pos_y=y, mirror=flip,
                                                  mean=mean, std=std, dtype=types.FLOAT, output_layout="CHW")
                         for flip in ((0, 1) if spec.ten_crop else (0,)) for x, y in positions]
                images = fn.stack(*crops) if spec.ten_crop else crops[0]  # [10, 3, crop, crop]
        if spec.train and spec.color_aug:
            # PCA lighting (see loader.py): one RGB offset per image, in normalised units.
            alpha = fn.random.normal(shape=[3], stddev=LIGHTING_STD)
            components = spec.lighting / np.asarray(spec.std)[:, None]  # column i: sqrt(lambda_i) p_i / std
            offset = sum(alpha[i] * constant(components[:, i], on="cpu") for i in range(3))  # per sample, on the CPU
            offset = fn.reshape(offset, shape=[3, 1, 1])
            images = images + (offset.gpu() if device == "gpu" else offset)
        # On the GPU, labels go there too: both outputs then come out on the same device.
        return images, (labels.gpu() if device == "gpu" else labels)

    return pipeline()


class DaliLoader(SpecLoader):
    """Iterable over epochs of (images float32 [N,3,H,W], labels int64 [N]); see `make_loader`."""

    def __init__(self, spec: LoaderSpec, *, device: str = "cpu", device_id: int | None = None):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if device == "cpu":
            device_id = None
        self.spec = spec
        self.backend = f"dali-{device}"
        self._pipeline = build_pipeline(spec, device=device, device_id=device_id)
        # DROP: every rank steps (N // S) // batch batches (the iterator rounds each shard down to
        # N // S samples). PARTIAL: the padded repeats are cut from the last batch.
        self._iterator = DALIGenericIterator(
            self._pipeline, ["images", "labels"], reader_name=READER,
            last_batch_policy=LastBatchPolicy.DROP if spec.train else LastBatchPolicy.PARTIAL)
        self._open = False  # an epoch was started and not finished

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._open:
            # DALI cannot restart mid-epoch; finish the abandoned one so this pass starts afresh.
            for _ in self._iterator:
                pass
        self._open = True
        produced = 0
        for batch in self._iterator:
            images, labels = batch[0]["images"], batch[0]["labels"]
            if images.shape[0] == 0:
                continue  # a shard one sample shorter than the longest can end in an empty batch
            produced += 1
            yield images, labels.reshape(-1).long()  # DALI gives int32 [N, 1]
        self._open = False
        if produced != len(self):  # ranks would fall out of step; fail loudly instead
            raise RuntimeError(f"DALI produced {produced} batches in an epoch, expected {len(self)}")
