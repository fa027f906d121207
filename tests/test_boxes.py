"""Detection annotations (#28): COCO and Pascal VOC folders read to the same
boxes, and every kind of bad annotation refused in one line."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from mnv3.data.boxes import read_boxes
from mnv3.errors import UserError
from tests.conftest import SHARED_DATA

FRUITS = os.path.join(SHARED_DATA, "fruits", "train")

# Two photos: 100 x 50 with a cat and a dog, 40 x 60 with nothing.
PHOTOS = {"a.jpg": (100, 50), "b.jpg": (40, 60)}
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
ANNOTATIONS = [  # [x, y, width, height] in pixels
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 30, 20]},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 0, 50, 50]},
]


def _photos(folder):
    os.makedirs(folder, exist_ok=True)
    for name, size in PHOTOS.items():
        Image.new("RGB", size, (200, 100, 50)).save(os.path.join(folder, name))


def make_coco(root, annotations=ANNOTATIONS, images=None, categories=CATEGORIES):
    _photos(os.path.join(root, "data"))
    images = images or [{"id": i + 1, "file_name": name, "width": w, "height": h}
                        for i, (name, (w, h)) in enumerate(PHOTOS.items())]
    with open(os.path.join(root, "labels.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": categories}, f)
    return str(root)


def make_voc(root):
    _photos(os.path.join(root, "JPEGImages"))
    os.makedirs(os.path.join(root, "Annotations"))
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for i, (name, (w, h)) in enumerate(PHOTOS.items()):
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><bndbox>"
            f"<xmin>{a['bbox'][0]}</xmin><ymin>{a['bbox'][1]}</ymin>"
            f"<xmax>{a['bbox'][0] + a['bbox'][2]}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
            for a in ANNOTATIONS if a["image_id"] == i + 1)
        with open(os.path.join(root, "Annotations", name.replace(".jpg", ".xml")), "w") as f:
            f.write(f"<annotation><filename>{name}</filename><size><width>{w}</width>"
                    f"<height>{h}</height></size>{objects}</annotation>")
    return str(root)


def test_coco_and_voc_folders_give_the_same_boxes(tmp_path):
    coco, voc = read_boxes(make_coco(tmp_path / "coco")), read_boxes(make_voc(tmp_path / "voc"))
    assert coco.names == voc.names == ["cat", "dog"]  # COCO: by id; VOC: sorted
    assert [os.path.basename(p) for p in coco.images] == ["a.jpg", "b.jpg"]
    # [ymin, xmin, ymax, xmax] in 0..1 of the 100 x 50 photo.
    np.testing.assert_allclose(coco.boxes[0], [[0.1, 0.1, 0.5, 0.4], [0.0, 0.5, 1.0, 1.0]])
    assert coco.classes[0].tolist() == [0, 1]
    assert coco.boxes[1].shape == (0, 4) and coco.classes[1].shape == (0,)  # background
    for a, b in zip(coco.boxes, voc.boxes):
        np.testing.assert_allclose(a, b)
    assert [c.tolist() for c in coco.classes] == [c.tolist() for c in voc.classes]


@pytest.mark.skipif(not os.path.isdir(FRUITS), reason="../shared/data/fruits not present")
def test_the_fruit_photos_read_whole():
    fruits = read_boxes(FRUITS)
    assert len(fruits) == 214 and fruits.box_count == 426
    assert fruits.names == ["apple", "banana", "orange"]
    boxes = np.concatenate(fruits.boxes)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def _bad_box(bbox):
    return [{**ANNOTATIONS[0], "bbox": bbox}]


@pytest.mark.parametrize("change, message", [
    (dict(annotations=_bad_box([90, 5, 30, 20])), "annotation 1 (a.jpg): box x 90..120, "
                                                  "y 5..25 lies outside its 100x50 image"),
    (dict(annotations=_bad_box([-5, 5, 30, 20])), "lies outside"),
    (dict(annotations=_bad_box([10, 5, 0, 20])), "has no area"),
    (dict(annotations=_bad_box([10, 5, 30, -2])), "has no area"),
    (dict(annotations=[{**ANNOTATIONS[0], "category_id": 4}]),
     "category_id 4 is not among the categories (3, 7)"),
    (dict(annotations=[{**ANNOTATIONS[0], "image_id": 9}]), "image_id 9 is not among"),
    (dict(annotations=[{"id": 1, "image_id": 1}]), "needs image_id, category_id and bbox"),
    (dict(images=[{"id": 1, "file_name": "a.jpg", "width": 100, "height": 60},
                  {"id": 2, "file_name": "b.jpg", "width": 40, "height": 60}]),
     "a.jpg: the annotations say 100x60 but the image is 100x50"),
    (dict(images=[{"id": 1, "file_name": "gone.jpg", "width": 100, "height": 50}]),
     "gone.jpg: listed in the annotations but not found"),
    (dict(categories=[{"id": 3}]), "not COCO detection labels"),
])
def test_each_bad_annotation_is_one_line_naming_its_file(tmp_path, change, message):
    root = make_coco(tmp_path, **change)
    with pytest.raises(UserError) as raised:
        read_boxes(root)
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert root in text  # the file it is about


def test_damaged_json_and_voc_xml_are_one_line(tmp_path):
    root = make_coco(tmp_path / "coco")
    with open(os.path.join(root, "labels.json"), "w") as f:
        f.write('{"images": [')
    with pytest.raises(UserError, match="labels.json: cannot be read as COCO JSON"):
        read_boxes(root)
    voc = make_voc(tmp_path / "voc")
    with open(os.path.join(voc, "Annotations", "a.xml"), "w") as f:
        f.write("<annotation><size>")
    with pytest.raises(UserError, match="a.xml: not valid XML"):
        read_boxes(voc)
    with open(os.path.join(voc, "Annotations", "a.xml"), "w") as f:
        f.write("<annotation><size><width>100</width><height>50</height></size>"
                "<object><name>cat</name></object></annotation>")
    with pytest.raises(UserError, match="a.xml: needs <size>"):
        read_boxes(voc)
    with pytest.raises(UserError, match="neither a COCO folder"):
        read_boxes(str(tmp_path))


def test_an_image_that_does_not_decode_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_coco(tmp_path)
    with open(os.path.join(root, "data", "b.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        boxes = read_boxes(root)
    assert [os.path.basename(p) for p in boxes.images] == ["a.jpg"]
    assert "skipping 1 file(s)" in caplog.text and "b.jpg" in caplog.text
    with pytest.raises(UserError, match="b.jpg: .*data.strict is on"):
        read_boxes(root, strict=True)


# --- box-aware augmentation -----------------------------------------------------------

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # by class


def coloured_photo(height=120, width=160):
    """Three solid boxes, one per class colour, on black: (pixels, boxes, classes)."""
    boxes = np.array([[0.1, 0.05, 0.5, 0.4], [0.3, 0.5, 0.9, 0.7], [0.6, 0.1, 0.95, 0.45]],
                     np.float32)
    pixels = np.zeros((height, width, 3), np.uint8)
    for (y0, x0, y1, x1), colour in zip(boxes, COLOURS):
        pixels[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] \
            = colour
    return pixels, boxes, np.arange(3, dtype=np.int32)


def box_interiors(image, boxes, margin=3):
    """The pixels inside each box, `margin` pixels in from its edges."""
    size = image.shape[0]
    for y0, x0, y1, x1 in boxes:
        top, left = int(y0 * size) + margin, int(x0 * size) + margin
        bottom, right = int(y1 * size) - margin, int(x1 * size) - margin
        if bottom > top and right > left:
            yield image[top:bottom, left:right].reshape(-1, 3)


def test_augmented_boxes_still_frame_their_objects():
    from mnv3.data.box_augment import eval_view, train_view

    pixels, boxes, classes = coloured_photo()
    seen = set()
    for i in range(40):
        image, out_boxes, out_classes = (np.asarray(t) for t in train_view(
            pixels, boxes, classes, tf_seed(i), 96))
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert len(out_boxes) == len(out_classes) <= 3
        assert ((out_boxes >= 0) & (out_boxes <= 1)).all()
        for inside, cls in zip(box_interiors(image, out_boxes), out_classes):
            # Every pixel well inside a box is its object's colour.
            np.testing.assert_allclose(inside.mean(0), COLOURS[cls], atol=12)
            seen.add(int(cls))
    assert seen == {0, 1, 2}
    # The eval view resizes the whole photo: the same boxes still frame them.
    image = np.asarray(eval_view(pixels, 96))
    for inside, cls in zip(box_interiors(image, boxes), classes):
        np.testing.assert_allclose(inside.mean(0), COLOURS[cls], atol=12)


def test_the_crop_area_bounds_the_views_and_whole_photos_need_no_crop():
    from mnv3.data.box_augment import eval_view, train_view

    pixels, boxes, classes = coloured_photo()
    # data.box_crop_area [1, 1] without flips: the eval view, boxes as given.
    image, out_boxes, out_classes = (np.asarray(t) for t in train_view(
        pixels, boxes, classes, tf_seed(0), 96, crop_area=(1.0, 1.0), flip=False))
    np.testing.assert_array_equal(image, np.asarray(eval_view(pixels, 96)))
    np.testing.assert_array_equal(out_boxes, boxes)
    np.testing.assert_array_equal(out_classes, classes)
    # Every crop of at least 0.6 of the area has sides of at least 0.6 (the
    # sides are at most 1): no box grows past 1 / 0.6 of its side. SSD's
    # default range, down to 0.1, zooms further.
    def growth(crop_area):
        for i in range(40):
            _, out_boxes, out_classes = (np.asarray(t) for t in train_view(
                pixels, boxes, classes, tf_seed(i), 96, crop_area=crop_area))
            sides = boxes[out_classes, 2:] - boxes[out_classes, :2]
            yield from ((out_boxes[:, 2:] - out_boxes[:, :2]) / sides).ravel()
    mild, default = list(growth((0.6, 1.0))), list(growth((0.1, 1.0)))
    assert mild and 1.05 < max(mild) <= 1.02 / 0.6  # 2%: whole pixels
    assert max(default) > 1 / 0.6


def test_a_zoomed_out_view_shows_the_photo_smaller_on_grey_with_its_boxes():
    from mnv3.data.box_augment import CANVAS_GREY, train_view

    pixels, boxes, classes = coloured_photo()
    size, zoomed = 192, 0
    for i in range(24):
        image, out_boxes, out_classes = (np.asarray(t) for t in train_view(
            pixels, boxes, classes, tf_seed(i), size, crop_area=(1.0, 1.0), flip=False,
            zoom_out=4.0))
        np.testing.assert_array_equal(out_classes, classes)  # no crop: every box stays
        shrink = (out_boxes[:, 2:] - out_boxes[:, :2]) / (boxes[:, 2:] - boxes[:, :2])
        # Height and width shrink alike, by at most 4.
        np.testing.assert_allclose(shrink, shrink[0, 0], rtol=0.02)
        assert 1 / 4 - 0.01 <= shrink[0, 0] <= 1 + 1e-6
        interiors = list(box_interiors(image, out_boxes, margin=2))
        assert interiors
        for inside, cls in zip(interiors, out_classes):
            np.testing.assert_allclose(inside.mean(0), COLOURS[cls], atol=12)
        if shrink[0, 0] < 0.95:
            zoomed += 1
            # The photo's black background ends where the canvas's grey begins.
            assert (image == CANVAS_GREY).all(-1).mean() > 0.05
    assert 6 <= zoomed <= 18  # half the views, give or take


def test_a_flip_mirrors_the_boxes():
    from mnv3.data.box_augment import flip_left_right

    pixels, boxes, _ = coloured_photo()
    image, flipped = (np.asarray(t) for t in flip_left_right(pixels, boxes))
    np.testing.assert_allclose(flipped[0], [0.1, 0.6, 0.5, 0.95], atol=1e-6)
    h, w = image.shape[:2]
    for (y0, x0, y1, x1), colour in zip(flipped, COLOURS):
        corners = image[[int(y0 * h) + 2, int(y1 * h) - 3], [int(x0 * w) + 2, int(x1 * w) - 3]]
        assert (corners == colour).all()


def tf_seed(i):
    return np.array([i, 7], np.int64)


def test_synthetic_shapes_come_with_tight_boxes_apart():
    from mnv3.data.synthetic import DETECTION_CLASS_NAMES, generate_boxes

    images, boxes, classes = generate_boxes(60, 64, seed=3)
    assert images.shape == (60, 64, 64, 3)
    assert sum(len(b) for b in boxes) >= 60 and all(len(b) == len(c)
                                                    for b, c in zip(boxes, classes))
    assert set(np.concatenate(classes)) == set(range(len(DETECTION_CLASS_NAMES)))
    for image, photo_boxes in zip(images.astype(np.float32), boxes):
        background = np.median(image.reshape(-1, 3), 0)
        far = np.linalg.norm(image - background, axis=-1) > 80  # a shape's pixels (noise: 12)
        covered = np.zeros(far.shape, bool)
        for y0, x0, y1, x1 in (photo_boxes * 64).round().astype(int):
            inside = far[y0:y1, x0:x1]
            # Tight: the shape reaches every edge of its box.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y0:y1, x0:x1].any()  # apart from the others
            covered[y0:y1, x0:x1] = True
        assert not (far & ~covered).any()  # no shape pixel outside every box
