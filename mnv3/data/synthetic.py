"""A built-in image dataset drawn procedurally, so the quickstart needs no download.

Ten classes, five shapes and five textures, each drawn in a random colour at a
random position and size over a random, noisy background. The labels depend only
on the shape or texture, never on colour or position, so a model has to learn
shapes (and a horizontal flip never changes a label).
"""

from __future__ import annotations

import functools

import numpy as np

CLASS_NAMES = ["disc", "square", "triangle", "ring", "cross",
               "horizontal_stripes", "vertical_stripes", "checkerboard", "dots", "frame"]


def _shape_mask(kind: str, yy, xx, size: int, rng, fill: bool = False) -> np.ndarray:
    """A shape at a random place and size; `fill`: centred, filling the square."""
    if fill:
        cy = cx = size / 2
        r = 0.48 * size
    else:
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.3) * size
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "square":
        return (abs(dy) <= r * 0.85) & (abs(dx) <= r * 0.85)
    if kind == "triangle":  # pointing up: width grows linearly towards the base
        return (dy >= -r) & (dy <= r) & (abs(dx) <= (dy + r) / 2)
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.6 * r) ** 2)
    if kind == "cross":
        arm = r * 0.3
        return ((abs(dy) <= arm) & (abs(dx) <= r)) | ((abs(dx) <= arm) & (abs(dy) <= r))
    if kind == "frame":
        outer = (abs(dy) <= r) & (abs(dx) <= r)
        return outer & ~((abs(dy) <= 0.6 * r) & (abs(dx) <= 0.6 * r))
    raise ValueError(kind)


def _texture_mask(kind: str, yy, xx, size: int, rng) -> np.ndarray:
    period = rng.uniform(size / 10, size / 5)
    phase_y, phase_x = rng.uniform(0, period, 2)
    stripe_y = ((yy + phase_y) % period) < period / 2
    stripe_x = ((xx + phase_x) % period) < period / 2
    if kind == "horizontal_stripes":
        mask = stripe_y
    elif kind == "vertical_stripes":
        mask = stripe_x
    elif kind == "checkerboard":
        mask = stripe_y ^ stripe_x
    elif kind == "dots":
        cy = (yy + phase_y) % period - period / 2
        cx = (xx + phase_x) % period - period / 2
        mask = cy ** 2 + cx ** 2 <= (period * 0.25) ** 2
    else:
        raise ValueError(kind)
    # The texture covers a random rectangle of at least half of each side.
    h, w = (rng.uniform(0.5, 1.0, 2) * size).astype(int)
    y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    region = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
    return mask & region


def _contrasting_colours(rng) -> tuple[np.ndarray, np.ndarray]:
    while True:
        fg, bg = rng.uniform(0, 255, (2, 3))
        if np.linalg.norm(fg - bg) > 120:
            return fg, bg


def generate(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 images (count x size x size x 3) and int32 labels, classes balanced."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((count, size, size, 3), np.uint8)
    labels = (np.arange(count) % len(CLASS_NAMES)).astype(np.int32)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        kind = CLASS_NAMES[label]
        draw = _texture_mask if kind in CLASS_NAMES[5:9] else _shape_mask
        mask = draw(kind, yy, xx, size, rng)
        fg, bg = _contrasting_colours(rng)
        image = np.where(mask[..., None], fg, bg)
        image += rng.normal(0, 12, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


# Segmentation: class 0 is the background, then one class per shape.
SHAPES = ["disc", "square", "triangle", "ring", "cross", "frame"]
SEGMENTATION_CLASS_NAMES = ["background", *SHAPES]


def generate_masks(count: int, size: int, seed: int = 0,
                   max_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 images (count x size x size x 3) with 1..max_shapes shapes
    each, and their masks (count x size x size, the class index per pixel; a
    later shape covers an earlier one)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    for i in range(count):
        background = rng.uniform(0, 255, 3)
        image = np.broadcast_to(background, (size, size, 3)).copy()
        for _ in range(rng.integers(1, max_shapes + 1)):
            label = int(rng.integers(1, len(SEGMENTATION_CLASS_NAMES)))
            shape = _shape_mask(SHAPES[label - 1], yy, xx, size, rng)
            while True:  # each shape stands out from the background
                colour = rng.uniform(0, 255, 3)
                if np.linalg.norm(colour - background) > 120:
                    break
            image[shape] = colour
            masks[i][shape] = label
        image += rng.normal(0, 12, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, masks


# Detection: the segmentation shapes, apart, each with its box.
DETECTION_CLASS_NAMES = SHAPES


def generate_boxes(count: int, size: int, seed: int = 0, max_shapes: int = 3
                   ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """`count` uint8 images (count x size x size x 3) with 1..max_shapes shapes
    each, none touching another, and per image their boxes (N x 4 [ymin, xmin,
    ymax, xmax] in 0..1, tight around the shape's pixels) and classes (N,
    indices into DETECTION_CLASS_NAMES)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    all_boxes, all_classes = [], []
    for i in range(count):
        background = rng.uniform(0, 255, 3)
        image = np.broadcast_to(background, (size, size, 3)).copy()
        taken = np.zeros((size, size), bool)
        boxes, classes = [], []
        for _ in range(rng.integers(1, max_shapes + 1)):
            placed = _place_shape(rng, size, taken)
            if placed is None:
                continue  # no room left apart from the others
            label, mask = placed
            while True:  # each shape stands out from the background
                colour = rng.uniform(0, 255, 3)
                if np.linalg.norm(colour - background) > 120:
                    break
            image[mask] = colour
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes.append([rows[0] / size, cols[0] / size,
                          (rows[-1] + 1) / size, (cols[-1] + 1) / size])
            classes.append(label)
            taken[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
        image += rng.normal(0, 12, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        all_classes.append(np.asarray(classes, np.int32))
    return images, all_boxes, all_classes


def _place_shape(rng, size: int, taken: np.ndarray, tries: int = 20):
    """A shape filling a random square patch (a fifth to a half of the image)
    whose box, with a pixel's margin, touches no taken pixel: (class, mask)."""
    for _ in range(tries):
        side = int(rng.uniform(0.2, 0.5) * size)
        y0, x0 = rng.integers(0, size - side + 1, 2)
        margin = taken[max(y0 - 1, 0):y0 + side + 1, max(x0 - 1, 0):x0 + side + 1]
        if margin.any():
            continue
        label = int(rng.integers(0, len(SHAPES)))
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
        patch = _shape_mask(SHAPES[label], yy, xx, side, rng, fill=True)
        if not patch.any():
            continue
        mask = np.zeros((size, size), bool)
        mask[y0:y0 + side, x0:x0 + side] = patch
        return label, mask
    return None


# Sets up to this size are kept once drawn (read-only), for the next source in
# the process that asks for the same one (a budget search's candidates, a test
# session's many runs) instead of drawn again, pixel by pixel.
KEEP_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=4)
def _kept(draw, count: int, size: int, seed: int) -> tuple:
    arrays = draw(count, size, seed)
    for array in arrays:
        if isinstance(array, np.ndarray):
            array.setflags(write=False)  # shared: a caller that writes to it fails loudly
    return arrays


def drawn(draw, count: int, size: int, seed: int) -> tuple:
    """draw(count, size, seed) (generate, generate_masks or generate_boxes), kept
    for the next call with the same arguments when the images are small."""
    if count * size * size * 3 > KEEP_BYTES:
        return draw(count, size, seed)
    return _kept(draw, count, size, seed)
