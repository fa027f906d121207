"""The detection task end to end (#28): a tiny SSDLite trained on synthetic
shapes, scored by COCO mAP, exported with TFLite's detection post-processing
and run by MediaPipe's ObjectDetector."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mnv3.model.anchors import AnchorSpec, match, targets
from mnv3.tflite.evaluate import TFLiteModel
from mnv3.tflite.metadata import read_metadata
from tests.conftest import SHARED_DATA, read_metrics, tiny_cfg

FRUITS = os.path.join(SHARED_DATA, "fruits", "train")


def test_batched_targets_match_each_photo_on_its_own():
    # The loss matches a padded batch at once; each photo must get what
    # matching it alone gives, padding rows ignored.
    anchors = AnchorSpec().anchors([(4, 4), (2, 2), (1, 1)])
    photos = [(np.array([[0.1, 0.1, 0.5, 0.6], [0.5, 0.4, 0.9, 0.95]], np.float32), [2, 0]),
              (np.zeros((0, 4), np.float32), []),
              (np.array([[0.0, 0.0, 1.0, 1.0]], np.float32), [1])]
    truth = np.full((3, 4, 5), -1.0, np.float32)
    for i, (boxes, classes) in enumerate(photos):
        truth[i, :len(boxes), :4], truth[i, :len(boxes), 4] = boxes, classes
    batched = targets(anchors, tf.constant(truth)).numpy()
    for i, (boxes, classes) in enumerate(photos):
        _, alone = match(anchors, tf.constant(boxes), tf.constant(classes, tf.int32))
        np.testing.assert_array_equal(batched[i, :, 4], alone.numpy())
    assert (batched[1, :, 4] == 0).all()  # no boxes: every anchor is background


@pytest.mark.parametrize("override, message", [
    ("data.source=tfds", "data.source: tfds has no boxes"),
    ("task.anchor_scales=[0.9, 0.2]", "task.anchor_scales: expected [smallest, largest]"),
    ("export.int8_output=uint8", "whose outputs are float32"),
])
def test_detection_configs_that_cannot_work_are_refused(override, message):
    from mnv3.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        tiny_cfg("task.name=detection", "data.num_classes=6", "data.tfds_name=x", override)


@pytest.mark.skipif(not os.path.isdir(FRUITS), reason="../shared/data/fruits absent")
def test_the_fruit_photos_load_as_padded_labels_and_a_crowded_photo_is_refused():
    from mnv3.errors import UserError
    from tests.conftest import make_pipeline

    cfg = tiny_cfg("task.name=detection", "data.source=folder", f"data.train_dir={FRUITS}",
                   "data.num_classes=3", "data.val_fraction=0.25")
    pipeline = make_pipeline(cfg)
    assert pipeline.class_names == ["apple", "banana", "orange"]
    assert pipeline.source.train.size + pipeline.source.eval.size == 214
    images, labels = next(iter(pipeline.eval(batch_size=4)))
    assert images.shape == (4, 64, 64, 3) and labels.shape == (4, 100, 5)
    real = labels.numpy()[..., 4] >= 0
    assert real.any(1).all() and (labels.numpy()[~real] == -1).all()
    with pytest.raises(UserError, match=r"boxes, more than task.max_boxes \(2\)"):
        make_pipeline(tiny_cfg("task.name=detection", "data.source=folder",
                               f"data.train_dir={FRUITS}", "data.num_classes=3",
                               "task.max_boxes=2"))


@pytest.mark.slow
def test_a_detector_trains_and_records_coco_map_each_epoch(detector):
    model_dir, _ = detector
    records = read_metrics(model_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # Three tiny epochs teach the loss, not yet the shapes (the quickstart's
    # mAP is in BENCHMARKS.md): COCO's figures are recorded every epoch.
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    assert all(0 <= r["eval_map"] <= r["eval_map50"] <= 1 for r in records)
    assert set(records[-1]["eval_ap_per_class"]) == {
        "disc", "square", "triangle", "ring", "cross", "frame"}


@pytest.mark.slow
def test_the_exported_detector_gives_keras_detections(detector):
    model_dir, report = detector
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"keras", "float32", "int8"}
    # The float file's post-processing op is the Keras model's detect(): the
    # same detections, so the same mAP.
    assert rows["float32"]["map"] == pytest.approx(rows["keras"]["map"], abs=0.01)
    assert rows["float32"]["agreement"] > 0.97
    assert 0 <= rows["int8"]["map"] <= 1 and rows["int8"]["int8_ranges"] == "calibrated"
    export = os.path.join(model_dir, "export")
    for name in ("detections.png", "precision_recall.png", "report.md"):
        assert os.path.getsize(os.path.join(export, name)) > 1000
    assert "## AP per class" in open(os.path.join(export, "report.md")).read()


def _photos(size, count=8):
    """Fruit photos (resized to the model's input), else synthetic shapes."""
    paths = sorted(glob.glob(os.path.join(FRUITS, "data", "*.jpg")))[::25][:count]
    if paths:
        return [tf.cast(tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3),
                                        [size, size]), tf.uint8).numpy() for p in paths]
    from mnv3.data.synthetic import generate_boxes
    return list(generate_boxes(count, size, seed=5)[0])


