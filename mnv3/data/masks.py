"""Segmentation data: images with per-pixel class masks.

A folder source is `root/images/<stem>.<jpg|png|...>` with `root/masks/<stem>.png`,
each mask a single-channel PNG holding one class index per pixel (CamVid as
prepared for SegNet, and most segmentation sets, come this way). Pairs are
checked while listing, a few header bytes each, so a missing, unreadable or
misfit mask is one clear line before training starts, not a failure mid-epoch.

Augmentation moves image and mask together: a random rescale, a crop to the
model's input size (padding with ignore_index where the view falls outside the
frame), and a horizontal flip. Masks are resized nearest-neighbour: a class
index must never be blended.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from PIL import Image

from mnv3.config import DataConfig
from mnv3.data import classes, synthetic
from mnv3.data.folder import IMAGE_EXTENSIONS, check_images
from mnv3.data.preprocess import decode, to_uint8
from mnv3.data.sources import Source, Split, holdout
from mnv3.errors import UserError


class Pairs(NamedTuple):
    images: list[str]
    masks: list[str]
    palette: list[bool]  # a palette PNG (mode P): its indices are the classes


def list_pairs(root: str, strict: bool) -> Pairs:
    """Image and mask paths under root/images and root/masks, by file stem."""
    images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for folder in (root, images_dir, masks_dir):
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: not found (segmentation data is "
                            f"{root}/images/<name>.jpg with {root}/masks/<name>.png)")
    masks = {os.path.splitext(f)[0]: os.path.join(masks_dir, f)
             for f in sorted(os.listdir(masks_dir)) if f.lower().endswith(".png")}
    images, paired, seen = [], [], {}
    for name in sorted(os.listdir(images_dir)):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        path = os.path.join(images_dir, name)
        if stem not in masks:
            raise UserError(f"{path}: no mask {os.path.join(masks_dir, stem + '.png')}")
        if stem in seen:  # f0.jpg and f0.png: which one does masks/f0.png label?
            raise UserError(f"{seen[stem]} and {path}: two images share the name {stem!r}, "
                            f"so {masks[stem]} would label both; rename or remove one")
        seen[stem] = path
        images.append(path)
        paired.append(masks[stem])
    if not images:
        raise UserError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    readable = [a and b for a, b in zip(check_images(images, strict, images_dir),
                                        check_images(paired, strict, masks_dir))]
    kept = [(i, m) for (i, m), ok in zip(zip(images, paired), readable) if ok]
    if not kept:
        raise UserError(f"{root}: none of the {len(images)} image/mask pairs can be read")
    palette = [_check_mask(image, mask) == "P" for image, mask in kept]
    return Pairs([i for i, _ in kept], [m for _, m in kept], palette)


def _check_mask(image: str, mask: str) -> str:
    """A mask must be a PNG (lossless: JPEG's artefacts would be class ids) of one
    class index per pixel, greyscale (mode L) or palette (mode P: the index, not
    its colour), the size of its image. PIL reads only the headers here; returns
    the mode."""
    try:
        with Image.open(mask) as m, Image.open(image) as i:
            kind, mode, mask_size, image_size = m.format, m.mode, m.size, i.size
    except OSError as e:
        raise UserError(f"{mask}: cannot be read ({e})") from None
    if kind != "PNG":
        raise UserError(f"{mask}: a {kind} file, not a PNG; a mask must be a lossless PNG "
                        "(lossy compression turns edges into other class ids)")
    if mode not in ("L", "P"):
        raise UserError(f"{mask}: a {mode} PNG; a mask must hold one class index per "
                        "pixel: greyscale (mode L) or palette (mode P)")
    if mask_size != image_size:
        raise UserError(f"{mask}: {mask_size[0]}x{mask_size[1]}, but its image {image} is "
                        f"{image_size[0]}x{image_size[1]}")
    return mode


def palette_indices(path: bytes) -> np.ndarray:
    """A palette PNG's indices (HxWx1 uint8): TensorFlow's PNG decoder would give
    the palette's colours as grey levels."""
    with Image.open(path.decode()) as mask:
        return np.asarray(mask, dtype=np.uint8)[..., None]


def _read_mask(path, palette):
    """The mask file at `path` as HxWx1 uint8 class indices."""
    indices = tf.cond(
        palette, lambda: tf.numpy_function(palette_indices, [path], tf.uint8, stateful=False),
        lambda: tf.io.decode_png(tf.io.read_file(path), channels=1))
    return tf.ensure_shape(indices, [None, None, 1])


def _pair_split(pairs: Pairs) -> Split:
    def make(seed):
        ds = tf.data.Dataset.from_tensor_slices(tuple(pairs))
        if seed is not None:
            ds = ds.shuffle(len(pairs.images), seed=seed)
        return ds.map(lambda i, m, p: (tf.io.read_file(i), _read_mask(m, p)),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return Split(make, len(pairs.images), [*pairs.images, *pairs.masks], pairs.masks)


def _array_split(images: np.ndarray, masks: np.ndarray) -> Split:
    def make(seed):
        ds = tf.data.Dataset.from_tensor_slices((images, masks[..., None]))
        return ds if seed is None else ds.shuffle(len(images), seed=seed)
    return Split(make, len(images))


def load_source(cfg: DataConfig, seed: int = 0) -> Source:
    """Train and eval splits of (image, mask) pairs; problems raise UserError."""
    if cfg.source == "synthetic":
        names = synthetic.SEGMENTATION_CLASS_NAMES
        if cfg.num_classes != len(names):
            raise UserError(f"data.num_classes is {cfg.num_classes} but the synthetic "
                            f"segmentation set has {len(names)} classes")
        images, masks = synthetic.drawn(synthetic.generate_masks, cfg.synthetic_images,
                                        cfg.image_size, seed)
        train, held = holdout(np.zeros(len(images)), cfg.val_fraction)
        return Source(_array_split(images[train], masks[train]),
                      _array_split(images[held], masks[held]), list(names))

    pairs = list_pairs(cfg.train_dir, cfg.strict)
    # Masks hold indices; data.classes (a file, one name per line) names them.
    fixed = classes.load(cfg.classes, cfg.num_classes)
    names = fixed[1] if fixed else [f"class_{i}" for i in range(cfg.num_classes)]
    if cfg.eval_dir:
        return Source(_pair_split(pairs),
                      _pair_split(list_pairs(cfg.eval_dir, cfg.strict)), names)
    train, held = holdout(np.zeros(len(pairs.images)), cfg.val_fraction)
    if len(train) == 0:
        raise UserError(f"{cfg.train_dir}: too few images to hold out a validation split")
    pick = lambda idx: Pairs(*([column[i] for i in idx] for column in pairs))
    return Source(_pair_split(pick(train)), _pair_split(pick(held)), names)


# --- per-example views (tf.data map functions) ---------------------------------------

def decode_pair(image, mask):
    """Encoded bytes or pixels -> (uint8 HxWx3, uint8 HxWx1)."""
    if mask.dtype == tf.string:
        mask = tf.io.decode_png(mask, channels=1)
    mask.set_shape([None, None, 1])
    return decode(image), mask


def _resize_pair(image, mask, height, width):
    image = to_uint8(tf.image.resize(image, [height, width], method="bilinear"))
    mask = tf.image.resize(mask, [height, width], method="nearest")
    return image, tf.cast(mask, tf.uint8)


def train_view(image, mask, seed, cfg: DataConfig, size: tuple[int, int]):
    """A random rescale (data.scale_range, relative to the scale at which the
    frame just covers the input size), crop and flip of image and mask together."""
    image, mask = decode_pair(image, mask)
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    height, width = size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    cover = tf.maximum(height / shape[0], width / shape[1])
    lo, hi = cfg.scale_range
    scale = cover * tf.random.stateless_uniform([], scale_seed, lo, hi)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image, mask = _resize_pair(image, mask, new[0], new[1])
    # Where the rescaled frame is smaller than the input, pad: black pixels whose
    # labels count in no loss.
    pad_h, pad_w = tf.maximum(height - new[0], 0), tf.maximum(width - new[1], 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
    image = tf.pad(image, paddings)
    mask = tf.pad(mask, paddings, constant_values=cfg.ignore_index)
    y = tf.random.stateless_uniform([], y_seed, 0, tf.shape(image)[0] - height + 1, tf.int32)
    x = tf.random.stateless_uniform([], x_seed, 0, tf.shape(image)[1] - width + 1, tf.int32)
    image = image[y:y + height, x:x + width]
    mask = mask[y:y + height, x:x + width]
    if cfg.random_flip:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    image.set_shape([height, width, 3])
    return image, tf.reshape(mask, [height, width])


def eval_view(image, mask, size: tuple[int, int]):
    """The whole frame at the input size (no crop: every pixel is scored)."""
    image, mask = decode_pair(image, mask)
    height, width = size
    image, mask = _resize_pair(image, mask, height, width)
    image.set_shape([height, width, 3])
    return image, tf.reshape(mask, [height, width])

