"""SSD anchors, matching and box encoding (#28)."""

import numpy as np
import tensorflow as tf

from mnv3.model.anchors import AnchorSpec, decode, encode, iou, match

# SSDLite at 320 px: maps at strides 16 and 32, then extra layers down to 1x1.
MAPS = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_anchor_layout_follows_ssdlite():
    spec = AnchorSpec()
    assert spec.boxes_per_cell(6) == [3, 6, 6, 6, 6, 6]
    anchors = spec.anchors(MAPS).numpy()
    assert anchors.shape == (20 * 20 * 3 + 100 * 6 + 25 * 6 + 9 * 6 + 4 * 6 + 6, 4)
    first = anchors[:3]  # the first cell of the 20x20 map
    np.testing.assert_allclose((first[:, :2] + first[:, 2:]) / 2, 0.025, atol=1e-6)
    heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
    np.testing.assert_allclose(widths / heights, [1.0, 2.0, 0.5], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(heights * widths), [0.1, 0.2, 0.2], rtol=1e-5)
    last = anchors[-6:]  # the 1x1 map: scale 0.95, and sqrt(0.95 * 1) for the extra square
    np.testing.assert_allclose(np.sqrt((last[:, 2] - last[:, 0]) * (last[:, 3] - last[:, 1])),
                               [0.95] * 5 + [np.sqrt(0.95)], rtol=1e-5)


def test_encode_and_decode_are_inverse():
    rng = np.random.default_rng(0)
    anchors = AnchorSpec().anchors(MAPS)
    centres = rng.uniform(0.2, 0.8, (len(anchors), 2))
    sizes = rng.uniform(0.05, 0.4, (len(anchors), 2))
    boxes = tf.constant(np.concatenate([centres - sizes / 2, centres + sizes / 2], 1),
                        tf.float32)
    np.testing.assert_allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-5)
    np.testing.assert_allclose(encode(anchors, anchors), 0.0, atol=1e-5)


def test_matching_takes_overlaps_and_gives_every_box_an_anchor():
    anchors = AnchorSpec().anchors(MAPS)
    exact = anchors[700]  # a box that is exactly one anchor
    thin = tf.constant([0.50, 0.10, 0.52, 0.90])  # IoU under 0.5 with every anchor
    boxes, classes = tf.stack([exact, thin]), tf.constant([2, 0])
    assert float(tf.reduce_max(iou(anchors, thin[None]))) < 0.5
    matched, target = match(anchors, boxes, classes)
    target = target.numpy()
    assert target[700] == 3  # class 2, one up (0 is background)
    np.testing.assert_allclose(matched[700], exact)
    assert np.sum(target == 1) == 1  # the thin box: its one best anchor
    best = iou(anchors, boxes).numpy().max(1)
    forced = int(np.argmax(iou(anchors, thin[None]).numpy()[:, 0]))
    assert set(np.flatnonzero(target > 0)) == set(np.flatnonzero(best >= 0.5)) | {forced}
    # Overlaps of 0.4 to 0.5 are neither object nor background: ignored.
    ignored = (best >= 0.4) & (best < 0.5)
    ignored[forced] = False
    assert ignored.any() and set(np.flatnonzero(target == -1)) == set(np.flatnonzero(ignored))
    # Background anchors keep themselves as their box (a zero regression target).
    np.testing.assert_allclose(matched.numpy()[target == 0], anchors.numpy()[target == 0])


def test_a_photo_without_boxes_is_all_background():
    anchors = AnchorSpec().anchors(MAPS)
    matched, target = match(anchors, tf.zeros([0, 4]), tf.zeros([0], tf.int32))
    assert not target.numpy().any()
    np.testing.assert_array_equal(matched, anchors)


def test_matching_runs_in_a_tf_data_map():
    # The input pipeline matches each photo's boxes as it reads it.
    anchors = AnchorSpec().anchors(MAPS)
    photos = tf.data.Dataset.from_generator(
        lambda: iter([(np.array([[0.1, 0.1, 0.6, 0.5]], np.float32), np.array([1], np.int32)),
                      (np.zeros((0, 4), np.float32), np.zeros(0, np.int32))]),
        output_signature=(tf.TensorSpec([None, 4], tf.float32),
                          tf.TensorSpec([None], tf.int32)))
    targets = [t.numpy() for _, t in photos.map(lambda b, c: match(anchors, b, c))]
    assert targets[0].max() == 2 and targets[0].sum() > 0 and not targets[1].any()


def test_detect_decodes_and_suppresses_duplicates():
    from mnv3.model.anchors import detect, encode

    anchors = AnchorSpec().anchors(MAPS)
    truth = tf.constant([[0.1, 0.2, 0.5, 0.6], [0.55, 0.5, 0.95, 0.9]])
    matched, target = match(anchors, truth, tf.constant([1, 0]))
    # Every matched anchor predicts its box exactly, sure of its class.
    logits = tf.one_hot(tf.maximum(target, 0), 3) * 10.0  # ignored: background
    predictions = tf.concat([encode(matched, anchors), logits], -1)[None]
    assert int(tf.reduce_sum(tf.cast(target > 0, tf.int32))) > 2  # duplicates to merge
    boxes, scores, classes, counts = detect(predictions, anchors)
    assert int(counts[0]) == 2
    found = {int(c): b for b, c in zip(boxes[0, :2].numpy(), classes[0, :2].numpy())}
    np.testing.assert_allclose(found[1], truth[0], atol=1e-5)
    np.testing.assert_allclose(found[0], truth[1], atol=1e-5)
    assert (scores[0, :2].numpy() > 0.99).all()