def _mediapipe_detections(path, images):
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    options = vision.ObjectDetectorOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=path), max_results=100,
        score_threshold=0.0)
    with vision.ObjectDetector.create_from_options(options) as detector:
        return [detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                         data=np.ascontiguousarray(image))).detections
                for image in images]


def test_the_appended_post_processing_computes_what_the_converter_fuses(monkeypatch):
    """A detector converts from its traced function, and the post-processing op
    is written in after (tflite/postprocess.py); where the file cannot be
    edited, the converter fuses the op declared in a SavedModel. Both files
    give the same detections, from ops with the same settings."""
    import keras
    from flatbuffers import flexbuffers

    from mnv3 import tf_internals
    from mnv3.tflite import modes, postprocess, rewrite
    from mnv3.tflite.convert import convert

    image = keras.Input((8, 8, 3), batch_size=1)  # rows for 12 anchors of 3 classes
    rows = keras.layers.Reshape((12, 8))(keras.layers.Conv2D(24, 4, strides=4)(image))
    model = keras.Model(image, rows)
    model.layers[1].set_weights([w * 30 for w in model.layers[1].get_weights()])
    anchors = AnchorSpec().anchors([(2, 2), (1, 1)])[:12]
    serve = postprocess.DetectorServing(model, anchors, num_classes=3)
    files = {"appended": convert(model, modes.get("float32"), serve=serve)}
    monkeypatch.setattr(rewrite, "can_edit", lambda: False)
    files["declared"] = convert(model, modes.get("float32"), serve=serve)

    def options(tflite):
        (op,) = [o for o in tf_internals.read_tflite(tflite).subgraphs[0].operators
                 if o.customOptions is not None]
        return flexbuffers.Loads(bytes(op.customOptions))
    declared, appended = options(files["declared"]), options(files["appended"])
    # (the converter drops detections_per_class, which only the regular NMS reads)
    assert declared == {k: v for k, v in appended.items() if k in declared}
    assert len(declared) >= 10

    runners = {k: TFLiteModel(v) for k, v in files.items()}
    found = 0
    for seed in range(4):
        pixels = np.random.default_rng(seed).uniform(0, 255, (8, 8, 3)).astype(np.float32)
        out = {k: runner(pixels) for k, runner in runners.items()}
        count = int(out["declared"]["num_detections"])
        assert int(out["appended"]["num_detections"]) == count
        for name in postprocess.OUTPUTS[:3]:  # rows past the count are not written
            np.testing.assert_array_equal(out["appended"][name][:count],
                                          out["declared"][name][:count])
        found += count
    assert found > 4


@pytest.mark.slow
def test_mediapipe_object_detector_finds_what_our_interpreter_finds(detector):
    model_dir, _ = detector
    labels = open(os.path.join(model_dir, "labels.txt")).read().split()
    images = _photos(64)  # at the input size: MediaPipe resizes nothing
    for mode in ["float32", "int8"]:
        path = glob.glob(os.path.join(model_dir, "export", f"*_{mode}.tflite"))[0]
        names = [t.name.decode() for t in read_metadata(open(path, "rb").read())
                 .subgraphMetadata[0].outputTensorMetadata]
        assert sorted(names) == ["category", "location", "number of detections", "score"]
        ours = TFLiteModel(open(path, "rb").read())
        boxes_compared = 0
        for image, theirs in zip(images, _mediapipe_detections(path, images)):
            out = ours(image.astype(np.float32))
            count = int(out["num_detections"])
            found = [(float(out["detection_scores"][k]), labels[int(out["detection_classes"][k])],
                      out["detection_boxes"][k] * 64) for k in range(count)]
            # Each of MediaPipe's detections is one of ours...
            for detection in theirs:
                category = detection.categories[0]
                assert any(abs(category.score - score) < 1e-5 and category.category_name == name
                           for score, name, _ in found), mode
            # ...and each of ours inside the photo is one of MediaPipe's, where it
            # is (MediaPipe drops or moves boxes that overrun the photo).
            for score, name, (y0, x0, y1, x1) in found:
                if min(y0, x0) < 0 or max(y1, x1) > 64:
                    continue
                # (int8 scores come in steps: several detections may share one)
                same = [d.bounding_box for d in theirs
                        if abs(d.categories[0].score - score) < 1e-5
                        and d.categories[0].category_name == name]
                assert any(np.allclose([b.origin_x, b.origin_y, b.width, b.height],
                                       [x0, y0, x1 - x0, y1 - y0], atol=1.5)
                           for b in same), (mode, score, name, (x0, y0, x1, y1))
                boxes_compared += 1
        assert boxes_compared >= 5, mode


