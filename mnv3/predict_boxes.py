"""Boxes in your own photos, from an exported detector .tflite, run by
MediaPipe's ObjectDetector itself: the code path an Android app uses (resize
included), so the boxes and scores are the app's. Optionally drawn on a copy
of each photo."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mnv3.errors import UserError
from mnv3.predict import read_rgb
from mnv3.tflite.metadata import read_metadata

DETECTOR_OUTPUTS = {"location", "category", "score", "number of detections"}


def is_detector_file(path: str) -> bool:
    """Whether `path` is a .tflite whose metadata describes a detector's outputs."""
    if not (path.endswith(".tflite") and os.path.isfile(path)):
        return False
    try:
        with open(path, "rb") as f:
            graph = read_metadata(f.read()).subgraphMetadata[0]
    except Exception:  # no metadata, or not a model: the classifier's load says which
        return False
    names = {t.name.decode() for t in graph.outputTensorMetadata or [] if t.name}
    return DETECTOR_OUTPUTS <= names


@dataclasses.dataclass
class Found:
    label: str
    index: int | None
    score: float
    box: tuple[int, int, int, int]  # left, top, right, bottom, in the photo's pixels


class Detector:
    """An exported detector: detect() lists the boxes scoring `min_score` or more."""

    def __init__(self, path: str, min_score: float):
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        options = vision.ObjectDetectorOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=os.path.abspath(path)),
            score_threshold=min_score, max_results=-1)
        try:
            self._detector = vision.ObjectDetector.create_from_options(options)
        except (RuntimeError, ValueError, OSError) as e:
            raise UserError(f"{path}: MediaPipe cannot load it "
                            f"({str(e).strip().splitlines()[0][:200]})") from None

    def detect(self, path: str) -> tuple[np.ndarray, list[Found]]:
        image = read_rgb(path)
        return image, self.detect_pixels(image)

    def detect_pixels(self, image: np.ndarray) -> list[Found]:
        """The boxes MediaPipe finds in `image` (H x W x 3 uint8 RGB), best first."""
        import mediapipe as mp

        result = self._detector.detect(
            mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        found = []
        for d in result.detections:
            c, b = d.categories[0], d.bounding_box
            found.append(Found(c.category_name or str(c.index), c.index, float(c.score),
                               (b.origin_x, b.origin_y, b.origin_x + b.width,
                                b.origin_y + b.height)))
        return sorted(found, key=lambda f: -f.score)

    def close(self) -> None:
        """Releases MediaPipe's detector now (its own finaliser fails when it runs
        at interpreter exit)."""
        if self._detector is not None:
            self._detector.close()
            self._detector = None


def draw(image: np.ndarray, found: list[Found], path: str) -> None:
    """A copy of the photo with each box, its label and score, as a PNG."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    width = max(2, round(max(image.shape[:2]) / 250))
    for f in found:
        pen.rectangle(f.box, outline=(255, 40, 40), width=width)
        text = f"{f.label} {f.score:.2f}"
        left, top = f.box[0], max(f.box[1] - 12, 0)
        pen.rectangle(pen.textbbox((left, top), text), fill=(255, 40, 40))
        pen.text((left, top), text, fill=(255, 255, 255))
    tmp = path + ".tmp.png"
    picture.save(tmp)
    os.replace(tmp, path)
