"""Detection data: photos with labelled boxes, read from the two layouts people
already have, and checked whole before anything trains.

- COCO, as MediaPipe Model Maker's COCO folders: `root/data/<file_name>` beside
  `root/labels.json`, whose `images` give each file's id and size, whose
  `annotations` give `bbox` as `[x, y, width, height]` in pixels with a
  `category_id`, and whose `categories` name the ids.
- Pascal VOC: `root/JPEGImages/` (or `root/images/`) beside
  `root/Annotations/<stem>.xml`, one `<object>` per box with its `<name>` and
  `<bndbox>` (`xmin ymin xmax ymax`, pixels); the classes are the names found,
  sorted.

Boxes come out as `[ymin, xmin, ymax, xmax]` in 0..1 of their image (what
tf.image's box ops take), class ids 0..C-1 in the order of `names`.

A box outside its image, a box of zero or negative size, an unknown category,
an annotation without its image, an image whose recorded size differs from
the file's: one error line naming the file, before anything is written. An
image that does not decode is skipped with a counted warning, as the
classifier's folders do (an error with data.strict). Images without boxes are
kept: they teach the detector what is background.

In the input pipeline a photo's label is one fixed-size float32 array,
[max_boxes, 5]: a row per box (ymin, xmin, ymax, xmax, class id), then rows
of PADDING (class -1), so photos with any number of boxes batch together.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mnv3.config import DataConfig
from mnv3.data import synthetic
from mnv3.data.classes import check_class_name
from mnv3.data.folder import check_images
from mnv3.data.sources import Source, file_split, holdout, in_memory_split
from mnv3.errors import UserError

# A box may overrun its image by this many pixels (annotation tools round
# outwards); it is clipped. Beyond it the box is an error.
OVERRUN_PIXELS = 1.0


@dataclass
class Boxes:
    images: list[str]  # image paths
    boxes: list[np.ndarray]  # per image: N x 4 [ymin, xmin, ymax, xmax], 0..1, float32
    classes: list[np.ndarray]  # per image: N class ids (int32), into names
    names: list[str]  # class names, by id

    def __len__(self) -> int:
        return len(self.images)

    @property
    def box_count(self) -> int:
        return sum(len(b) for b in self.boxes)


def read_boxes(root: str, strict: bool = False) -> Boxes:
    """The COCO or VOC folder at `root` (which one: by what it holds)."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: not found")
    if os.path.exists(os.path.join(root, "labels.json")):
        return read_coco(root, strict)
    if os.path.isdir(os.path.join(root, "Annotations")):
        return read_voc(root, strict)
    raise UserError(f"{root}: neither a COCO folder (data/ beside labels.json) nor a "
                    "Pascal VOC folder (JPEGImages/ beside Annotations/)")


def read_coco(root: str, strict: bool = False) -> Boxes:
    path = os.path.join(root, "labels.json")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
        images, annotations = coco["images"], coco.get("annotations", [])
        categories = coco["categories"]
        names = {int(c["id"]): str(c["name"]) for c in categories}
        files = {int(i["id"]): (str(i["file_name"]), float(i["width"]), float(i["height"]))
                 for i in images}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot be read as COCO JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not COCO detection labels (images, annotations and "
                        f"categories with id, file_name, width, height, name: {e!r} "
                        "missing or malformed)") from None
    ids = sorted(names)
    for name in names.values():
        check_class_name(name, path)
    index = {category: i for i, category in enumerate(ids)}
    per_image = {image_id: ([], []) for image_id in files}
    for n, a in enumerate(annotations):
        where = f"{path}: annotation {a.get('id', n)}"
        try:
            image_id, category, (x, y, w, h) = int(a["image_id"]), int(a["category_id"]), \
                [float(v) for v in a["bbox"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: needs image_id, category_id and bbox [x, y, width, "
                            "height]") from None
        if image_id not in files:
            raise UserError(f"{where}: image_id {image_id} is not among the images")
        if category not in index:
            raise UserError(f"{where}: category_id {category} is not among the categories "
                            f"({', '.join(str(i) for i in ids)})")
        file_name, width, height = files[image_id]
        box = _checked_box(x, y, x + w, y + h, width, height, f"{where} ({file_name})")
        per_image[image_id][0].append(box)
        per_image[image_id][1].append(index[category])
    data_dir = os.path.join(root, "data")
    paths = {image_id: os.path.join(data_dir, files[image_id][0]) for image_id in files}
    return _checked_images(
        [(paths[i], files[i][1:], *per_image[i]) for i in sorted(files)],
        [names[i] for i in ids], strict, data_dir)


def read_voc(root: str, strict: bool = False) -> Boxes:
    annotations = os.path.join(root, "Annotations")
    image_dir = next((os.path.join(root, d) for d in ("JPEGImages", "images")
                      if os.path.isdir(os.path.join(root, d))), None)
    if image_dir is None:
        raise UserError(f"{root}: no JPEGImages/ (or images/) beside Annotations/")
    records = []
    for name in sorted(os.listdir(annotations)):
        if name.endswith(".xml"):
            records.append(_read_voc_file(os.path.join(annotations, name), image_dir))
    if not records:
        raise UserError(f"{annotations}: no .xml annotations")
    names = sorted({label for record in records for label in record[3]})
    for label in names:
        check_class_name(label, annotations)
    index = {label: i for i, label in enumerate(names)}
    return _checked_images([(path, size, boxes, [index[label] for label in labels])
                            for path, size, boxes, labels in records],
                           names, strict, image_dir)


def _read_voc_file(path: str, image_dir: str):
    try:
        tree = ElementTree.parse(path).getroot()
        file_name = tree.findtext("filename") or \
            os.path.splitext(os.path.basename(path))[0] + ".jpg"
        size = tree.find("size")
        width, height = (float(size.findtext(k)) for k in ("width", "height"))
        boxes, labels = [], []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            corners = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            labels.append(obj.findtext("name").strip())
            boxes.append(_checked_box(*corners, width, height, path))
    except ElementTree.ParseError as e:
        raise UserError(f"{path}: not valid XML ({e})") from None
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{path}: needs <size> with width and height, and each <object> "
                        "a <name> and a <bndbox> with xmin, ymin, xmax, ymax") from None
    return os.path.join(image_dir, file_name), (width, height), boxes, labels


def _checked_box(x0, y0, x1, y1, width, height, where: str) -> list[float]:
    """[ymin, xmin, ymax, xmax] in 0..1 from pixel corners, or an error line."""
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"{where}: box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} has no area "
                        "(zero or negative width or height)")
    if x0 < -OVERRUN_PIXELS or y0 < -OVERRUN_PIXELS or x1 > width + OVERRUN_PIXELS \
            or y1 > height + OVERRUN_PIXELS:
        raise UserError(f"{where}: box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} lies outside "
                        f"its {width:g}x{height:g} image")
    return [max(y0, 0.0) / height, max(x0, 0.0) / width,
            min(y1, height) / height, min(x1, width) / width]


