"""predict: top classes for a user's own photos, prepared as the phone prepares
them (MediaPipe's ImageClassifier), from a .tflite, a .keras or a run directory."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv3 import cli, tasks
from mnv3.predict import resize_like_mediapipe
from tests.conftest import SHARED_DATA, assert_one_line_error, call_cli, tiny_cfg


def _mediapipe_input(image, size):
    """The tensor MediaPipe's ImageClassifier feeds a size x size model, read back
    through an identity model: each 'class score' is one input value."""
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    from mnv3.tflite import modes
    from mnv3.tflite.convert import convert
    from mnv3.tflite.metadata import add_metadata, classifier_output

    values = size * size * 3
    pixels = keras.Input((size, size, 3), batch_size=1, name="image")
    identity = keras.Model(pixels, keras.layers.Reshape((values,))(pixels))
    tflite = add_metadata(convert(identity, modes.get("float32")), name="identity",
                          description="identity", labels=[str(i) for i in range(values)],
                          mean=0.0, std=1.0, output=classifier_output(values))
    options = vision.ImageClassifierOptions(
        base_options=mp_tasks.BaseOptions(model_asset_buffer=tflite), max_results=values)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                              data=np.ascontiguousarray(image)))
    tensor = np.zeros(values)
    for category in result.classifications[0].categories:
        tensor[category.index] = category.score
    return tensor.reshape(size, size, 3)


def test_resize_gives_mediapipes_own_input_tensor():
    rng = np.random.default_rng(0)
    for height, width, exact in [(360, 480, True), (224, 224, True), (300, 50, True),
                                 (97, 204, True), (97, 203, False), (31, 45, False)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ours = resize_like_mediapipe(image, 48, 48).astype(np.float64)
        theirs = _mediapipe_input(image, 48)
        diff = np.abs(ours - theirs)
        if exact:
            assert diff.max() == 0, (height, width)
        else:  # halfway positions: 1/32 of a neighbour step, at some pixels
            assert diff.max() <= 2 * 255 / 32 and diff.mean() < 1.0, (height, width)


def _photos(tmp_path, count=8):
    """Photos of other sizes than the model's: real ones from ../shared/data
    where present, plus odd-sized random ones. All of them are sizes whose 64 px
    MediaPipe input our resize matches bit for bit (the halfway case, where a
    pixel may differ by 1/32 of a step, is measured above), so what is compared
    below is the model, not the resize."""
    paths = sorted(glob.glob(os.path.join(SHARED_DATA, "camvid", "train", "images", "*")))[:2]
    paths += sorted(glob.glob(os.path.join(SHARED_DATA, "imagenette", "train", "*",
                                           "*.JPEG")))[::1500][:4]
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(97, 204), (300, 50), (64, 64), (120, 90)]):
        path = tmp_path / f"photo{i}.png"
        tf.io.write_file(str(path), tf.io.encode_png(
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        paths.append(str(path))
    return paths[:count + 2]


@pytest.mark.slow
def test_predict_agrees_with_mediapipe_and_across_model_files(tmp_path, exported):
    model_dir, _ = exported
    photos = _photos(tmp_path)
    labels = open(os.path.join(model_dir, "labels.txt")).read().split()
    results = {}
    for name, model in [("run", model_dir),
                        ("float32", glob.glob(os.path.join(model_dir, "export",
                                                           "*_float32.tflite"))[0]),
                        ("int8", glob.glob(os.path.join(model_dir, "export",
                                                        "*_int8.tflite"))[0])]:
        out = call_cli(cli.predict, "--model", model, "--json", "--top_k", "3", *photos)
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [row["image"] for row in rows] == photos
        for row in rows:
            assert len(row["top"]) == 3
            assert [t["label"] for t in row["top"]] == [labels[t["index"]] for t in row["top"]]
            scores = [t["score"] for t in row["top"]]
            assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        results[name] = rows
    # The Keras model, prepared by our resize, scores as its float32 export does
    # through MediaPipe: the same input tensor, so the same scores to float
    # rounding, and the same top class unless two are tied to that rounding.
    for keras_row, tflite_row in zip(results["run"], results["float32"]):
        ours = {t["index"]: t["score"] for t in keras_row["top"]}
        phone = {t["index"]: t["score"] for t in tflite_row["top"]}
        shared = set(ours) & set(phone)
        assert tflite_row["top"][0]["index"] in shared
        assert all(abs(ours[i] - phone[i]) < 1e-3 for i in shared), (ours, phone)
        top, second = tflite_row["top"][0]["score"], tflite_row["top"][1]["score"]
        if top - second > 2e-3:
            assert keras_row["top"][0]["index"] == tflite_row["top"][0]["index"]
    # One line per image without --json.
    out = call_cli(cli.predict, "--model", model_dir, photos[0], photos[-1])
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(photos[0] + ": ")
    assert lines[0].count(",") == 2  # three classes


@pytest.mark.parametrize("args, fragment", [
    (["--model", "MISSING.tflite", "IMAGE"], "missing.tflite: not found"),
    (["--model", "NOT_A_MODEL.txt", "IMAGE"], "not a .tflite, .keras or run directory"),
    (["--model", "TMP", "IMAGE"], "no best.keras"),
    (["--model", "TMP", "--top_k", "0", "IMAGE"], "--top_k 0"),
    (["--model"], "expected one argument"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    (tmp_path / "NOT_A_MODEL.txt").write_text("hello")
    (tmp_path / "image.png").write_bytes(b"not an image")
    args = [a.replace("MISSING", str(tmp_path / "missing"))
            .replace("NOT_A_MODEL", str(tmp_path / "NOT_A_MODEL"))
            .replace("TMP", str(tmp_path)).replace("IMAGE", str(tmp_path / "image.png"))
            for a in args]
    assert_one_line_error(call_cli(cli.predict, *args), fragment)


def test_paths_that_are_not_images_or_models_are_one_line(tmp_path):
    (tmp_path / "random.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "photos").mkdir()
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert_one_line_error(call_cli(cli.predict, "--model", str(tmp_path / "random.tflite"),
                                   str(image)), "random.tflite: not a TFLite model")
    model_dir = _tiny_run(tmp_path / "run")
    assert_one_line_error(call_cli(cli.predict, "--model", model_dir,
                                   str(tmp_path / "photos")), "photos: not an image file")


def _tiny_run(directory) -> str:
    """A run directory with an untrained tiny classifier's best.keras and labels."""
    from mnv3.model.layers import with_keras_batch_norm

    cfg = tiny_cfg()
    task = tasks.get(cfg)
    os.makedirs(directory)
    with_keras_batch_norm(task.build(cfg), task.input_size).save(
        os.path.join(directory, "best.keras"))
    with open(os.path.join(directory, "labels.txt"), "w") as f:
        f.write("".join(f"class {i}\n" for i in range(cfg.data.num_classes)))
    return str(directory)


