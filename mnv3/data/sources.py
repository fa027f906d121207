"""Turns `data.source` into train and eval splits of (image, integer label) pairs.

An image is encoded bytes (folder, tfrecord, tfds) or uint8 pixels (synthetic);
preprocess.py accepts both. Each split builds its tf.data.Dataset on demand,
shuffled at the record level when given a seed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from mnv3.config import DataConfig
from mnv3.data import classes, synthetic, tfds_source, tfrecord
from mnv3.data.folder import list_images
from mnv3.errors import UserError

HOLDOUT_SEED = 1234  # fixed, so the held-out images do not change with runtime.seed


class Split(NamedTuple):
    make: Callable[[int | None], tf.data.Dataset]  # shuffle seed (None: file order)
    size: int
    paths: Sequence[str] = ()  # image files, when the split reads files (to name a bad one)
    label_files: Sequence[str] = ()  # mask files, for segmentation (to name a bad one)


class Source(NamedTuple):
    train: Split
    eval: Split
    class_names: list[str]


def holdout(labels, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, fixed split: indices (train, held out), `fraction` of each class held out."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(HOLDOUT_SEED)
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[:max(1, round(len(members) * fraction))])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def _check_classes(found: int, cfg: DataConfig, where: str):
    if found != cfg.num_classes:
        raise UserError(f"data.num_classes is {cfg.num_classes} but {where} has "
                        f"{found} classes")


def in_memory_split(images, labels) -> Split:
    def make(seed):
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        return ds if seed is None else ds.shuffle(len(labels), seed=seed)
    return Split(make, len(labels))


def file_split(paths, labels, dtype=np.int32) -> Split:
    paths, labels = list(paths), np.asarray(labels, dtype)

    def make(seed):
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if seed is not None:  # shuffling names is cheap, so shuffle them all
            ds = ds.shuffle(len(paths), seed=seed)
        return ds.map(lambda p, y: (tf.io.read_file(p), y),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return Split(make, len(paths), paths)


def _synthetic(cfg: DataConfig, seed: int) -> Source:
    _check_classes(len(synthetic.CLASS_NAMES), cfg, "the synthetic dataset")
    images, labels = synthetic.drawn(synthetic.generate, cfg.synthetic_images,
                                     cfg.image_size, seed)
    train_idx, eval_idx = holdout(labels, cfg.val_fraction)
    return Source(in_memory_split(images[train_idx], labels[train_idx]),
                  in_memory_split(images[eval_idx], labels[eval_idx]),
                  list(synthetic.CLASS_NAMES))


def _folder(cfg: DataConfig) -> Source:
    fixed = classes.load(cfg.classes, cfg.num_classes)
    train = list_images(cfg.train_dir, cfg.strict, fixed)
    _check_classes(len(train.class_names), cfg, cfg.train_dir)
    if cfg.eval_dir:
        evaluation = list_images(cfg.eval_dir, cfg.strict, fixed)
        # With a fixed list, each folder's label is its place in the list.
        if not fixed and evaluation.class_names != train.class_names:
            raise UserError(f"{cfg.eval_dir}: class folders differ from {cfg.train_dir}'s")
        return Source(file_split(train.paths, train.labels),
                      file_split(evaluation.paths, evaluation.labels), train.class_names)
    train_idx, eval_idx = holdout(train.labels, cfg.val_fraction)
    if len(train_idx) == 0:
        raise UserError(f"{cfg.train_dir}: too few images to hold out a validation split")
    pick = lambda idx: ([train.paths[i] for i in idx], [train.labels[i] for i in idx])
    return Source(file_split(*pick(train_idx)), file_split(*pick(eval_idx)),
                  train.class_names)


def _tfrecord(cfg: DataConfig) -> Source:
    def split(directory, pattern):
        files = tfrecord.shard_files(directory, pattern)
        return files, tfrecord.record_count(directory, pattern, files)

    names = _named(cfg, tfrecord.class_names(cfg.train_dir, cfg.num_classes))
    train_files, train_size = split(cfg.train_dir, cfg.train_pattern)
    read = lambda files: (lambda seed: tfrecord.read(files, cfg.label_offset, seed))
    if cfg.eval_dir:
        eval_files, eval_size = split(cfg.eval_dir, cfg.eval_pattern)
        return Source(Split(read(train_files), train_size),
                      Split(read(eval_files), eval_size), names)
    # Without eval shards, hold out whole shards (no record is read twice).
    if len(train_files) < 2:
        raise UserError(f"{cfg.train_dir}: one shard cannot be split for validation; "
                        "set data.eval_dir or write more shards")
    held = max(1, round(len(train_files) * cfg.val_fraction))
    eval_files, train_files = train_files[:held], train_files[held:]
    eval_size = tfrecord.count_records(eval_files)
    return Source(Split(read(train_files), train_size - eval_size),
                  Split(read(eval_files), eval_size), names)


def _tfds(cfg: DataConfig) -> Source:
    builder = tfds_source.load_builder(cfg.tfds_name, cfg.tfds_data_dir,
                                       cfg.tfds_manual_dir, cfg.tfds_download)
    label = builder.info.features["label"]
    _check_classes(label.num_classes, cfg, f"TFDS {cfg.tfds_name!r}")
    train_split, eval_split = cfg.train_split, cfg.eval_split
    if eval_split is None:
        if "[" in train_split:
            raise UserError("data.eval_split: needed when data.train_split is already "
                            f"a slice ({train_split!r})")
        keep = round((1 - cfg.val_fraction) * 100)
        train_split, eval_split = f"{train_split}[:{keep}%]", f"{train_split}[{keep}%:]"

    def split(name):
        return Split(lambda seed: tfds_source.read(builder, name, seed),
                     tfds_source.split_size(builder, name))
    return Source(split(train_split), split(eval_split), _named(cfg, list(label.names)))


def _named(cfg: DataConfig, names: list[str]) -> list[str]:
    """Stored labels are already numbers: data.classes only names them."""
    fixed = classes.load(cfg.classes, cfg.num_classes)
    return fixed[1] if fixed else names


def load_source(cfg: DataConfig, seed: int = 0) -> Source:
    """The configured data as train and eval splits; problems raise UserError."""
    if cfg.source == "synthetic":
        source = _synthetic(cfg, seed)
    elif cfg.source == "folder":
        source = _folder(cfg)
    elif cfg.source == "tfrecord":
        source = _tfrecord(cfg)
    else:
        source = _tfds(cfg)
    for name, split in (("training", source.train), ("evaluation", source.eval)):
        if split.size == 0:
            raise UserError(f"the {name} data is empty")
    return source
