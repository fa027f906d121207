"""ImageNet-layout TFRecord shards, as TF-Slim and the TF Model Garden write them:
`image/encoded` (JPEG/PNG bytes) and `image/class/label` (int64; 1..1000 in the
1001-class files, hence `data.label_offset`).

    mnv3-tfrecord --src DIR --out DIR [--shards 16] [--prefix train]

writes such shards from a class-per-folder directory, plus `labels.txt` (one
class name per line) and `counts.json` (records per prefix) beside them.
"""

from __future__ import annotations

import glob
import json
import os

import tensorflow as tf
from absl import logging

from mnv3.data.folder import list_images
from mnv3.errors import UserError
from mnv3.files import atomic_path, write_atomically

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def shard_files(directory: str, pattern: str) -> list[str]:
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: TFRecord directory not found")
    files = sorted(glob.glob(os.path.join(directory, pattern)))
    if not files:
        raise UserError(f"{directory}: no TFRecord shards match {pattern!r}")
    return files


def class_names(directory: str, num_classes: int) -> list[str]:
    """Names from labels.txt beside the shards, else the label numbers."""
    path = os.path.join(directory, "labels.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != num_classes:
            raise UserError(f"{path}: lists {len(names)} classes but data.num_classes "
                            f"is {num_classes}")
        return names
    return [str(i) for i in range(num_classes)]


def _read_counts(directory: str) -> dict:
    path = os.path.join(directory, "counts.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            counts = json.load(f)
        if isinstance(counts, dict):
            return counts
    except (OSError, ValueError):
        pass
    logging.warning("%s: unreadable, counting the records instead", path)
    return {}


def _shard_sizes(files: list[str]) -> dict:
    return {os.path.basename(f): os.path.getsize(f) for f in files}


def record_count(directory: str, pattern: str, files: list[str]) -> int:
    """From counts.json when it describes exactly these shards (names and byte
    sizes, as the converter wrote them), else by reading the shards: a stale or
    wrong count would make every "epoch" cycle the data or stop short."""
    prefix = pattern.rstrip("*").rstrip("-")
    entry = _read_counts(directory).get(prefix)
    if isinstance(entry, dict) and entry.get("shards") == _shard_sizes(files) \
            and isinstance(entry.get("records"), int):
        return entry["records"]
    return count_records(files)


def count_records(files: list[str]) -> int:
    return int(tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1))


def read(files: list[str], label_offset: int, shuffle_seed=None):
    """(encoded image, label) records; shards interleaved and shuffled when seeded."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(files), seed=shuffle_seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(8, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=shuffle_seed is not None)

    def parse(record):
        example = tf.io.parse_single_example(record, FEATURES)
        label = tf.cast(example["image/class/label"], tf.int32) - label_offset
        return example["image/encoded"], label

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def write_shards(src: str, out: str, shards: int, prefix: str, strict: bool = False) -> int:
    """Converts a class-per-folder directory into `shards` TFRecord files; shards
    of an earlier conversion with the same prefix are removed."""
    files = list_images(src, strict=strict)
    os.makedirs(out, exist_ok=True)
    shards = max(1, min(shards, len(files.paths)))
    written = []
    for index in range(shards):
        name = os.path.join(out, f"{prefix}-{index:05d}-of-{shards:05d}")
        # A killed conversion leaves no half-written shard.
        with atomic_path(name) as tmp, tf.io.TFRecordWriter(tmp) as writer:
            for path, label in zip(files.paths[index::shards], files.labels[index::shards]):
                with open(path, "rb") as f:
                    encoded = f.read()
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }))
                writer.write(example.SerializeToString())
        written.append(name)
    # Old shards (another shard count) would still match `train-*` and be read.
    pattern = os.path.join(glob.escape(out), f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-*")
    for stale in set(glob.glob(pattern)) - set(written):
        os.remove(stale)
    write_atomically(os.path.join(out, "labels.txt"), "\n".join(files.class_names) + "\n")
    counts = _read_counts(out)
    counts[prefix] = {"records": len(files.paths), "shards": _shard_sizes(written)}
    write_atomically(os.path.join(out, "counts.json"), json.dumps(counts, indent=1))
    return len(files.paths)