@pytest.mark.slow
def test_predict_lists_and_draws_a_detectors_boxes(detector, tmp_path):
    from PIL import Image

    from mnv3 import cli
    from tests.conftest import assert_one_line_error, call_cli

    model_dir, _ = detector
    labels = open(os.path.join(model_dir, "labels.txt")).read().split()
    path = glob.glob(os.path.join(model_dir, "export", "*_int8.tflite"))[0]
    photo = tmp_path / "photo.png"
    Image.fromarray(_photos(96, 1)[0]).save(photo)

    def found(min_score, *extra):
        result = call_cli(cli.predict, "--model", path, str(photo), "--json", "--min_score",
                          str(min_score), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])["detections"]

    # The tiny model's scores vary from run to run: the floor is the median of
    # what it gives, so some detections pass it and some do not.
    everything = found(0)
    floor = float(np.median([f["score"] for f in everything]))
    found = found(floor, "--draw", str(tmp_path / "drawn"))
    assert found and all(f["label"] in labels and f["score"] >= floor for f in found)
    # Exactly those at the floor or above (a score equal to it may go either way).
    scores = np.array([f["score"] for f in everything])
    assert np.sum(scores > floor + 1e-6) <= len(found) <= np.sum(scores >= floor - 1e-6)
    assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    drawn = Image.open(tmp_path / "drawn" / "photo_boxes.png")
    assert drawn.size == (96, 96)
    # A detector's Keras file is pointed to its .tflite.
    assert_one_line_error(call_cli(cli.predict, "--model", model_dir, str(photo)),
                          "a detector", "exported .tflite")


@pytest.mark.parametrize("bbox, message", [([90, 5, 30, 20], "lies outside its 100x50 image"),
                                           ([10, 5, 0, 20], "has no area")])
def test_train_on_a_bad_annotation_is_one_line_and_writes_nothing(tmp_path, bbox, message):
    from mnv3 import cli
    from tests.conftest import assert_one_line_error, call_cli
    from tests.test_boxes import ANNOTATIONS, make_coco

    root = make_coco(tmp_path / "coco", annotations=[{**ANNOTATIONS[0], "bbox": bbox}])
    model_dir = tmp_path / "run"
    result = call_cli(cli.train, "--config", "configs/detection_quickstart.yaml",
                      "--model_dir", str(model_dir), "--set", "data.source=folder",
                      "--set", f"data.train_dir={root}", "--set", "data.num_classes=2")
    assert_one_line_error(result, message, "labels.json")
    assert not model_dir.exists()


@pytest.mark.slow
def test_the_mediapipe_benchmark_matches_the_same_detections_on_the_same_pixels(detector,
                                                                                 tmp_path):
    from PIL import Image

    from benchmarks.mediapipe_detections import compare

    model_dir, _ = detector
    photos = []
    # At the input size (MediaPipe resizes nothing); the 8 photos the other MediaPipe
    # test reads: the tiny model's detections on 3 were 7 to over 10, run to run.
    for k, image in enumerate(_photos(64)):
        photos.append(str(tmp_path / f"photo{k}.png"))
        Image.fromarray(image).save(photos[-1])
    path = glob.glob(os.path.join(model_dir, "export", "*_int8.tflite"))[0]
    row = compare(path, photos, min_score=0.0, min_iou=0.9)
    assert row["whole_photos"] == row["same_pixels"], row
    counts = row["same_pixels"]
    assert counts["mediapipe_detections"] == counts["our_detections"] > 10, row
    # The tiny model's boxes are a few pixels wide, where MediaPipe's whole
    # pixels can cost a box IoU 0.9 (77-91% of them match, run to run); the
    # fruit photos' boxes match 100% (BENCHMARKS.md, detection).
    assert counts["mediapipe_found_by_ours"] >= 0.5 and counts["ours_found_by_mediapipe"] >= 0.5, \
        row


def test_the_mediapipe_benchmark_matches_a_box_of_the_same_class_at_the_iou():
    from mnv3.model.anchors import same_detections  # the benchmark's and the report's

    def matched(found, others):
        return same_detections([b for _, b in found], [c for c, _ in found],
                               [b for _, b in others], [c for c, _ in others], 0.9)

    apple = ("apple", (0, 0, 100, 100))
    assert matched([apple], [("apple", (0, 0, 100, 95))]) == 1  # IoU 0.95
    assert matched([apple], [("apple", (0, 0, 100, 85))]) == 0  # IoU 0.85
    assert matched([apple], [("orange", (0, 0, 100, 100))]) == 0
    assert matched([apple, apple], [("orange", (0, 0, 1, 1)), apple]) == 2


def test_the_mediapipe_benchmark_refuses_what_is_not_a_detection_run_in_one_line(tmp_path):
    from benchmarks.mediapipe_detections import main
    from mnv3 import config as config_lib
    from tests.conftest import assert_one_line_error, call_cli

    assert_one_line_error(call_cli(main, "--model_dir", str(tmp_path / "gone")),
                          "gone", "not a run directory")
    config_lib.save(tiny_cfg(), str(tmp_path / "config.yaml"))  # a classifier's run
    assert_one_line_error(call_cli(main, "--model_dir", str(tmp_path)),
                          "a classification run")
    config_lib.save(tiny_cfg("task.name=detection", "data.num_classes=6"),
                    str(tmp_path / "config.yaml"))  # synthetic shapes: no photos
    assert_one_line_error(call_cli(main, "--model_dir", str(tmp_path)),
                          "not carved from a folder")
