"""Top-k classes for your own photos, from an exported .tflite, a best.keras or a
run directory, prepared as an app prepares them.

A .tflite runs through MediaPipe's ImageClassifier itself: the code path the
README's Android example uses, resizing included, so its scores are the app's.
A Keras model gets the same preprocessing from resize_like_mediapipe: the
whole photo stretched to the input size, bilinear in OpenCV 4's fixed point
(1/32-pixel positions, 15-bit weights), raw 0..255 pixels in.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mnv3.console import warn
from mnv3.errors import UserError, first_line
from mnv3.model.saved import load_keras_file
from mnv3.tflite.evaluate import TFLiteModel
from mnv3.tflite.metadata import associated_files, read_metadata


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an image file (JPEG, PNG, BMP, GIF's first frame)."""
    import tensorflow as tf

    if not os.path.exists(path):
        raise UserError(f"{path}: not found")
    if not os.path.isfile(path):  # a directory, a FIFO, a device
        raise UserError(f"{path}: not an image file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError:
        raise UserError(f"{path}: cannot be decoded as an image") from None
    return image.numpy()


def resize_like_mediapipe(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` (HxWx3 uint8) stretched to height x width as MediaPipe's CPU
    preprocessing does (OpenCV's bilinear warp, edge pixels repeated). Bit for
    bit the same, except where a source position falls exactly halfway between
    two 1/32-pixel steps: OpenCV rounds those by the floating-point noise in its
    warp matrix, and a pixel there can differ by 1/32 of the step to its
    neighbour (tests/test_predict.py measures it)."""
    def sample_points(n_out: int, n_in: int):
        steps = (np.rint(np.arange(n_out) * (n_in / n_out) * 1024).astype(np.int64) + 16) >> 5
        first = steps >> 5
        return (np.clip(first, 0, n_in - 1), np.clip(first + 1, 0, n_in - 1),
                (steps & 31).astype(np.int64))

    y0, y1, fy = sample_points(height, image.shape[0])
    x0, x1, fx = sample_points(width, image.shape[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    pixels = image.astype(np.int64)
    total = (pixels[y0][:, x0] * (32 - fy) * (32 - fx) + pixels[y0][:, x1] * (32 - fy) * fx
             + pixels[y1][:, x0] * fy * (32 - fx) + pixels[y1][:, x1] * fy * fx) * 32
    return np.clip((total + (1 << 14)) >> 15, 0, 255).astype(np.uint8)


@dataclasses.dataclass
class Prediction:
    image: str
    top: list  # [(class index, label, score)], best first


TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer

SEGMENTER_REFUSED = ("{}: a segmentation model; predict.py prints the classes of "
                     "classifiers (a segmenter's masks: its export's frames.png, or "
                     "MediaPipe's ImageSegmenter on the .tflite)")


def _has_metadata(data: bytes) -> bool:
    try:
        read_metadata(data)
    except Exception:  # none, or a flatbuffer too damaged to read: LiteRT says which
        return False
    return True


def _is_segmenter_tflite(data: bytes) -> bool:
    try:
        graph = read_metadata(data).subgraphMetadata[0]
    except Exception:  # no metadata, or not a model: MediaPipe's load says which
        return False
    return any(m.name.decode() == "SEGMENTER_METADATA" for m in graph.customMetadata or [])


class Model:
    """A classifier from a .tflite, a .keras file or a run directory, with its
    labels: predict() gives the top classes for an image file."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, "best.keras")
            if not os.path.exists(path):
                raise UserError(f"{os.path.dirname(path)}: no best.keras in this run "
                                "directory (train it first)")
        if not os.path.exists(path):
            raise UserError(f"{path}: not found")
        self._mediapipe = self._tflite = None
        if path.endswith(".tflite"):
            self._load_tflite(path)
        elif path.endswith(".keras"):
            self._load_keras(path)
        else:
            raise UserError(f"{path}: not a .tflite, .keras or run directory")

    def _load_tflite(self, path: str) -> None:
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        if not os.path.isfile(path):
            raise UserError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read()
        if data[4:8] != TFLITE_IDENTIFIER:
            raise UserError(f"{path}: not a TFLite model")
        if _is_segmenter_tflite(data):
            raise UserError(SEGMENTER_REFUSED.format(path))
        # A file converted elsewhere may carry no labels: classes show as indices.
        labels = associated_files(data).get("labels.txt", b"")
        self.labels = labels.decode("utf-8", errors="replace").splitlines()
        options = vision.ImageClassifierOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=os.path.abspath(path)),
            max_results=-1)
        try:
            self._mediapipe = vision.ImageClassifier.create_from_options(options)
        except (RuntimeError, ValueError, OSError) as e:  # OSError: no normalisation
            if _has_metadata(data):
                raise UserError(f"{path}: MediaPipe cannot load it "
                                f"({str(e).strip().splitlines()[0][:200]})") from None
            self._load_foreign(path, data)

    def _load_foreign(self, path: str, data: bytes) -> None:
        """A float-input file without metadata, which MediaPipe refuses (it reads
        the input's normalisation from the metadata): run by LiteRT itself on
        the same resized pixels, 0..255 as they are (the convention of mnv3's
        and keras.applications' MobileNetV3, which normalise inside)."""
        try:
            model = TFLiteModel(data)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{path}: LiteRT cannot load it ({first_line(e, 200)})") from None
        shape = tuple(model.input["shape"])
        if len(shape) != 4 or shape[-1] != 3 or len(model.output["shape"]) != 2:
            raise UserError(f"{path}: not an image classifier (input {list(shape)}, "
                            f"output {list(model.output['shape'])})")
        warn(f"{path} has no TFLite metadata: pixels 0..255 go in as they are, and "
             "classes show as indices unless the file lists labels")
        _, self.height, self.width, _ = shape
        self._tflite = model

    def _load_keras(self, path: str) -> None:
        model = load_keras_file(path, f"{path}: damaged or not a Keras model file")
        if len(model.output.shape) == 3:  # one row per anchor
            raise UserError(f"{path}: a detector; predict.py finds boxes with its exported "
                            ".tflite (python export_tflite.py --model_dir <its run>)")
        if len(model.output.shape) != 2:
            raise UserError(SEGMENTER_REFUSED.format(path))
        _, self.height, self.width, _ = model.input.shape
        if self.height is None:
            raise UserError(f"{path}: the model takes any size; predict needs a fixed one")
        labels_file = os.path.join(os.path.dirname(path), "labels.txt")
        self.labels = []
        if os.path.exists(labels_file):
            with open(labels_file, encoding="utf-8") as f:
                self.labels = f.read().splitlines()
        self._keras = model

    def predict(self, path: str, top_k: int) -> Prediction:
        image = read_rgb(path)
        if self._mediapipe is not None:
            import mediapipe as mp

            result = self._mediapipe.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            best = result.classifications[0].categories[:top_k]
            return Prediction(path, [(c.index, self._label(c.index), float(c.score))
                                     for c in best])
        pixels = resize_like_mediapipe(image, self.height, self.width)
        if self._tflite is not None:
            scores = self._tflite(pixels.astype(np.float32))
        else:
            scores = self._keras(pixels[None].astype(np.float32), training=False).numpy()[0]
        best = np.argsort(-scores, kind="stable")[:top_k]
        return Prediction(path, [(int(i), self._label(i), float(scores[i])) for i in best])

    def close(self) -> None:
        """Releases MediaPipe's classifier now (its own finaliser fails when it runs
        at interpreter exit)."""
        if self._mediapipe is not None:
            self._mediapipe.close()
            self._mediapipe = None

    def _label(self, index) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)
