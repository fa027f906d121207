"""The input pipeline: source -> decode/augment -> batch -> prefetch.

Batches are (images, labels). Images are uint8 0..255 (float32 after
MixUp/CutMix, which blend pixels). The task (mnv3.tasks) reads its source and
gives each example's views and label form: one-hot float32 class labels for
classification, int32 masks for segmentation.
"""

from __future__ import annotations

import contextlib
import sys
import zlib

import keras
import tensorflow as tf

from mnv3.config import Config, DataConfig
from mnv3.data import preprocess
from mnv3.data.folder import first_undecodable
from mnv3.data.labels import (LABEL_RANGE_MESSAGE, MASK_RANGE_MESSAGE,
                              first_mask_out_of_range)
from mnv3.data.sources import HOLDOUT_SEED, Source
from mnv3.errors import UserError, first_line

AUTOTUNE = tf.data.AUTOTUNE


def _epoch_seed(seed: int | None, epoch: int, stream: str) -> int | None:
    """A distinct, reproducible seed per (run seed, epoch, purpose)."""
    if seed is None:
        return None
    return zlib.crc32(f"{seed}/{epoch}/{stream}".encode()) & 0x7FFFFFFF


def train_image_size(cfg: Config, epoch: int) -> int:
    """The training resolution of an epoch (0-based): data.train_image_sizes in
    equal stages of train.epochs, else data.image_size."""
    sizes = cfg.data.train_image_sizes
    if not sizes:
        return cfg.data.image_size
    return sizes[min(epoch * len(sizes) // max(cfg.train.epochs, 1), len(sizes) - 1)]


def _mix(cfg: DataConfig, seed: int | None):
    """MixUp and/or CutMix on batches (one of them per batch when both are on)."""
    mixers = []
    if cfg.mixup_alpha > 0:
        mixers.append(keras.layers.MixUp(alpha=cfg.mixup_alpha, seed=seed))
    if cfg.cutmix_alpha > 0:
        mixers.append(keras.layers.CutMix(factor=cfg.cutmix_alpha, seed=seed))
    if not mixers:
        return None

    def apply(images, labels):
        batch = {"images": tf.cast(images, tf.float32), "labels": labels}
        if len(mixers) == 1:
            out = mixers[0](batch)
        else:
            out = tf.cond(tf.random.uniform([], seed=seed) < 0.5,
                          lambda: mixers[0](batch), lambda: mixers[1](batch))
        return out["images"], out["labels"]
    return apply


class Pipeline:
    """Everything the trainer and exporter need to read the configured data."""

    def __init__(self, source: Source, cfg: Config, task):
        """`task`: what reads the source and gives each example's views and
        label (an mnv3.tasks.Task; data never imports one)."""
        self.source = source
        self.cfg = cfg
        self.task = task
        self._cached_train = None  # one in-memory cache, reused by every epoch
        self._eval: dict = {}  # batch size -> the eval dataset, built (traced) once

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        batch = batch_size or self.cfg.train.batch_size
        if self.source.train.size < batch:
            # Training batches drop the remainder, so this would train on nothing.
            raise UserError(f"the training data has {self.source.train.size} images, fewer "
                            f"than one batch (train.batch_size={batch}); lower "
                            "train.batch_size or add images")
        return self.source.train.size // batch

    def train(self, epoch: int = 0, batch_size: int | None = None) -> tf.data.Dataset:
        """One epoch of augmented, shuffled training batches (same seed and epoch:
        the same batches, so a resumed run sees what an uninterrupted one would)."""
        d, seed = self.cfg.data, self.cfg.runtime.seed
        if d.cache:
            # Decoded pixels cached once, in a fixed mixed order, then all of them
            # shuffled anew each epoch. (Folders list class by class; a partial
            # shuffle buffer over that order would feed a few classes at a time.)
            if self._cached_train is None:
                self._cached_train = self.source.train.make(HOLDOUT_SEED).map(
                    self.task.decode, num_parallel_calls=AUTOTUNE).cache()
            ds = self._cached_train.shuffle(self.source.train.size,
                                            seed=_epoch_seed(seed, epoch, "order"))
        else:
            ds = self.source.train.make(_epoch_seed(seed, epoch, "order"))
        if not d.cache and d.source == "tfrecord":  # records arrive in shard order
            ds = ds.shuffle(d.shuffle_buffer, seed=_epoch_seed(seed, epoch, "order"))
        # Stateless per-image seeds: augmentation is reproducible however many
        # threads run the map.
        aug_seeds = tf.data.Dataset.random(seed=_epoch_seed(seed, epoch, "augment")).batch(2)
        ds = tf.data.Dataset.zip(ds, aug_seeds)
        randaugment = None
        if d.randaugment_ops:
            randaugment = keras.layers.RandAugment(
                value_range=(0, 255), num_ops=d.randaugment_ops,
                factor=d.randaugment_magnitude, seed=_epoch_seed(seed, epoch, "randaug"))

        size = train_image_size(self.cfg, epoch)

        def augment(example, image_seed):
            image, label = self.task.train_view(*example, image_seed, size)
            if d.photometric:  # a seed of its own: the crop and flip stay as without
                image = preprocess.photometric(
                    image, tf.random.experimental.stateless_fold_in(image_seed, 1))
            if randaugment is not None:
                image = tf.cast(tf.clip_by_value(
                    randaugment(tf.cast(image, tf.float32)), 0, 255), tf.uint8)
            return image, label

        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
        return self._finish(ds, batch_size, training=True,
                            mix=_mix(d, _epoch_seed(seed, epoch, "mix")))

    def eval(self, batch_size: int | None = None) -> tf.data.Dataset:
        """The evaluation data with eval preprocessing, in a fixed order. The
        same each time: made once, and each iteration reads it afresh (building
        it again would trace its functions again, at every evaluation)."""
        if batch_size not in self._eval:
            ds = self.source.eval.make(None)
            ds = ds.map(self.task.eval_view, num_parallel_calls=AUTOTUNE, deterministic=True)
            self._eval[batch_size] = self._finish(ds, batch_size, training=False)
        return self._eval[batch_size]

    def calibration(self, count: int) -> tf.data.Dataset:
        """`count` training images with eval preprocessing, one at a time: what int8
        calibration sees is what the phone will (fixed order, no augmentation)."""
        ds = self.source.train.make(HOLDOUT_SEED).take(count)
        ds = ds.map(self.task.eval_view, num_parallel_calls=AUTOTUNE)
        if not self.cfg.data.strict:
            ds = ds.ignore_errors()
        return ds.map(lambda x, y: x)

    def _finish(self, ds, batch_size, training: bool, mix=None):
        if not self.cfg.data.strict:
            # Unreadable images that passed the cheap file checks are dropped here.
            ds = ds.ignore_errors(log_warning=True)
        ds = ds.map(self.task.check_label)
        ds = ds.batch(batch_size or self.cfg.train.batch_size, drop_remainder=training,
                      num_parallel_calls=AUTOTUNE)
        if mix is not None:
            ds = ds.map(mix, num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)


@contextlib.contextmanager
def user_errors_from_data(pipeline: Pipeline):
    """Turns the input pipeline's runtime errors (an image that passed the cheap
    checks but does not decode in strict mode, a label out of range) into one
    UserError line that names the cause, for train and export alike."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        if LABEL_RANGE_MESSAGE in str(e):
            raise UserError(f"{LABEL_RANGE_MESSAGE} (data.num_classes is "
                            f"{pipeline.cfg.data.num_classes}; for TFRecords check "
                            "data.label_offset)") from None
        if MASK_RANGE_MESSAGE in str(e):
            d, source = pipeline.cfg.data, pipeline.source
            found = first_mask_out_of_range(
                [*source.train.label_files, *source.eval.label_files],
                d.num_classes, d.ignore_index)
            where = f"{found[0]}: holds {found[1]}; " if found else ""
            raise UserError(f"{where}{MASK_RANGE_MESSAGE} (data.num_classes is "
                            f"{d.num_classes}, data.ignore_index {d.ignore_index})") from None
        reason = first_line(e)
        print("an image failed to decode; looking for the file...", file=sys.stderr,
              flush=True)
        paths = [*pipeline.source.train.paths, *pipeline.source.eval.paths]
        found = first_undecodable(paths)
        if found:
            raise UserError(f"{found[0]}: cannot be decoded ({found[1]}; data.strict is "
                            "on: fix or remove the file, or set data.strict: false to "
                            "skip such files)") from None
        raise UserError(f"an image could not be decoded: {reason}") from None


def make_pipeline(cfg: Config, task) -> Pipeline:
    """Loads `task`'s source of the configured data (listing and checking files)
    once."""
    return Pipeline(task.load_source(seed=cfg.runtime.seed or 0), cfg, task)
