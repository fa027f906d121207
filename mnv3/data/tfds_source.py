"""Any TensorFlow Datasets image-classification builder, by name."""

from __future__ import annotations

import tensorflow as tf

from mnv3.errors import UserError


def load_builder(name: str, data_dir: str | None, manual_dir: str | None,
                 download: bool = True):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: name the problem
        raise UserError(f"data.tfds_name: {name!r}: {str(e).splitlines()[0]}") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise UserError(f"data.tfds_name: {name!r} has no 'image' and 'label' features; "
                        "it is not an image-classification dataset")
    if not download and not builder.is_prepared():
        raise UserError(f"data.tfds_name: {name!r} is not prepared in {builder.data_dir} "
                        "and data.tfds_download is off")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # no network here, missing manual files, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"data.tfds_name: {name!r} is not prepared in "
                        f"{builder.data_dir} and could not be prepared: {first}") from None
    return builder


def split_size(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except KeyError:
        # Split metadata can be missing (datasets prepared by older code); count.
        return int(read(builder, split).reduce(0, lambda n, _: n + 1))


def read(builder, split: str, shuffle_seed=None) -> tf.data.Dataset:
    """(image, label) pairs; images stay encoded so JPEG crops decode only the crop."""
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                read_config=read_config, as_supervised=True,
                                decoders={"image": tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, AssertionError) as e:  # a malformed split string
        raise UserError(f"TFDS split {split!r} of {builder.name}: "
                        f"{str(e).splitlines()[0]}") from None
    return ds.map(lambda image, label: (image, tf.cast(label, tf.int32)))