def _checked_images(records, names: list[str], strict: bool, where: str) -> Boxes:
    """Keeps the images that decode (warning about the rest) after checking
    each file's size against the one its boxes were drawn on."""
    if not records:
        raise UserError(f"{where}: no images listed")
    paths = [r[0] for r in records]
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path}: listed in the annotations but not found")
    readable = check_images(paths, strict, where)
    kept = Boxes([], [], [], names)
    for (path, (width, height), boxes, classes), ok in zip(records, readable):
        if not ok:
            continue
        with Image.open(path) as image:  # the header only
            actual = image.size
        if actual != (round(width), round(height)):
            raise UserError(f"{path}: the annotations say {width:g}x{height:g} but the "
                            f"image is {actual[0]}x{actual[1]}; its boxes would be wrong")
        kept.images.append(path)
        kept.boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        kept.classes.append(np.asarray(classes, np.int32))
    if not kept.images:
        raise UserError(f"{where}: none of the {len(records)} images can be read")
    return kept


PADDING = -1.0  # the class column of a label row that holds no box


def padded(boxes: np.ndarray, classes: np.ndarray, max_boxes: int) -> np.ndarray:
    """One photo's label: [max_boxes, 5], its boxes then PADDING rows."""
    label = np.full((max_boxes, 5), PADDING, np.float32)
    label[:len(boxes), :4] = boxes
    label[:len(boxes), 4] = classes
    return label


def _labels(found: Boxes, max_boxes: int, where: str) -> np.ndarray:
    for i, boxes in enumerate(found.boxes):
        if len(boxes) > max_boxes:
            raise UserError(f"{found.images[i] if found.images else where}: "
                            f"{len(boxes)} boxes, more than task.max_boxes ({max_boxes}); "
                            "raise it")
    return np.stack([padded(b, c, max_boxes) for b, c in zip(found.boxes, found.classes)])


def load_source(cfg: DataConfig, max_boxes: int, seed: int = 0) -> Source:
    """Train and eval splits of (image, padded label) pairs from `synthetic`
    shapes or a COCO / VOC folder; problems raise UserError."""
    if cfg.source == "synthetic":
        names = list(synthetic.DETECTION_CLASS_NAMES)
        if cfg.num_classes != len(names):
            raise UserError(f"data.num_classes is {cfg.num_classes} but the synthetic "
                            f"detection set has {len(names)} classes")
        images, boxes, classes = synthetic.drawn(synthetic.generate_boxes, cfg.synthetic_images,
                                                 cfg.image_size, seed)
        labels = _labels(Boxes([], boxes, classes, names), max_boxes, "synthetic")
        train, held = holdout(np.zeros(len(images)), cfg.val_fraction)
        return Source(in_memory_split(images[train], labels[train]),
                      in_memory_split(images[held], labels[held]), names)

    found = read_boxes(cfg.train_dir, cfg.strict)
    if cfg.num_classes != len(found.names):
        raise UserError(f"data.num_classes is {cfg.num_classes} but {cfg.train_dir} has "
                        f"{len(found.names)} classes ({', '.join(found.names)})")
    labels = _labels(found, max_boxes, cfg.train_dir)
    if cfg.eval_dir:
        held_out = read_boxes(cfg.eval_dir, cfg.strict)
        if held_out.names != found.names:
            raise UserError(f"{cfg.eval_dir}: its classes ({', '.join(held_out.names)}) "
                            f"differ from {cfg.train_dir}'s ({', '.join(found.names)})")
        return Source(file_split(found.images, labels, np.float32),
                      file_split(held_out.images, _labels(held_out, max_boxes, cfg.eval_dir),
                                 np.float32), found.names)
    train, held = holdout(np.zeros(len(found)), cfg.val_fraction)
    if len(train) == 0:
        raise UserError(f"{cfg.train_dir}: too few images to hold out a validation split")
    return Source(file_split([found.images[i] for i in train], labels[train], np.float32),
                  file_split([found.images[i] for i in held], labels[held], np.float32),
                  found.names)
