"""Per-image decode, crop and flip, as tf.data map functions.

Images leave here as uint8 0..255 RGB: the model normalises them itself, so
training, evaluation, TFLite calibration and the phone all feed the same pixels.
Functions take either encoded bytes (a string tensor) or decoded uint8 pixels;
encoded JPEGs are cropped while decoding (decode_and_crop_jpeg), which skips
decoding pixels that would be thrown away.
"""

from __future__ import annotations

import tensorflow as tf


def decode(image: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes (or pixels) -> uint8 HxWx3; grey and RGBA become RGB."""
    if image.dtype != tf.string:
        return image
    pixels = tf.io.decode_image(image, channels=3, expand_animations=False)
    pixels.set_shape([None, None, 3])
    return pixels


def _shape(image: tf.Tensor) -> tf.Tensor:
    if image.dtype == tf.string:
        return tf.cond(tf.io.is_jpeg(image),
                       lambda: tf.image.extract_jpeg_shape(image),
                       lambda: tf.shape(decode(image), out_type=tf.int32))
    return tf.shape(image, out_type=tf.int32)


def _decode_window(image: tf.Tensor, y, x, h, w) -> tf.Tensor:
    """Decodes only the window [y:y+h, x:x+w]."""
    window = tf.stack([y, x, h, w])
    if image.dtype == tf.string:
        return tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.image.decode_and_crop_jpeg(image, window, channels=3),
            lambda: tf.image.crop_to_bounding_box(decode(image), y, x, h, w))
    return tf.image.crop_to_bounding_box(image, y, x, h, w)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Float pixels (resized, blended) back to uint8 0..255, rounded."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    resized = tf.image.resize(image, [size, size], method="bilinear")
    return to_uint8(resized)


def random_resized_crop(image, size: int, scale, ratio, seed) -> tf.Tensor:
    """Inception-style crop: random area share `scale` and aspect `ratio`, resized."""
    shape = _shape(image)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = _decode_window(image, begin[0], begin[1], crop_size[0], crop_size[1])
    return _resize(crop, size)


def pad_and_crop(image, size: int, pad: int, seed) -> tf.Tensor:
    """Small-image augmentation (CIFAR): zero-pad, then a random size x size crop."""
    image = decode(image)
    # Encoded images have no static shape; resize only those not already size x size.
    shape = tf.shape(image)
    image = tf.cond(tf.logical_and(shape[0] == size, shape[1] == size),
                    lambda: image, lambda: _resize(image, size))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [size, size, 3], seed=seed)


def center_crop(image, size: int, crop_fraction: float) -> tf.Tensor:
    """Evaluation view: the central `crop_fraction` of the shorter side, resized."""
    shape = _shape(image)
    side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * crop_fraction,
                   tf.int32)
    side = tf.maximum(side, 1)
    y = (shape[0] - side) // 2
    x = (shape[1] - side) // 2
    return _resize(_decode_window(image, y, x, side, side), size)


# SSD's photometric distortions (Liu et al. 2016, after Howard 2013), each
# applied to half the views: brightness +-32 of 255, contrast and saturation
# x0.5-1.5, hue +-18 degrees.
BRIGHTNESS_DELTA = 32 / 255
CONTRAST = (0.5, 1.5)
SATURATION = (0.5, 1.5)
HUE_DELTA = 18 / 360


def photometric(image: tf.Tensor, seed) -> tf.Tensor:
    """uint8 RGB `image` with SSD's colour distortions, drawn from `seed`
    (stateless: the same view for the same seed, whichever thread maps it).
    Pixels only: boxes and masks stay where they are."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
    x = tf.cast(image, tf.float32) / 255.0
    distortions = [
        lambda x, s: tf.image.stateless_random_brightness(x, BRIGHTNESS_DELTA, s),
        lambda x, s: tf.image.stateless_random_contrast(x, *CONTRAST, s),
        lambda x, s: tf.image.stateless_random_saturation(x, *SATURATION, s),
        lambda x, s: tf.image.stateless_random_hue(x, HUE_DELTA, s),
    ]
    for i, distort in enumerate(distortions):
        applies = tf.random.stateless_uniform([], seeds[2 * i]) < 0.5
        # Clipped after each: the next one sees pixels a camera could give.
        x = tf.where(applies, tf.clip_by_value(distort(x, seeds[2 * i + 1]), 0.0, 1.0), x)
    return to_uint8(x * 255.0)


def train_view(image, seed, cfg, size: int) -> tf.Tensor:
    """One `size` px training view of an image under the data config's crop and flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if cfg.train_crop == "random_resized":
        image = random_resized_crop(image, size, cfg.crop_scale, cfg.crop_ratio, crop_seed)
    elif cfg.train_crop == "pad_and_crop":
        image = pad_and_crop(image, size, cfg.pad_pixels, crop_seed)
    else:
        image = _resize(decode(image), size)
    if cfg.random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image.set_shape([size, size, 3])
    return image


def eval_view(image, cfg) -> tf.Tensor:
    image = center_crop(image, cfg.image_size, cfg.eval_crop_fraction)
    image.set_shape([cfg.image_size, cfg.image_size, 3])
    return image
