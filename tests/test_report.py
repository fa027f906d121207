"""The export report (#14): per-class figures, confusion counts, most-confused
pairs, disagreements with Keras, and the pictures."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mnv3.results import analysis
from tests.conftest import EXPORT, LEARN, tiny_cfg


def test_confusion_per_class_and_pairs_on_known_predictions():
    labels = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1, 2, 0])
    counts = analysis.confusion(targets, predicted, 3)
    assert counts.tolist() == [[2, 2, 0], [0, 2, 0], [1, 0, 1]]
    assert analysis.sparse(counts) == [[0, 0, 2], [0, 1, 2], [1, 1, 2], [2, 0, 1], [2, 2, 1]]
    a, b, c = analysis.per_class(counts, labels)
    assert (a["support"], a["recall"], a["precision"]) == (4, 0.5, 2 / 3)
    assert (b["support"], b["recall"], b["precision"]) == (2, 1.0, 0.5)
    assert (c["support"], c["recall"], c["precision"]) == (2, 0.5, 1.0)
    assert analysis.most_confused(counts, labels, top=2) == [
        {"true": "a", "predicted": "b", "count": 2, "share_of_true": 0.5},
        {"true": "c", "predicted": "a", "count": 1, "share_of_true": 0.5}]
    # Never predicted: no precision to give, rather than a misleading 0.
    assert analysis.per_class(analysis.confusion(np.array([0, 1]), np.array([0, 0]), 2),
                              ["x", "y"])[1]["precision"] is None
    d = analysis.disagreements(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]),
                               np.array([0, 1, 1, 2]), labels)
    assert d == {"count": 2, "rate": 0.5, "by_true_class": [
        {"label": "b", "count": 1}, {"label": "c", "count": 1}]}


def test_confusion_picture_keeps_the_most_confused_classes_of_many(tmp_path):
    from mnv3.results.plots import MAX_CLASSES_SHOWN, confusion_png

    rng = np.random.default_rng(0)
    n = 300
    targets = rng.integers(0, n, 6000)
    predicted = targets.copy()
    predicted[:200] = (targets[:200] + 1) % n  # confusions among a few classes
    counts = analysis.confusion(targets, predicted, n)
    shown = analysis.focus_classes(counts, MAX_CLASSES_SHOWN)
    involved = set(targets[:200]) | set(predicted[:200])
    # Only classes that take part in a confusion, as many as fit.
    assert len(shown) == MAX_CLASSES_SHOWN
    assert len(involved & set(shown)) == min(len(involved), MAX_CLASSES_SHOWN)
    path = str(tmp_path / "confusion.png")
    confusion_png(counts, [f"class {i}" for i in range(n)], path, "many classes")
    image = tf.io.decode_png(tf.io.read_file(path))
    assert image.shape[0] >= 2000 and image.shape[1] >= 2000  # room for 100 labels


@pytest.mark.slow
def test_report_pictures_decode_and_the_page_shows_them(exported):
    model_dir, report = exported
    export_dir = os.path.join(model_dir, "export")
    assert report["pictures"] == {"confusion": "confusion.png",
                                  "misclassified": "misclassified.png",
                                  "curves": "curves.png"}
    page = open(os.path.join(export_dir, "report.md")).read()
    for name, (min_height, min_width) in {"confusion.png": (500, 500),
                                          "misclassified.png": (600, 1000),
                                          "curves.png": (300, 1000)}.items():
        image = tf.io.decode_png(tf.io.read_file(os.path.join(export_dir, name)))
        assert image.shape[0] >= min_height and image.shape[1] >= min_width, name
        assert image.shape[0] <= 3000 and image.shape[1] <= 3000, name
        assert float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 10, name  # not blank
        assert f"]({name})" in page
    assert "## Per class" in page and "## Where the exported models disagree" in page


def _direct_predictions(model_dir, eval_images):
    """Keras and int8 predictions over the eval data, counted here, not by export."""
    import keras

    from tests.conftest import make_pipeline
    from mnv3.tflite.evaluate import TFLiteModel

    keras_model = keras.saving.load_model(os.path.join(model_dir, "best.keras"))
    int8 = TFLiteModel(open(glob.glob(os.path.join(model_dir, "export", "*_int8.tflite"))[0],
                           "rb").read())
    targets, by_keras, by_int8 = [], [], []
    for images, onehot in make_pipeline(tiny_cfg(*LEARN, *EXPORT)).eval(batch_size=64):
        targets += list(np.argmax(onehot.numpy(), -1))
        by_keras += list(np.argmax(keras_model.predict_on_batch(images), -1))
        by_int8 += [int(np.argmax(int8(x))) for x in images.numpy().astype(np.float32)]
    return [np.array(v)[:eval_images] for v in (targets, by_keras, by_int8)]


@pytest.mark.slow
def test_per_class_figures_and_confusion_agree_with_a_direct_count(exported):
    model_dir, report = exported
    n, labels = report["eval_images"], report["labels"]
    targets, by_keras, by_int8 = _direct_predictions(model_dir, n)
    rows = {r["mode"]: r for r in report["rows"]}
    for mode, predicted in [("keras", by_keras), ("int8", by_int8)]:
        row = rows[mode]
        counts = np.zeros((len(labels), len(labels)), int)
        for t, p, c in row["confusion"]:
            counts[t, p] = c
        assert counts.sum() == n
        assert np.trace(counts) / n == pytest.approx(row["top1"])
        assert (counts == analysis.confusion(targets, predicted, len(labels))).all(), mode
        for i, figures in enumerate(row["per_class"]):
            mine = predicted[targets == i]
            assert figures["support"] == len(mine)
            assert figures["recall"] == pytest.approx(np.mean(mine == i))
            given = targets[predicted == i]
            assert figures["precision"] == (pytest.approx(np.mean(given == i))
                                            if len(given) else None)
    # How often and where int8 and Keras disagree.
    differs = by_keras != by_int8
    d = rows["int8"]["disagreements"]
    assert d["count"] == differs.sum() and d["rate"] == pytest.approx(1 - rows["int8"]["agreement"])
    assert sum(c["count"] for c in d["by_true_class"]) <= d["count"]
    for c in d["by_true_class"]:
        assert c["count"] == np.sum(differs & (targets == labels.index(c["label"])))
    assert json.loads(open(os.path.join(model_dir, "export", "report.json")).read()) == report