@pytest.mark.slow
def test_a_tflite_without_metadata_still_predicts(tmp_path):
    """A classifier converted elsewhere, with no metadata (so no labels, and no
    input normalisation MediaPipe could read): its classes show as indices, and
    its scores are the Keras model's on the same pixels."""
    from mnv3.tflite import modes
    from mnv3.tflite.convert import convert

    model_dir = _tiny_run(tmp_path / "run")
    keras_model = keras.saving.load_model(os.path.join(model_dir, "best.keras"))
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(convert(keras_model, modes.get("float32")))
    photos = _photos(tmp_path)[:2]
    theirs = call_cli(cli.predict, "--model", str(foreign), "--json", *photos)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert "no TFLite metadata" in theirs.stderr
    ours = call_cli(cli.predict, "--model", model_dir, "--json", *photos)
    assert len(ours.stdout.splitlines()) == len(theirs.stdout.splitlines()) == 2
    for mine, other in zip(ours.stdout.splitlines(), theirs.stdout.splitlines()):
        mine, other = json.loads(mine)["top"], json.loads(other)["top"]
        assert [t["label"] for t in other] == [str(t["index"]) for t in other]
        assert [t["index"] for t in other] == [t["index"] for t in mine]
        assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(mine, other))


@pytest.mark.slow
def test_an_image_that_does_not_decode_is_one_line(tmp_path, exported):
    model_dir, _ = exported
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert_one_line_error(call_cli(cli.predict, "--model", model_dir,
                                   str(tmp_path / "broken.jpg")), "broken.jpg", "decoded")
    assert_one_line_error(call_cli(cli.predict, "--model", model_dir,
                                   str(tmp_path / "nowhere.jpg")), "nowhere.jpg", "not found")
