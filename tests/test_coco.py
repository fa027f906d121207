"""COCO mAP by pycocotools (#28): the figures mean what COCO means."""

import numpy as np
import pytest

from mnv3.coco import DetectionScore

TRUTH = [  # per photo: boxes [ymin, xmin, ymax, xmax] in 0..1, classes
    (np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.95]]), np.array([0, 1])),
    (np.array([[0.2, 0.3, 0.8, 0.7]]), np.array([0])),
]


def score(detections):
    card = DetectionScore(["apple", "banana"])
    for (boxes, classes), (found, found_classes, scores) in zip(TRUTH, detections):
        card.add(boxes, classes, found, found_classes, scores)
    return card.result()


def test_perfect_detections_score_one():
    result = score([(b, c, np.ones(len(c))) for b, c in TRUTH])
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["ap_per_class"] == pytest.approx({"apple": 1.0, "banana": 1.0})


def test_loose_boxes_pass_at_iou_half_and_lose_at_stricter_thresholds():
    # Each box grown by 15% of its size on every side: IoU about 0.59.
    def grow(b):
        height, width = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b + 0.15 * np.stack([-height, -width, height, width], 1)
    grown = [(grow(b), c, np.ones(len(c))) for b, c in TRUTH]
    result = score(grown)
    assert result["map50"] == pytest.approx(1.0)
    assert 0.05 < result["map"] < 0.3


def test_a_wrong_class_and_a_missed_photo_cost_their_class():
    boxes, classes = TRUTH[0]
    result = score([(boxes, np.array([0, 0]), np.ones(2)),  # the banana called an apple
                    (np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))])  # nothing found
    assert result["ap_per_class"]["banana"] == 0.0
    assert 0.0 < result["ap_per_class"]["apple"] < 1.0  # one of two apples found
    assert score([(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))] * 2)["map"] == 0.0
